"""The demo from start to end: check everything, train every model over every seed, write the results as runs
finish, then the plots and the Hub folder of the best Compact Transformer."""
import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import timm

from timm_cct._cli import fail
from timm_cct.profile import model_cost

from . import report
from .data import DataError, DemoData, balanced_subset, load_cifar, load_digits, load_folder
from .options import check_output, parse_args
from .train import create_demo_model, train_run

__all__ = ['load_data', 'run_demo', 'main']
PROG = 'python -m timm_cct.demo'


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


def load_data(args: argparse.Namespace) -> DemoData:
    """The dataset chosen by ``--dataset`` / ``--data-dir``, checked, optionally cut down by ``--max-*-images``."""
    if args.dataset == 'digits':
        data = load_digits(args.img_size, args.test_frac, args.split_seed)
    elif args.dataset in ('cifar10', 'cifar100'):
        data = load_cifar(args.dataset, args.data_dir)
    else:
        data = load_folder(args.data_dir, args.test_frac, args.split_seed)
    for split, option in (('train', 'max_train_images'), ('test', 'max_test_images')):
        limit = getattr(args, option)
        if limit and limit < data.num_classes:
            raise DataError(f'--{option.replace("_", "-")} {limit} is fewer than the {data.num_classes} classes; '
                            f'every class needs at least one image.')
        ds = getattr(data, split)
        if limit and limit < len(ds):
            setattr(data, split, ds.subset(balanced_subset(ds.labels, limit, args.split_seed)))
    if len(data.train) < args.batch_size:
        raise DataError(f'--batch-size {args.batch_size} is larger than the training set ({len(data.train)} '
                        f'images); no full batch could be drawn. Pass a smaller --batch-size.')
    return data


def _costs(args: argparse.Namespace, data: DemoData) -> Dict[str, Any]:
    """Params and MACs of every model, built once at the run's size: a model that cannot be built stops here."""
    costs = {}
    for name in args.models:
        try:
            probe = create_demo_model(name, data.num_classes, args.img_size, args.drop_path)
            costs[name] = model_cost(probe, (3, args.img_size, args.img_size), name=name)
        except (ValueError, TypeError, RuntimeError, AssertionError) as e:
            raise ValueError(f'--models {name} cannot be built for {args.img_size}x{args.img_size} input and '
                             f'{data.num_classes} classes: {e}') from e
    return costs


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


def run_demo(args: argparse.Namespace) -> Dict[str, Any]:
    """Train every model over every seed, then write the table, plots and the Hub folder."""
    _require_demo_deps()
    from timm_cct.visualize import _require_matplotlib
    plt = _require_matplotlib()
    wall_start, load_start = time.perf_counter(), _load_average()
    device = torch.device(args.device)
    out = Path(args.output)
    error = check_output(out, args.overwrite)
    if error:
        raise ValueError(error)
    data = load_data(args)
    costs = _costs(args, data)
    src = data.source
    print(f'{data.description}\n  train: {src.get("train_split")}\n  held-out: {src.get("eval_split")}\n'
          f'  classes ({data.num_classes}): {", ".join(data.label_names[:20])}'
          + (' ...' if data.num_classes > 20 else ''))
    for note in src.get('notes', []):
        print(f'  note: {note}')
    for s in src.get('skipped', [])[:10]:
        print(f'  skipped: {s["file"]} ({s["reason"]})')
    if len(src.get('skipped', [])) > 10:
        print(f'  ... {len(src["skipped"]) - 10} more skipped files, all listed in results.json')
    print(f'{len(data.train)} train / {len(data.test)} held-out images; models {", ".join(args.models)}; '
          f'seeds {args.seeds}; {args.epochs} epochs on {device}; recipe: {args.recipe_source}.')
    out.mkdir(parents=True, exist_ok=True)

    total = len(args.models) * len(args.seeds)
    meta = dict(
        status='started', dataset=data.description, data=src, train_images=len(data.train),
        test_images=len(data.test), class_names=list(data.label_names), seeds=args.seeds, img_size=args.img_size,
        recipe=report.recipe_text(args, data), device=_device_name(device), threads=torch.get_num_threads(),
        torch=torch.__version__, timm=timm.__version__, wall_seconds=0., load_average=dict(start=load_start),
        export=None, args=dict(vars(args)))
    runs: List[Dict[str, Any]] = []
    params = {n: c.params for n, c in costs.items()}
    macs = {n: c.macs for n, c in costs.items()}

    def save(status: str) -> List[Dict[str, Any]]:
        rows = report.summarize(runs, params, macs)
        meta.update(status=status, wall_seconds=time.perf_counter() - wall_start)
        meta['load_average']['end'] = _load_average()
        report.write_results(out, rows, runs, meta)
        return rows

    for name in args.models:
        for seed in args.seeds:
            runs.append(train_run(name, seed, data, args, device))
            # Keep only the best model of each name in memory.
            best_of_name = max((r for r in runs if r['model'] == name), key=lambda r: r['top1'])
            for r in runs:
                if r['model'] == name and r is not best_of_name:
                    r['net'] = None
            save(f'{len(runs)} of {total} runs finished' + ('' if len(runs) == total else ', still running'))

    best = report.best_exportable(runs)
    if best is None:
        reason = (f'skipped: none of the models ({", ".join(args.models)}) is a Compact Transformer; '
                  f'timm_cct.hub exports ViT-Lite, CVT and CCT models')
        meta['export'] = dict(skipped=reason)
        print(f'Hub export {reason}.')
    else:
        export_dir = out / 'hub' / best['model']
        how = report.export_best(best, export_dir, data, args)
        meta['export'] = dict(model=best['model'], seed=best['seed'], top1=best['top1'], folder=str(export_dir),
                              how=how)
    save(f'all {total} runs finished; writing plots')

    report.draw_curves(runs, args.models, out / 'curves.png', title=f'From scratch on {data.description}')
    plt.close('all')
    seq = [r for r in runs if r['net'] is not None and getattr(r['net'], 'seq_pool', None) is not None]
    if seq:
        report.draw_seqpool(max(seq, key=lambda r: r['top1']), data, args, out / 'seqpool.png')
        plt.close('all')
    rows = save(f'finished: {total} runs')
    print(report.markdown_table(rows))
    written = ['results.md', 'results.csv', 'results.json', 'curves.png'] + (['seqpool.png'] if seq else [])
    print(f'Wrote {", ".join(str(out / f) for f in written)}'
          + (f' and the Hub folder {meta["export"]["folder"]}.' if best is not None else '.'))
    return dict(rows=rows, runs=runs, meta=meta, output=out, data=data)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run_demo(args)
    except (ImportError, ValueError) as e:
        return fail(PROG, e)
    return 0
