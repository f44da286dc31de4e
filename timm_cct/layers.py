"""Building blocks of the Compact Transformers: tokenizer, transformer block, SeqPool, sine table."""
from typing import List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import DropPath, Mlp, register_notrace_function, use_fused_attn

from . import cpu_kernels

__all__ = ['Tokenizer', 'Attention', 'Block', 'SeqPool', 'sine_pos_embed', 'check_image_input']


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class TokenizerLayer(nn.Module):
    """Conv2d, optionally followed by ReLU and MaxPool(3, 2, 1)."""

    def __init__(
            self,
            in_chans: int,
            out_chans: int,
            kernel_size: int,
            stride: int,
            padding: int,
            bias: bool,
            act_pool: bool,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride=stride, padding=padding, bias=bias, device=device, dtype=dtype)
        self.act = nn.ReLU(inplace=True) if act_pool else nn.Identity()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if act_pool else nn.Identity()
        self.act_pool = act_pool

    def out_size(self, size: int) -> int:
        k, s, p = self.conv.kernel_size[0], self.conv.stride[0], self.conv.padding[0]
        size = _conv_out(size, k, s, p)
        return _conv_out(size, 3, 2, 1) if self.act_pool else size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max-pool before ReLU: the same values (both are monotone), ReLU then runs on 4x fewer elements
        return self.act(self.pool(self.conv(x)))


class Tokenizer(nn.Module):
    """Image to token grid.

    CCT: ``num_layers`` x [Conv (no bias) -> ReLU -> MaxPool], widths in_chans -> hidden_chans ... -> embed_dim.
    CVT and ViT-Lite: one k x k stride-k Conv2d with bias (a patch embedding).
    """

    def __init__(
            self,
            in_chans: int,
            embed_dim: int,
            kernel_size: int,
            stride: int,
            padding: int,
            num_layers: int = 1,
            hidden_chans: int = 64,
            bias: bool = False,
            act_pool: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        chans = [in_chans] + [hidden_chans] * (num_layers - 1) + [embed_dim]
        self.layers = nn.Sequential(*[
            TokenizerLayer(chans[i], chans[i + 1], kernel_size, stride, padding, bias, act_pool, device, dtype)
            for i in range(num_layers)
        ])
        self.reduction = (stride * (2 if act_pool else 1)) ** num_layers
        self.min_size = self._min_size()

    def feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid (rows, cols) for an image of ``img_size`` (height, width)."""
        h, w = img_size
        for layer in self.layers:
            h, w = layer.out_size(h), layer.out_size(w)
        return h, w

    def _min_size(self) -> int:
        size = 1
        while self.feat_size((size, size))[0] < 1:
            size += 1
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, D, h, w) token grid."""
        return self.layers(x)


@register_notrace_function  # a leaf for FX: it chooses a kernel by device
def multi_head_attention(
        qkv: torch.Tensor,
        num_heads: int,
        scale: float,
        dropout_p: float,
        fused: bool,
) -> torch.Tensor:
    """``dropout(softmax(q @ k^T * scale)) @ v`` with heads merged: (B, N, 3 * C) fused qkv -> (B, N, C).

    ``fused`` runs ``F.scaled_dot_product_attention``; otherwise the explicit reference computation of the official
    code runs, on every device. Training on CPU with dropout runs ``timm_cct.cpu_kernels.dropout_attention`` (the same
    computation in cache-sized chunks) where ``timm_cct.cpu_kernels`` allows it.
    """
    B, N, C3 = qkv.shape
    if not torch.jit.is_scripting() and _use_cpu_kernel(qkv, dropout_p, fused):
        return _cpu_dropout_attention(qkv, num_heads, scale, dropout_p)
    q, k, v = qkv.reshape(B, N, 3, num_heads, C3 // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
    if fused:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    else:
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        x = F.dropout(attn, dropout_p, training=dropout_p > 0.) @ v
    return x.transpose(1, 2).reshape(B, N, C3 // 3)


@torch.jit.unused
def _use_cpu_kernel(qkv: torch.Tensor, dropout_p: float, fused: bool) -> bool:
    return cpu_kernels.use_dropout_attention(qkv, dropout_p, fused)


@torch.jit.unused
def _cpu_dropout_attention(qkv: torch.Tensor, num_heads: int, scale: float, dropout_p: float) -> torch.Tensor:
    return cpu_kernels.dropout_attention(qkv, num_heads, scale, dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention with the parameters of timm's ``Attention`` (``qkv`` without bias, ``proj``).

    The reference computation is the official one, ``softmax((q @ k^T) * scale)``; timm's ``Attention`` scales ``q``
    before the product, which rounds differently. Fused attention follows timm's ``use_fused_attn()``
    (``TIMM_FUSED_ATTN``, ``exportable``).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}.')
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout_p = self.attn_drop.p if self.training else 0.
        x = multi_head_attention(self.qkv(x), self.num_heads, self.scale, dropout_p, self.fused_attn)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Transformer block with the official layout.

    ``x = x + drop_path(attn(norm1(x)))``, then ``x = norm2(x)`` on the residual stream itself,
    then ``x = x + drop_path(mlp(x))``. Every official checkpoint depends on this post-attention norm.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 2.,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(x + self.drop_path1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.mlp(x))


class SeqPool(nn.Module):
    """Attention-based sequence pooling: ``softmax(Linear(D, 1)(x), dim=1)^T @ x``."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.attn = nn.Linear(dim, 1, device=device, dtype=dtype)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Pooling weight of each token, (B, N, D) -> (B, N); sums to one over N."""
        return self.attn(x).softmax(dim=1).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.attn(x).softmax(dim=1).transpose(-1, -2) @ x).squeeze(-2)


def sine_pos_embed(
        num_tokens: int,
        dim: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The official 1-D sinusoidal table over flattened tokens, (1, num_tokens, dim).

    ``angle[p, i] = p / 10000 ** (2 * (i // 2) / dim)``; sine on even channels, cosine on odd ones.
    """
    pos = torch.arange(num_tokens, dtype=torch.float64, device=device).unsqueeze(1)
    exponent = (2 * (torch.arange(dim, device=device) // 2)).to(torch.float64) / dim
    angle = pos / torch.pow(torch.full_like(exponent, 10000.), exponent)
    angle = angle.to(torch.float32)
    table = torch.empty_like(angle)
    table[:, 0::2] = angle[:, 0::2].sin()
    table[:, 1::2] = angle[:, 1::2].cos()
    return table.unsqueeze(0).to(dtype if dtype is not None else torch.float32)


@register_notrace_function
def check_image_input(
        x: torch.Tensor,
        in_chans: int,
        min_size: int,
        fixed_size: Optional[List[int]],
        weight: Optional[torch.Tensor] = None,
) -> None:
    """Raise a clear error for input the model cannot take (type, shape, dtype, device, channels, size).

    ``fixed_size`` is the (height, width) a model without a dynamic size was built for, else None;
    ``weight`` is the parameter the input meets first (its dtype and device must match the input's).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'Expected a torch.Tensor image batch (B, C, H, W), got {type(x).__name__}.')
    if x.dim() != 4:
        raise ValueError(f'Expected a 4-D image batch (B, C, H, W), got a tensor of shape {list(x.shape)}.')
    if not x.is_floating_point():
        raise TypeError(
            f'Expected a floating point image tensor, got dtype {x.dtype}; '
            f'convert with x.float() (and normalise) first.')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'Expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); '
            f'create the model with in_chans={x.shape[1]} to change it.')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f'Input of {x.shape[2]}x{x.shape[3]} is too small for the tokenizer, '
            f'which needs at least {min_size}x{min_size}.')
    if fixed_size is not None and (x.shape[2] != fixed_size[0] or x.shape[3] != fixed_size[1]):
        raise ValueError(
            f'Model was built for {fixed_size[0]}x{fixed_size[1]} inputs, got {x.shape[2]}x{x.shape[3]}; '
            f'create it with img_size=({x.shape[2]}, {x.shape[3]}) or dynamic_img_size=True, '
            f'or call set_input_size().')
    if weight is not None:
        if torch.jit.is_scripting():  # TorchScript prints dtypes as numbers: a shorter message
            if x.device != weight.device:
                raise ValueError(f'Input is on device {x.device}, the model on {weight.device}; move one of them.')
            if x.dtype != weight.dtype and not torch.is_autocast_enabled():
                raise TypeError('Input dtype does not match the model dtype; cast the input to the model dtype '
                                '(e.g. x.float() for a float32 model).')
        else:
            _check_dtype_device(x, weight)


@torch.jit.unused
def _check_dtype_device(x: torch.Tensor, weight: torch.Tensor) -> None:
    """The input must sit on the model's device, in the model's dtype (any float dtype under autocast)."""
    if x.device != weight.device:
        raise ValueError(
            f'Input is on device {x.device}, the model on {weight.device}; move one of them, '
            f'e.g. x.to({str(weight.device)!r}) or model.to({str(x.device)!r}).')
    if x.dtype != weight.dtype and not (x.dtype != torch.float64 and _autocast_enabled(x.device.type)):
        raise TypeError(
            f'Input dtype {x.dtype} does not match the model dtype {weight.dtype}; cast the input with '
            f'x.to({weight.dtype}), or the model with model.to({x.dtype})'
            + (f", or run it under torch.autocast('{x.device.type}')." if x.dtype != torch.float64 else '.'))


@torch.jit.unused
def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (it casts float16/bfloat16/float32, never float64)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta)
        return False
