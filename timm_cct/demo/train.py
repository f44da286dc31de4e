"""The demo's training loop, built from timm's parts: ``create_loader`` (transforms, RandAugment, random erasing,
GPU prefetch), ``Mixup``, ``create_optimizer_v2``, ``create_scheduler_v2`` and timm's losses.

The loop keeps the loss on the device and reads it back once per epoch, so CUDA steps are not synchronised.
"""
import argparse
import random
import sys
import time
from contextlib import nullcontext
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

import timm
from timm.data import Mixup, create_loader
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import timm_cct  # noqa: F401  (registers the models)
from timm_cct.cct import CompactTransformer

from .data import DemoData, SampleDataset

__all__ = ['CNN_BASELINE', 'create_demo_model', 'is_compact_transformer', 'make_loader', 'evaluate', 'train_run']

# A timm ResNet-10-T narrowed to ~0.3M parameters, the size of the small transformers.
CNN_BASELINE = 'resnet10t_tiny'
CNN_BASELINE_ARGS = ('resnet10t', dict(channels=(16, 32, 64, 128), stem_width=16))


def is_compact_transformer(name: str) -> bool:
    """Whether the timm model ``name`` is one of this package's (ViT-Lite, CVT, CCT)."""
    return name != CNN_BASELINE and timm.is_model(name) and \
        timm.models.model_entrypoint(name).__module__.startswith('timm_cct')


def create_demo_model(name: str, num_classes: int, img_size: int, drop_path: Optional[float] = None) -> nn.Module:
    """A model by timm name (or ``CNN_BASELINE``), from scratch, for ``num_classes`` and ``img_size``."""
    if name == CNN_BASELINE:
        arch, kwargs = CNN_BASELINE_ARGS
        return timm.create_model(arch, num_classes=num_classes, **kwargs)
    if not timm.is_model(name):
        raise ValueError(f'Unknown model {name!r}; expected a timm model name (e.g. cct_2_3x2_32) or {CNN_BASELINE!r}.')
    kwargs: Dict[str, Any] = dict(num_classes=num_classes)
    if drop_path is not None:
        kwargs['drop_path_rate'] = drop_path
    if is_compact_transformer(name):
        kwargs['img_size'] = img_size
    return timm.create_model(name, **kwargs)


def make_loader(dataset: SampleDataset, data: DemoData, args: argparse.Namespace, device: torch.device,
                is_training: bool):
    """timm's loader for ``dataset`` with the recipe's transforms (normalisation on the GPU when on CUDA)."""
    cuda = device.type == 'cuda'
    return create_loader(
        dataset, input_size=(3, args.img_size, args.img_size),
        batch_size=args.batch_size if is_training else 2 * args.batch_size, is_training=is_training,
        use_prefetcher=cuda, device=device, pin_memory=cuda, num_workers=args.workers,
        persistent_workers=args.workers > 0,  # timm < 1.0.26 keeps workers by default, which needs workers
        re_prob=args.reprob, re_mode=args.remode, scale=tuple(args.scale), hflip=args.hflip, vflip=0.,
        color_jitter=args.color_jitter, auto_augment=args.aa or None,
        interpolation=args.train_interpolation if is_training else args.interpolation,
        mean=data.mean, std=data.std, crop_pct=args.crop_pct)


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
    """(top-1 %, mean cross-entropy) on ``loader``; one read-back at the end."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction='sum')
        correct += (logits.argmax(-1) == y).sum()
        total += y.shape[0]
    return 100. * correct.item() / total, loss_sum.item() / total


def train_run(name: str, seed: int, data: DemoData, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Train ``name`` from scratch with ``seed``; returns the run's metrics, curves and final model."""
    from tqdm.auto import tqdm
    _seed_everything(seed)
    model = create_demo_model(name, data.num_classes, args.img_size, args.drop_path).to(device)
    train_loader = make_loader(data.train, data, args, device, is_training=True)
    test_loader = make_loader(data.test, data, args, device, is_training=False)

    optimizer = create_optimizer_v2(model, args.opt, lr=args.lr, weight_decay=args.weight_decay)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
        min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs, step_on_epochs=False,
        updates_per_epoch=len(train_loader))
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                      num_classes=data.num_classes)
        train_loss_fn = SoftTargetCrossEntropy()
    else:
        train_loss_fn = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing > 0 else nn.CrossEntropyLoss()
    amp_dtype = _amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    history = {'train_loss': [], 'test_top1': [], 'test_loss': [], 'lr': []}
    train_seconds, step = 0., 0
    bar = tqdm(total=num_epochs * len(train_loader), desc=f'{name} seed {seed}', unit='step', leave=True,
               dynamic_ncols=True, disable=args.quiet, file=sys.stdout)
    for epoch in range(num_epochs):
        if mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup.mixup_enabled = False
        model.train()
        start, n_batches = time.perf_counter(), 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
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
            loss_sum += loss.detach()
            n_batches += 1
            bar.update()
        train_loss = loss_sum.item() / max(n_batches, 1)  # the epoch's one read-back (synchronises CUDA)
        train_seconds += time.perf_counter() - start
        scheduler.step(epoch + 1)
        top1, test_loss = evaluate(model, test_loader, device, amp_dtype)
        history['train_loss'].append(train_loss)
        history['test_top1'].append(top1)
        history['test_loss'].append(test_loss)
        history['lr'].append(optimizer.param_groups[0]['lr'])
        bar.set_postfix(loss=f'{train_loss:.3f}', top1=f'{top1:.1f}')
    bar.close()
    return dict(model=name, seed=seed, top1=history['test_top1'][-1], train_seconds=train_seconds,
                epochs=num_epochs, history=history, net=model.eval(),
                is_compact_transformer=isinstance(model, CompactTransformer))
