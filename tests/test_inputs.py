"""Bad input gets a clear ValueError/TypeError from our own checks, naming what was expected and what came."""
import re
from functools import lru_cache

import numpy as np
import pytest
import timm
import torch

import timm_cct  # noqa: F401  (registers the models)
from timm_cct import CompactTransformer
from boundary import raises_from_package as _raises

FAMILIES = ['cct_2_3x2_32', 'cvt_2_4_32_sine', 'vit_lite_2_4_32']
# every way to push an image through a model; each must run the same input checks
ENTRY_POINTS = {
    'forward': lambda m, x: m(x),
    'forward_features': lambda m, x: m.forward_features(x),
    'forward_intermediates': lambda m, x: m.forward_intermediates(x),
    'seq_pool_weights': lambda m, x: m.seq_pool_weights(x),
}


@lru_cache(maxsize=None)
def _model(name: str, **kwargs) -> CompactTransformer:
    return timm.create_model(name, **kwargs).eval()




def _entry_points(name: str):
    """The entry points that apply: seq_pool_weights only exists for SeqPool models."""
    return [fn for key, fn in ENTRY_POINTS.items() if key != 'seq_pool_weights' or not name.startswith('vit_lite')]


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('chans', [1, 4])
def test_wrong_channel_count(name, chans):
    model = _model(name)
    for run in _entry_points(name):
        _raises(ValueError, lambda: run(model, torch.randn(2, chans, 32, 32)),
                'Expected 3 input channels', f'got {chans}', f'in_chans={chans}')


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('shape', [(3, 32, 32), (32, 32), (1, 2, 3, 32, 32)])
def test_not_4d(name, shape):
    model = _model(name)
    for run in _entry_points(name):
        _raises(ValueError, lambda: run(model, torch.randn(shape)), '4-D', '(B, C, H, W)', str(list(shape)))


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64, torch.bool])
def test_integer_tensor(dtype):
    model = _model('cct_2_3x2_32')
    x = torch.zeros(1, 3, 32, 32, dtype=dtype)
    for run in _entry_points('cct_2_3x2_32'):
        _raises(TypeError, lambda: run(model, x), 'floating point', str(dtype))


@pytest.mark.parametrize('value', [np.zeros((1, 3, 32, 32), np.float32), [[0.0] * 32] * 32])
def test_not_a_tensor(value):
    model = _model('cvt_2_4_32_sine')
    for run in _entry_points('cvt_2_4_32_sine'):
        _raises(TypeError, lambda: run(model, value), 'torch.Tensor', type(value).__name__)


@pytest.mark.parametrize('name', ['cvt_2_4_32_sine', 'vit_lite_2_4_32'])
@pytest.mark.parametrize('size', [(3, 3), (2, 40), (40, 1)])
def test_too_small_for_tokenizer(name, size):
    """A 4x4 patch tokenizer gives no token for a side under 4 pixels, whatever the size mode."""
    model = _model(name, dynamic_img_size=True)
    for run in _entry_points(name):
        _raises(ValueError, lambda: run(model, torch.randn(1, 3, *size)),
                'too small', f'{size[0]}x{size[1]}', 'at least 4x4')


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('size', [(64, 64), (16, 16), (32, 48), (48, 32)])
def test_fixed_size_mismatch(name, size):
    """A model with a fixed position embedding refuses another size (square or not) and says how to allow it."""
    model = _model(name)
    for run in _entry_points(name):
        _raises(ValueError, lambda: run(model, torch.randn(1, 3, *size)),
                'built for 32x32', f'got {size[0]}x{size[1]}', 'dynamic_img_size=True', f'img_size={size}')


def test_non_square_needs_dynamic_size_or_img_size():
    """Non-square input is refused by a fixed square model, and taken once asked for."""
    _raises(ValueError, lambda: _model('cct_2_3x2_32')(torch.randn(1, 3, 32, 40)), '32x32', '32x40')
    assert _model('cct_2_3x2_32', img_size=(32, 40))(torch.randn(1, 3, 32, 40)).shape == (1, 10)
    assert _model('cct_2_3x2_32', dynamic_img_size=True)(torch.randn(1, 3, 32, 40)).shape == (1, 10)


@pytest.mark.parametrize('arg, value, expected', [
    ('global_pool', 'mean', "['seq', 'token', 'avg', 'max', 'avgmax', '']"),
    ('pos_embed', 'rope', "['learnable', 'sine', 'none']"),
])
def test_unknown_choice(arg, value, expected):
    _raises(ValueError, lambda: timm.create_model('cct_2_3x2_32', **{arg: value}),
            f'{arg}={value!r}', expected)


def test_unknown_global_pool_in_reset_classifier():
    model = timm.create_model('cct_2_3x2_32')
    _raises(ValueError, lambda: model.reset_classifier(5, 'mean'), "global_pool='mean'", "'seq', 'token'")


def test_token_pool_needs_class_token():
    _raises(ValueError, lambda: timm.create_model('cvt_2_4_32', global_pool='token'), "'token'", 'class_token=True')


@pytest.mark.parametrize('name', FAMILIES)
def test_unknown_model_argument(name):
    message = _raises(TypeError, lambda: timm.create_model(name, foo=1), "['foo']", 'img_size', 'dynamic_img_size')
    assert 'did you mean' not in message
    message = _raises(TypeError, lambda: timm.create_model(name, drop_path=0.2), "['drop_path']")
    assert re.search(r"did you mean 'drop_path' -> 'drop_path_rate'", message), message


@pytest.mark.parametrize('kwargs, exc_type, fragments', [
    (dict(in_chans=0), ValueError, ['in_chans >= 1', 'got 0']),
    (dict(num_classes=-1), ValueError, ['num_classes >= 0', 'got -1']),
    (dict(in_chans=3.0), TypeError, ['in_chans to be an int', 'float 3.0']),
    (dict(num_heads=3), ValueError, ['divisible by num_heads', 'embed_dim=128', 'num_heads=3']),
    (dict(img_size='32'), TypeError, ['int or (height, width)', "'32'"]),
    (dict(img_size=(32, 32, 3)), ValueError, ['(height, width)', '(32, 32, 3)']),
    (dict(drop_path_rate=1.5), ValueError, ['drop_path_rate in [0, 1]', 'got 1.5']),
    (dict(attn_drop_rate=-0.1), ValueError, ['attn_drop_rate in [0, 1]', 'got -0.1']),
    (dict(drop_rate='0.1'), TypeError, ['drop_rate to be a float', "str '0.1'"]),
])
def test_bad_constructor_argument(kwargs, exc_type, fragments):
    _raises(exc_type, lambda: timm.create_model('cct_2_3x2_32', **kwargs), *fragments)


@pytest.mark.parametrize('img_size', [3, (32, 2)])
def test_img_size_too_small_for_tokenizer(img_size):
    _raises(ValueError, lambda: timm.create_model('vit_lite_2_4_32', img_size=img_size),
            f'img_size={(img_size, img_size) if isinstance(img_size, int) else img_size}', 'at least 4x4')
    model = timm.create_model('vit_lite_2_4_32')
    _raises(ValueError, lambda: model.set_input_size(img_size), 'at least 4x4')


def test_seq_pool_weights_without_seq_pool():
    _raises(ValueError, lambda: _model('vit_lite_2_4_32').seq_pool_weights(torch.randn(1, 3, 32, 32)),
            "global_pool='token'", "not 'seq'")


def test_good_input_still_runs():
    """The checks let every valid input through (guards against a check that refuses everything)."""
    for name in FAMILIES:
        model = _model(name)
        x = torch.randn(2, 3, 32, 32)
        assert model(x).shape == (2, 10)
        assert model(x).isfinite().all()
        assert _model(name, in_chans=1)(torch.randn(1, 1, 32, 32)).shape == (1, 10)
