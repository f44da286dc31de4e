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
from timm_cct._cli import fail
from timm_cct.recipes import config_path, list_configs


def check_script(script: str) -> Path:
    """The path of ``script``; ValueError when it is not a file."""
    path = Path(script)
    if not path.is_file():
        raise ValueError(f'Expected the path of a Python script (e.g. timm\'s train.py), got {script!r}: no such file.')
    return path


def allow_cpu_ddp() -> None:
    """Let ``DistributedDataParallel`` take ``device_ids=[cpu device]``, as timm's train.py passes on CPU.

    torch refuses device ids for CPU modules; dropping them is what DDP does for CPU anyway, so
    ``torchrun -m timm_cct train.py --device cpu`` (gloo) runs. Other devices are untouched.
    """
    import torch
    import torch.nn.parallel as parallel
    ddp = parallel.DistributedDataParallel
    if getattr(ddp, '_drops_cpu_device_ids', False):
        return

    class CpuDeviceIdsDDP(ddp):
        _drops_cpu_device_ids = True

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == 'cpu' for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    CpuDeviceIdsDDP.__name__ = CpuDeviceIdsDDP.__qualname__ = ddp.__name__
    parallel.DistributedDataParallel = CpuDeviceIdsDDP


def run_script(script: str, args: List[str]) -> None:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``."""
    path = check_script(script)
    allow_cpu_ddp()
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
    if argv and argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0
    try:
        if not argv:
            raise ValueError("expected a script path (e.g. timm's train.py) or 'configs' (see python -m timm_cct --help).")
        if argv[0] == 'configs':
            print_configs(argv[1:])
            return 0
        check_script(argv[0])
    except (ValueError, TypeError) as e:
        return fail('python -m timm_cct', e)
    run_script(argv[0], argv[1:])
    return 0

if __name__ == '__main__':
    sys.exit(main())
