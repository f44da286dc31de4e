"""The demo's data: scikit-learn's digits, a torchvision CIFAR download, or an image folder, checked before training.

An image folder is read in one of two layouts:

- class folders: ``root/<class>/**/<image>``; a stratified fraction (``--test-frac``) is held out;
- split folders: ``root/train/<class>/...`` with ``val/``, ``validation/``, ``valid/`` or ``test/`` (the first
  present, in that order) as the held-out split; ``train/`` alone gets a stratified held-out fraction.

Every image is decoded once before training. Files that cannot be decoded are skipped, counted and named
(``DemoData.source['skipped']``); hidden files and files without an image extension are ignored and counted.
Any mode (grayscale, 16-bit, RGBA, palette, CMYK) becomes RGB; transparent pixels are laid over white.
The checks refuse: fewer than two classes, different classes in the two splits, a class without images.
"""
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from timm_cct.variants import DATASETS

__all__ = ['DataError', 'DemoData', 'SampleDataset', 'load_image', 'stratified_split', 'balanced_subset',
           'load_digits', 'load_cifar', 'load_folder', 'dataset_stats', 'IMG_EXTENSIONS', 'EVAL_SPLITS']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
EVAL_SPLITS = ('val', 'validation', 'valid', 'test')
# Statistics for an image folder of unknown content: ImageNet's, as timm uses by default.
FOLDER_STATS = 'imagenet'


class DataError(ValueError):
    """The data cannot be used as it is; the message says what was found and what is expected."""


def dataset_stats(name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) of ``name`` from the package's one table, ``timm_cct.variants.DATASETS``."""
    _, mean, std, _ = DATASETS[name]
    return tuple(mean), tuple(std)


def load_image(path: Any) -> Any:
    """The image at ``path`` as an 8-bit RGB PIL image, whatever its mode; transparency is laid over white."""
    from PIL import Image
    with Image.open(path) as img:
        img.load()
        if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
            import numpy as np
            arr = np.asarray(img, dtype=np.float64)
            top = 65535. if img.mode != 'F' or arr.max() > 1. else 1.
            img = Image.fromarray((arr.clip(0, top) * (255. / top)).round().astype('uint8'), mode='L')
        if img.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or (img.mode == 'P' and 'transparency' in img.info):
            rgba = img.convert('RGBA')
            background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert('RGB')
        return img.convert('RGB')


class SampleDataset(torch.utils.data.Dataset):
    """Items (PIL images, arrays or file paths) with integer labels; ``loader`` turns an item into a PIL image.

    ``transform`` is set by ``timm.data.create_loader``.
    """

    def __init__(self, items: Sequence[Any], labels: Sequence[int], loader: Optional[Callable] = None,
                 transform: Optional[Callable] = None) -> None:
        if len(items) != len(labels):
            raise ValueError(f'Expected one label per item, got {len(items)} items and {len(labels)} labels.')
        self.items, self.labels = list(items), [int(y) for y in labels]
        self.loader, self.transform = loader, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image = self.items[index]
        if self.loader is not None:
            image = self.loader(image)
        return (self.transform(image) if self.transform else image), self.labels[index]

    def subset(self, indices: Sequence[int]) -> 'SampleDataset':
        return SampleDataset([self.items[i] for i in indices], [self.labels[i] for i in indices], self.loader)


@dataclass
class DemoData:
    """Train and held-out datasets and what describes them (``source``: layout, splits, classes, skipped files)."""
    train: SampleDataset
    test: SampleDataset
    label_names: List[str]
    description: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    source: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def stratified_split(labels: Sequence[int], test_frac: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices (train, test): the same fraction of every class goes to test, shuffled with ``seed``."""
    if not 0. < test_frac < 1.:
        raise ValueError(f'test_frac must be in (0, 1), got {test_frac}.')
    by_class: Dict[int, List[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    rng = random.Random(seed)
    train, test = [], []
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        n_test = min(max(1, round(len(idx) * test_frac)), len(idx) - 1) if len(idx) > 1 else 0
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


def balanced_subset(labels: Sequence[int], limit: Optional[int], seed: int) -> List[int]:
    """At most ``limit`` indices of ``labels``, drawn round-robin over the classes (every class gets its share)."""
    indices = list(range(len(labels)))
    if not limit or limit >= len(indices):
        return indices
    by_class: Dict[int, List[int]] = {}
    for i in indices:
        by_class.setdefault(int(labels[i]), []).append(i)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    order = [members[k] for k in range(max(map(len, by_class.values())))
             for _, members in sorted(by_class.items()) if k < len(members)]
    return sorted(order[:limit])


# -- built-in and torchvision data -----------------------------------------------------------------

def load_digits(img_size: int, test_frac: float, split_seed: int) -> DemoData:
    """scikit-learn's digits, upsampled once (bicubic) to ``img_size``; mean/std of the training pixels."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits
    digits = sk_digits()
    pixels = (digits.images * (255. / 16.)).round().clip(0, 255).astype('uint8')
    images = [Image.fromarray(p, mode='L').resize((img_size, img_size), Image.BICUBIC).convert('RGB') for p in pixels]
    labels = [int(y) for y in digits.target]
    train_idx, test_idx = stratified_split(labels, test_frac, split_seed)
    train_px = torch.tensor(pixels[train_idx], dtype=torch.float64) / 255.
    mean, std = (float(train_px.mean()),) * 3, (float(train_px.std()),) * 3
    full = SampleDataset(images, labels)
    names = [str(i) for i in range(10)]
    source = dict(layout='scikit-learn digits', train_split=f'stratified {1 - test_frac:.0%} (seed {split_seed})',
                  eval_split=f'stratified {test_frac:.0%} (seed {split_seed})', classes=names, skipped=[])
    return DemoData(full.subset(train_idx), full.subset(test_idx), names,
                    f'sklearn digits (1,797 8x8 scans, upsampled to {img_size}x{img_size})', mean, std, source)


def load_cifar(name: str, root: str) -> DemoData:
    """An existing torchvision CIFAR-10/100 download (nothing is downloaded); statistics from ``DATASETS``."""
    from PIL import Image
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR10 if name == 'cifar10' else CIFAR100
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as e:
        raise DataError(
            f'--dataset {name} expects --data-dir to be the root of an existing torchvision download (the folder '
            f'holding {cls.base_folder}); nothing is downloaded. Got {root!r}: {e}') from e
    mean, std = dataset_stats(name)
    source = dict(layout=f'torchvision {name}', train_split=f'{cls.base_folder} train',
                  eval_split=f'{cls.base_folder} test', classes=list(train.classes), skipped=[])
    return DemoData(SampleDataset(list(train.data), train.targets, Image.fromarray),
                    SampleDataset(list(test.data), test.targets, Image.fromarray), list(train.classes),
                    f'{name.upper()} ({len(train)} train / {len(test)} test images)', mean, std, source)


# -- image folders ---------------------------------------------------------------------------------

def _visible(path: Path) -> List[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith('.'))


def _is_split_root(path: Path) -> bool:
    """``path/train`` exists and holds class folders (sub-folders, no images of its own)."""
    train = path / 'train'
    if not train.is_dir():
        return False
    entries = _visible(train)
    return any(p.is_dir() for p in entries) and not any(
        p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in entries)


@dataclass
class _Split:
    name: str
    path: Path
    classes: List[str]
    files: Dict[str, List[Path]]
    ignored: int


def _scan_split(path: Path, name: str) -> _Split:
    """Class folders of ``path`` and their image files (recursively), in sorted order."""
    classes, files, ignored = [], {}, 0
    for entry in _visible(path):
        if not entry.is_dir():
            ignored += 1
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            for f in sorted(filenames):
                if f.startswith('.') or Path(f).suffix.lower() not in IMG_EXTENSIONS:
                    ignored += 1
                else:
                    found.append(Path(dirpath) / f)
        classes.append(entry.name)
        files[entry.name] = found
    return _Split(name, path, classes, files, ignored)


def _unreadable(paths: Sequence[Path], workers: int) -> Dict[Path, str]:
    """Paths that do not decode as images, with the reason."""
    def check(path: Path) -> Optional[str]:
        try:
            load_image(path)
            return None
        except Exception as e:  # PIL raises many types for damaged or foreign files
            return f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'.rstrip(': ')
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(check, paths, chunksize=64))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


def _list(names: Sequence[str], n: int = 8) -> str:
    shown = ', '.join(names[:n])
    return shown + (f' and {len(names) - n} more' if len(names) > n else '')


def load_folder(root: str, test_frac: float, split_seed: int, workers: Optional[int] = None) -> DemoData:
    """An image folder in either layout (see the module docstring), checked and decoded once before training."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f'--data-dir must be an existing folder (class sub-folders, or train/ + val/), got {root!r}.')
    notes = []
    if _is_split_root(path):
        present = [d for d in EVAL_SPLITS if (path / d).is_dir()]
        others = [p.name + '/' for p in _visible(path) if p.is_dir() and p.name not in ('train', *EVAL_SPLITS)]
        if others:
            notes.append(f'folders not used: {", ".join(others)}')
        if len(present) > 1:
            notes.append(f'held-out split {present[0]}/ (not used: {", ".join(d + "/" for d in present[1:])})')
        splits = [_scan_split(path / 'train', 'train')]
        if present:
            splits.append(_scan_split(path / present[0], present[0]))
        layout = 'split folders'
    else:
        splits = [_scan_split(path, path.name)]
        layout = 'class folders'

    for split in splits:
        if not split.classes:
            raise DataError(f'{split.path} holds no class folders; expected one sub-folder of images per class '
                            f'(or train/ and val/ folders that hold them).')
    if len(splits) == 2 and splits[0].classes != splits[1].classes:
        a, b = set(splits[0].classes), set(splits[1].classes)
        raise DataError(
            f'{splits[0].path} and {splits[1].path} must hold the same class folders; only in train/: '
            f'{_list(sorted(a - b)) or "none"}; only in {splits[1].name}/: {_list(sorted(b - a)) or "none"}.')
    classes = splits[0].classes
    if len(classes) < 2:
        raise DataError(f'{splits[0].path} holds {len(classes)} class folder ({_list(classes)}); a classifier needs '
                        f'at least 2 classes. For train/ + val/ data, check the folders are named train and val, '
                        f'validation, valid or test.')

    every = [p for s in splits for c in s.classes for p in s.files[c]]
    bad = _unreadable(every, workers or min(8, os.cpu_count() or 1))
    skipped = [dict(file=str(p), reason=r) for p, r in bad.items()]
    for split in splits:
        for c in split.classes:
            split.files[c] = [p for p in split.files[c] if p not in bad]
        empty = [c for c in split.classes if not split.files[c]]
        if empty:
            raise DataError(
                f'{split.path}: class folder(s) without a readable image: {_list(empty)} (images: '
                f'{", ".join(IMG_EXTENSIONS)}; {len(bad)} unreadable file(s) skipped). Every class needs images.')

    def as_dataset(split: _Split) -> SampleDataset:
        items = [(p, y) for y, c in enumerate(split.classes) for p in split.files[c]]
        return SampleDataset([p for p, _ in items], [y for _, y in items], load_image)

    train = as_dataset(splits[0])
    if len(splits) == 2:
        test = as_dataset(splits[1])
        train_desc, eval_desc = f'{splits[0].path}', f'{splits[1].path}'
    else:
        few = [c for c in classes if len(splits[0].files[c]) < 2]
        if few:
            raise DataError(f'{splits[0].path}: class(es) with fewer than 2 readable images: {_list(few)}; a held-out '
                            f'share is drawn from every class, so each needs at least 2 (or give a val/ split).')
        train_idx, test_idx = stratified_split(train.labels, test_frac, split_seed)
        train, test = train.subset(train_idx), train.subset(test_idx)
        train_desc = f'{splits[0].path} (stratified {1 - test_frac:.0%}, seed {split_seed})'
        eval_desc = f'{splits[0].path} (stratified {test_frac:.0%} held out, seed {split_seed})'
    ignored = sum(s.ignored for s in splits)
    if ignored:
        notes.append(f'{ignored} hidden or non-image file(s) ignored')
    if skipped:
        notes.append(f'{len(skipped)} unreadable image file(s) skipped')
    mean, std = dataset_stats(FOLDER_STATS)
    source = dict(layout=layout, root=str(path), train_split=train_desc, eval_split=eval_desc, classes=classes,
                  skipped=skipped, ignored_files=ignored, notes=notes, stats=f'{FOLDER_STATS} mean/std')
    description = (f'image folder {path.name} ({layout}: {len(classes)} classes, {len(train)} train / '
                   f'{len(test)} held-out images)')
    return DemoData(train, test, classes, description, mean, std, source)
