"""Edges of the model API: empty and single-image batches in every mode and output, dtype and device mismatches,
constructor and method arguments refused before anything changes, block indices, pruned exports, variant
arguments overriding the variant's defaults."""

import pytest
import timm
from timm_cct._compat import update_model_input_size
import torch
import torch.nn as nn

import timm_cct  # noqa: F401  (registers the models)
from timm_cct import CompactTransformer
from timm_cct.cpu_kernels import dropout_attention
from timm_cct.hub import export_to_hub
from boundary import raises_from_package as _raises

FAMILIES = ['cct_2_3x2_32', 'cvt_2_4_32_sine', 'vit_lite_2_4_32']




def _snapshot(model: nn.Module):
    """Everything a refused call must leave alone: the state dict, the modules and the plain attributes."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(name, type(module).__name__) for name, module in model.named_modules()]
    attrs = {k: v for k, v in vars(model).items() if not k.startswith('_') and isinstance(v, (int, float, str, tuple))}
    return state, modules, attrs, model.training


def _same(before, after) -> None:
    state_a, modules_a, attrs_a, training_a = before
    state_b, modules_b, attrs_b, training_b = after
    assert modules_a == modules_b
    assert attrs_a == attrs_b
    assert training_a == training_b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# -- batch 0 and 1, every mode and output -------------------------------------------------------


def _outputs(model: CompactTransformer, x: torch.Tensor):
    """Every way to push images through a model, with the shape each result must have."""
    B, (h, w), D = x.shape[0], model.feat_size, model.embed_dim
    n = h * w + model.num_prefix_tokens
    yield 'forward', model(x), (B, model.num_classes)
    yield 'forward_features', model.forward_features(x), (B, n, D)
    final, maps = model.forward_intermediates(x, indices=[0, 1])
    yield 'forward_intermediates final', final, (B, n, D)
    for y in maps:
        yield 'forward_intermediates NCHW', y, (B, D, h, w)
    for y in model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True):
        yield 'forward_intermediates NLC', y, (B, h * w, D)
    if model.seq_pool is not None:
        yield 'seq_pool_weights', model.seq_pool_weights(x), (B, h, w)


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('batch', [0, 1])
@pytest.mark.parametrize('grad', [True, False], ids=['grad', 'no_grad'])
def test_small_batches_every_output(name, training, batch, grad):
    """Training on CPU runs the chunked dropout-attention kernel; eval without grad the chunked inference path."""
    torch.manual_seed(0)
    model = timm.create_model(name).train(training)
    x = torch.randn(batch, 3, 32, 32)
    with torch.set_grad_enabled(grad):
        for label, y, shape in _outputs(model, x):
            assert tuple(y.shape) == shape, label
            assert torch.isfinite(y).all(), label
    if grad and training:
        model(x).sum().backward()  # the kernel's backward on an empty batch too
        assert all(p.grad is not None for p in model.blocks.parameters())


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('batch', [0, 1])
@pytest.mark.parametrize('fmt', ['NCHW', 'NLC'])
def test_features_only_small_batches(name, batch, fmt):
    model = timm.create_model(name, features_only=True, out_indices=(0, 1)).eval()
    model.output_fmt = fmt  # FeatureGetterNet reads it per call
    features = model(torch.randn(batch, 3, 32, 32))
    assert len(features) == len(model.feature_info.channels()) == 2
    for y, chans in zip(features, model.feature_info.channels()):
        assert y.shape[0] == batch
        assert (y.shape[1] if fmt == 'NCHW' else y.shape[-1]) == chans


def test_dropout_attention_empty_batch():
    qkv = torch.randn(0, 5, 3 * 8, requires_grad=True)
    out = dropout_attention(qkv, 2, 0.5, 0.1)
    assert out.shape == (0, 5, 8)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


@pytest.mark.parametrize('layout', ['channels_last', 'strided', 'expanded', 'requires_grad'])
def test_input_layouts_give_the_same_result(layout):
    model = timm.create_model('cct_2_3x2_32').eval()
    x = torch.randn(1, 3, 32, 32)
    if layout == 'channels_last':
        y = x.to(memory_format=torch.channels_last)
    elif layout == 'strided':
        y = torch.zeros(1, 3, 64, 64)[:, :, ::2, ::2].copy_(x)
    elif layout == 'expanded':
        x = x.expand(3, -1, -1, -1)
        y = x
        x = x.contiguous()
    else:
        y = x.clone().requires_grad_()
    with torch.no_grad():
        expected = model(x)
    out = model(y)
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)
    if layout == 'requires_grad':
        out.sum().backward()
        assert y.grad is not None and y.grad.shape == y.shape


# -- dtype and device -----------------------------------------------------------------------------


@pytest.mark.parametrize('dtype', [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('entry', ['forward', 'forward_features', 'forward_intermediates', 'seq_pool_weights'])
def test_input_dtype_other_than_the_model(dtype, entry):
    model = timm.create_model('cct_2_3x2_32').eval()
    x = torch.randn(1, 3, 32, 32, dtype=dtype)
    message = _raises(TypeError, lambda: getattr(model, entry)(x), str(dtype), 'torch.float32', 'x.to(')
    assert ('autocast' in message) == (dtype != torch.float64)  # autocast leaves float64 alone


def test_lower_precision_input_under_autocast():
    model = timm.create_model('cct_2_3x2_32').eval()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_model_in_another_dtype_takes_its_own_dtype():
    model = timm.create_model('cct_2_3x2_32', dtype=torch.float64).eval()
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    _raises(TypeError, lambda: model(torch.randn(1, 3, 32, 32)), 'torch.float32', 'torch.float64')


def test_input_on_another_device():
    model = timm.create_model('cct_2_3x2_32').eval()
    _raises(ValueError, lambda: model(torch.randn(1, 3, 32, 32, device='meta')), 'device meta', 'cpu', '.to(')
    meta_model = timm.create_model('cct_2_3x2_32', device='meta').eval()
    _raises(ValueError, lambda: meta_model(torch.randn(1, 3, 32, 32)), 'device cpu', 'meta')
    assert meta_model(torch.randn(1, 3, 32, 32, device='meta')).shape == (1, 10)


@pytest.mark.filterwarnings(r'ignore:`torch\.jit\.\w+` is deprecated:FutureWarning')
def test_scripted_model_refuses_another_dtype():
    scripted = torch.jit.script(timm.create_model('cct_2_3x2_32').eval())
    assert scripted(torch.randn(0, 3, 32, 32)).shape == (0, 10)
    with pytest.raises(torch.jit.Error, match='does not match the model dtype'):
        scripted(torch.randn(1, 3, 32, 32, dtype=torch.float64))


# -- constructor ----------------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, exc_type, fragments', [
    (dict(mlp_ratio=-1), ValueError, ['mlp_ratio', '-1']),
    (dict(mlp_ratio=0), ValueError, ['mlp_ratio']),
    (dict(mlp_ratio=float('nan')), ValueError, ['mlp_ratio', 'nan']),
    (dict(mlp_ratio=float('inf')), ValueError, ['mlp_ratio', 'inf']),
    (dict(mlp_ratio=0.001), ValueError, ['at least one unit', 'embed_dim=128']),
    (dict(mlp_ratio='2'), TypeError, ['mlp_ratio', 'str']),
    (dict(mlp_ratio=True), TypeError, ['mlp_ratio', 'bool']),
    (dict(stride=0), ValueError, ['stride >= 1', 'got 0']),
    (dict(stride=-2), ValueError, ['stride >= 1']),
    (dict(padding=-1), ValueError, ['padding >= 0']),
    (dict(padding=1.5), TypeError, ['padding', 'float']),
    (dict(tokenizer_hidden_chans=0), ValueError, ['tokenizer_hidden_chans >= 1']),
    (dict(class_token='yes'), TypeError, ['class_token', 'True or False']),
    (dict(dynamic_img_size='no'), TypeError, ['dynamic_img_size', "'no'"]),
    (dict(conv_tokenizer=1), TypeError, ['conv_tokenizer']),
    (dict(act_layer='gelu'), TypeError, ['act_layer', "'gelu'"]),
    (dict(norm_layer='layernorm'), TypeError, ['norm_layer']),
])
def test_constructor_refuses(kwargs, exc_type, fragments):
    _raises(exc_type, lambda: timm.create_model('cct_2_3x2_32', **kwargs), *fragments)
    _raises(exc_type, lambda: CompactTransformer(img_size=32, embed_dim=128, num_heads=2, **kwargs), *fragments)


def test_huge_img_size_states_the_memory():
    # cct_2_3x2_32 reduces by 4: 25000 x 25000 tokens, 128 wide: a 320 GB position embedding
    message = _raises(ValueError, lambda: timm.create_model('cct_2_3x2_32', img_size=100000),
                      'img_size=(100000, 100000)', '625,000,000 tokens', '320.0 GB', 'smaller img_size')
    assert 'attention' in message
    model = timm.create_model('cct_2_3x2_32')
    before = _snapshot(model)
    _raises(ValueError, lambda: model.set_input_size(100000), '320.0 GB')
    _same(before, _snapshot(model))


def test_large_but_sane_img_size_is_accepted():
    model = timm.create_model('cct_2_3x2_32', img_size=1024, pos_embed='none')  # 256 x 256 tokens
    assert model.feat_size == (256, 256)


@pytest.mark.parametrize('kwargs', [dict(depth=0), dict(depth=1), dict(embed_dim=64, num_heads=4),
                                    dict(img_size=48), dict(num_classes=3, mlp_ratio=0.5)])
def test_variant_arguments_override_the_defaults(kwargs):
    model = timm.create_model('cct_2_3x2_32', **kwargs).eval()
    assert len(model.blocks) == kwargs.get('depth', 2)
    assert model.embed_dim == kwargs.get('embed_dim', 128)
    assert model.num_classes == kwargs.get('num_classes', 10)
    if 'mlp_ratio' in kwargs and len(model.blocks):
        assert model.blocks[0].mlp.fc1.out_features == int(128 * kwargs['mlp_ratio'])
    size = kwargs.get('img_size', 32)
    assert model(torch.randn(2, 3, size, size)).shape == (2, model.num_classes)


@pytest.mark.parametrize('name', ['cvt_2_4_32', 'vit_lite_2_4_32'])
def test_variant_depth_override_other_families(name):
    model = timm.create_model(name, depth=1).eval()
    assert len(model.blocks) == 1 and model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# -- reset_classifier and set_input_size: checked before anything changes -------------------------


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('args, exc_type, fragments', [
    ((2.5, 'avg'), TypeError, ['num_classes', '2.5']),
    ((-1,), ValueError, ['num_classes >= 0', '-1']),
    ((True,), TypeError, ['num_classes', 'bool']),
    (('10',), TypeError, ['num_classes']),
    ((5, 'mean'), ValueError, ['global_pool', "'mean'"]),
    ((5, 3), ValueError, ['global_pool']),
])
def test_reset_classifier_refusal_changes_nothing(name, args, exc_type, fragments):
    model = timm.create_model(name)
    before = _snapshot(model)
    _raises(exc_type, lambda: model.reset_classifier(*args), *fragments)
    _same(before, _snapshot(model))


def test_reset_classifier_token_without_class_token_changes_nothing():
    model = timm.create_model('cct_2_3x2_32')
    before = _snapshot(model)
    _raises(ValueError, lambda: model.reset_classifier(5, 'token'), 'class token')
    _same(before, _snapshot(model))


@pytest.mark.parametrize('size, exc_type', [(0, ValueError), (-5, ValueError), (2.5, TypeError),
                                            ((32,), ValueError), ('32', TypeError)])
def test_set_input_size_refusal_changes_nothing(size, exc_type):
    model = timm.create_model('cct_2_3x2_32')
    before = _snapshot(model)
    _raises(exc_type, lambda: model.set_input_size(size))
    _same(before, _snapshot(model))


@pytest.mark.parametrize('size', [1, 4, 7, (5, 70)])
def test_set_input_size_tiny_and_odd(size):
    model = timm.create_model('cct_2_3x2_32').eval()
    model.set_input_size(size)
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, 3, h, w)).shape == (2, 10)


# -- SeqPool maps ---------------------------------------------------------------------------------


def test_vit_lite_reset_to_seqpool_maps_sum_to_one():
    model = timm.create_model('vit_lite_2_4_32').eval()
    model.reset_classifier(10, 'seq')
    maps = model.seq_pool_weights(torch.randn(3, 3, 32, 32))
    assert maps.shape == (3, 8, 8)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(3))
    # the map is SeqPool's own weights over the image tokens, the class token's share taken out
    tokens = model.forward_features(torch.zeros(1, 3, 32, 32))
    raw = model.seq_pool.weights(tokens)
    expected = raw[:, 1:] / (1 - raw[:, :1])
    torch.testing.assert_close(model.seq_pool_weights(torch.zeros(1, 3, 32, 32)).flatten(1), expected)


# -- block indices and features -------------------------------------------------------------------


@pytest.mark.parametrize('indices, exc_type, fragments', [
    ([], ValueError, ['[]', 'non-empty']),
    ([5], ValueError, ['[5] out of range', '2 blocks', '0..1']),
    ([-3], ValueError, ['[-3] out of range', '-2..-1']),
    (5, ValueError, ['indices=5', '1..2']),
    (0, ValueError, ['indices=0', '1..2']),
    ([0, 0], ValueError, ['repeated or out of order']),
    ([1, 0], ValueError, ['repeated or out of order']),
    ([0, -2], ValueError, ['name blocks [0, 0]']),
    (1.5, TypeError, ['1.5']),
    ([0.0], TypeError, ['not all ints']),
    ('0', TypeError, ["'0'"]),
])
def test_block_indices_refused(indices, exc_type, fragments):
    model = timm.create_model('cct_2_3x2_32').eval()
    x = torch.randn(1, 3, 32, 32)
    _raises(exc_type, lambda: model.forward_intermediates(x, indices=indices), *fragments)
    before = _snapshot(model)
    _raises(exc_type, lambda: model.prune_intermediate_layers(indices), *fragments)
    _same(before, _snapshot(model))
    if not isinstance(indices, str):
        _raises(exc_type, lambda: timm.create_model('cct_2_3x2_32', features_only=True, out_indices=indices),
                *fragments)


@pytest.mark.parametrize('indices, blocks', [(None, [0, 1]), (1, [1]), (2, [0, 1]), ([0], [0]), ([-1], [1]),
                                             ((0, 1), [0, 1]), ([-2, -1], [0, 1])])
def test_block_indices_accepted(indices, blocks):
    model = timm.create_model('cct_2_3x2_32').eval()
    x = torch.randn(1, 3, 32, 32)
    maps = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    assert len(maps) == len(blocks)
    tokens = model.forward_features(x)  # the last block's output, normalised
    if blocks[-1] == 1:
        torch.testing.assert_close(model.norm(maps[-1].flatten(2).transpose(1, 2)), tokens)
    if indices is not None:
        features = timm.create_model('cct_2_3x2_32', features_only=True, out_indices=indices)
        assert len(features.feature_info.channels()) == len(features(x)) == len(blocks)


def test_depth_zero_has_no_block_outputs():
    model = timm.create_model('cct_2_3x2_32', depth=0).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    _raises(ValueError, lambda: model.forward_intermediates(torch.randn(1, 3, 32, 32)), 'no transformer blocks')


# -- pruning, then export -------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'vit_lite_2_4_32'])
@pytest.mark.parametrize('prune_head', [True, False])
@pytest.mark.parametrize('writer', ['export_to_hub', 'save_for_hf'])
def test_pruned_model_exports_and_loads(tmp_path, name, prune_head, writer):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    model.prune_intermediate_layers([0], prune_head=prune_head)
    assert len(model.blocks) == 1
    if writer == 'export_to_hub':
        export_to_hub(model, tmp_path)
    else:
        if update_model_input_size is None:
            pytest.skip("timm < 1.0.31's save_for_hf records no build arguments (depth); export_to_hub does")
        timm.models.save_for_hf(model, tmp_path)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert len(loaded.blocks) == 1
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


def test_export_refuses_a_model_without_its_norm(tmp_path):
    model = timm.create_model('cct_2_3x2_32').eval()
    model.prune_intermediate_layers(1, prune_norm=True)
    _raises(ValueError, lambda: export_to_hub(model, tmp_path / 'out'), 'prune_norm')
    assert not (tmp_path / 'out').exists()


def test_pretrained_with_another_pooling_drops_the_unused_seqpool(tmp_path):
    source = timm.create_model('cct_2_3x2_32')
    torch.save(source.state_dict(), tmp_path / 'w.pth')
    model = timm.create_model('cct_2_3x2_32', pretrained=True, global_pool='avg', num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.pth'))).eval()
    assert model.seq_pool is None
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), source.eval().forward_features(x).mean(1))


# -- visualisation --------------------------------------------------------------------------------


def test_seqpool_attention_integer_images_meet_the_model_check():
    model = timm.create_model('cct_2_3x2_32')
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    _raises(TypeError, lambda: timm_cct.seqpool_attention(model, images), 'floating point', 'torch.uint8')
    assert model.training  # mode restored after the refusal


@pytest.mark.parametrize('upsample', [True, False])
def test_seqpool_attention_empty_batch_and_vit_lite(upsample):
    model = timm.create_model('vit_lite_2_4_32')
    model.reset_classifier(10, 'seq')
    maps = timm_cct.seqpool_attention(model, torch.randn(2, 3, 32, 32), upsample=upsample)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    assert timm_cct.seqpool_attention(model, torch.randn(0, 3, 32, 32), upsample=upsample).shape[0] == 0


@pytest.mark.parametrize('kwargs, exc_type, fragments', [
    (dict(titles=['a']), ValueError, ['one title per image (3)']),
    (dict(titles='abc'), ValueError, ['one title per image']),
    (dict(mean=(0.5, 0.5)), ValueError, ['mean as 3 numbers', '(0.5, 0.5)']),
    (dict(std=(0.2, 0.2, 0.2, 0.2)), ValueError, ['std as 3 numbers']),
    (dict(std=(0., 1., 1.)), ValueError, ['std without zeros']),
    (dict(mean='abc'), ValueError, ['mean']),
    (dict(ncols=0), ValueError, ['ncols']),
    (dict(alpha=2), ValueError, ['alpha']),
])
def test_plot_seqpool_attention_refuses(kwargs, exc_type, fragments):
    images, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    _raises(exc_type, lambda: timm_cct.plot_seqpool_attention(images, maps, **kwargs), *fragments)


def test_plot_seqpool_attention_refuses_empty_and_numpy():
    images, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    _raises(ValueError, lambda: timm_cct.plot_seqpool_attention(images[:0], maps[:0]), 'empty batch')
    _raises(TypeError, lambda: timm_cct.plot_seqpool_attention(images.numpy(), maps), 'ndarray', 'torch.from_numpy')
    _raises(TypeError, lambda: timm_cct.plot_seqpool_attention(images, maps.numpy()), 'maps', 'ndarray')


def test_plot_seqpool_attention_accepts_array_like_normalisation(tmp_path):
    pytest.importorskip('matplotlib')
    import numpy as np
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    fig = timm_cct.plot_seqpool_attention(images, maps, mean=np.array([0.5, 0.5, 0.5]), std=torch.tensor([0.2] * 3),
                                          titles=['a', 3], path=str(tmp_path / 'maps.png'))
    assert (tmp_path / 'maps.png').stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ['a', '3']
