"""The CPU training path of attention: dropout with the 16-bit keep-mask."""
import torch

from timm_cct.layers import _keep_mask, attention


def test_keep_mask_drop_rate():
    torch.manual_seed(0)
    keep, share = _keep_mask([4, 4, 256, 256], 0.1, torch.device('cpu'))
    assert keep.dtype == torch.bool and keep.shape == (4, 4, 256, 256)
    assert abs(share - 0.9) < 1 / 65536
    assert abs(keep.float().mean().item() - share) < 2e-3  # ~13 standard deviations of 1M draws


def test_dropout_attention_matches_reference_with_same_mask():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))
    scale = 8 ** -0.5
    torch.manual_seed(5)
    keep, share = _keep_mask([2, 3, 17, 17], 0.25, torch.device('cpu'))
    torch.manual_seed(5)
    out = attention(q, k, v, 0.25, scale, True)
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
    torch.testing.assert_close(out, (weights * keep / share) @ v)


def test_dropout_attention_is_unbiased():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    torch.manual_seed(0)
    mean = torch.stack([attention(q, k, v, 0.1, 8 ** -0.5, True) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean, attention(q, k, v, 0., 8 ** -0.5, True), atol=0.03, rtol=0)


def test_gradients_match_reference_with_same_mask():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g, requires_grad=True) for _ in range(3))
    torch.manual_seed(7)
    keep, share = _keep_mask([1, 2, 6, 6], 0.5, torch.device('cpu'))
    torch.manual_seed(7)
    grads = torch.autograd.grad(attention(q, k, v, 0.5, 0.5, True).square().sum(), (q, k, v))
    ref = ((torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) * keep / share) @ v).square().sum()
    for got, expected in zip(grads, torch.autograd.grad(ref, (q, k, v))):
        torch.testing.assert_close(got, expected)
