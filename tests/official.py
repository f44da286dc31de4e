"""Rebuild official-format checkpoints from the reference fixtures (the weight recipe of the reference data)."""
import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / 'fixtures'
VARIANTS = {v['name']: v for v in json.loads((FIXTURES / 'official_variants.json').read_text())}
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob('*.safetensors'))


def timm_name(official_name: str) -> str:
    """Our registered name of an official variant (ViT-Lite is ``vit_lite_*``)."""
    return 'vit_lite_' + official_name[len('vit_'):] if official_name.startswith('vit_') else official_name


def seeded_state_dict(official_name: str, seed: int = 0, stored: Dict[str, torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Official-format state dict: seeded normal weights, LayerNorm gains around 1, stored tensors as given."""
    stored = stored or {}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in VARIANTS[official_name]['keys']:
        if 'official.' + key in stored:
            out[key] = stored['official.' + key]
            continue
        t = torch.randn(shape, generator=g) * 0.1
        if t.dim() == 1 and key.endswith('.weight'):
            t += 1.0
        out[key] = t
    return out


def fixture(official_name: str) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(official-format state dict, input x, official logits) for a stored fixture."""
    data = load_file(FIXTURES / f'{official_name}.safetensors')
    return seeded_state_dict(official_name, 0, data), data['x'], data['logits']


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def all_official_names() -> List[str]:
    return sorted(VARIANTS)
