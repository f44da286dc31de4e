"""timm_cct.cpu_kernels: chunked attention with dropout and its 16-bit keep-mask, chunked inference; where the
model enters them, and the settings that switch them off."""
import math

import pytest
import timm
import torch

from timm_cct import cpu_kernels
from timm_cct.cpu_kernels import dropout_attention, keep_mask
from timm_cct.layers import Attention, multi_head_attention


def _reference(qkv: torch.Tensor, num_heads: int, scale: float, keep: torch.Tensor, share: float) -> torch.Tensor:
    """Plain autograd ops: softmax(q @ k^T * scale) * keep / share @ v, heads merged."""
    B, N, C3 = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
    return ((weights * keep.view(B, num_heads, N, N) / share) @ v).transpose(1, 2).reshape(B, N, C3 // 3)


def test_keep_mask_drop_rate():
    torch.manual_seed(0)
    keep, share = keep_mask([4, 4, 256, 256], 0.1, torch.device('cpu'))
    assert keep.dtype == torch.bool and keep.shape == (4, 4, 256, 256)
    assert abs(share - 0.9) < 1 / 65536
    assert abs(keep.float().mean().item() - share) < 2e-3  # ~13 standard deviations of 1M draws


@pytest.mark.parametrize('chunk_elements', [4, 100, 2 ** 20])
@pytest.mark.parametrize('shape', [[3, 17, 17], [2, 5, 5], [1, 1, 1]])
def test_keep_mask_does_not_depend_on_the_block_size(monkeypatch, chunk_elements, shape):
    monkeypatch.setattr(cpu_kernels, 'CHUNK_ELEMENTS', chunk_elements)
    torch.manual_seed(0)
    keep, _ = keep_mask(shape, 0.1, torch.device('cpu'))
    torch.manual_seed(0)  # the same numbers drawn at once: int16 quarters of 64-bit words, first ones first
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)
    expected = words.view(torch.int16)[:numel].view(shape) >= round(0.1 * 65536) - 32768
    assert torch.equal(keep, expected)


@pytest.mark.parametrize('shape,chunk_elements', [
    ((3, 17, 2, 4), 2 ** 20),  # one chunk
    ((5, 9, 3, 8), 300),  # chunks of one image (3 * 81 elements each)
    ((7, 10, 2, 4), 450),  # chunks of two images, the last one shorter
])
def test_matches_reference_with_same_mask(monkeypatch, shape, chunk_elements):
    monkeypatch.setattr(cpu_kernels, 'CHUNK_ELEMENTS', chunk_elements)
    B, N, H, d = shape
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, N, 3 * H * d, generator=g, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    keep, share = keep_mask([B * H, N, N], 0.25, qkv.device)
    torch.manual_seed(5)
    out = dropout_attention(qkv, H, d ** -0.5, 0.25)
    expected = _reference(qkv, H, d ** -0.5, keep, share)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got, = torch.autograd.grad(out, qkv, grad_out)
    want, = torch.autograd.grad(expected, qkv, grad_out)
    torch.testing.assert_close(got, want)


def test_gradcheck():
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x):
        torch.manual_seed(7)  # the same mask at every evaluation
        return dropout_attention(x, 2, 0.5, 0.3)
    assert torch.autograd.gradcheck(fn, (qkv,))


def test_is_unbiased():
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(1, 16, 3 * 16, generator=g)
    torch.manual_seed(0)
    mean = torch.stack([dropout_attention(qkv, 2, 8 ** -0.5, 0.1) for _ in range(2000)]).mean(0)
    expected = multi_head_attention(qkv, 2, 8 ** -0.5, 0., True)
    torch.testing.assert_close(mean, expected, atol=0.03, rtol=0)


def test_bf16_autocast_gradients_close_to_fp32():
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(2, 16, 3 * 32, generator=g, requires_grad=True)
    grad_out = torch.randn(2, 16, 32, generator=g)
    torch.manual_seed(3)
    ref, = torch.autograd.grad(dropout_attention(qkv, 4, 8 ** -0.5, 0.1), qkv, grad_out)
    torch.manual_seed(3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dropout_attention(qkv.bfloat16(), 4, 8 ** -0.5, 0.1)
    got, = torch.autograd.grad(out, qkv, grad_out.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0.05)


def _count_kernel_calls(monkeypatch):
    calls = []
    real = cpu_kernels._DropoutAttention.apply
    monkeypatch.setattr(cpu_kernels._DropoutAttention, 'apply', lambda *a: calls.append(a) or real(*a))
    return calls


def test_attention_layer_takes_the_chunked_path_only_in_cpu_training(monkeypatch):
    calls = _count_kernel_calls(monkeypatch)
    layer = Attention(32, num_heads=4, attn_drop=0.1)
    x = torch.randn(2, 8, 32)
    layer.eval()(x)
    assert not calls
    layer.train()(x)
    assert len(calls) == 1
    layer(x[:0])  # an empty batch takes the reference path
    assert len(calls) == 1


@pytest.mark.parametrize('switch', ['set_enabled', 'fused_attn', 'exportable'])
def test_settings_switch_the_kernel_off(monkeypatch, switch):
    calls = _count_kernel_calls(monkeypatch)
    if switch == 'set_enabled':
        monkeypatch.setattr(cpu_kernels, '_ENABLED', True)
        cpu_kernels.set_enabled(False)
        layer = Attention(32, num_heads=4, attn_drop=0.1).train()
    elif switch == 'fused_attn':  # TIMM_FUSED_ATTN=0 sets timm's flag the same way
        monkeypatch.setattr(timm.layers.config, '_USE_FUSED_ATTN', 0)
        layer = Attention(32, num_heads=4, attn_drop=0.1).train()
        assert not layer.fused_attn
    else:
        monkeypatch.setattr(timm.layers.config, '_EXPORTABLE', True)
        layer = Attention(32, num_heads=4, attn_drop=0.1).train()
    layer(torch.randn(2, 8, 32))
    x = torch.randn(9, 3, 32, 32)
    model = timm.create_model('cct_2_3x2_32').eval()
    with torch.no_grad():
        assert model._cpu_inference_chunk(x) == 0
    assert not calls


def test_kernel_switch_from_environment():
    import subprocess
    import sys
    code = 'import timm_cct.cpu_kernels as k; print(k.enabled())'
    for value, expected in (('0', 'False'), ('off', 'False'), ('1', 'True')):
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             env={**__import__('os').environ, 'TIMM_CCT_CPU_KERNELS': value}, check=True)
        assert out.stdout.strip() == expected


def test_reference_path_without_fused_attention_is_the_official_computation(monkeypatch):
    """With fused attention off, a training step on CPU runs dropout(softmax((q @ k^T) * scale)) @ v with torch's
    own dropout: the same numbers as the official code for the same RNG state."""
    monkeypatch.setattr(timm.layers.config, '_USE_FUSED_ATTN', 0)
    layer = Attention(32, num_heads=4, attn_drop=0.2).train()
    x = torch.randn(2, 8, 32)
    torch.manual_seed(11)
    got = layer(x)
    qkv = layer.qkv(x).reshape(2, 8, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    torch.manual_seed(11)
    attn = torch.nn.functional.dropout(((q @ k.transpose(-2, -1)) * layer.scale).softmax(-1), 0.2)
    want = layer.proj((attn @ v).transpose(1, 2).reshape(2, 8, 32))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize('fused', [True, False])
def test_every_path_honours_scale(fused):
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(2, 5, 3 * 8, generator=g)
    q, k, v = qkv.reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
    want = (((q @ k.transpose(-2, -1)) * 0.7).softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(multi_head_attention(qkv, 2, 0.7, 0., fused), want)


@pytest.mark.parametrize('name,chunk_tokens', [
    ('cct_7_3x1_32', 600),  # 16 x 16 = 256 tokens an image: 2 images a chunk
    ('vit_lite_2_4_32', 140),  # 8 x 8 + 1 class token = 65 tokens an image: 2 images a chunk
])
def test_chunked_inference_equals_whole_batch(monkeypatch, name, chunk_tokens):
    model = timm.create_model(name).eval()
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        whole = model(x)
        assert model._cpu_inference_chunk(x) == 0  # 7 images fit in one chunk of 4096 tokens
        monkeypatch.setattr(cpu_kernels, 'INFERENCE_TOKENS', chunk_tokens)
        assert model._cpu_inference_chunk(x) == 2
        calls = []
        monkeypatch.setattr(model, '_forward_features', lambda t: calls.append(len(t)) or type(model)._forward_features(model, t))
        chunked = model(x)
    assert calls == [2, 2, 2, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_no_chunking_with_autograd_or_in_training(monkeypatch):
    monkeypatch.setattr(cpu_kernels, 'INFERENCE_TOKENS', 64)
    model = timm.create_model('cct_2_3x2_32').eval()  # 8 x 8 tokens an image: 1 image a chunk
    x = torch.randn(3, 3, 32, 32)
    assert model._cpu_inference_chunk(x) == 0  # gradients enabled
    with torch.no_grad():
        assert model._cpu_inference_chunk(x) == 1
        assert model._cpu_inference_chunk(x[:1]) == 0  # a single chunk anyway
        assert model.train()._cpu_inference_chunk(x) == 0


def test_full_attention_dropout_gives_zeros_in_training():
    layer = Attention(32, num_heads=4, attn_drop=1.).train()
    x = torch.randn(2, 8, 32)
    torch.testing.assert_close(layer(x), layer.proj.bias.expand(2, 8, 32))
    with pytest.raises(ValueError, match='0 < p < 1, got 1.0'):
        dropout_attention(torch.randn(2, 8, 96), 4, 0.5, 1.)
