"""``dynamic_img_size=True``: every family takes any size its tokenizer can (non-square too).

Learnable position embeddings are resampled bilinearly on the token grid, sine ones regenerated for the
new token count. Expected token grids and resampled embeddings are computed here independently.
"""
from functools import lru_cache
from typing import Tuple

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings, strategies as st

import timm_cct  # noqa: F401  (registers the models)

# a small variant of each family, with both position embeddings
VARIANTS = [
    'cct_2_3x2_32', 'cct_2_3x2_32_sine',
    'cvt_2_4_32', 'cvt_2_4_32_sine',
    'vit_lite_2_4_32', 'vit_lite_2_4_32_sine',
]
NATIVE = 32
EMBED_DIM = 128
NUM_CLASSES = 10
SETTINGS = settings(
    max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def expected_grid(name: str, size: int) -> int:
    """Tokens along one side: CCT 3x2 is twice [conv 3/1/1 (keeps n), max-pool 3/2/1 (n -> (n - 1) // 2 + 1)];
    CVT and ViT-Lite cut 4x4 patches (n // 4)."""
    if name.startswith('cct_'):
        for _ in range(2):
            size = (size - 1) // 2 + 1
        return size
    return size // 4


def resample_bilinear(pos: torch.Tensor, prefix: int, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """(1, prefix + h * w, D) embedding -> the same on a new grid, bilinear, prefix tokens kept."""
    grid = pos[:, prefix:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode='bilinear', align_corners=False)
    return torch.cat([pos[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1)], dim=1)


@lru_cache(maxsize=None)
def dynamic_model(name: str, in_chans: int = 3):
    torch.manual_seed(0)
    return timm.create_model(name, in_chans=in_chans, dynamic_img_size=True).eval()


def fixed_model_like(name: str, model, img_size: Tuple[int, int]):
    """A fixed-size model for ``img_size`` holding ``model``'s weights, its learnable embedding resampled here."""
    fixed = timm.create_model(name, in_chans=model.in_chans, img_size=img_size).eval()
    state = dict(model.state_dict())
    if 'pos_embed' in state:
        native = (expected_grid(name, NATIVE),) * 2
        state['pos_embed'] = resample_bilinear(
            state['pos_embed'], model.num_prefix_tokens, native,
            (expected_grid(name, img_size[0]), expected_grid(name, img_size[1])))
    fixed.load_state_dict(state)
    return fixed


@pytest.mark.parametrize('name', VARIANTS)
def test_native_size_equals_fixed_model(name):
    """At the native size the dynamic model is exactly the fixed-size one (same weights)."""
    model = dynamic_model(name)
    fixed = timm.create_model(name).eval()
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, NATIVE, NATIVE)
    with torch.no_grad():
        assert torch.equal(model(x), fixed(x))
        assert torch.equal(model.forward_features(x), fixed.forward_features(x))


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'vit_lite_2_4_32'])
def test_same_token_count_other_grid_is_resampled(name):
    """A 16x64 image gives a 4x16 grid: as many tokens as the native 8x8 one, yet the embedding must be resampled."""
    size = (16, 64)
    model = dynamic_model(name)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        expected = fixed_model_like(name, model, size)(x)
        not_resampled = timm.create_model(name, img_size=size).eval()
        not_resampled.load_state_dict(model.state_dict())
        wrong = not_resampled(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, wrong, rtol=1e-4, atol=1e-4)
    if name.startswith('cct_'):
        weights = model.seq_pool_weights(x)
        assert weights.shape == (2, 4, 16)
        torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))


@SETTINGS
@given(
    name=st.sampled_from(VARIANTS),
    batch=st.integers(1, 3),
    in_chans=st.integers(1, 4),
    height=st.integers(4, 72),
    width=st.integers(4, 72),
)
@example(name='cct_2_3x2_32', batch=1, in_chans=3, height=16, width=64)
@example(name='vit_lite_2_4_32_sine', batch=2, in_chans=1, height=4, width=72)
@example(name='cvt_2_4_32', batch=1, in_chans=2, height=32, width=32)
def test_any_size(name, batch, in_chans, height, width):
    model = dynamic_model(name, in_chans)
    x = torch.randn(batch, in_chans, height, width)
    grid = (expected_grid(name, height), expected_grid(name, width))
    prefix = 1 if name.startswith('vit_lite') else 0
    with torch.no_grad():
        tokens, maps = model.forward_intermediates(x, indices=1)
        logits = model.forward_head(tokens)
        expected = fixed_model_like(name, model, (height, width))(x)
    assert tokens.shape == (batch, prefix + grid[0] * grid[1], EMBED_DIM)
    assert maps[0].shape == (batch, EMBED_DIM, grid[0], grid[1])
    assert logits.shape == (batch, NUM_CLASSES)
    assert logits.isfinite().all()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    if (height, width) == (NATIVE, NATIVE):
        fixed = timm.create_model(name, in_chans=in_chans).eval()
        fixed.load_state_dict(model.state_dict())
        assert torch.equal(logits, fixed(x))


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'cvt_2_4_32_sine'])
def test_set_input_size_matches_dynamic(name):
    """Rebuilding the embedding for a size with ``set_input_size`` gives what the dynamic model computes on the fly."""
    model = dynamic_model(name)
    fixed = timm.create_model(name).eval()
    fixed.load_state_dict(model.state_dict())
    fixed.set_input_size((24, 56))
    x = torch.randn(2, 3, 24, 56)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), model(x), rtol=1e-5, atol=1e-5)
