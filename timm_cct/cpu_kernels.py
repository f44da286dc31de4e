"""CPU speed-ups of timm-cct, in one place. The model computes the same function with or without them.

Two kernels, each entered from one place in the model:

- ``dropout_attention``, entered from ``timm_cct.layers.Attention.forward``: multi-head attention with dropout on the
  weights, for training on CPU. There ``F.scaled_dot_product_attention`` has no kernel with dropout, and the explicit
  computation materialises several (B, heads, N, N) tensors per block (scores, weights, dropped weights and their
  gradients): tens of MB each, freshly mapped and page-faulted on every step. Here the forward and backward passes run
  over a few images at a time, so each attention matrix stays in cache; the forward keeps only the fused ``qkv`` input
  and a boolean keep-mask, and the backward recomputes the weights of each chunk (one extra ``q @ k^T`` per chunk).
- ``inference_chunk``, entered from ``timm_cct.cct.CompactTransformer.forward_features``: eager CPU inference of a
  large batch a few images at a time, so that activations stay in cache from layer to layer. Every image is computed
  independently, so splitting the batch changes nothing but the speed.

Both are used only on CPU, in eager mode (not while scripting, tracing, compiling or exporting), and only where timm's
fused attention is allowed (``timm.layers.use_fused_attn()``): with ``TIMM_FUSED_ATTN=0`` or ``exportable=True`` the
model runs timm's reference computation. Switch them off with the environment variable ``TIMM_CCT_CPU_KERNELS=0``
(read at import) or ``timm_cct.cpu_kernels.set_enabled(False)``.
"""
import math
import os
from typing import List, Optional, Tuple

import torch

from timm.layers import use_fused_attn

from ._compat import is_exporting

__all__ = ['dropout_attention', 'keep_mask', 'enabled', 'set_enabled', 'use_dropout_attention', 'inference_chunk']

_ENABLED = os.environ.get('TIMM_CCT_CPU_KERNELS', '1').strip().lower() not in ('0', 'false', 'no', 'off')
INFERENCE_TOKENS = 4096
"""Tokens per chunk in eager CPU inference: activations of a few MB, which stay in cache between layers."""

CHUNK_ELEMENTS = 2 ** 20
"""Attention-matrix elements per chunk (4 MB in float32): a few images' worth, well inside the L2/L3 caches."""


def keep_mask(shape: List[int], p: float, device: torch.device) -> Tuple[torch.Tensor, float]:
    """Dropout keep-mask from 16-bit random numbers, four per 64-bit draw: about 5x cheaper than ``bernoulli_`` on CPU.

    The drop probability is ``p`` rounded to a multiple of 1 / 65536; returns the mask and the exact keep share.
    The numbers are drawn a cache-sized block at a time, in order: the mask does not depend on the block size.
    """
    numel = math.prod(shape)
    drop = round(p * 65536)
    keep = torch.empty(numel, dtype=torch.bool, device=device)
    block = max(4, CHUNK_ELEMENTS - CHUNK_ELEMENTS % 4)
    words = torch.empty(min(block, numel + 3) // 4, dtype=torch.int64, device=device)
    for start in range(0, numel, block):
        size = min(block, numel - start)
        numbers = words[:(size + 3) // 4].random_(-2 ** 63, None).view(torch.int16)[:size]
        torch.ge(numbers, drop - 32768, out=keep[start:start + size])
    return keep.view(shape), (65536 - drop) / 65536


def _heads(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(b, N, 3 * C) token layout -> contiguous (3, b * heads, N, head_dim): q, k, v ready for batched products."""
    b, n, c3 = qkv.shape
    head_dim = c3 // (3 * num_heads)
    return qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).reshape(3, b * num_heads, n, head_dim)


def _tokens(heads: torch.Tensor, batch: int) -> torch.Tensor:
    """(..., b * heads, N, head_dim) -> (b, N, ..., heads, head_dim) view, the inverse layout of ``_heads``."""
    *lead, bh, n, head_dim = heads.shape
    x = heads.view(*lead, batch, bh // batch, n, head_dim)
    return x.movedim(len(lead), 0).movedim(-2, 1)


def _bmm(a: torch.Tensor, b: torch.Tensor, alpha: float, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``alpha * (a @ b)`` for batches of matrices, the scaling done by the matrix product itself; into ``out``
    (contiguous) when given."""
    if out is None:
        out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    return torch.baddbmm(out, a, b, beta=0., alpha=alpha, out=out)


def _chunk(
        qkv: torch.Tensor, keep_bytes: torch.Tensor, start: int, end: int, num_heads: int, scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of images ``start:end`` (``_heads`` layout), their attention weights ``softmax(q @ k^T * scale)``
    and their keep-mask in the weights' dtype."""
    q, k, v = _heads(qkv[start:end], num_heads)
    weights = _bmm(q, k.transpose(1, 2), scale).softmax(dim=-1)
    keep = keep_bytes[start * num_heads:end * num_heads].to(weights.dtype)
    return q, k, v, weights, keep


def _chunks(batch: int, num_heads: int, num_tokens: int) -> List[Tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // (num_heads * num_tokens * num_tokens))
    return [(i, min(i + step, batch)) for i in range(0, batch, step)]


class _DropoutAttention(torch.autograd.Function):
    """``dropout(softmax(q @ k^T * scale)) @ v`` from and to token layout, with its gradient, chunk by chunk.

    The boolean keep-mask is applied as a multiplication by its bytes (a ``uint8`` view converted to the weights'
    dtype): on CPU several times faster than ``torch.where``, ``masked_fill`` or a multiplication by the ``bool``.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, qkv: torch.Tensor, num_heads: int, scale: float, p: float) -> torch.Tensor:
        B, N, C3 = qkv.shape
        keep, kept_share = keep_mask([B * num_heads, N, N], p, qkv.device)
        keep_bytes = keep.view(torch.uint8)
        out = None
        for start, end in _chunks(B, num_heads, N):
            _, _, v, weights, chunk_keep = _chunk(qkv, keep_bytes, start, end, num_heads, scale)
            # dropout, with the 1 / (1 - p) rescaling applied to the (N / head_dim times smaller) output
            chunk = _bmm(weights.mul_(chunk_keep), v, 1. / kept_share)
            if out is None:
                out = chunk.new_empty(B, N, C3 // 3)
            out[start:end].view(end - start, N, num_heads, -1).copy_(_tokens(chunk, end - start))
        if out is None:  # an empty batch: no chunks
            out = qkv.new_empty(B, N, C3 // 3)
        ctx.save_for_backward(qkv, keep)
        ctx.num_heads, ctx.scale, ctx.kept_share = num_heads, scale, kept_share
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx, grad_out: torch.Tensor):
        qkv, keep = ctx.saved_tensors
        keep_bytes = keep.view(torch.uint8)
        num_heads, scale, rescale = ctx.num_heads, ctx.scale, 1. / ctx.kept_share
        B, N, C3 = qkv.shape
        grad_qkv = torch.empty_like(qkv)
        for start, end in _chunks(B, num_heads, N):
            q, k, v, weights, chunk_keep = _chunk(qkv, keep_bytes, start, end, num_heads, scale)
            grad = grad_out[start:end].view(end - start, N, num_heads, -1).transpose(1, 2).reshape(q.shape)
            grad_q, grad_k, grad_v = grads = q.new_empty(3, *q.shape)
            _bmm((weights * chunk_keep).transpose(1, 2), grad, rescale, out=grad_v)
            grad_weights = _bmm(grad, v.transpose(1, 2), rescale).mul_(chunk_keep)
            grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
            _bmm(grad_scores, k, scale, out=grad_q)
            _bmm(grad_scores.transpose(1, 2), q, scale, out=grad_k)
            grad_qkv[start:end].view(end - start, N, 3, num_heads, -1).copy_(_tokens(grads, end - start))
        return grad_qkv, None, None, None


def dropout_attention(qkv: torch.Tensor, num_heads: int, scale: float, p: float) -> torch.Tensor:
    """Multi-head attention with dropout ``p`` (0 < p < 1) on the weights, (B, N, 3 * C) fused qkv -> (B, N, C)."""
    if not 0. < p < 1.:
        raise ValueError(f'Expected a dropout probability 0 < p < 1, got {p}.')
    return _DropoutAttention.apply(qkv.contiguous(), num_heads, scale, p)


def enabled() -> bool:
    """Whether the CPU kernels may be used (``TIMM_CCT_CPU_KERNELS`` / ``set_enabled``)."""
    return _ENABLED


def set_enabled(enable: bool = True) -> None:
    """Switch the CPU kernels on or off for the whole process."""
    global _ENABLED
    _ENABLED = bool(enable)


def _eager_cpu(x: torch.Tensor) -> bool:
    return (_ENABLED and isinstance(x, torch.Tensor) and x.device.type == 'cpu' and use_fused_attn()
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not is_exporting())


def use_dropout_attention(x: torch.Tensor, p: float, fused_attn: bool) -> bool:
    """Whether an attention layer with dropout ``p`` (in training) and timm's ``fused_attn`` flag should run
    ``dropout_attention`` on the input ``x``."""
    return fused_attn and 0. < p < 1. and x.shape[0] > 0 and _eager_cpu(x)


def inference_chunk(x: torch.Tensor, tokens_per_image: int, training: bool) -> int:
    """Images per chunk for eager CPU inference of the image batch ``x``; 0 to run the batch whole."""
    if training or torch.is_grad_enabled() or x.dim() != 4 or not _eager_cpu(x):
        return 0
    step = max(1, INFERENCE_TOKENS // max(1, tokens_per_image))
    return step if x.shape[0] > step else 0
