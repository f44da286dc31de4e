"""Every export path, for one model of each family: TorchScript (with save/load), torch.export and ONNX.

ONNX uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 18) with a dynamic batch
dimension; onnxruntime must match PyTorch to 1e-4 relative (max |ort - torch| / max |torch|) at two batch sizes.
"""
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import timm_cct  # noqa: F401  (registers the models)

FAMILIES = ['cct_2_3x2_32', 'cvt_2_4_32_sine', 'vit_lite_2_4_32']
OPSET = 18
ONNX_RTOL = 1e-4
BATCH_SIZES = (1, 5)
TORCH = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2])
needs_onnx_dynamo = pytest.mark.skipif(
    TORCH < (2, 5), reason=f'the dynamo ONNX exporter (dynamo=True) needs torch >= 2.5, this is {torch.__version__}')
needs_export_is_exporting = pytest.mark.skipif(
    TORCH < (2, 7), reason=f'export with a symbolic height and width needs torch.compiler.is_exporting '
                           f'(torch >= 2.7), this is {torch.__version__}')
# TorchScript is deprecated in recent torch but still supported; the models keep working with it
pytestmark = pytest.mark.filterwarnings(r'ignore:`torch\.jit\.\w+` is deprecated:FutureWarning')


@lru_cache(maxsize=None)
def eager(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    # the init leaves the pooling and position embedding near-uniform; perturb so every weight matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def images(batch: int, size=(32, 32), seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed + batch))


def reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def rel_error(out, ref) -> float:
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize('name', FAMILIES)
def test_torchscript_save_load(name, tmp_path):
    model = eager(name)
    scripted = torch.jit.script(model)
    path = tmp_path / f'{name}.pt'
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    for batch in BATCH_SIZES:
        x = images(batch)
        ref = reference(model, x)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(loaded(x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(torch.jit.Error, match=r'Expected 3 input channels, got 1'):
        loaded(torch.randn(1, 1, 32, 32))


def test_torchscript_dynamic_size():
    model = eager('cct_2_3x2_32', dynamic_img_size=True)
    scripted = torch.jit.script(model)
    for size in [(32, 32), (24, 40), (16, 64)]:
        x = images(2, size)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), reference(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', FAMILIES)
def test_torch_export_dynamic_batch(name, tmp_path):
    model = eager(name)
    batch = torch.export.Dim('batch', min=1, max=256)
    program = torch.export.export(model, (images(2),), dynamic_shapes={'x': {0: batch}})
    path = tmp_path / f'{name}.pt2'
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    for size in BATCH_SIZES:
        x = images(size)
        ref = reference(model, x)
        torch.testing.assert_close(program.module()(x), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded(x), ref, rtol=1e-5, atol=1e-6)


@needs_export_is_exporting
@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'vit_lite_2_4_32_sine'])
def test_torch_export_dynamic_size(name):
    """With dynamic_img_size the exported graph keeps batch, height and width symbolic."""
    model = eager(name, dynamic_img_size=True)
    dims = {0: torch.export.Dim('batch', min=1, max=64), 2: torch.export.Dim('height', min=8, max=256),
            3: torch.export.Dim('width', min=8, max=256)}
    program = torch.export.export(model, (images(2),), dynamic_shapes={'x': dims}).module()
    for size in [(32, 32), (24, 40), (16, 64), (100, 36)]:
        x = images(3, size)
        torch.testing.assert_close(program(x), reference(model, x), rtol=1e-5, atol=1e-6)


def export_onnx(model: torch.nn.Module, path, dynamic_shapes) -> ort.InferenceSession:
    program = torch.onnx.export(
        model, (images(2),), dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
        input_names=['input'], output_names=['logits'], verbose=False)
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


@needs_onnx_dynamo
@pytest.mark.parametrize('name', FAMILIES)
def test_onnx_dynamic_batch(name, tmp_path):
    model = eager(name)
    path = tmp_path / f'{name}.onnx'
    session = export_onnx(model, path, {'x': {0: torch.export.Dim('batch', min=1, max=256)}})
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField('dim_value'), 'batch dimension is not dynamic'
    for batch in BATCH_SIZES:
        x = images(batch)
        (out,) = session.run(None, {'input': x.numpy()})
        assert out.shape == (batch, 10)
        assert rel_error(out, reference(model, x)) < ONNX_RTOL


@needs_onnx_dynamo
@needs_export_is_exporting
def test_onnx_dynamic_size(tmp_path):
    model = eager('cct_2_3x2_32', dynamic_img_size=True)
    dims = {0: torch.export.Dim('batch', min=1, max=64), 2: torch.export.Dim('height', min=8, max=256),
            3: torch.export.Dim('width', min=8, max=256)}
    session = export_onnx(model, tmp_path / 'dynamic.onnx', {'x': dims})
    for batch, size in [(1, (32, 32)), (3, (24, 40)), (2, (100, 36))]:
        x = images(batch, size)
        (out,) = session.run(None, {'input': x.numpy()})
        assert rel_error(out, reference(model, x)) < ONNX_RTOL
