"""Property-based checks: over constructor arguments, reset_classifier / set_input_size / prune sequences, inputs
(shape, dtype, device, layout) and checkpoint contents, the only allowed outcomes are a correct result (the right
shape, finite where the input is) or a ValueError / TypeError raised by timm_cct itself.

The profile is derandomized (the same cases on every run) and sized to run in about a minute on two cores. The
number of cases generated and the outcomes seen are written to the terminal at the end of the module.
"""
import collections
import tempfile
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import timm_cct  # noqa: E402,F401  (registers the models)
from timm_cct import CompactTransformer  # noqa: E402

PACKAGE = Path(timm_cct.__file__).parent
PROFILE = dict(derandomize=True, deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNTS = collections.defaultdict(collections.Counter)  # property -> outcome -> calls
EXAMPLES = collections.Counter()  # property -> generated examples


@pytest.fixture(scope='module', autouse=True)
def _report(pytestconfig):
    """Write how many cases each property generated, and their outcomes, when the module is done."""
    yield
    reporter = pytestconfig.pluginmanager.get_plugin('terminalreporter')
    capture = pytestconfig.pluginmanager.get_plugin('capturemanager')
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line('')
        reporter.write_line(f'property-based examples: {sum(EXAMPLES.values())} in all')
        for test, c in COUNTS.items():
            outcomes = ', '.join(f'{k} {v}' for k, v in sorted(c.items()))
            reporter.write_line(f'  {test}: {EXAMPLES[test]} examples, {sum(c.values())} checked calls ({outcomes})')


def _outcome(test: str, fn):
    """Run ``fn``: return its result, or None when it raised one of our ValueError / TypeError (anything else
    fails the property). Counts the outcome."""
    try:
        result = fn()
    except (ValueError, TypeError) as e:
        tb = e.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        raiser = Path(tb.tb_frame.f_code.co_filename)
        assert PACKAGE in raiser.parents, f'{type(e).__name__} raised in {raiser}, not by timm_cct: {e}'
        assert str(e), 'an error without a message'
        COUNTS[test][f'refused ({type(e).__name__})'] += 1
        return None
    COUNTS[test]['ran'] += 1
    return result


def _finite(y: torch.Tensor) -> bool:
    return y.device.type == 'meta' or bool(torch.isfinite(y).all())


# -- constructor arguments -------------------------------------------------------------------------

VALID = st.fixed_dictionaries({}, optional={
    'img_size': st.one_of(st.integers(1, 40), st.tuples(st.integers(1, 40), st.integers(1, 40))),
    'in_chans': st.integers(1, 4),
    'num_classes': st.integers(0, 12),
    'global_pool': st.sampled_from(['seq', 'token', 'avg', '']),
    'embed_dim': st.sampled_from([8, 12, 16]),
    'num_heads': st.sampled_from([1, 2, 4]),
    'depth': st.integers(0, 3),
    'mlp_ratio': st.one_of(st.floats(0.25, 4, allow_subnormal=False), st.integers(1, 3)),
    'kernel_size': st.integers(1, 5),
    'stride': st.one_of(st.none(), st.integers(1, 3)),
    'padding': st.one_of(st.none(), st.integers(0, 3)),
    'tokenizer_layers': st.integers(1, 2),
    'tokenizer_hidden_chans': st.sampled_from([4, 8]),
    'conv_tokenizer': st.booleans(),
    'class_token': st.booleans(),
    'pos_embed': st.sampled_from(['learnable', 'sine', 'none']),
    'dynamic_img_size': st.booleans(),
    'drop_rate': st.floats(0, 1, allow_subnormal=False),
    'attn_drop_rate': st.floats(0, 1, allow_subnormal=False),
    'drop_path_rate': st.floats(0, 1, allow_subnormal=False),
    'act_layer': st.sampled_from([None, nn.ReLU]),
})
ODD = [1.5, '3', None, True, float('nan'), [2]]
BAD = st.one_of(
    st.tuples(st.sampled_from(['in_chans', 'num_classes', 'embed_dim', 'depth', 'num_heads', 'kernel_size', 'stride',
                               'padding', 'tokenizer_layers', 'tokenizer_hidden_chans', 'mlp_ratio', 'drop_rate']),
              st.sampled_from(ODD + [-1, 0])),
    st.tuples(st.just('img_size'), st.sampled_from([0, -1, 100000, (32,), (8, 8, 8), 32.0, '32', (0, 8)])),
    st.tuples(st.just('mlp_ratio'), st.sampled_from([float('inf'), -0.5, 0.001])),
    st.tuples(st.sampled_from(['drop_rate', 'attn_drop_rate', 'drop_path_rate']), st.sampled_from([-0.1, 1.5, 2])),
    st.tuples(st.sampled_from(['conv_tokenizer', 'class_token', 'dynamic_img_size']), st.sampled_from([1, 'no', 0])),
    st.tuples(st.sampled_from(['global_pool', 'pos_embed']), st.sampled_from(['max', 'rope', None, 3])),
    st.tuples(st.sampled_from(['act_layer', 'norm_layer']), st.sampled_from(['gelu', 3])),
    st.tuples(st.sampled_from(['unknown_arg', 'embed_dims', 'img_sizes']), st.just(1)),
)


@settings(max_examples=300, **PROFILE)
@given(kwargs=VALID, bad=st.one_of(st.none(), BAD), batch=st.integers(0, 2), training=st.booleans())
def test_constructor_arguments(kwargs, bad, batch, training):
    EXAMPLES['constructor arguments'] += 1
    kwargs = {**dict(embed_dim=16, num_heads=2, depth=1, img_size=16), **kwargs}  # small unless drawn otherwise
    if bad is not None:
        kwargs[bad[0]] = bad[1]
    model = _outcome('constructor arguments', lambda: CompactTransformer(**kwargs))
    if model is None:
        return
    model.train(training)
    h, w = model.img_size
    x = torch.randn(batch, model.in_chans, h, w)
    y = model(x)
    grid = model.tokenizer.feat_size((h, w))
    tokens = grid[0] * grid[1] + model.num_prefix_tokens
    width = model.num_classes or model.embed_dim
    assert tuple(y.shape) == ((batch, tokens, width) if model.global_pool == '' else (batch, width))
    assert _finite(y)


# -- reset_classifier / set_input_size / prune sequences ---------------------------------------------

OPS = st.lists(st.one_of(
    st.tuples(st.just('reset'), st.one_of(st.integers(-1, 7), st.sampled_from([2.5, True, '3'])),
              st.sampled_from([None, 'seq', 'token', 'avg', '', 'max'])),
    st.tuples(st.just('size'), st.one_of(st.integers(-1, 48), st.tuples(st.integers(1, 40), st.integers(1, 40)),
                                         st.sampled_from([2.5, (32,), 100000]))),
    st.tuples(st.just('train'), st.booleans()),
    st.tuples(st.just('prune'), st.sampled_from([1, 2, [0], [-1], [], [0, 0], 5, [3]]), st.booleans()),
), min_size=1, max_size=5)


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m).__name__) for n, m in model.named_modules()],
            {k: v for k, v in vars(model).items() if isinstance(v, (int, float, str, tuple))}, model.training)


def _assert_same(a, b) -> None:
    assert a[1:] == b[1:]
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


@settings(max_examples=50, **PROFILE)
@given(name=st.sampled_from(['cct_2_3x2_32', 'vit_lite_2_4_32', 'cvt_2_4_32_sine']), ops=OPS,
       batch=st.integers(0, 2))
def test_method_sequences(name, ops, batch):
    EXAMPLES['method sequences'] += 1
    model = timm.create_model(name, embed_dim=16, num_heads=2)
    # what the model must be after the accepted calls, tracked here independently of the model
    classes, pool, size, blocks = 10, model.global_pool, (32, 32), 2
    has_cls, has_norm = name.startswith('vit_lite'), True
    for op in ops:
        before = _snapshot(model)
        if op[0] == 'reset':
            done = _outcome('method sequences', lambda: model.reset_classifier(op[1], op[2]) or True)
            if done:
                classes, pool = op[1], pool if op[2] is None else op[2]
        elif op[0] == 'size':
            done = _outcome('method sequences', lambda: model.set_input_size(op[1]) or True)
            if done:
                size = (op[1], op[1]) if isinstance(op[1], int) else tuple(op[1])
        elif op[0] == 'prune':
            kept = _outcome('method sequences', lambda: model.prune_intermediate_layers(op[1], prune_norm=op[2]))
            done = kept is not None
            if done:
                blocks, classes, pool, has_norm = max(kept) + 1, 0, '', has_norm and not op[2]
        else:
            done = _outcome('method sequences', lambda: model.train(op[1]))
        if not done:
            _assert_same(before, _snapshot(model))
    if pool == 'token':
        assert has_cls
    assert len(model.blocks) == blocks and model.num_classes == classes and model.global_pool == pool
    assert isinstance(model.norm, nn.LayerNorm) == has_norm
    y = model(torch.randn(batch, 3, *size))
    grid = model.tokenizer.feat_size(size)
    width = classes or 16
    n = grid[0] * grid[1] + has_cls
    assert tuple(y.shape) == ((batch, n, width) if pool == '' else (batch, width))
    assert _finite(y)


# -- inputs ------------------------------------------------------------------------------------------

MODELS = {}


def _small(name: str, dynamic: bool) -> CompactTransformer:
    key = (name, dynamic)
    if key not in MODELS:
        torch.manual_seed(0)
        MODELS[key] = timm.create_model(name, embed_dim=16, num_heads=2, dynamic_img_size=dynamic)
    return MODELS[key]


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64, torch.bool,
          torch.complex64]
ENTRIES = ['forward', 'forward_features', 'forward_intermediates', 'seq_pool_weights']


@settings(max_examples=400, **PROFILE)
@given(name=st.sampled_from(['cct_2_3x2_32', 'vit_lite_2_4_32', 'cvt_2_4_32_sine']), dynamic=st.booleans(),
       shape=st.one_of(st.tuples(st.integers(0, 2), st.just(3), st.just(32), st.just(32)),
                       st.tuples(st.integers(0, 2), st.just(3), st.just(32), st.just(32)),
                       st.tuples(st.integers(0, 2), st.just(3), st.integers(1, 40), st.integers(1, 40)),
                       st.tuples(st.integers(0, 2), st.integers(0, 4), st.integers(0, 40), st.integers(0, 40)),
                       st.lists(st.integers(1, 32), min_size=1, max_size=5).map(tuple)),
       dtype=st.one_of(st.just(torch.float32), st.just(torch.float32), st.sampled_from(DTYPES)),
       device=st.one_of(st.just('cpu'), st.sampled_from(['cpu', 'meta'])),
       layout=st.sampled_from(['contiguous', 'channels_last', 'transposed', 'requires_grad']),
       entry=st.sampled_from(ENTRIES), training=st.booleans(), nonfinite=st.booleans())
def test_inputs(name, dynamic, shape, dtype, device, layout, entry, training, nonfinite):
    EXAMPLES['inputs'] += 1
    model = _small(name, dynamic).train(training)
    x = torch.randn(shape).to(dtype) if dtype.is_floating_point or dtype.is_complex else torch.zeros(shape, dtype=dtype)
    if nonfinite and x.numel() and x.is_floating_point():
        x.view(-1)[0] = float('nan')
    if layout == 'channels_last' and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    elif layout == 'transposed' and x.dim() == 4:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == 'requires_grad' and x.is_floating_point():
        x.requires_grad_()
    x = x.to(device)
    valid = (x.dim() == 4 and x.dtype == torch.float32 and device == 'cpu' and x.shape[1] == 3
             and min(x.shape[2:]) >= model.tokenizer.min_size and (dynamic or tuple(x.shape[2:]) == (32, 32)))
    if entry == 'seq_pool_weights' and model.seq_pool is None:
        valid = False
    run = {'forward': model, 'forward_features': model.forward_features,
           'forward_intermediates': lambda t: model.forward_intermediates(t)[0],
           'seq_pool_weights': model.seq_pool_weights}[entry]
    y = _outcome('inputs', lambda: run(x))
    assert (y is not None) == valid, f'valid={valid}, result {"given" if y is not None else "refused"}'
    if y is None:
        return
    B, (h, w) = x.shape[0], model.tokenizer.feat_size(tuple(x.shape[2:]))
    n = h * w + model.num_prefix_tokens
    expected = {'forward': (B, 10), 'forward_features': (B, n, 16), 'forward_intermediates': (B, n, 16),
                'seq_pool_weights': (B, h, w)}[entry]
    assert tuple(y.shape) == expected
    if not nonfinite:
        assert _finite(y)
    if entry == 'seq_pool_weights' and B and not nonfinite:
        torch.testing.assert_close(y.sum(dim=(1, 2)), torch.ones(B))


# -- checkpoint contents -------------------------------------------------------------------------------

MUTATIONS = st.lists(st.one_of(
    st.tuples(st.just('drop'), st.integers(0, 10 ** 6)),
    st.tuples(st.just('extra'), st.sampled_from(['extra.weight', 'blocks.9.norm1.weight', 'blocks.x.weight',
                                                 'head.extra', 'pos_embed_x'])),
    st.tuples(st.just('reshape'), st.integers(0, 10 ** 6), st.sampled_from(['grow', 'flatten', 'scalar'])),
    st.tuples(st.just('non_tensor'), st.integers(0, 10 ** 6), st.sampled_from([1, 'text', None, [1, 2], {'a': 1}])),
    st.tuples(st.just('dtype'), st.integers(0, 10 ** 6), st.sampled_from([torch.float64, torch.float16])),
), max_size=2)
WRAPPERS = st.sampled_from(['plain', 'state_dict', 'module.', 'official'])


@settings(max_examples=60, **PROFILE)
@given(name=st.sampled_from(['cct_2_3x2_32', 'vit_lite_2_4_32']), mutations=st.one_of(st.just([]), MUTATIONS),
       wrapper=WRAPPERS,
       fmt=st.sampled_from(['pth', 'safetensors']))
def test_checkpoint_contents(name, mutations, wrapper, fmt):
    EXAMPLES['checkpoint contents'] += 1
    source = _small(name, False)
    state = dict(source.state_dict())
    breaking = False
    for mutation in mutations:
        keys = sorted(state)
        if mutation[0] == 'extra':
            state[mutation[1]] = torch.zeros(3)
            breaking = True
            continue
        key = keys[mutation[1] % len(keys)]
        if mutation[0] == 'drop':
            del state[key]
            breaking = True
        elif mutation[0] == 'reshape' and isinstance(state[key], torch.Tensor):
            value = state[key]
            state[key] = {'grow': lambda: torch.cat([value.flatten(), value.flatten()[:1]]).reshape(-1),
                          'flatten': lambda: value.reshape(-1, 1),
                          'scalar': lambda: value.flatten()[0]}[mutation[2]]()
            breaking = True
        elif mutation[0] == 'non_tensor':
            state[key] = mutation[2]
            breaking = True
        elif mutation[0] == 'dtype' and isinstance(state[key], torch.Tensor):
            state[key] = state[key].to(mutation[2])
    if fmt == 'safetensors' and any(not isinstance(v, torch.Tensor) for v in state.values()):
        fmt = 'pth'  # safetensors holds tensors only
    if wrapper == 'module.':
        state = {f'module.{k}': v for k, v in state.items()}
    elif wrapper == 'official':
        state = {timm_cct.cct.timm_to_official_key(k): v for k, v in state.items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f'weights.{fmt}'
        if fmt == 'safetensors':
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save({'state_dict': state} if wrapper == 'state_dict' else state, path)
        model = _outcome('checkpoint contents', lambda: timm.create_model(
            name, pretrained=True, embed_dim=16, num_heads=2, pretrained_cfg_overlay=dict(file=str(path))))
    assert (model is None) == breaking, 'a damaged checkpoint loaded' if breaking else 'a sound checkpoint refused'
    if model is None:
        return
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value.float(), atol=1e-2, rtol=1e-2, check_dtype=False)
    y = model.eval()(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and _finite(y)
