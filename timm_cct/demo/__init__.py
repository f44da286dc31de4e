"""Train Compact Transformers from scratch on small real data, side by side with a CNN, and show it.

Default (offline, CPU, minutes): scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes),
upsampled to 16x16 (``--img-size 32`` for the models' native size), a stratified 80/20 held-out split;
ViT-Lite-2/4, CVT-2/4 and CCT-2/3x2 against a ResNet of similar size, each over 3 seeds::

    python -m timm_cct.demo

The same command on your data or on CIFAR (torchvision's format, not downloaded), with the paper's recipe
(read from the shipped ``timm_cct/configs``)::

    python -m timm_cct.demo --data-dir path/to/imagefolder
    python -m timm_cct.demo --dataset cifar10 --data-dir path/to/torchvision/root --device cuda

Writes ``results.md``, ``results.csv``, ``results.json`` (after every finished run), ``curves.png``,
``seqpool.png`` and a Hub-ready folder of the best Compact Transformer under ``--output``.

Modules: ``options`` (command line, recipes), ``data`` (datasets and their checks), ``train`` (the loop, on
timm's loader, Mixup, optimizer, scheduler and losses), ``report`` (tables, plots, Hub folder), ``run``.
"""
from .data import DataError, DemoData, SampleDataset, balanced_subset, load_image, stratified_split
from .options import DIGITS_RECIPE, PAPER_CONFIGS, paper_recipe, parse_args
from .report import write_results
from .run import load_data, main, run_demo
from .train import CNN_BASELINE, create_demo_model, train_run

__all__ = ['main', 'parse_args', 'run_demo', 'load_data', 'stratified_split', 'balanced_subset', 'create_demo_model',
           'train_run', 'write_results', 'CNN_BASELINE', 'DIGITS_RECIPE', 'PAPER_CONFIGS', 'paper_recipe',
           'DataError', 'DemoData', 'SampleDataset', 'load_image']
