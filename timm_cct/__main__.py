"""Run one of timm's scripts with every Compact Transformer registered, or list the recipes.

Usage::

    python -m timm_cct path/to/train.py [train.py arguments]     # also validate.py, benchmark.py, inference.py
    torchrun --nproc_per_node=N -m timm_cct path/to/train.py [...]
    python -m timm_cct configs          # name and path of every shipped recipe
    python -m timm_cct configs NAME     # path of one recipe, for ``train.py --config``

timm's scripts live in its GitHub repository (not in the pip package). The script runs as ``__main__``
with its own ``sys.argv``, exactly as ``python path/to/script.py`` would run it.
"""
import runpy
import sys
from pathlib import Path
from typing import List, Optional

import timm_cct  # noqa: F401  (registers the models)
from timm_cct.recipes import config_path, list_configs

def run_script(script: str, args: List[str]) -> None:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``."""
    path = Path(script)
    if not path.is_file():
        raise ValueError(f'Expected the path of a Python script (e.g. timm\'s train.py), got {script!r}: no such file.')
    argv, script_dir = sys.argv, str(path.resolve().parent)
    sys.argv = [str(path), *args]
    sys.path.insert(0, script_dir)  # as `python script.py` does
    try:
        runpy.run_path(str(path), run_name='__main__')
    finally:
        sys.argv = argv
        sys.path.remove(script_dir)


def print_configs(names: List[str]) -> None:
    """Print ``name path`` of every recipe, or only the path of each name given."""
    if names:
        for name in names:
            print(config_path(name))
        return
    for name in list_configs():
        print(f'{name}\t{config_path(name)}')


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == 'configs':
        print_configs(argv[1:])
    else:
        run_script(argv[0], argv[1:])
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except ValueError as e:
        print(f'python -m timm_cct: error: {e}', file=sys.stderr)
        sys.exit(2)
