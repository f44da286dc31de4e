"""Training recipes of the paper as config files for timm's ``train.py --config``.

Each YAML file holds ``train.py`` arguments (argparse ``dest`` names). Recipes that name a model
reproduce one official checkpoint; the dataset recipes (``cifar10``, ``cifar100``, ``flowers102``,
``imagenet``) name none, so pass ``--model``.
"""
from pathlib import Path
from typing import Any, Dict, List

from PIL import Image, ImageOps

__all__ = ['CONFIG_DIR', 'list_configs', 'config_path', 'load_config', 'fix_timm_posterize']

CONFIG_DIR = Path(__file__).parent / 'configs'


def list_configs() -> List[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


def config_path(name: str) -> Path:
    """Path of the recipe ``name`` (with or without the ``.yaml`` suffix)."""
    if not isinstance(name, str):
        raise TypeError(f'config name must be a str, got {type(name).__name__}.')
    stem = name[:-len('.yaml')] if name.endswith('.yaml') else name
    path = CONFIG_DIR / f'{stem}.yaml'
    if not path.is_file():
        raise ValueError(f'Unknown config {name!r}; expected one of: {", ".join(list_configs())}.')
    return path


def load_config(name: str) -> Dict[str, Any]:
    """The recipe ``name`` as a dict of ``train.py`` arguments."""
    import yaml
    with open(config_path(name)) as f:
        return yaml.safe_load(f)


def _posterize(img: Image.Image, bits_to_keep: int, **__) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # keep no bit: a black image, as Pillow < 13 gave
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def fix_timm_posterize() -> bool:
    """Make timm's Posterize augmentations accept 0 bits on Pillow versions that refuse them.

    ``rand-m9-mstd0.5-inc1`` (every recipe here) maps a sampled magnitude of 10 to keeping 0 bits;
    Pillow 13 raises ``ValueError`` for that, which stops training within the first epoch. Returns
    True when timm's ops were patched (only done where Pillow refuses 0 bits).
    """
    from timm.data import auto_augment
    if auto_augment.posterize is _posterize:
        return True
    try:
        ImageOps.posterize(Image.new('L', (1, 1)), 0)
        return False
    except ValueError:
        pass
    for name, fn in list(auto_augment.NAME_TO_OP.items()):
        if fn is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize
    auto_augment.posterize = _posterize
    return True
