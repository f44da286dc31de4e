"""Reduced precision agrees with float32, and eval outputs are deterministic and independent of the batch.

The models are the reference fixtures loaded through the official-checkpoint path
(``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)``), so the float32 outputs are the
official implementation's logits. Tolerances are relative max errors, max |out - fp32| / max |fp32|,
over all fixture images; reduced precision must also keep the top-1 class of every image.
"""
import copy
from pathlib import Path
from typing import Dict, Tuple

import pytest
import timm
import torch

import timm_cct  # noqa: F401  (registers the models)
from official import FIXTURE_NAMES, fixture, rel_error, timm_name

FP32_VS_OFFICIAL = 1e-5  # loading check: float32 rounding only
BF16_AUTOCAST = 3e-2     # bfloat16 autocast on CPU (measured up to 1.2e-2 on the fixtures)
FP16_AUTOCAST = 5e-3     # float16 autocast on CPU (measured up to 2.7e-3)
BF16_WEIGHTS = 5e-2      # whole model cast to bfloat16 (measured up to 1.7e-2)
FP16_WEIGHTS = 1e-2      # whole model cast to float16 (measured up to 2.2e-3)
BATCH_INDEPENDENCE = 1e-5  # one image alone vs. in a batch: float32 rounding only


@pytest.fixture(scope='module')
def loaded(tmp_path_factory) -> Dict[str, Tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """official name -> (model, x, official logits, our fp32 logits); checkpoints saved as official files."""
    folder = tmp_path_factory.mktemp('official')
    out = {}
    for name in FIXTURE_NAMES:
        state_dict, x, official = fixture(name)
        path = Path(folder) / f'{name}.pth'
        torch.save(state_dict, path)
        model = timm.create_model(
            timm_name(name), pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
        with torch.no_grad():
            out[name] = model, x, official, model(x)
    return out


def _run(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        return model(x).float()


@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_fp32_is_official(loaded, name):
    _, _, official, fp32 = loaded[name]
    assert rel_error(fp32, official) < FP32_VS_OFFICIAL


@pytest.mark.parametrize('dtype, tol', [(torch.bfloat16, BF16_AUTOCAST), (torch.float16, FP16_AUTOCAST)])
def test_autocast_agrees_with_fp32(loaded, dtype, tol):
    """On every fixture: relative max error within ``tol`` and the same top-1 class for every image."""
    errors = {}
    for name in FIXTURE_NAMES:
        model, x, _, fp32 = loaded[name]
        try:
            out = _run(model, x, dtype)
        except RuntimeError as e:  # an op without a CPU kernel for this dtype in this torch build
            pytest.skip(f'{dtype} autocast does not run on CPU here: {e}')
        errors[name] = rel_error(out, fp32)
        assert torch.equal(out.argmax(-1), fp32.argmax(-1)), f'{name}: top-1 differs under {dtype}'
        assert out.isfinite().all()
    assert max(errors.values()) < tol, errors
    assert max(errors.values()) > 0, 'autocast changed nothing: it did not run in reduced precision'


@pytest.mark.parametrize('dtype, tol', [(torch.bfloat16, BF16_WEIGHTS), (torch.float16, FP16_WEIGHTS)])
@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'vit_7_4_32_sine'])
def test_reduced_precision_weights(loaded, name, dtype, tol):
    """The whole model cast to ``dtype`` (input cast too) stays close to float32 and keeps top-1."""
    model, x, _, fp32 = loaded[name]
    low = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        out = low(x.to(dtype))
    assert out.dtype == dtype
    assert rel_error(out.float(), fp32) < tol
    assert torch.equal(out.float().argmax(-1), fp32.argmax(-1))


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'cvt_2_4_32_sine', 'vit_lite_2_4_32'])
def test_same_seed_is_bit_identical(name):
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(42)
        model = timm.create_model(name).eval()
        with torch.no_grad():
            outs.append(model(x))
            outs.append(model(x))
    assert all(torch.equal(outs[0], out) for out in outs[1:])
    torch.manual_seed(43)
    with torch.no_grad():
        assert not torch.equal(timm.create_model(name).eval()(x), outs[0])


@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_output_independent_of_batch(loaded, name):
    """An image alone, or among other images at any position, gives the same eval output."""
    model, x, _, fp32 = loaded[name]
    others = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    scale = fp32.abs().max()
    with torch.no_grad():
        alone = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
        mixed = model(torch.cat([others[:1], x[1:], others[1:]]))[1]
    assert ((alone - fp32).abs().max() / scale) < BATCH_INDEPENDENCE
    assert ((mixed - fp32[1]).abs().max() / scale) < BATCH_INDEPENDENCE
