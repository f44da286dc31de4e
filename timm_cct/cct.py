"""Compact Transformers: ViT-Lite, CVT and CCT as one timm model class.

Paper: 'Escaping the Big Data Paradigm with Compact Transformers', Hassani et al. 2021
(https://arxiv.org/abs/2104.05704). Official code: https://github.com/SHI-Labs/Compact-Transformers

The three families differ only in configuration:
- ViT-Lite: patch tokenizer (one k x k stride-k conv) + class token, pooled by the class token.
- CVT: patch tokenizer + SeqPool (attention-based sequence pooling).
- CCT: convolutional tokenizer ([conv -> ReLU -> max-pool] x n) + SeqPool.
"""
import contextlib
import difflib
import inspect
import re
from typing import Any, Dict, List, Optional, Set, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.layers import global_pool_nlc, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq
from timm.models._features import feature_take_indices
from . import cpu_kernels
from ._compat import is_exporting, register_load_state_dict_pre_hook, update_model_input_size
from .layers import Block, SeqPool, Tokenizer, check_image_input, sine_pos_embed
from .loading import CheckpointError, check_state_dict, pretrained_filter, pretrained_loading

__all__ = ['CompactTransformer', 'checkpoint_filter_fn', 'official_to_timm_key', 'timm_to_official_key']

POS_EMBEDS = ('learnable', 'sine', 'none')
GLOBAL_POOLS = ('seq', 'token', 'avg', 'max', 'avgmax', '')
MAX_ATTENTION_BYTES = 64 * 2 ** 30
"""Largest attention-score matrix (all heads, one image, float32) an ``img_size`` may imply: beyond it the
constructor and ``set_input_size`` refuse the size instead of trying to allocate it."""


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'Unknown {name}={value!r}; expected one of {list(choices)}.')


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'Expected {name} to be an int, got {type(value).__name__} {value!r}.')
    if value < minimum:
        raise ValueError(f'Expected {name} >= {minimum}, got {value}.')


def _check_rate(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Expected {name} to be a float in [0, 1], got {type(value).__name__} {value!r}.')
    if not 0. <= value <= 1.:
        raise ValueError(f'Expected {name} in [0, 1], got {value}.')


def _check_min_size(img_size: Tuple[int, int], min_size: int) -> None:
    if min(img_size) < min_size:
        raise ValueError(f'img_size={img_size} is too small for the tokenizer, which needs at least '
                         f'{min_size}x{min_size}.')


def _check_ratio(name: str, value: Any, dim: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Expected {name} to be a positive number, got {type(value).__name__} {value!r}.')
    if not (0. < value < float('inf')) or int(dim * value) < 1:
        raise ValueError(f'Expected {name} > 0 giving an MLP of at least one unit (embed_dim * {name} >= 1), '
                         f'got {name}={value} with embed_dim={dim}.')


def _bytes(n: float) -> str:
    for unit in ('B', 'KB', 'MB', 'GB', 'TB', 'PB'):
        if n < 1000:
            return f'{n:.1f} {unit}'
        n /= 1000
    return f'{n:.1f} EB'


def _check_memory(img_size: Tuple[int, int], feat_size: Tuple[int, int], num_prefix_tokens: int, embed_dim: int,
                  num_heads: int) -> None:
    """Refuse an image size whose token count would need absurd memory (position embedding, attention)."""
    num_tokens = feat_size[0] * feat_size[1] + num_prefix_tokens
    attn_bytes = 4 * num_heads * num_tokens ** 2
    if attn_bytes > MAX_ATTENTION_BYTES:
        raise ValueError(
            f'img_size={img_size} gives {num_tokens:,} tokens (a {feat_size[0]}x{feat_size[1]} grid): the '
            f'position embedding would need {_bytes(4 * num_tokens * embed_dim)} and the attention scores of one '
            f'image {_bytes(attn_bytes)} in float32 (more than the {_bytes(MAX_ATTENTION_BYTES)} allowed by '
            f'timm_cct.cct.MAX_ATTENTION_BYTES); choose a smaller img_size.')


def _check_unknown_kwargs(cls: type, kwargs: Dict[str, Any]) -> None:
    """Refuse unknown constructor arguments, naming the accepted ones (and a close match)."""
    if not kwargs:
        return
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ('self', 'kwargs')]
    hints = [f'{k!r} -> {m[0]!r}' for k in kwargs for m in [difflib.get_close_matches(k, accepted, 1)] if m]
    raise TypeError(
        f'{cls.__name__} got unknown argument(s) {sorted(kwargs)}; expected some of {accepted}'
        + (f' (did you mean {", ".join(hints)}?)' if hints else '') + '.')


class CompactTransformer(nn.Module):
    """A tokenizer, a pre-norm transformer encoder (official block layout) and a pooling head."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'seq',
            embed_dim: int = 256,
            depth: int = 7,
            num_heads: int = 4,
            mlp_ratio: float = 2.,
            kernel_size: int = 7,
            stride: Optional[int] = None,
            padding: Optional[int] = None,
            tokenizer_layers: int = 1,
            tokenizer_hidden_chans: int = 64,
            conv_tokenizer: bool = True,
            class_token: bool = False,
            pos_embed: str = 'learnable',
            dynamic_img_size: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.1,
            drop_path_rate: float = 0.1,
            act_layer: Optional[Type[nn.Module]] = None,
            norm_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        """
        Args:
            img_size: Input image size the position embedding is built for.
            in_chans: Number of input image channels.
            num_classes: Number of classes; 0 removes the classifier.
            global_pool: 'seq' (SeqPool), 'token' (class token), 'avg' (mean of tokens) or '' (none).
            embed_dim: Transformer width.
            depth: Number of transformer blocks.
            num_heads: Number of attention heads.
            mlp_ratio: MLP hidden width / embed_dim.
            kernel_size: Tokenizer conv kernel size.
            stride: Tokenizer conv stride (default: CCT rule max(1, k // 2 - 1), or k for a patch tokenizer).
            padding: Tokenizer conv padding (default: CCT rule max(1, k // 2), or 0 for a patch tokenizer).
            tokenizer_layers: Number of tokenizer conv layers.
            tokenizer_hidden_chans: Width of the inner tokenizer conv layers.
            conv_tokenizer: True: CCT's [conv, ReLU, max-pool] layers without bias; False: a patch conv with bias.
            class_token: Prepend a learnable class token (ViT-Lite).
            pos_embed: 'learnable', 'sine' (frozen 1-D sinusoidal table) or 'none'.
            dynamic_img_size: Accept any input size, resampling or regenerating the position embedding.
            drop_rate: Dropout before the classifier.
            pos_drop_rate: Dropout after the position embedding.
            proj_drop_rate: Dropout in the attention projection and the MLP.
            attn_drop_rate: Dropout on the attention weights.
            drop_path_rate: Stochastic depth, rising linearly to this value over the blocks.
            act_layer: MLP activation (default exact GELU).
            norm_layer: Normalization layer (default LayerNorm, eps 1e-5).
        """
        super().__init__()
        _check_unknown_kwargs(type(self), kwargs)
        for name, value, minimum in (('in_chans', in_chans, 1), ('num_classes', num_classes, 0),
                                     ('embed_dim', embed_dim, 1), ('depth', depth, 0), ('num_heads', num_heads, 1),
                                     ('kernel_size', kernel_size, 1), ('tokenizer_layers', tokenizer_layers, 1),
                                     ('tokenizer_hidden_chans', tokenizer_hidden_chans, 1),
                                     ('stride', 1 if stride is None else stride, 1),
                                     ('padding', 0 if padding is None else padding, 0)):
            _check_int(name, value, minimum)
        for name, value in (('conv_tokenizer', conv_tokenizer), ('class_token', class_token),
                            ('dynamic_img_size', dynamic_img_size)):
            if not isinstance(value, bool):
                raise TypeError(f'Expected {name} to be True or False, got {type(value).__name__} {value!r}.')
        for name, value in (('act_layer', act_layer), ('norm_layer', norm_layer)):
            if value is not None and not callable(value):
                raise TypeError(f'Expected {name} to be a layer class (e.g. nn.GELU, nn.LayerNorm) or None, '
                                f'got {type(value).__name__} {value!r}.')
        if embed_dim % num_heads:
            raise ValueError(f'Expected embed_dim divisible by num_heads, got embed_dim={embed_dim}, '
                             f'num_heads={num_heads}.')
        for name, value in (('drop_rate', drop_rate), ('pos_drop_rate', pos_drop_rate),
                            ('proj_drop_rate', proj_drop_rate), ('attn_drop_rate', attn_drop_rate),
                            ('drop_path_rate', drop_path_rate)):
            _check_rate(name, value)
        _check_ratio('mlp_ratio', mlp_ratio, embed_dim)
        _check_choice('pos_embed', pos_embed, POS_EMBEDS)
        _check_choice('global_pool', global_pool, GLOBAL_POOLS)
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs a class token; pass class_token=True or use 'seq'.")
        dd = {'device': device, 'dtype': dtype}
        act_layer = act_layer or nn.GELU
        norm_layer = norm_layer or nn.LayerNorm
        if conv_tokenizer:
            stride = max(1, kernel_size // 2 - 1) if stride is None else stride
            padding = max(1, kernel_size // 2) if padding is None else padding
        else:
            stride = kernel_size if stride is None else stride
            padding = 0 if padding is None else padding

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.pos_embed_type = pos_embed
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        self.img_size = _img_size(img_size)

        self.tokenizer = Tokenizer(
            in_chans, embed_dim, kernel_size, stride, padding,
            num_layers=tokenizer_layers,
            hidden_chans=tokenizer_hidden_chans,
            bias=not conv_tokenizer,
            act_pool=conv_tokenizer,
            **dd,
        )
        _check_min_size(self.img_size, self.tokenizer.min_size)
        self.feat_size = self.tokenizer.feat_size(self.img_size)
        _check_memory(self.img_size, self.feat_size, self.num_prefix_tokens, embed_dim, num_heads)
        num_pos = self.feat_size[0] * self.feat_size[1] + self.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        if pos_embed == 'learnable':
            self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim, **dd))
        elif pos_embed == 'sine':
            self.register_buffer('pos_embed', sine_pos_embed(num_pos, embed_dim, **dd), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device='cpu')]
        self.blocks = nn.Sequential(*[
            Block(
                embed_dim, num_heads, mlp_ratio,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                act_layer=act_layer, norm_layer=norm_layer, **dd,
            )
            for i in range(depth)
        ])
        reduction = self.tokenizer.reduction
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.seq_pool = SeqPool(embed_dim, **dd) if global_pool == 'seq' else None
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights()
        # official checkpoints (and ours) load through every path that calls load_state_dict
        register_load_state_dict_pre_hook(self, _convert_official_state_dict)

    # -- initialisation ---------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official init: Linear trunc-normal(0.02), conv Kaiming-normal (a patch conv's bias as PyTorch's
        default), learnable position embedding trunc-normal(0.2), class token zeros; the sine table is rebuilt."""
        self.apply(_init_weights)
        if self.pos_embed_type == 'learnable':
            trunc_normal_(self.pos_embed, std=0.2)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        self.init_non_persistent_buffers()

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Rebuild the computed sine table (timm's ``reinit_non_persistent_buffers`` calls this after ``to_empty``)."""
        if self.pos_embed_type == 'sine':
            self.pos_embed.copy_(sine_pos_embed(
                self.pos_embed.shape[1], self.embed_dim, self.pos_embed.device, self.pos_embed.dtype))

    # -- timm model API -------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {name for name in ('pos_embed', 'cls_token') if isinstance(getattr(self, name), nn.Parameter)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|^pos_embed|^tokenizer',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (0 removes it); optionally change the pooling.

        Both arguments are checked before anything changes: a refused call leaves the model as it was.
        """
        _check_int('num_classes', num_classes, 0)
        if global_pool is not None:
            _check_choice('global_pool', global_pool, GLOBAL_POOLS)
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token; this model has none.")
        ref = self.norm.weight if isinstance(getattr(self.norm, 'weight', None), torch.Tensor) else next(self.parameters())
        dd = {'device': ref.device, 'dtype': ref.dtype}
        if global_pool is not None:
            if global_pool == 'seq' and self.seq_pool is None:
                self.seq_pool = SeqPool(self.embed_dim, **dd).train(self.training)
                self.seq_pool.apply(_init_weights)
            elif global_pool != 'seq':
                self.seq_pool = None
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Rebuild the position embedding for a new input size (learnable: resampled; sine: regenerated)."""
        img_size = _img_size(img_size)
        _check_min_size(img_size, self.tokenizer.min_size)
        _check_memory(img_size, self.tokenizer.feat_size(img_size), self.num_prefix_tokens,
                      self.embed_dim, self.blocks[0].attn.num_heads if len(self.blocks) else 1)
        self.img_size = img_size
        self.feat_size, old_size = self.tokenizer.feat_size(self.img_size), self.feat_size
        if self.pos_embed_type == 'learnable':
            requires_grad = self.pos_embed.requires_grad
            self.pos_embed = nn.Parameter(
                resample_pos_embed(self.pos_embed.detach(), self.feat_size, old_size, self.num_prefix_tokens),
                requires_grad=requires_grad,
            )
        elif self.pos_embed_type == 'sine':
            num_pos = self.feat_size[0] * self.feat_size[1] + self.num_prefix_tokens
            self.pos_embed = sine_pos_embed(num_pos, self.embed_dim, self.pos_embed.device, self.pos_embed.dtype)
        record_input_size(self)

    # -- forward --------------------------------------------------------------------------------

    def _fixed_size(self) -> Optional[List[int]]:
        if self.dynamic_img_size or self.pos_embed is None:
            return None
        return [self.img_size[0], self.img_size[1]]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> position-embedded tokens (B, prefix + h * w, D)."""
        check_image_input(x, self.in_chans, self.tokenizer.min_size, self._fixed_size(),
                          self.tokenizer.layers[0].conv.weight)
        # channels-last: faster conv and max-pool on CPU, and the (B, D, h, w) -> (B, h * w, D) token view is contiguous
        x = self.tokenizer(x.contiguous(memory_format=torch.channels_last))
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if self.dynamic_img_size and self.pos_embed_type == 'sine':
                if is_exporting() or x.shape[1] != pos.shape[1]:  # no size test while exporting: keep H, W symbolic
                    pos = sine_pos_embed(x.shape[1], self.embed_dim, pos.device, pos.dtype)
            elif self.dynamic_img_size:  # returns the embedding itself at the built grid (outside export)
                pos = resample_pos_embed(pos, [grid[0], grid[1]], self.feat_size, self.num_prefix_tokens)
            x = x + pos
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> normalised tokens (B, N, D), class token first for ViT-Lite."""
        if not torch.jit.is_scripting():
            step = self._cpu_inference_chunk(x)
            if step:  # see timm_cct.cpu_kernels: a few images at a time, so that activations stay in cache
                return torch.cat([self._forward_features(chunk) for chunk in x.split(step)])
        return self._forward_features(x)

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    @torch.jit.unused
    def _cpu_inference_chunk(self, x: torch.Tensor) -> int:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:  # the checks in _embed report it
            return 0
        h, w = self.tokenizer.feat_size((x.shape[2], x.shape[3]))
        return cpu_kernels.inference_chunk(x, h * w + self.num_prefix_tokens, self.training)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, D) -> pooled features (B, D) by ``global_pool``; unchanged for ''."""
        if self.seq_pool is not None:
            return self.seq_pool(x)
        return global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the outputs of the blocks chosen by ``indices``.

        Args:
            x: Image batch (B, C, H, W).
            indices: Last n blocks if int, all if None, these blocks if a list (negative from the end).
            return_prefix_tokens: Also return the class token of each intermediate (ViT-Lite).
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block needed.
            output_fmt: 'NCHW' (token grid as feature map) or 'NLC' (token sequence).
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"Unknown output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'.")
        intermediates = []
        take_indices, max_index = _take_indices(len(self.blocks), indices)
        image = x
        x = self._embed(x)  # checks the input
        B, grid = image.shape[0], self.tokenizer.feat_size((image.shape[-2], image.shape[-1]))
        if torch.jit.is_scripting() or not stop_early:
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)

        prefix_tokens = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [
                y.reshape(B, grid[0], grid[1], y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if not torch.jit.is_scripting() and return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and optionally norm and head) not needed for ``indices``."""
        take_indices, max_index = _take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if isinstance(getattr(self, '_model_args', None), dict):  # timm's export rebuilds the model from these
            self._model_args['depth'] = len(self.blocks)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, **kwargs):
        """``nn.Module.load_state_dict`` for official or our own state dicts; a strict load of one that does not fit
        raises ``CheckpointError`` listing what differs (official keys are converted by a pre-hook, which also
        serves loads into a module that contains this model)."""
        if strict:
            try:
                state_dict = _convert(dict(state_dict), self)  # the pre-hook then finds nothing left to convert
            except ValueError as e:
                raise CheckpointError(f'Could not convert the state dict given to load_state_dict: {e}') from None
            check_state_dict(state_dict, self, 'given to load_state_dict', pretrained_cfg={})
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    @torch.jit.ignore
    def seq_pool_weights(self, x: torch.Tensor) -> torch.Tensor:
        """SeqPool weight of every image token, as a (B, h, w) map over the token grid.

        Each map sums to one; it shows where the model looks when it pools the sequence. With a class token
        (ViT-Lite reset to ``global_pool='seq'``) the class token's share is left out and the image tokens'
        weights are rescaled to sum to one.
        """
        if self.seq_pool is None:
            raise ValueError(f"This model pools with global_pool={self.global_pool!r}, not 'seq'; it has no SeqPool.")
        tokens = self.forward_features(x)
        grid = self.tokenizer.feat_size((x.shape[-2], x.shape[-1]))
        weights = self.seq_pool.weights(tokens)[:, self.num_prefix_tokens:]
        if self.num_prefix_tokens:
            weights = weights / weights.sum(dim=1, keepdim=True)
        return weights.reshape(x.shape[0], grid[0], grid[1])


def _take_indices(num_blocks: int, indices: Any) -> Tuple[List[int], int]:
    """Check block ``indices`` (None: all; int n: the last n; a list: these, negative from the end) and return
    the absolute indices, in increasing order, and the largest."""
    if not torch.jit.is_scripting():
        _check_indices(num_blocks, indices)
    return feature_take_indices(num_blocks, indices)


@torch.jit.unused
def _check_indices(num_blocks: int, indices: Any) -> None:
    expected = (f'expected None (all blocks), an int n in 1..{num_blocks} (the last n blocks) or a non-empty list '
                f'of distinct block indices in increasing order, each in 0..{num_blocks - 1} '
                f'(or -{num_blocks}..-1 from the end)')
    if num_blocks < 1:
        raise ValueError('The model has no transformer blocks (depth=0), so no block outputs to take.')
    if indices is None:
        return
    if isinstance(indices, bool) or not isinstance(indices, (int, list, tuple)):
        raise TypeError(f'Block indices {indices!r} ({type(indices).__name__}): {expected}.')
    if isinstance(indices, int):
        if not 1 <= indices <= num_blocks:
            raise ValueError(f'Block indices={indices} is out of range for a model with {num_blocks} blocks; '
                             f'{expected}.')
        return
    if not indices:
        raise ValueError(f'Block indices {list(indices)!r} name no block: {expected}.')
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise TypeError(f'Block indices {list(indices)!r} are not all ints: {expected}.')
    bad = [i for i in indices if not -num_blocks <= i < num_blocks]
    if bad:
        raise ValueError(f'Block indices {bad} out of range for a model with {num_blocks} blocks; {expected}.')
    absolute = [i % num_blocks for i in indices]
    if any(b <= a for a, b in zip(absolute, absolute[1:])):
        raise ValueError(f'Block indices {list(indices)} name blocks {absolute}, which are repeated or out of '
                         f'order; {expected}.')


def _img_size(size: Union[int, Tuple[int, int], List[int]]) -> Tuple[int, int]:
    """``img_size`` as (height, width), checked."""
    sizes = to_2tuple(size) if not isinstance(size, str) else (size,)
    if isinstance(size, (tuple, list)) and len(sizes) != 2:
        raise ValueError(f'Expected img_size as an int or (height, width), got {size!r}.')
    if len(sizes) != 2 or any(isinstance(v, bool) or not hasattr(v, '__index__') for v in sizes):
        raise TypeError(f'Expected img_size as an int or (height, width) ints, got {size!r}.')
    return int(sizes[0]), int(sizes[1])


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:  # PyTorch's default for a conv bias, which the official code keeps
            fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
            bound = 1. / fan_in ** 0.5
            nn.init.uniform_(module.bias, -bound, bound)


def resample_pos_embed(
        pos_embed: torch.Tensor,
        new_size: List[int],
        old_size: Optional[List[int]] = None,
        num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Bilinear resize of a learnable position embedding on its token grid (as the official code does)."""
    return resample_abs_pos_embed(
        pos_embed, new_size=list(new_size), old_size=None if old_size is None else list(old_size),
        num_prefix_tokens=num_prefix_tokens, interpolation='bilinear', antialias=False,
    )


# (official key prefix, our key prefix); {i} stands for a layer or block index
KEY_MAP = [
    ('tokenizer.conv_layers.{i}.0.', 'tokenizer.layers.{i}.conv.'),
    ('classifier.positional_emb', 'pos_embed'),
    ('classifier.class_emb', 'cls_token'),
    ('classifier.attention_pool.', 'seq_pool.attn.'),
    ('classifier.blocks.{i}.pre_norm.', 'blocks.{i}.norm1.'),
    ('classifier.blocks.{i}.self_attn.', 'blocks.{i}.attn.'),
    ('classifier.blocks.{i}.norm1.', 'blocks.{i}.norm2.'),
    ('classifier.blocks.{i}.linear1.', 'blocks.{i}.mlp.fc1.'),
    ('classifier.blocks.{i}.linear2.', 'blocks.{i}.mlp.fc2.'),
    ('classifier.norm.', 'norm.'),
    ('classifier.fc.', 'head.'),
]


def _rename(key: str, to_official: bool = False) -> str:
    """Map one state-dict key between the official names and ours (either way)."""
    for official, ours in KEY_MAP:
        src, dst = (ours, official) if to_official else (official, ours)
        pattern = '^' + re.escape(src).replace(re.escape('{i}'), r'(\d+)')
        match = re.match(pattern, key)
        if match:
            index = match.group(1) if match.groups() else ''
            return dst.replace('{i}', index) + key[match.end():]
    return key


def official_to_timm_key(key: str) -> str:
    """Official state-dict key -> ours, e.g. ``classifier.blocks.0.linear1.weight`` -> ``blocks.0.mlp.fc1.weight``."""
    return _rename(key)


def timm_to_official_key(key: str) -> str:
    """Our state-dict key -> the official one (the inverse of ``official_to_timm_key``)."""
    return _rename(key, to_official=True)


def _convert(state_dict: Dict[str, torch.Tensor], model: CompactTransformer) -> Dict[str, torch.Tensor]:
    """Official (or our own) state dict -> our keys: unwrap ``state_dict``, strip a DDP ``module.`` prefix, rename,
    and drop a stored sine table (the model rebuilds it; a table that is not the sine table is refused)."""
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    out = {}
    for key, value in state_dict.items():
        if isinstance(key, str) and key.startswith('module.'):
            key = key[len('module.'):]
        out[official_to_timm_key(key) if isinstance(key, str) else key] = value

    if model.seq_pool is None:  # built with another global_pool: the checkpoint's SeqPool has no place
        out = {k: v for k, v in out.items() if not k.startswith('seq_pool.')}
    pos = out.get('pos_embed')
    if isinstance(pos, torch.Tensor) and model.pos_embed_type == 'sine':
        out.pop('pos_embed')
        expected = sine_pos_embed(pos.shape[1], pos.shape[-1], device=pos.device) if pos.dim() == 3 else None
        if (expected is None or pos.shape[-1] != model.embed_dim
                or not torch.allclose(pos.float(), expected, atol=1e-4)):
            raise ValueError(
                'The checkpoint holds a learned position embedding, but the model uses the frozen sine table '
                '(pos_embed="sine"); load it into the learnable variant (the model name without "_sine").')
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CompactTransformer) -> Dict[str, torch.Tensor]:
    """Convert an official (or our own) state dict for ``model``.

    Renames official keys, strips a DDP ``module.`` prefix, drops a stored sine table, resamples a learnable position
    embedding of another grid size bilinearly, and adapts the pooling head to the model's: SeqPool weights are dropped
    when the model pools otherwise, and a model that pools with SeqPool keeps its own new SeqPool when the checkpoint
    comes from a class-token model without one (as timm keeps a new classifier).
    """
    out = _convert(state_dict, model)
    has_seq_pool = any(isinstance(k, str) and k.startswith('seq_pool.') for k in out)
    if model.seq_pool is None:
        out = {k: v for k, v in out.items() if not (isinstance(k, str) and k.startswith('seq_pool.'))}
    elif not has_seq_pool and 'cls_token' in out:
        out.update({f'seq_pool.{k}': v for k, v in model.seq_pool.state_dict().items()})

    pos = out.get('pos_embed')
    if (isinstance(pos, torch.Tensor) and model.pos_embed_type == 'learnable' and pos.shape != model.pos_embed.shape
            and _resampleable(pos, model)):
        out['pos_embed'] = resample_pos_embed(pos, model.feat_size, None, model.num_prefix_tokens)
    return out


def _convert_official_state_dict(
        module: CompactTransformer, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict[str, Any],
        strict: bool, missing_keys: List[str], unexpected_keys: List[str], error_msgs: List[str],
) -> None:
    """``load_state_dict`` pre-hook: an official checkpoint loads wherever timm loads one (``checkpoint_path=``,
    ``load_checkpoint``, ``validate.py --checkpoint``, ``train.py --initial-checkpoint``)."""
    keys = [k for k in state_dict if isinstance(k, str) and k.startswith(prefix)]
    ours = {k[len(prefix):]: state_dict[k] for k in keys}
    try:
        converted = _convert(ours, module)
    except ValueError as e:
        raise CheckpointError(f'Could not convert the state dict given to load_state_dict: {e}') from None
    if converted.keys() != ours.keys():
        for key in keys:
            del state_dict[key]
        state_dict.update({prefix + k: v for k, v in converted.items()})


def _resampleable(pos: torch.Tensor, model: CompactTransformer) -> bool:
    """Whether a stored embedding is (1, prefix + n * n, embed_dim); any other shape is left for the
    strict load to report as a mismatch."""
    num_grid = pos.shape[1] - model.num_prefix_tokens if pos.dim() == 3 else -1
    side = int(round(num_grid ** 0.5)) if num_grid > 0 else 0
    return pos.dim() == 3 and pos.shape[0] == 1 and pos.shape[-1] == model.embed_dim and side * side == num_grid


def record_input_size(model: nn.Module) -> None:
    """Tell timm the model's current input size, so that its data config and ``save_for_hf`` describe it.

    timm >= 1.0.31 keeps it apart from the pretrained cfg (which describes the source weights); older timm reads it
    from the pretrained cfg, which is then updated (as a copy: registered cfgs are shared).
    """
    size = tuple(model.img_size)
    if update_model_input_size is not None:
        update_model_input_size(model, size)
        return
    cfg = getattr(model, 'pretrained_cfg', None)
    if isinstance(cfg, dict) and tuple(cfg.get('input_size', ())[1:]) != size:
        model.pretrained_cfg = model.default_cfg = dict(cfg, input_size=(model.in_chans, *size))


def create_compact_transformer(variant: str, pretrained: bool = False, **kwargs) -> CompactTransformer:
    """Build a registered variant through timm's builder (pretrained cfg, weight loading, features_only).

    Pretrained weights are read by timm's own loader from any source it knows; ``checkpoint_filter_fn`` converts
    them, and ``timm_cct.loading`` checks local files before timm reads them, checks the converted weights against
    the model, and names the source in every error.
    """
    out_indices = kwargs.pop('out_indices', min(3, kwargs.get('depth', 3)))  # the last 3 blocks
    feature_cfg = dict(kwargs.pop('feature_cfg', None) or {})  # e.g. output_fmt='NLC', norm=True for features_only
    with pretrained_loading(variant, kwargs) if pretrained else contextlib.nullcontext(kwargs) as kwargs:
        model = build_model_with_cfg(
            CompactTransformer,
            variant,
            pretrained,
            pretrained_filter_fn=pretrained_filter(checkpoint_filter_fn),
            feature_cfg={'out_indices': out_indices, 'feature_cls': 'getter', **feature_cfg},
            **kwargs,
        )
    if isinstance(model, CompactTransformer) and update_model_input_size is None:
        record_input_size(model)
    return model
