"""The demo's outputs: the results table (Markdown, CSV, JSON; rewritten after every run), plots, the Hub folder."""
import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from timm.data import create_transform

from timm_cct.hub import export_to_hub
from timm_cct.visualize import plot_learning_curves, plot_seqpool_attention, seqpool_attention

from .data import DemoData
from .train import CNN_BASELINE

__all__ = ['OUTPUT_FILES', 'family', 'summarize', 'markdown_table', 'recipe_text', 'write_results', 'export_best',
           'draw_seqpool', 'draw_curves']

# Every file the demo writes under --output (plus hub/<model>/ from timm_cct.hub.export_to_hub).
OUTPUT_FILES = ('results.md', 'results.csv', 'results.json', 'curves.png', 'seqpool.png')


def family(name: str) -> str:
    if name == CNN_BASELINE:
        return 'CNN (timm resnet10t, channels 16-32-64-128)'
    for prefix, text in (('vit_lite', 'ViT-Lite'), ('cvt', 'CVT'), ('cct', 'CCT')):
        if name.startswith(prefix):
            return text
    return 'timm'


def summarize(runs: List[Dict[str, Any]], params: Dict[str, int], macs: Dict[str, int]) -> List[Dict[str, Any]]:
    """One row per model: mean/std top-1 over seeds, params, MACs, mean train time."""
    rows = []
    for name in dict.fromkeys(r['model'] for r in runs):
        mine = [r for r in runs if r['model'] == name]
        top1 = [r['top1'] for r in mine]
        rows.append(dict(
            model=name, family=family(name), params=params[name], macs=macs[name],
            top1_mean=statistics.mean(top1), top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.,
            top1_runs=top1, seeds=[r['seed'] for r in mine],
            train_seconds_mean=statistics.mean(r['train_seconds'] for r in mine), epochs=mine[0]['epochs']))
    return rows


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    lines = ['| model | family | params | MACs | held-out top-1 (mean ± std) | runs | train time / run |',
             '|---|---|---:|---:|---:|---|---:|']
    for r in rows:
        runs = ', '.join(f'{t:.1f}' for t in r['top1_runs'])
        lines.append(f"| `{r['model']}` | {r['family']} | {r['params'] / 1e6:.3f} M | {r['macs'] / 1e6:.1f} M | "
                     f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} % | {runs} | {r['train_seconds_mean']:.0f} s |")
    return '\n'.join(lines)


def _fmt(values: Sequence[float]) -> str:
    return '(' + ', '.join(f'{v:.4f}' for v in values) + ')'


def recipe_text(args: argparse.Namespace, data: DemoData) -> str:
    mix = (f"Mixup {args.mixup} / CutMix {args.cutmix} (prob {args.mixup_prob}, switch {args.mixup_switch_prob}, "
           f"mode {args.mixup_mode}" + (f", off from epoch {args.mixup_off_epoch}" if args.mixup_off_epoch else '')
           + ')')
    source = f' ({args.recipe_source})' if getattr(args, 'recipe_source', None) else ''
    return (f"From scratch{source}, {args.epochs} epochs (+{args.cooldown_epochs} cool-down), batch "
            f"{args.batch_size}, {args.opt} lr {args.lr:g} wd {args.weight_decay:g}, {args.sched} schedule with "
            f"{args.warmup_epochs} warm-up epochs (from {args.warmup_lr:g}, min {args.min_lr:g}), "
            f"augmentation `{args.aa or 'none'}`, {mix}, label smoothing {args.smoothing}, random erasing "
            f"{args.reprob} ({args.remode}), random-resized-crop scale {args.scale[0]}-{args.scale[1]} "
            f"({args.train_interpolation} interpolation), hflip {args.hflip}, drop path "
            f"{'model default' if args.drop_path is None else args.drop_path}, {args.img_size}x{args.img_size} "
            f"input, mean {_fmt(data.mean)} std {_fmt(data.std)}.")


def _data_lines(src: Dict[str, Any]) -> List[str]:
    names = src.get('classes', [])
    lines = [f"Data: {src.get('layout', '')}; train split {src.get('train_split')}; held-out split "
             f"{src.get('eval_split')}; {len(names)} classes: {', '.join(names[:50])}"
             + (f' and {len(names) - 50} more (all in results.json)' if len(names) > 50 else '') + '.']
    for note in src.get('notes', []):
        lines.append(f'Note: {note}.')
    for s in src.get('skipped', [])[:20]:
        lines.append(f"Skipped (unreadable): `{s['file']}` ({s['reason']}).")
    if len(src.get('skipped', [])) > 20:
        lines.append(f"... {len(src['skipped']) - 20} more skipped files listed in results.json.")
    return lines


def write_results(out: Path, rows: List[Dict[str, Any]], runs: List[Dict[str, Any]], meta: Dict[str, Any]) -> None:
    """results.md (table + setup), results.csv (one row per model), results.json (everything, curves included).

    Called after every finished run (``meta['status']`` says how far the demo got), so a later failure or an
    interrupt keeps the finished runs.
    """
    export = meta.get('export') or {}
    if export.get('folder'):
        export_line = (f"Exported: `{export['model']}` seed {export['seed']} ({export['top1']:.2f} %) to "
                       f"`{export['folder']}` via {export['how']}.")
    else:
        export_line = f"Hub export: {export.get('skipped', 'not done yet')}."
    md = [f"# From scratch on {meta['dataset']}", '',
          f"Status: {meta['status']}.", '',
          f"Held-out split: {meta['train_images']} train / {meta['test_images']} test images. "
          f"Top-1 after the last epoch, over seeds {meta['seeds']}.", '',
          *_data_lines(meta['data']), '',
          markdown_table(rows), '',
          f"Recipe: {meta['recipe']}", '',
          f"MACs: one {meta['img_size']}x{meta['img_size']} image, counted by `torch.utils.flop_counter."
          f"FlopCounterMode` (flops / 2), attention matrix products included. Train time: training steps "
          f"only, mean per run.", '',
          f"Machine: {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, timm {meta['timm']}; "
          f"wall time so far {meta['wall_seconds']:.0f} s (1-min load average {meta['load_average']['start']} at "
          f"start, {meta['load_average'].get('end')} at the end). {export_line}", '']
    tmp = out / '.results.tmp'
    tmp.write_text('\n'.join(md))
    tmp.replace(out / 'results.md')
    with open(tmp, 'w', newline='') as f:
        fields = ['model', 'family', 'params', 'macs', 'top1_mean', 'top1_std', 'top1_runs', 'seeds',
                  'train_seconds_mean', 'epochs']
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (' '.join(map(str, r[k])) if isinstance(r[k], list) else r[k]) for k in fields})
    tmp.replace(out / 'results.csv')
    payload = dict(meta=meta, summary=rows, runs=[{k: v for k, v in r.items() if k != 'net'} for r in runs])
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(out / 'results.json')


def export_best(run: Dict[str, Any], folder: Path, data: DemoData, args: argparse.Namespace) -> str:
    """Write a Hub-ready folder of ``run``'s model (a Compact Transformer); returns how it was written."""
    model, name = run['net'].cpu(), run['model']
    model.pretrained_cfg = dict(
        model.pretrained_cfg, input_size=(3, args.img_size, args.img_size), mean=tuple(data.mean),
        std=tuple(data.std), crop_pct=args.crop_pct, interpolation=args.interpolation,
        num_classes=data.num_classes, label_names=list(data.label_names))
    recipe = recipe_text(args, data) + (f' Best of {len(args.seeds)} seeds by held-out top-1.'
                                        if len(args.seeds) > 1 else '')
    export_to_hub(model, folder, model_name=name, dataset=data.description, recipe=recipe,
                  results={'top1': round(run['top1'], 2)}, label_names=list(data.label_names),
                  overwrite=args.overwrite)
    return 'timm_cct.hub.export_to_hub'


def draw_curves(runs: List[Dict[str, Any]], models: Sequence[str], path: Path, title: str) -> None:
    history = {name: [r['history'] for r in runs if r['model'] == name] for name in models}
    plot_learning_curves({k: v for k, v in history.items() if v}, path=str(path), title=title)


def draw_seqpool(run: Dict[str, Any], data: DemoData, args: argparse.Namespace, path: Path,
                 n: int = 16) -> None:
    """SeqPool maps of the first ``n`` held-out images (a class-balanced pick) for ``run``'s model."""
    model = run['net']
    labels = data.test.labels
    pick: List[int] = []
    for k in range(n):  # round-robin over classes
        want = k % data.num_classes
        idx = next((i for i, y in enumerate(labels) if y == want and i not in pick), None)
        if idx is not None:
            pick.append(idx)
    tf = create_transform(args.img_size, is_training=False, interpolation=args.interpolation,
                          crop_pct=args.crop_pct, mean=data.mean, std=data.std)
    load = data.test.loader or (lambda item: item)
    images = torch.stack([tf(load(data.test.items[i])) for i in pick])
    device = next(model.parameters()).device
    with torch.no_grad():
        preds = model.eval()(images.to(device)).argmax(-1).tolist()
    maps = seqpool_attention(model, images.to(device)).cpu()
    titles = [f'true {data.label_names[labels[i]]} / pred {data.label_names[p]}' for i, p in zip(pick, preds)]
    plot_seqpool_attention(images, maps, data.mean, data.std, titles=titles, path=str(path))


def best_exportable(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The best finished Compact Transformer run still holding its model, or None."""
    candidates = [r for r in runs if r.get('is_compact_transformer') and r.get('net') is not None]
    return max(candidates, key=lambda r: r['top1']) if candidates else None
