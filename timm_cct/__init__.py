"""Compact Transformers (ViT-Lite, CVT, CCT) for timm; importing this package registers every model."""
from .cct import CompactTransformer, checkpoint_filter_fn, create_compact_transformer
from .layers import Block, SeqPool, Tokenizer, sine_pos_embed
from . import variants
from .visualize import plot_seqpool_attention, seqpool_attention
from .recipes import fix_timm_posterize

fix_timm_posterize()  # RandAugment of the recipes can keep 0 bits, which Pillow >= 13 refuses

__all__ = [
    'CompactTransformer', 'checkpoint_filter_fn', 'create_compact_transformer', 'Block', 'SeqPool', 'Tokenizer',
    'sine_pos_embed', 'plot_seqpool_attention', 'seqpool_attention', 'variants',
]
__version__ = '0.1.0'
