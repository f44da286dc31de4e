"""Compact Transformers (ViT-Lite, CVT, CCT) for timm; importing this package registers every model."""
from .cct import CompactTransformer, checkpoint_filter_fn, create_compact_transformer
from .layers import Block, SeqPool, Tokenizer, sine_pos_embed
from . import variants

__version__ = '0.1.0'
