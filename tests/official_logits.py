"""Compute logits with the official implementation (used by tests/test_equivalence.py when CCT_OFFICIAL_SRC is set).

Usage: python official_logits.py OFFICIAL_SRC WORKDIR NAME [NAME ...]
Reads WORKDIR/<NAME>.pth (official-format state dicts) and WORKDIR/inputs.safetensors, writes WORKDIR/logits.safetensors.
"""
import importlib
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    src, workdir, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    sys.path.insert(0, str(src.parent))
    package = src.name
    inputs = load_file(workdir / 'inputs.safetensors')
    logits = {}
    for name in names:
        module = importlib.import_module(f'{package}.{"vit" if name.startswith("vit_") else name[:3]}')
        model = getattr(module, name)(pretrained=False).eval()
        # the official *_sine CCT/CVT models build a learnable table; it is overwritten with the sine table here
        model.load_state_dict(torch.load(workdir / f'{name}.pth', weights_only=True))
        x = inputs[f'x{_img_size(name)}']
        with torch.no_grad():
            logits[name] = model(x).contiguous()
    save_file(logits, workdir / 'logits.safetensors')


def _img_size(name: str) -> int:
    return int(name.split('_')[3])  # <family>_<depth>_<tokenizer>_<img size>[...]


if __name__ == '__main__':
    main()
