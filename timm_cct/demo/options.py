"""The demo's command line and recipes.

The digits recipe is the demo's own (small data, minutes on a CPU). For CIFAR and image folders the recipe is
read from the shipped ``timm_cct/configs`` file of the paper's CCT-7/3x1 run (the one ``train.py --config``
takes), so the demo and timm's ``train.py`` train with the same settings. Options given on the command line win.
"""
import argparse
import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import timm
import timm.optim

from timm_cct._cli import CliParser
from timm_cct.recipes import load_config

from .data import EVAL_SPLITS, FOLDER_STATS
from .train import CNN_BASELINE

__all__ = ['DIGITS_RECIPE', 'PAPER_CONFIGS', 'RECIPE_KEYS', 'paper_recipe', 'parse_args', 'check_output']

# Settings a recipe gives (names of timm train.py's arguments).
RECIPE_KEYS = (
    'epochs', 'img_size', 'batch_size', 'opt', 'sched', 'lr', 'weight_decay', 'warmup_epochs', 'cooldown_epochs',
    'warmup_lr', 'min_lr', 'mixup', 'cutmix', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode', 'mixup_off_epoch',
    'smoothing', 'aa', 'reprob', 'remode', 'hflip', 'scale', 'color_jitter', 'interpolation',
    'train_interpolation', 'crop_pct', 'drop_path')
# train.py's defaults for the settings the shipped configs leave out (drop path: the model's own default).
TRAIN_PY_DEFAULTS = dict(hflip=0.5, color_jitter=0.4, drop_path=None)
# The shipped config whose recipe the demo runs, per dataset; an image folder gets the CIFAR-10 one.
PAPER_CONFIGS = {
    'cifar10': 'cct_7_3x1_32.cifar10_300e',
    'cifar100': 'cct_7_3x1_32_c100.cifar100_300e',
    'folder': 'cct_7_3x1_32.cifar10_300e',
}
# The demo's own recipe for scikit-learn's digits.
DIGITS_RECIPE = dict(
    models=['vit_lite_2_4_32', 'cvt_2_4_32', 'cct_2_3x2_32', CNN_BASELINE], seeds=[0, 1, 2],
    epochs=30, img_size=16, batch_size=64, opt='adamw', sched='cosine', lr=2e-3, weight_decay=0.06,
    warmup_epochs=2, cooldown_epochs=0, warmup_lr=1e-5, min_lr=1e-5, mixup=0.8, cutmix=1.0, mixup_prob=0.5,
    mixup_switch_prob=0.5, mixup_mode='batch', mixup_off_epoch=0, smoothing=0.1, aa='rand-m9-mstd0.5-inc1',
    reprob=0., remode='pixel', hflip=0.0, scale=[0.8, 1.0], color_jitter=0.4, interpolation='bicubic',
    train_interpolation='bicubic', crop_pct=1.0, drop_path=0.1,
)


def paper_recipe(dataset: str) -> Dict[str, Any]:
    """The demo's settings for ``dataset`` (cifar10, cifar100, folder), read from the shipped config."""
    name = PAPER_CONFIGS[dataset]
    cfg = load_config(name)
    recipe: Dict[str, Any] = dict(models=[cfg['model']], seeds=[0], recipe_source=f'timm_cct/configs/{name}.yaml')
    for key in RECIPE_KEYS:
        recipe[key] = cfg[key] if key in cfg else TRAIN_PY_DEFAULTS[key]
    return recipe


def check_output(path: Path, overwrite: bool) -> Optional[str]:
    """Why ``path`` cannot take the demo's output, or None: a file, or a folder holding files (unless overwrite)."""
    if path.exists() and not path.is_dir():
        return f'--output {path} is a file; expected a folder (new or empty) for the results.'
    if path.is_dir() and not overwrite:
        held = sorted(p.name for p in path.iterdir())
        if held:
            shown = ', '.join(held[:5]) + (f' and {len(held) - 5} more' if len(held) > 5 else '')
            return (f'--output {path} already holds files ({shown}); choose a new or empty folder, or pass '
                    f'--overwrite to write the results there (files of the same name are replaced, others kept).')
    return None


def _device_error(text: str) -> Optional[str]:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        return f'--device {text!r} is not a device; expected cpu, cuda, cuda:N or mps.'
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            return f'--device {text} was asked for, but torch sees no CUDA GPU; use --device cpu.'
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f'--device {text}: torch sees {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...).'
    elif device.type == 'mps':
        if not torch.backends.mps.is_available():
            return '--device mps was asked for, but torch sees no MPS device.'
    elif device.type != 'cpu':
        return f'--device {text!r} is not supported by the demo; expected cpu, cuda, cuda:N or mps.'
    return None


def _range_errors(args: argparse.Namespace) -> List[str]:
    checks = [
        ('epochs', lambda v: v >= 1, '>= 1'), ('batch_size', lambda v: v >= 1, '>= 1'),
        ('img_size', lambda v: v >= 4, '>= 4'), ('lr', lambda v: v > 0, '> 0'),
        ('weight_decay', lambda v: v >= 0, '>= 0'), ('warmup_epochs', lambda v: v >= 0, '>= 0'),
        ('cooldown_epochs', lambda v: v >= 0, '>= 0'), ('warmup_lr', lambda v: v >= 0, '>= 0'),
        ('min_lr', lambda v: v >= 0, '>= 0'), ('mixup', lambda v: v >= 0, '>= 0'), ('cutmix', lambda v: v >= 0, '>= 0'),
        ('mixup_prob', lambda v: 0 <= v <= 1, 'in [0, 1]'), ('mixup_switch_prob', lambda v: 0 <= v <= 1, 'in [0, 1]'),
        ('mixup_off_epoch', lambda v: v >= 0, '>= 0'), ('smoothing', lambda v: 0 <= v < 1, 'in [0, 1)'),
        ('reprob', lambda v: 0 <= v <= 1, 'in [0, 1]'), ('hflip', lambda v: 0 <= v <= 1, 'in [0, 1]'),
        ('color_jitter', lambda v: v >= 0, '>= 0'), ('crop_pct', lambda v: 0 < v <= 1, 'in (0, 1]'),
        ('drop_path', lambda v: v is None or 0 <= v < 1, 'in [0, 1)'),
        ('test_frac', lambda v: 0 < v < 1, 'in (0, 1)'), ('workers', lambda v: v >= 0, '>= 0'),
        ('max_train_images', lambda v: v is None or v >= 1, '>= 1'),
        ('max_test_images', lambda v: v is None or v >= 1, '>= 1'),
    ]
    errors = [f'--{key.replace("_", "-")} must be {want}, got {getattr(args, key)}.'
              for key, ok, want in checks if not ok(getattr(args, key))]
    lo, hi = args.scale
    if not 0 < lo <= hi <= 1:
        errors.append(f'--scale must be two fractions 0 < MIN <= MAX <= 1, got {lo} {hi}.')
    return errors


def _augment_error(args: argparse.Namespace) -> Optional[str]:
    """Build the training transform once, so a bad policy string or setting stops here, not mid-training."""
    from timm.data import create_transform
    try:
        create_transform(args.img_size, is_training=True, auto_augment=args.aa or None,
                         interpolation=args.train_interpolation, mean=(0.5,) * 3, std=(0.5,) * 3)
    except Exception as e:  # timm raises AssertionError, KeyError or ValueError for a bad policy
        return (f'--aa {args.aa!r} is not a timm augmentation policy ({type(e).__name__}: {e}); expected e.g. '
                f'rand-m9-mstd0.5-inc1, augmix-m5-w3, trivialaugment, v0, or \'\' for none.')
    try:
        create_transform(args.img_size, is_training=True, scale=tuple(args.scale), hflip=args.hflip,
                         color_jitter=args.color_jitter, auto_augment=args.aa or None,
                         interpolation=args.train_interpolation, re_prob=args.reprob, re_mode=args.remode,
                         mean=(0.5,) * 3, std=(0.5,) * 3)
    except Exception as e:
        return f'the augmentation settings are not valid for timm.data.create_transform: {type(e).__name__}: {e}'
    return None


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc
    p = CliParser(prog='python -m timm_cct.demo', description=doc.split('\n\n')[0],
                  epilog='Image folders: class folders, or train/ with val/, validation/, valid/ or test/ (the '
                         'first present). Every image is decoded before training; unreadable files are skipped, '
                         'counted and named in the results. Any image mode is read as RGB. The data must hold at '
                         'least 2 classes, the same classes in both splits and images in every class. --output '
                         'must be new or empty unless --overwrite.')
    p.add_argument('--dataset', choices=['digits', 'cifar10', 'cifar100', 'folder'], default=None,
                   help='default: digits, or folder when --data-dir is given')
    p.add_argument('--data-dir', default=None,
                   help=f'image folder (class sub-folders, or train/ + {"/".join(EVAL_SPLITS)}) or the root of '
                        f'a torchvision CIFAR download')
    models = p.add_mutually_exclusive_group()
    models.add_argument('--models', nargs='+', default=None,
                        help=f'timm model names, or {CNN_BASELINE} (a ~0.3M-parameter timm ResNet-10-T)')
    models.add_argument('--model', dest='models', nargs=1, help='a single model (same as --models NAME)')
    p.add_argument('--seeds', type=int, nargs='+', default=None, help='one run per seed (distinct seeds)')
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--opt', default=None, help='timm optimizer name (timm.optim.list_optimizers())')
    p.add_argument('--sched', choices=['cosine', 'tanh', 'poly', 'step'], default=None, help='timm scheduler')
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--weight-decay', type=float, default=None)
    p.add_argument('--warmup-epochs', type=int, default=None)
    p.add_argument('--cooldown-epochs', type=int, default=None)
    p.add_argument('--warmup-lr', type=float, default=None)
    p.add_argument('--min-lr', type=float, default=None)
    p.add_argument('--mixup', type=float, default=None, help='Mixup alpha (0: off)')
    p.add_argument('--cutmix', type=float, default=None, help='CutMix alpha (0: off)')
    p.add_argument('--mixup-prob', type=float, default=None, help='probability of mixing a batch')
    p.add_argument('--mixup-switch-prob', type=float, default=None, help='probability of CutMix when both are on')
    p.add_argument('--mixup-mode', choices=['batch', 'pair', 'elem'], default=None)
    p.add_argument('--mixup-off-epoch', type=int, default=None, help='turn Mixup/CutMix off from this epoch (0: never)')
    p.add_argument('--smoothing', type=float, default=None)
    p.add_argument('--aa', default=None, help="timm augmentation policy, e.g. rand-m9-mstd0.5-inc1 ('' for none)")
    p.add_argument('--reprob', type=float, default=None, help='random erasing probability')
    p.add_argument('--remode', choices=['const', 'rand', 'pixel'], default=None, help='random erasing mode')
    p.add_argument('--hflip', type=float, default=None)
    p.add_argument('--scale', type=float, nargs=2, default=None, help='random-resized-crop scale range')
    p.add_argument('--color-jitter', type=float, default=None, help='(timm turns it off when --aa is set)')
    p.add_argument('--interpolation', choices=['bilinear', 'bicubic', 'nearest'], default=None,
                   help='held-out resize interpolation')
    p.add_argument('--train-interpolation', choices=['bilinear', 'bicubic', 'nearest', 'random'], default=None)
    p.add_argument('--crop-pct', type=float, default=None, help='held-out center-crop fraction')
    p.add_argument('--drop-path', type=float, default=None, help="stochastic depth (default: the recipe's)")
    p.add_argument('--test-frac', type=float, default=0.2, help='held-out fraction when the data has no held-out split')
    p.add_argument('--split-seed', type=int, default=0)
    p.add_argument('--max-train-images', type=int, default=None, help='use at most this many training images')
    p.add_argument('--max-test-images', type=int, default=None, help='use at most this many held-out images')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', choices=['auto', 'bf16', 'fp16', 'none'], default='auto',
                   help='autocast dtype; auto: bf16 (else fp16) on CUDA, none on CPU')
    p.add_argument('--workers', type=int, default=None, help='data loader workers (default: 0 on CPU, 8 on CUDA)')
    p.add_argument('--output', default='demo_output', help='results folder: new or empty, unless --overwrite')
    p.add_argument('--overwrite', action='store_true',
                   help='write into an --output folder that already holds files (same-named files are replaced)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check the command line; options left out take the dataset's recipe.

    Every check runs here, before any data is read or any file written: a user error exits with status 2.
    """
    p = build_parser()
    args = p.parse_args(argv)
    if args.dataset is None:
        args.dataset = 'folder' if args.data_dir else 'digits'
    if args.dataset != 'digits' and not args.data_dir:
        p.error(f'--dataset {args.dataset} needs --data-dir (an image folder, or the root of an existing '
                f'torchvision CIFAR download; nothing is downloaded).')
    if args.dataset == 'digits' and args.data_dir:
        p.error('--data-dir is for --dataset folder/cifar10/cifar100; the digits come with scikit-learn.')
    if args.data_dir and not Path(args.data_dir).is_dir():
        p.error(f'--data-dir {args.data_dir} is not a folder; expected an image folder (class sub-folders, or '
                f'train/ + val/) or the root of a torchvision CIFAR download.')
    recipe = copy.deepcopy(DIGITS_RECIPE if args.dataset == 'digits' else paper_recipe(args.dataset))
    args.recipe_source = recipe.pop('recipe_source', 'the demo\'s digits recipe')
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dataset == 'folder':
        args.recipe_source += f', with {FOLDER_STATS} mean/std'
    if args.workers is None:
        args.workers = 8 if args.device.startswith('cuda') else 0

    error = _device_error(args.device)
    if error:
        p.error(error)
    for message in _range_errors(args):
        p.error(message)
    for option, values in (('--seeds', args.seeds), ('--models', args.models)):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            p.error(f'{option} lists {", ".join(map(str, repeated))} more than once; each run must be distinct '
                    f'(a repeat would count the same run twice in the mean and std).')
    for name in args.models:
        if name != CNN_BASELINE and not timm.is_model(name):
            p.error(f'unknown model {name!r}; expected a timm model name (e.g. cct_2_3x2_32) or {CNN_BASELINE}.')
    if args.opt.lower() not in timm.optim.list_optimizers():
        p.error(f'--opt {args.opt!r} is not a timm optimizer; expected one of timm.optim.list_optimizers(), '
                f'e.g. adamw, sgd, lamb.')
    if args.batch_size % 2 and (args.mixup > 0 or args.cutmix > 0):
        p.error(f'Mixup/CutMix needs an even --batch-size, got {args.batch_size}.')
    error = _augment_error(args)
    if error:
        p.error(error)
    error = check_output(Path(args.output), args.overwrite)
    if error:
        p.error(error)
    return args
