"""Pretrained configs and registered variants of ViT-Lite, CVT and CCT (all 35 official image models).

Names follow the official ones: ``<family>_<depth>_<tokenizer>_<img size>[_sine][_c100|_fl]``;
the tokenizer is ``<kernel>x<conv layers>`` for CCT and the patch size for CVT and ViT-Lite.
ViT-Lite is registered as ``vit_lite_*``; the official ``vit_*`` names resolve as deprecated aliases.
"""
from typing import Any, Dict

from timm.models import generate_default_cfgs, register_model, register_model_deprecations

from .cct import CompactTransformer, create_compact_transformer

__all__ = []

_URL = 'https://shi-labs.com/projects/cct/checkpoints/'
_PAPER = dict(
    license='apache-2.0',
    paper_ids='arXiv:2104.05704',
    paper_name='Escaping the Big Data Paradigm with Compact Transformers',
    origin_url='https://github.com/SHI-Labs/Compact-Transformers',
)
# dataset -> (num_classes, mean, std, crop_pct)
DATASETS = {
    'cifar10': (10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1.0),
    'cifar100': (100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 1.0),
    'flowers102': (102, (0.4353, 0.3773, 0.2872), (0.2966, 0.2455, 0.2698), 1.0),
    'imagenet': (1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.9),
}


def _cfg(img_size: int = 32, dataset: str = 'cifar10', url: str = '', **kwargs) -> Dict[str, Any]:
    num_classes, mean, std, crop_pct = DATASETS[dataset]
    return {
        'url': url,
        'num_classes': num_classes,
        'input_size': (3, img_size, img_size),
        'pool_size': None,
        'fixed_input_size': True,
        'crop_pct': crop_pct,
        'crop_mode': 'center',
        'interpolation': 'bicubic',
        'mean': mean,
        'std': std,
        'first_conv': 'tokenizer.layers.0.conv',
        'classifier': 'head',
        **_PAPER,
        **kwargs,
    }


def _trained(path: str, img_size: int, dataset: str, top1: float, recipe: str) -> Dict[str, Any]:
    return _cfg(
        img_size, dataset, url=_URL + path,
        description=f'Official weights: {recipe}. Reported top-1 {top1:.2f}%.',
        notes=(f'top1={top1}', f'dataset={dataset}'),
    )


default_cfgs = generate_default_cfgs({
    # CCT, trained (the first tag of a model is its default: the checkpoint the official code loads)
    'cct_7_3x1_32.cifar10_300e': _trained(
        'pretrained/cct_7_3x1_32_cifar10_300epochs.pth', 32, 'cifar10', 96.53, 'CIFAR-10, 300 epochs'),
    'cct_7_3x1_32_sine.cifar10_5000e': _trained(
        'pretrained/cct_7_3x1_32_sine_cifar10_5000epochs.pth', 32, 'cifar10', 98.00, 'CIFAR-10, 5000 epochs'),
    'cct_7_3x1_32_sine.cifar10_1500e': _trained(
        'pretrained/cct_7_3x1_32_sine_cifar10_1500epochs.pth', 32, 'cifar10', 97.48, 'CIFAR-10, 1500 epochs'),
    'cct_7_3x1_32_c100.cifar100_300e': _trained(
        'pretrained/cct_7_3x1_32_cifar100_300epochs.pth', 32, 'cifar100', 80.92, 'CIFAR-100, 300 epochs'),
    'cct_7_3x1_32_sine_c100.cifar100_5000e': _trained(
        'pretrained/cct_7_3x1_32_sine_cifar100_5000epochs.pth', 32, 'cifar100', 82.87, 'CIFAR-100, 5000 epochs'),
    'cct_7_3x1_32_sine_c100.cifar100_1500e': _trained(
        'pretrained/cct_7_3x1_32_sine_cifar100_1500epochs.pth', 32, 'cifar100', 82.72, 'CIFAR-100, 1500 epochs'),
    'cct_7_7x2_224_sine.flowers102_300e': _trained(
        'pretrained/cct_7_7x2_224_flowers102.pth', 224, 'flowers102', 97.19,
        'Flowers-102 from scratch, 300 epochs (6552/818 train/valid split)'),
    'cct_14_7x2_224.in1k': _trained(
        'pretrained/cct_14_7x2_224_imagenet.pth', 224, 'imagenet', 80.67, 'ImageNet-1k, 300 + 10 epochs'),
    'cct_14_7x2_384.in1k_ft_384': _trained(
        'finetuned/cct_14_7x2_384_imagenet.pth', 384, 'imagenet', 82.71,
        'ImageNet-1k, fine-tuned 30 epochs at 384'),
    'cct_14_7x2_384_fl.in1k_ft_flowers102_384': _trained(
        'finetuned/cct_14_7x2_384_flowers102.pth', 384, 'flowers102', 99.76,
        'Flowers-102, fine-tuned from ImageNet-1k at 384 (6552/818 train/valid split)'),
    # CCT, no official weights
    'cct_2_3x2_32': _cfg(),
    'cct_2_3x2_32_sine': _cfg(),
    'cct_4_3x2_32': _cfg(),
    'cct_4_3x2_32_sine': _cfg(),
    'cct_6_3x1_32': _cfg(),
    'cct_6_3x1_32_sine': _cfg(),
    'cct_6_3x2_32': _cfg(),
    'cct_6_3x2_32_sine': _cfg(),
    'cct_7_3x2_32': _cfg(),
    'cct_7_3x2_32_sine': _cfg(),
    'cct_7_7x2_224': _cfg(224, 'flowers102'),
    # CVT
    'cvt_2_4_32': _cfg(),
    'cvt_2_4_32_sine': _cfg(),
    'cvt_4_4_32': _cfg(),
    'cvt_4_4_32_sine': _cfg(),
    'cvt_6_4_32': _cfg(),
    'cvt_6_4_32_sine': _cfg(),
    'cvt_7_4_32': _cfg(),
    'cvt_7_4_32_sine': _cfg(),
    # ViT-Lite
    'vit_lite_2_4_32': _cfg(),
    'vit_lite_2_4_32_sine': _cfg(),
    'vit_lite_4_4_32': _cfg(),
    'vit_lite_4_4_32_sine': _cfg(),
    'vit_lite_6_4_32': _cfg(),
    'vit_lite_6_4_32_sine': _cfg(),
    'vit_lite_7_4_32': _cfg(),
    'vit_lite_7_4_32_sine': _cfg(),
})

# depth -> transformer size; the paper's "<depth>" names fix width, heads and MLP ratio
_SIZES = {
    2: dict(embed_dim=128, num_heads=2, mlp_ratio=1),
    4: dict(embed_dim=128, num_heads=2, mlp_ratio=1),
    6: dict(embed_dim=256, num_heads=4, mlp_ratio=2),
    7: dict(embed_dim=256, num_heads=4, mlp_ratio=2),
    14: dict(embed_dim=384, num_heads=6, mlp_ratio=3),
}


def _create(variant: str, pretrained: bool, model_args: Dict[str, Any], /, **kwargs) -> CompactTransformer:
    # the caller's arguments (depth=, ...) override the variant's defaults; img_size and num_classes come from the
    # pretrained cfg (timm's builder fills them in), so a cfg read from an exported folder rebuilds its model
    return create_compact_transformer(variant, pretrained, **dict(model_args, **kwargs))


def _cct(variant: str, pretrained: bool, depth: int, kernel: int, conv_layers: int, pe: str = 'learnable', /,
         **kwargs) -> CompactTransformer:
    """CCT: convolutional tokenizer of ``conv_layers`` [kernel x kernel conv, ReLU, max-pool], SeqPool."""
    model_args = dict(
        depth=depth, **_SIZES[depth], kernel_size=kernel, tokenizer_layers=conv_layers,
        pos_embed=pe, global_pool='seq',
    )
    return _create(variant, pretrained, model_args, **kwargs)


def _cvt(variant: str, pretrained: bool, depth: int, patch: int, pe: str = 'learnable', /,
         **kwargs) -> CompactTransformer:
    """CVT: patch tokenizer, SeqPool."""
    model_args = dict(
        depth=depth, **_SIZES[depth], kernel_size=patch, conv_tokenizer=False,
        pos_embed=pe, global_pool='seq',
    )
    return _create(variant, pretrained, model_args, **kwargs)


def _vit_lite(variant: str, pretrained: bool, depth: int, patch: int, pe: str = 'learnable', /,
              **kwargs) -> CompactTransformer:
    """ViT-Lite: patch tokenizer, class token."""
    model_args = dict(
        depth=depth, **_SIZES[depth], kernel_size=patch, conv_tokenizer=False, class_token=True,
        pos_embed=pe, global_pool='token',
    )
    return _create(variant, pretrained, model_args, **kwargs)


@register_model
def cct_2_3x2_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-2/3x2, 32x32 input, 10 classes."""
    return _cct('cct_2_3x2_32', pretrained, 2, 3, 2, **kwargs)


@register_model
def cct_2_3x2_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-2/3x2, 32x32 input, 10 classes, sine position embedding."""
    return _cct('cct_2_3x2_32_sine', pretrained, 2, 3, 2, 'sine', **kwargs)


@register_model
def cct_4_3x2_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-4/3x2, 32x32 input, 10 classes."""
    return _cct('cct_4_3x2_32', pretrained, 4, 3, 2, **kwargs)


@register_model
def cct_4_3x2_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-4/3x2, 32x32 input, 10 classes, sine position embedding."""
    return _cct('cct_4_3x2_32_sine', pretrained, 4, 3, 2, 'sine', **kwargs)


@register_model
def cct_6_3x1_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-6/3x1, 32x32 input, 10 classes."""
    return _cct('cct_6_3x1_32', pretrained, 6, 3, 1, **kwargs)


@register_model
def cct_6_3x1_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-6/3x1, 32x32 input, 10 classes, sine position embedding."""
    return _cct('cct_6_3x1_32_sine', pretrained, 6, 3, 1, 'sine', **kwargs)


@register_model
def cct_6_3x2_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-6/3x2, 32x32 input, 10 classes."""
    return _cct('cct_6_3x2_32', pretrained, 6, 3, 2, **kwargs)


@register_model
def cct_6_3x2_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-6/3x2, 32x32 input, 10 classes, sine position embedding."""
    return _cct('cct_6_3x2_32_sine', pretrained, 6, 3, 2, 'sine', **kwargs)


@register_model
def cct_7_3x1_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/3x1, 32x32 input, CIFAR-10."""
    return _cct('cct_7_3x1_32', pretrained, 7, 3, 1, **kwargs)


@register_model
def cct_7_3x1_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/3x1, 32x32 input, CIFAR-10, sine position embedding."""
    return _cct('cct_7_3x1_32_sine', pretrained, 7, 3, 1, 'sine', **kwargs)


@register_model
def cct_7_3x1_32_c100(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/3x1, 32x32 input, CIFAR-100."""
    return _cct('cct_7_3x1_32_c100', pretrained, 7, 3, 1, **kwargs)


@register_model
def cct_7_3x1_32_sine_c100(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/3x1, 32x32 input, CIFAR-100, sine position embedding."""
    return _cct('cct_7_3x1_32_sine_c100', pretrained, 7, 3, 1, 'sine', **kwargs)


@register_model
def cct_7_3x2_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/3x2, 32x32 input, 10 classes."""
    return _cct('cct_7_3x2_32', pretrained, 7, 3, 2, **kwargs)


@register_model
def cct_7_3x2_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/3x2, 32x32 input, 10 classes, sine position embedding."""
    return _cct('cct_7_3x2_32_sine', pretrained, 7, 3, 2, 'sine', **kwargs)


@register_model
def cct_7_7x2_224(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/7x2, 224x224 input, Flowers-102."""
    return _cct('cct_7_7x2_224', pretrained, 7, 7, 2, **kwargs)


@register_model
def cct_7_7x2_224_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-7/7x2, 224x224 input, Flowers-102, sine position embedding."""
    return _cct('cct_7_7x2_224_sine', pretrained, 7, 7, 2, 'sine', **kwargs)


@register_model
def cct_14_7x2_224(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-14/7x2, 224x224 input, ImageNet-1k."""
    return _cct('cct_14_7x2_224', pretrained, 14, 7, 2, **kwargs)


@register_model
def cct_14_7x2_384(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-14/7x2, 384x384 input, ImageNet-1k."""
    return _cct('cct_14_7x2_384', pretrained, 14, 7, 2, **kwargs)


@register_model
def cct_14_7x2_384_fl(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CCT-14/7x2, 384x384 input, Flowers-102."""
    return _cct('cct_14_7x2_384_fl', pretrained, 14, 7, 2, **kwargs)


@register_model
def cvt_2_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-2/4, 32x32 input, 10 classes."""
    return _cvt('cvt_2_4_32', pretrained, 2, 4, **kwargs)


@register_model
def cvt_2_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-2/4, 32x32 input, 10 classes, sine position embedding."""
    return _cvt('cvt_2_4_32_sine', pretrained, 2, 4, 'sine', **kwargs)


@register_model
def cvt_4_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-4/4, 32x32 input, 10 classes."""
    return _cvt('cvt_4_4_32', pretrained, 4, 4, **kwargs)


@register_model
def cvt_4_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-4/4, 32x32 input, 10 classes, sine position embedding."""
    return _cvt('cvt_4_4_32_sine', pretrained, 4, 4, 'sine', **kwargs)


@register_model
def cvt_6_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-6/4, 32x32 input, 10 classes."""
    return _cvt('cvt_6_4_32', pretrained, 6, 4, **kwargs)


@register_model
def cvt_6_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-6/4, 32x32 input, 10 classes, sine position embedding."""
    return _cvt('cvt_6_4_32_sine', pretrained, 6, 4, 'sine', **kwargs)


@register_model
def cvt_7_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-7/4, 32x32 input, 10 classes."""
    return _cvt('cvt_7_4_32', pretrained, 7, 4, **kwargs)


@register_model
def cvt_7_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """CVT-7/4, 32x32 input, 10 classes, sine position embedding."""
    return _cvt('cvt_7_4_32_sine', pretrained, 7, 4, 'sine', **kwargs)


@register_model
def vit_lite_2_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-2/4, 32x32 input, 10 classes."""
    return _vit_lite('vit_lite_2_4_32', pretrained, 2, 4, **kwargs)


@register_model
def vit_lite_2_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-2/4, 32x32 input, 10 classes, sine position embedding."""
    return _vit_lite('vit_lite_2_4_32_sine', pretrained, 2, 4, 'sine', **kwargs)


@register_model
def vit_lite_4_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-4/4, 32x32 input, 10 classes."""
    return _vit_lite('vit_lite_4_4_32', pretrained, 4, 4, **kwargs)


@register_model
def vit_lite_4_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-4/4, 32x32 input, 10 classes, sine position embedding."""
    return _vit_lite('vit_lite_4_4_32_sine', pretrained, 4, 4, 'sine', **kwargs)


@register_model
def vit_lite_6_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-6/4, 32x32 input, 10 classes."""
    return _vit_lite('vit_lite_6_4_32', pretrained, 6, 4, **kwargs)


@register_model
def vit_lite_6_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-6/4, 32x32 input, 10 classes, sine position embedding."""
    return _vit_lite('vit_lite_6_4_32_sine', pretrained, 6, 4, 'sine', **kwargs)


@register_model
def vit_lite_7_4_32(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-7/4, 32x32 input, 10 classes."""
    return _vit_lite('vit_lite_7_4_32', pretrained, 7, 4, **kwargs)


@register_model
def vit_lite_7_4_32_sine(pretrained: bool = False, **kwargs) -> CompactTransformer:
    """ViT-Lite-7/4, 32x32 input, 10 classes, sine position embedding."""
    return _vit_lite('vit_lite_7_4_32_sine', pretrained, 7, 4, 'sine', **kwargs)


register_model_deprecations(__name__, {
    f'vit_{depth}_4_32{suffix}': f'vit_lite_{depth}_4_32{suffix}'
    for depth in (2, 4, 6, 7) for suffix in ('', '_sine')
})
