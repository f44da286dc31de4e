"""Train Compact Transformers from scratch on small real data, side by side with a CNN, and show it.

Default (offline, CPU, minutes): scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes),
upsampled to 16x16 (``--img-size 32`` for the models' native size), a stratified 80/20 held-out split;
ViT-Lite-2/4, CVT-2/4 and CCT-2/3x2 against a ResNet of similar size, each over 3 seeds::

    python -m timm_cct.demo

The same command on your data or on CIFAR (torchvision's format, not downloaded), with the paper's recipe::

    python -m timm_cct.demo --data-dir path/to/imagefolder
    python -m timm_cct.demo --dataset cifar10 --data-dir path/to/torchvision/root --device cuda

Writes ``results.md``, ``results.csv``, ``results.json``, ``curves.png``, ``seqpool.png`` and a
Hub-ready folder of the best transformer under ``--output``.
"""
import argparse
import copy
import csv
import json
import os
import platform
import random
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import timm
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import timm_cct  # noqa: F401  (registers the models)
from timm_cct.hub import export_to_hub
from timm_cct.profile import model_cost
from timm_cct.visualize import (
    _require_matplotlib, plot_learning_curves, plot_seqpool_attention, seqpool_attention)

__all__ = ['main', 'parse_args', 'run_demo', 'stratified_split', 'load_data', 'create_demo_model', 'CNN_BASELINE']

DIGITS_DESCRIPTION = 'sklearn digits (1,797 8x8 scans, upsampled to {size}x{size})'
# A timm ResNet-10-T narrowed to ~0.3M parameters, the size of the small transformers.
CNN_BASELINE = 'resnet10t_tiny'
CNN_BASELINE_ARGS = ('resnet10t', dict(channels=(16, 32, 64, 128), stem_width=16))
CIFAR_STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Defaults per setting; any option given on the command line wins.
DIGITS_RECIPE = dict(
    models=['vit_lite_2_4_32', 'cvt_2_4_32', 'cct_2_3x2_32', CNN_BASELINE], seeds=[0, 1, 2],
    epochs=30, img_size=16, batch_size=64, lr=2e-3, weight_decay=0.06, warmup_epochs=2, cooldown_epochs=0,
    warmup_lr=1e-5, min_lr=1e-5, mixup=0.8, cutmix=1.0, mixup_prob=0.5, mixup_off_epoch=0, smoothing=0.1,
    aa='rand-m9-mstd0.5-inc1', hflip=0.0, scale=(0.8, 1.0), drop_path=0.1,
)
# The paper's CIFAR recipe (cct_7_3x1_32, 300 epochs), also the default for an ImageFolder.
PAPER_RECIPE = dict(
    models=['cct_7_3x1_32'], seeds=[0],
    epochs=300, img_size=32, batch_size=128, lr=5.5e-4, weight_decay=0.06, warmup_epochs=10, cooldown_epochs=10,
    warmup_lr=1e-5, min_lr=1e-5, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_off_epoch=175, smoothing=0.1,
    aa='rand-m9-mstd0.5-inc1', hflip=0.5, scale=(0.8, 1.0), drop_path=0.1,
)


def _require_demo_deps() -> None:
    missing = []
    for module in ('sklearn', 'matplotlib', 'tqdm'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f'The demo needs {", ".join(missing)}, which is not installed; '
            f'install the extra with `pip install timm-cct[demo]`.')


# -- data ------------------------------------------------------------------------------------------

class ImageListDataset(torch.utils.data.Dataset):
    """In-memory PIL images and integer labels, with a transform."""

    def __init__(self, images: Sequence[Any], labels: Sequence[int], transform: Optional[Callable] = None) -> None:
        self.images, self.labels, self.transform = list(images), [int(y) for y in labels], transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


@dataclass
class DemoData:
    """Train and held-out datasets (transforms not yet set) and what describes them."""
    train: Any
    test: Any
    num_classes: int
    label_names: List[str]
    description: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    set_transforms: Callable[[Callable, Callable], None] = field(repr=False, default=None)


def _transform_setter(train: Any, test: Any) -> Callable[[Callable, Callable], None]:
    """``set_transforms(train_tf, test_tf)`` for two datasets (or ``Subset``s of one)."""
    def set_transforms(train_tf: Callable, test_tf: Callable) -> None:
        for ds, tf in ((train, train_tf), (test, test_tf)):
            (ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds).transform = tf
    return set_transforms


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
        n_test = max(1, round(len(idx) * test_frac)) if len(idx) > 1 else 0
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


def _limit(indices: List[int], labels: Sequence[int], limit: Optional[int], seed: int) -> List[int]:
    """At most ``limit`` of ``indices``, drawn class-balanced."""
    if not limit or limit >= len(indices):
        return indices
    by_class: Dict[int, List[int]] = {}
    for i in indices:
        by_class.setdefault(int(labels[i]), []).append(i)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    # Round-robin over the classes, so every class gets its share.
    order = [members[k] for k in range(max(map(len, by_class.values())))
             for _, members in sorted(by_class.items()) if k < len(members)]
    return sorted(order[:limit])


def _load_digits(img_size: int, test_frac: float, split_seed: int) -> DemoData:
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    # 0..16 ink levels -> 8-bit grey, upsampled once (bicubic) to the training size, as RGB.
    pixels = (digits.images * (255. / 16.)).round().clip(0, 255).astype('uint8')
    images = [Image.fromarray(p, mode='L').resize((img_size, img_size), Image.BICUBIC).convert('RGB') for p in pixels]
    labels = [int(y) for y in digits.target]
    train_idx, test_idx = stratified_split(labels, test_frac, split_seed)
    train_px = torch.tensor(pixels[train_idx], dtype=torch.float64) / 255.
    mean, std = (float(train_px.mean()),) * 3, (float(train_px.std()),) * 3
    train = ImageListDataset([images[i] for i in train_idx], [labels[i] for i in train_idx])
    test = ImageListDataset([images[i] for i in test_idx], [labels[i] for i in test_idx])
    return DemoData(train, test, 10, [str(i) for i in range(10)], DIGITS_DESCRIPTION.format(size=img_size),
                    mean, std, _transform_setter(train, test))


def _load_cifar(name: str, root: str) -> DemoData:
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR10 if name == 'cifar10' else CIFAR100
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as e:
        raise ValueError(
            f'--dataset {name} expects --data-dir to be the root of an existing torchvision download (the folder '
            f'holding {cls.base_folder}); nothing is downloaded. Got {root!r}: {e}') from e
    mean, std = CIFAR_STATS[name]
    return DemoData(train, test, len(train.classes), list(train.classes),
                    f'{name.upper()} ({len(train)} train / {len(test)} test images)', mean, std,
                    _transform_setter(train, test))


def _load_folder(root: str, test_frac: float, split_seed: int) -> DemoData:
    from torchvision.datasets import ImageFolder
    path = Path(root)
    if not path.is_dir():
        raise ValueError(
            f'--data-dir must be an existing folder (ImageFolder: one sub-folder per class), got {root!r}.')
    has_train = (path / 'train').is_dir()
    eval_dir = next((path / d for d in ('val', 'validation', 'test') if has_train and (path / d).is_dir()), None)
    if eval_dir is not None:
        train, test = ImageFolder(str(path / 'train')), ImageFolder(str(eval_dir))
        if train.classes != test.classes:
            raise ValueError(f'{path / "train"} and {eval_dir} must hold the same class folders, got '
                             f'{train.classes} and {test.classes}.')
        how = f'{path.name}: train/ + {eval_dir.name}/'
    else:
        full_train, full_test = ImageFolder(str(path)), ImageFolder(str(path))
        train_idx, test_idx = stratified_split(full_train.targets, test_frac, split_seed)
        train = torch.utils.data.Subset(full_train, train_idx)
        test = torch.utils.data.Subset(full_test, test_idx)
        train.classes = full_train.classes
        how = f'{path.name}: stratified {1 - test_frac:.0%}/{test_frac:.0%} split, seed {split_seed}'
    classes = list(train.classes)
    mean, std = IMAGENET_STATS
    return DemoData(train, test, len(classes), classes,
                    f'ImageFolder {how} ({len(train)} train / {len(test)} held-out images)', mean, std,
                    _transform_setter(train, test))


def load_data(args: argparse.Namespace) -> DemoData:
    """The dataset chosen by ``--dataset`` / ``--data-dir``, optionally cut down by ``--max-*-images``."""
    if args.dataset == 'digits':
        data = _load_digits(args.img_size, args.test_frac, args.split_seed)
    elif args.dataset in CIFAR_STATS:
        data = _load_cifar(args.dataset, args.data_dir)
    else:
        data = _load_folder(args.data_dir, args.test_frac, args.split_seed)
    for split, limit in (('train', args.max_train_images), ('test', args.max_test_images)):
        ds = getattr(data, split)
        if limit and limit < len(ds):
            labels = _labels_of(ds)
            keep = _limit(list(range(len(ds))), labels, limit, args.split_seed)
            setattr(data, split, torch.utils.data.Subset(ds, keep))
    return data


def _labels_of(ds: Any) -> List[int]:
    if isinstance(ds, torch.utils.data.Subset):
        parent = _labels_of(ds.dataset)
        return [parent[i] for i in ds.indices]
    for attr in ('labels', 'targets'):
        if hasattr(ds, attr):
            return [int(y) for y in getattr(ds, attr)]
    return [int(ds[i][1]) for i in range(len(ds))]


# -- models ----------------------------------------------------------------------------------------

def _is_compact_transformer(name: str) -> bool:
    return timm.is_model(name) and timm.models.model_entrypoint(name).__module__.startswith('timm_cct')


def create_demo_model(name: str, num_classes: int, img_size: int, drop_path: float) -> nn.Module:
    """A model by timm name (or ``CNN_BASELINE``), from scratch, for ``num_classes`` and ``img_size``."""
    if name == CNN_BASELINE:
        arch, kwargs = CNN_BASELINE_ARGS
        return timm.create_model(arch, num_classes=num_classes, **kwargs)
    if not timm.is_model(name):
        raise ValueError(f'Unknown model {name!r}; expected a timm model name (e.g. cct_2_3x2_32) or {CNN_BASELINE!r}.')
    kwargs = dict(num_classes=num_classes, drop_path_rate=drop_path)
    if _is_compact_transformer(name):
        kwargs['img_size'] = img_size
    return timm.create_model(name, **kwargs)


# -- training --------------------------------------------------------------------------------------

def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp == 'none' or (amp == 'auto' and device.type != 'cuda'):
        return None
    if amp == 'auto':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]


def _seed_everything(seed: int) -> None:
    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype]) -> Tuple[float, float]:
    """(top-1 %, mean cross-entropy) on ``loader``."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction='sum').item()
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    return 100. * correct / total, loss_sum / total


def train_run(name: str, seed: int, data: DemoData, args: argparse.Namespace, device: torch.device,
              position: int = 0) -> Dict[str, Any]:
    """Train ``name`` from scratch with ``seed``; returns the run's metrics, curves and final model."""
    from tqdm.auto import tqdm
    _seed_everything(seed)
    model = create_demo_model(name, data.num_classes, args.img_size, args.drop_path).to(device)
    g = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(
        data.train, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=g,
        num_workers=args.workers, pin_memory=device.type == 'cuda', persistent_workers=args.workers > 0)
    test_loader = torch.utils.data.DataLoader(
        data.test, batch_size=2 * args.batch_size, num_workers=args.workers, pin_memory=device.type == 'cuda')
    if len(train_loader) == 0:
        raise ValueError(f'--batch-size {args.batch_size} is larger than the training set ({len(data.train)} images).')

    optimizer = create_optimizer_v2(model, 'adamw', lr=args.lr, weight_decay=args.weight_decay)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, 'cosine', num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
        min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs, step_on_epochs=False,
        updates_per_epoch=len(train_loader))
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob, switch_prob=0.5,
                      label_smoothing=args.smoothing, num_classes=data.num_classes)
        train_loss_fn = SoftTargetCrossEntropy()
    else:
        train_loss_fn = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing > 0 else nn.CrossEntropyLoss()
    amp_dtype = _amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    history = {'train_loss': [], 'test_top1': [], 'test_loss': [], 'lr': []}
    train_seconds, step = 0., 0
    bar = tqdm(total=num_epochs * len(train_loader), desc=f'{name} seed {seed}', unit='step', leave=True,
               dynamic_ncols=True, disable=args.quiet, position=position, file=sys.stdout)
    for epoch in range(num_epochs):
        if mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup.mixup_enabled = False
        model.train()
        start, loss_sum, n_batches = time.perf_counter(), 0., 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                loss = train_loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            loss_sum += loss.item()
            n_batches += 1
            bar.update()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - start
        scheduler.step(epoch + 1)
        top1, test_loss = evaluate(model, test_loader, device, amp_dtype)
        history['train_loss'].append(loss_sum / n_batches)
        history['test_top1'].append(top1)
        history['test_loss'].append(test_loss)
        history['lr'].append(optimizer.param_groups[0]['lr'])
        bar.set_postfix(loss=f'{loss_sum / n_batches:.3f}', top1=f'{top1:.1f}')
    bar.close()
    return dict(model=name, seed=seed, top1=history['test_top1'][-1], train_seconds=train_seconds,
                epochs=num_epochs, history=history, net=model.eval())


# -- reporting -------------------------------------------------------------------------------------

def _family(name: str) -> str:
    if name == CNN_BASELINE:
        return 'CNN (timm resnet10t, channels 16-32-64-128)'
    for prefix, family in (('vit_lite', 'ViT-Lite'), ('cvt', 'CVT'), ('cct', 'CCT')):
        if name.startswith(prefix):
            return family
    return 'timm'


def summarize(runs: List[Dict[str, Any]], params: Dict[str, int], macs: Dict[str, int]) -> List[Dict[str, Any]]:
    """One row per model: mean/std top-1 over seeds, params, MACs, mean train time."""
    rows = []
    for name in dict.fromkeys(r['model'] for r in runs):
        mine = [r for r in runs if r['model'] == name]
        top1 = [r['top1'] for r in mine]
        rows.append(dict(
            model=name, family=_family(name), params=params[name], macs=macs[name],
            top1_mean=statistics.mean(top1), top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.,
            top1_runs=top1, seeds=[r['seed'] for r in mine],
            train_seconds_mean=statistics.mean(r['train_seconds'] for r in mine), epochs=mine[0]['epochs']))
    return rows


def _markdown_table(rows: List[Dict[str, Any]]) -> str:
    lines = ['| model | family | params | MACs | held-out top-1 (mean ± std) | runs | train time / run |',
             '|---|---|---:|---:|---:|---|---:|']
    for r in rows:
        runs = ', '.join(f'{t:.1f}' for t in r['top1_runs'])
        lines.append(f"| `{r['model']}` | {r['family']} | {r['params'] / 1e6:.3f} M | {r['macs'] / 1e6:.1f} M | "
                     f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} % | {runs} | {r['train_seconds_mean']:.0f} s |")
    return '\n'.join(lines)


def recipe_text(args: argparse.Namespace, data: DemoData) -> str:
    mix = (f"Mixup {args.mixup} / CutMix {args.cutmix} (prob {args.mixup_prob}, switch 0.5"
           + (f", off from epoch {args.mixup_off_epoch}" if args.mixup_off_epoch else '') + ')')
    return (f"From scratch, {args.epochs} epochs (+{args.cooldown_epochs} cool-down), batch {args.batch_size}, AdamW "
            f"lr {args.lr:g} wd {args.weight_decay:g}, cosine schedule with {args.warmup_epochs} warm-up epochs "
            f"(from {args.warmup_lr:g}, min {args.min_lr:g}), RandAugment `{args.aa}`, {mix}, label smoothing "
            f"{args.smoothing}, random-resized-crop scale {args.scale[0]}-{args.scale[1]}, hflip {args.hflip}, "
            f"drop path {args.drop_path}, {args.img_size}x{args.img_size} input, mean {_fmt(data.mean)} "
            f"std {_fmt(data.std)}.")


def _fmt(values: Sequence[float]) -> str:
    return '(' + ', '.join(f'{v:.4f}' for v in values) + ')'


def write_results(out: Path, rows: List[Dict[str, Any]], runs: List[Dict[str, Any]], meta: Dict[str, Any]) -> None:
    """results.md (table + setup), results.csv (one row per model), results.json (everything, curves included)."""
    md = [f"# From scratch on {meta['dataset']}", '',
          f"Held-out split: {meta['train_images']} train / {meta['test_images']} test images. "
          f"Top-1 after the last epoch, over seeds {meta['seeds']}.", '',
          _markdown_table(rows), '',
          f"Recipe: {meta['recipe']}", '',
          f"MACs: one {meta['img_size']}x{meta['img_size']} image, counted by `torch.utils.flop_counter."
          f"FlopCounterMode` (flops / 2), attention matrix products included. Train time: training steps "
          f"only, mean per run.", '',
          f"Machine: {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, timm {meta['timm']}; "
          f"total wall time {meta['wall_seconds']:.0f} s (1-min load average {meta['load_average']['start']} at "
          f"start, {meta['load_average']['end']} at the end). Exported: `{meta['export']['model']}` seed "
          f"{meta['export']['seed']} ({meta['export']['top1']:.2f} %) via {meta['export']['how']}.", '']
    (out / 'results.md').write_text('\n'.join(md))
    with open(out / 'results.csv', 'w', newline='') as f:
        fields = ['model', 'family', 'params', 'macs', 'top1_mean', 'top1_std', 'top1_runs', 'seeds',
                  'train_seconds_mean', 'epochs']
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (' '.join(map(str, r[k])) if isinstance(r[k], list) else r[k]) for k in fields})
    payload = dict(meta=meta, summary=rows,
                   runs=[{k: v for k, v in r.items() if k != 'net'} for r in runs])
    (out / 'results.json').write_text(json.dumps(payload, indent=1))


def export_best(run: Dict[str, Any], folder: Path, data: DemoData, args: argparse.Namespace) -> str:
    """Write a Hub-ready folder of ``run``'s model; returns how it was written."""
    model, name = run['net'].cpu(), run['model']
    model.pretrained_cfg = dict(
        model.pretrained_cfg, input_size=(3, args.img_size, args.img_size), mean=tuple(data.mean),
        std=tuple(data.std), crop_pct=1.0, interpolation='bicubic', num_classes=data.num_classes,
        label_names=list(data.label_names))
    recipe = recipe_text(args, data) + (f' Best of {len(args.seeds)} seeds by held-out top-1.'
                                        if len(args.seeds) > 1 else '')
    export_to_hub(model, str(folder), model_name=name, dataset=data.description, recipe=recipe,
                  results={'top1': round(run['top1'], 2)}, label_names=list(data.label_names))
    return 'timm_cct.hub.export_to_hub'


def draw_seqpool(run: Dict[str, Any], data: DemoData, path: Path, n: int = 16) -> None:
    """SeqPool maps of the first ``n`` held-out images (a class-balanced pick) for ``run``'s model."""
    model = run['net']
    labels = _labels_of(data.test)
    pick = []
    for k in range(n):  # round-robin over classes
        want = k % data.num_classes
        idx = next((i for i, y in enumerate(labels) if y == want and i not in pick), None)
        if idx is not None:
            pick.append(idx)
    images = torch.stack([data.test[i][0] for i in pick])
    device = next(model.parameters()).device
    with torch.no_grad():
        preds = model.eval()(images.to(device)).argmax(-1).tolist()
    maps = seqpool_attention(model, images)
    titles = [f'true {data.label_names[labels[i]]} / pred {data.label_names[p]}' for i, p in zip(pick, preds)]
    plot_seqpool_attention(images, maps, data.mean, data.std, titles=titles, path=str(path))


def run_demo(args: argparse.Namespace) -> Dict[str, Any]:
    """Train every model over every seed, then write the table, plots and the Hub folder."""
    _require_demo_deps()
    plt = _require_matplotlib()
    wall_start, load_start = time.perf_counter(), _load_average()
    device = torch.device(args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    train_tf = create_transform(
        args.img_size, is_training=True, scale=tuple(args.scale), hflip=args.hflip, vflip=0.,
        auto_augment=args.aa or None, interpolation='bicubic', mean=data.mean, std=data.std, re_prob=0.)
    test_tf = create_transform(args.img_size, is_training=False, interpolation='bicubic', crop_pct=1.0,
                               mean=data.mean, std=data.std)
    data.set_transforms(train_tf, test_tf)
    print(f'{data.description}: {len(data.train)} train / {len(data.test)} held-out images; '
          f'models {", ".join(args.models)}; seeds {args.seeds}; {args.epochs} epochs on {device}.')

    runs, params, macs = [], {}, {}
    for name in args.models:
        probe = create_demo_model(name, data.num_classes, args.img_size, args.drop_path)
        cost = model_cost(probe, (3, args.img_size, args.img_size), name=name)
        params[name], macs[name] = cost.params, cost.macs
        for seed in args.seeds:
            run = train_run(name, seed, data, args, device)
            runs.append(run)
            # Keep only the best model of each name in memory.
            best_of_name = max((r for r in runs if r['model'] == name), key=lambda r: r['top1'])
            for r in runs:
                if r['model'] == name and r is not best_of_name:
                    r['net'] = None

    rows = summarize(runs, params, macs)
    transformers = [r for r in runs if _is_compact_transformer(r['model']) and r['net'] is not None]
    best = max(transformers or [r for r in runs if r['net'] is not None], key=lambda r: r['top1'])
    export_dir = out / 'hub' / best['model']
    how = export_best(best, export_dir, data, args)

    history = {name: [r['history'] for r in runs if r['model'] == name] for name in args.models}
    plot_learning_curves(history, path=str(out / 'curves.png'), title=f'From scratch on {data.description}')
    plt.close('all')
    seq = [r for r in runs if r['net'] is not None and getattr(r['net'], 'seq_pool', None) is not None]
    if seq:
        draw_seqpool(max(seq, key=lambda r: r['top1']), data, out / 'seqpool.png')
        plt.close('all')

    meta = dict(
        dataset=data.description, train_images=len(data.train), test_images=len(data.test), seeds=args.seeds,
        img_size=args.img_size, recipe=recipe_text(args, data), device=_device_name(device),
        threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
        wall_seconds=time.perf_counter() - wall_start, load_average=dict(start=load_start, end=_load_average()),
        export=dict(model=best['model'], seed=best['seed'], top1=best['top1'], folder=str(export_dir), how=how),
        args=dict(vars(args)))
    write_results(out, rows, runs, meta)
    print(_markdown_table(rows))
    print(f'Wrote {out}/results.md, results.csv, results.json, curves.png'
          + (', seqpool.png' if seq else '') + f' and the Hub folder {export_dir} ({how}).')
    return dict(rows=rows, runs=runs, meta=meta, output=out)


def _load_average() -> Optional[float]:
    """1-minute load average (other work sharing the CPU slows the timings), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()})'


# -- command line ----------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line; options left out take the digits recipe or, for CIFAR/ImageFolder, the paper's."""
    p = argparse.ArgumentParser(prog='python -m timm_cct.demo', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--dataset', choices=['digits', 'cifar10', 'cifar100', 'folder'], default=None,
                   help='default: digits, or folder when --data-dir is given')
    p.add_argument('--data-dir', default=None, help='ImageFolder root (class sub-folders, or train/ + val/) or the '
                   'root of a torchvision CIFAR download')
    p.add_argument('--models', nargs='+', default=None,
                   help=f'timm model names, or {CNN_BASELINE} (a ~0.3M-parameter timm ResNet-10-T)')
    p.add_argument('--model', dest='models', nargs=1, help='a single model (same as --models NAME)')
    p.add_argument('--seeds', type=int, nargs='+', default=None)
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--weight-decay', type=float, default=None)
    p.add_argument('--warmup-epochs', type=int, default=None)
    p.add_argument('--cooldown-epochs', type=int, default=None)
    p.add_argument('--warmup-lr', type=float, default=None)
    p.add_argument('--min-lr', type=float, default=None)
    p.add_argument('--mixup', type=float, default=None, help='Mixup alpha (0: off)')
    p.add_argument('--cutmix', type=float, default=None, help='CutMix alpha (0: off)')
    p.add_argument('--mixup-prob', type=float, default=None, help='probability of mixing a batch')
    p.add_argument('--mixup-off-epoch', type=int, default=None, help='turn Mixup/CutMix off from this epoch (0: never)')
    p.add_argument('--smoothing', type=float, default=None)
    p.add_argument('--aa', default=None, help="timm auto-augment policy ('' for none)")
    p.add_argument('--hflip', type=float, default=None)
    p.add_argument('--scale', type=float, nargs=2, default=None, help='random-resized-crop scale range')
    p.add_argument('--drop-path', type=float, default=None)
    p.add_argument('--test-frac', type=float, default=0.2, help='held-out fraction when the data has no test split')
    p.add_argument('--split-seed', type=int, default=0)
    p.add_argument('--max-train-images', type=int, default=None, help='use at most this many training images')
    p.add_argument('--max-test-images', type=int, default=None, help='use at most this many held-out images')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', choices=['auto', 'bf16', 'fp16', 'none'], default='auto',
                   help='autocast dtype; auto: bf16 (else fp16) on CUDA, none on CPU')
    p.add_argument('--workers', type=int, default=None, help='data loader workers (default: 0 on CPU, 8 on CUDA)')
    p.add_argument('--output', default='demo_output')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    args = p.parse_args(argv)

    if args.dataset is None:
        args.dataset = 'folder' if args.data_dir else 'digits'
    if args.dataset != 'digits' and not args.data_dir:
        p.error(f'--dataset {args.dataset} needs --data-dir (an ImageFolder, or the root of an existing '
                f'torchvision CIFAR download; nothing is downloaded).')
    if args.dataset == 'digits' and args.data_dir:
        p.error('--data-dir is for --dataset folder/cifar10/cifar100; the digits come with scikit-learn.')
    recipe = DIGITS_RECIPE if args.dataset == 'digits' else PAPER_RECIPE
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, copy.deepcopy(value))
    if args.workers is None:
        args.workers = 8 if args.device.startswith('cuda') else 0
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error('--device cuda was asked for, but torch sees no CUDA GPU.')
    for key in ('epochs', 'batch_size', 'img_size'):
        if getattr(args, key) < 1:
            p.error(f'--{key.replace("_", "-")} must be >= 1, got {getattr(args, key)}.')
    if args.batch_size % 2 and (args.mixup > 0 or args.cutmix > 0):
        p.error(f'Mixup/CutMix needs an even --batch-size, got {args.batch_size}.')
    for name in args.models:
        if name != CNN_BASELINE and not timm.is_model(name):
            p.error(f'unknown model {name!r}; expected a timm model name (e.g. cct_2_3x2_32) or {CNN_BASELINE}.')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run_demo(args)
    except (ImportError, ValueError) as e:
        print(f'python -m timm_cct.demo: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
