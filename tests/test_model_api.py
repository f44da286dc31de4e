"""timm's model contract on our models, checked against independent computations."""
import copy

import pytest
import torch
import torch.nn.functional as F
import timm
from timm.models import create_feature_extractor

import timm_cct
from timm_cct import CompactTransformer

# one small model of each family, with each position embedding
SMALL = ['cct_2_3x2_32', 'cvt_2_4_32_sine', 'vit_lite_2_4_32', 'cct_4_3x2_32_sine', 'vit_lite_4_4_32_sine']
# reference facts: dataset mean / std of the official recipes
DATASET_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    102: ((0.4353, 0.3773, 0.2872), (0.2966, 0.2455, 0.2698)),
    1000: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _x(model, batch=2):
    return torch.randn(batch, model.in_chans, *model.img_size, generator=torch.Generator().manual_seed(0))


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


@pytest.mark.parametrize('name', timm.list_models(['cct_*', 'cvt_*', 'vit_lite_*'], include_tags=True))
def test_pretrained_cfg_is_complete(name):
    cfg = timm.models.get_pretrained_cfg(name)
    mean, std = DATASET_STATS[cfg.num_classes]
    assert cfg.mean == mean and cfg.std == std
    assert cfg.crop_pct == (0.9 if cfg.num_classes == 1000 else 1.0)
    assert cfg.license == 'apache-2.0' and cfg.paper_ids == 'arXiv:2104.05704' and cfg.paper_name
    assert cfg.origin_url.startswith('https://github.com/SHI-Labs/')
    model = timm.create_model(name.split('.')[0], device='meta')
    state = model.state_dict()
    assert cfg.first_conv + '.weight' in state and cfg.classifier + '.weight' in state
    assert model.num_classes == cfg.num_classes and (3, *model.img_size) == tuple(cfg.input_size)


def test_unknown_argument_raises_type_error():
    with pytest.raises(TypeError):
        timm.create_model('cct_7_3x1_32', not_an_argument=1)


def test_builds_on_meta_device():
    model = timm.create_model('cct_7_3x1_32_sine', device='meta')
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize('name', SMALL)
def test_forward_head_and_pooling(name):
    model = _model(name)
    x = _x(model)
    tokens = model.forward_features(x)
    grid = model.tokenizer.feat_size(model.img_size)
    assert tokens.shape == (2, grid[0] * grid[1] + model.num_prefix_tokens, model.embed_dim)
    pre = model.forward_head(tokens, pre_logits=True)
    if model.global_pool == 'seq':  # SeqPool, computed independently
        w = torch.softmax(tokens @ model.seq_pool.attn.weight.T + model.seq_pool.attn.bias, dim=1)
        expected = (w * tokens).sum(1)
    else:
        expected = tokens[:, 0]
    torch.testing.assert_close(pre, expected)
    torch.testing.assert_close(model(x), pre @ model.head.weight.T + model.head.bias)


@pytest.mark.parametrize('pool', ['seq', 'avg', ''])
def test_global_pool_choices(pool):
    model = _model('vit_lite_2_4_32', global_pool=pool, num_classes=0)
    x = _x(model)
    tokens = model.forward_features(x)
    out = model(x)
    if pool == 'avg':
        torch.testing.assert_close(out, tokens[:, 1:].mean(1))
    elif pool == '':
        torch.testing.assert_close(out, tokens)
    else:
        assert out.shape == (2, model.embed_dim)


def test_token_pool_needs_class_token():
    with pytest.raises(ValueError, match='class token'):
        timm.create_model('cct_2_3x2_32', global_pool='token')


def test_reset_classifier():
    model = _model('cct_2_3x2_32')
    model.reset_classifier(5)
    assert model(_x(model)).shape == (2, 5) and model.get_classifier().out_features == 5
    assert model.global_pool == 'seq'
    model.reset_classifier(0, 'avg')
    assert model.seq_pool is None and model(_x(model)).shape == (2, model.embed_dim)
    model.reset_classifier(3, 'seq')
    assert model.seq_pool is not None and model(_x(model)).shape == (2, 3)


@pytest.mark.parametrize('name', SMALL)
def test_forward_intermediates_match_block_outputs(name):
    model = _model(name)
    x = _x(model)
    captured = []
    hooks = [blk.register_forward_hook(lambda m, i, o: captured.append(o)) for blk in model.blocks]
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt='NLC')
    for h in hooks:
        h.remove()
    prefix = model.num_prefix_tokens
    assert len(inter) == len(model.blocks)
    for got, block_out in zip(inter, captured):
        torch.testing.assert_close(got, block_out[:, prefix:])
    torch.testing.assert_close(final, model.forward_features(x))

    grid = model.tokenizer.feat_size(model.img_size)
    maps = model.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
    expected = model.norm(captured[-1])[:, prefix:].reshape(2, *grid, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps[-1], expected)
    early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], inter[0].reshape(2, *grid, -1).permute(0, 3, 1, 2))
    if prefix:
        pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, intermediates_only=True)
        torch.testing.assert_close(pairs[0][1], captured[-1][:, :prefix])


@pytest.mark.parametrize('name', SMALL)
def test_prune_intermediate_layers(name):
    model = _model(name)
    x = _x(model)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        kept = pruned.prune_intermediate_layers([0], prune_norm=True)
        assert len(pruned.blocks) == 1 and pruned.num_classes == 0
        torch.testing.assert_close(pruned.forward_intermediates(x, indices=kept, intermediates_only=True)[0], taps[0])


@pytest.mark.parametrize('name', SMALL)
def test_features_only(name):
    model = _model(name, features_only=True, out_indices=(0, -1))
    base = _model(name)
    x = _x(base)
    feats = model(x)
    grid = base.tokenizer.feat_size(base.img_size)
    assert [f.shape for f in feats] == [(2, base.embed_dim, *grid)] * 2
    assert model.feature_info.reduction() == [base.tokenizer.reduction] * 2
    assert base.img_size[0] // base.tokenizer.reduction == grid[0]


@pytest.mark.parametrize('name', SMALL)
def test_fx_feature_extraction(name):
    model = _model(name)
    x = _x(model)
    extractor = create_feature_extractor(model, return_nodes={'blocks.0': 'first', 'norm': 'final'})
    with torch.no_grad():
        out = extractor(x)
        expected = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)[0]
    torch.testing.assert_close(out['first'][:, model.num_prefix_tokens:], expected)
    torch.testing.assert_close(out['final'], model.forward_features(x))


@pytest.mark.parametrize('name', SMALL)
def test_grad_checkpointing_same_output_and_grads(name):
    model = _model(name, drop_path_rate=0., attn_drop_rate=0.)
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing(True)
    x = _x(model)
    model.train(), ckpt.train()
    model(x).sum().backward()
    ckpt(x).sum().backward()
    torch.testing.assert_close(ckpt(x), model(x))
    for (n, p), (_, q) in zip(model.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)


def test_no_weight_decay_and_group_matcher():
    learn = timm.create_model('vit_lite_2_4_32', device='meta')
    sine = timm.create_model('cct_2_3x2_32_sine', device='meta')
    assert learn.no_weight_decay() == {'pos_embed', 'cls_token'}
    assert sine.no_weight_decay() == set()
    groups = timm.models.group_parameters(learn, learn.group_matcher())
    assert len(groups) == len(learn.blocks) + 2  # stem, each block, final norm + head


def test_set_input_size_resamples_learnable_bilinear():
    model = _model('cvt_2_4_32')
    old = model.pos_embed.detach().clone()
    model.set_input_size(48)
    grid = old.reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(12, 12), mode='bilinear', align_corners=False)
    torch.testing.assert_close(model.pos_embed, expected.permute(0, 2, 3, 1).reshape(1, 144, -1))
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_set_input_size_regenerates_sine_with_class_token():
    model = _model('vit_lite_2_4_32_sine')
    model.set_input_size((32, 48))
    torch.testing.assert_close(model.pos_embed, timm_cct.sine_pos_embed(1 + 8 * 12, model.embed_dim))
    assert model(torch.randn(1, 3, 32, 48)).shape == (1, 10)


def test_one_class_configures_all_families():
    families = {name.split('_')[0]: timm.create_model(name, device='meta') for name in
                ('cct_7_3x1_32', 'cvt_7_4_32', 'vit_lite_7_4_32')}
    assert all(type(m) is CompactTransformer for m in families.values())
    assert families['cct'].tokenizer.layers[0].conv.bias is None
    assert families['cvt'].tokenizer.layers[0].conv.bias is not None
    assert families['vit'].cls_token is not None and families['vit'].global_pool == 'token'
