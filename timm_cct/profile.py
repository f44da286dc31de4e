"""Parameters and multiply-accumulates (MACs) of every model, with and without the attention matrix products.

The paper's MAC counts leave out the attention matrix products (Q @ K^T and attn @ V); both are reported here.
Counted with ``torch.utils.flop_counter.FlopCounterMode`` (1 MAC = 2 FLOPs) on one image at the model's input size.
torch 2.3 to 2.14 have no formula for the CPU flash attention op that ``F.scaled_dot_product_attention`` runs on
CPU; this module supplies one from the query/key/value shapes, so the figures are the same on every torch release.

    python -m timm_cct.profile            # Markdown table of all models
    python -m timm_cct.profile --csv out.csv
"""
import csv
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm

_ATTENTION_OPS = ('scaled_dot_product',)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q @ K^T) @ V from the shapes (B, heads, L, E): two matrix products, 2 FLOPs per MAC."""
    *batch, lq, e = query_shape
    lk, ev = key_shape[-2], value_shape[-1]
    if key_shape[-1] != e or value_shape[-2] != lk:
        raise ValueError(f'attention shapes do not fit: q {tuple(query_shape)}, k {tuple(key_shape)}, '
                         f'v {tuple(value_shape)}')
    heads = 1
    for n in batch:
        heads *= n
    return 2 * heads * lq * lk * (e + ev)


def _custom_formulas() -> dict:
    """Formulas for attention ops that some torch releases in the supported range leave uncounted."""
    try:
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (AttributeError, RuntimeError):  # a build without the op: nothing to add
        return {}
    return {op: _sdpa_flops}
FAMILY_PATTERNS = ('cct_*', 'cvt_*', 'vit_lite_*')


@dataclass
class ModelCost:
    name: str
    input_size: Tuple[int, int, int]
    params: int
    macs: int
    attn_macs: int

    @property
    def macs_without_attn(self) -> int:
        return self.macs - self.attn_macs


def model_cost(model: torch.nn.Module, input_size: Optional[Sequence[int]] = None, name: str = '') -> ModelCost:
    """Count parameters and MACs of ``model`` for one image of ``input_size`` (C, H, W; default: its cfg)."""
    input_size = tuple(input_size or model.pretrained_cfg['input_size'])
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False, custom_mapping=_custom_formulas()) as counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    flops = counter.get_flop_counts().get('Global', {})  # absent when nothing was counted
    attn = sum(n for op, n in flops.items() if any(k in str(op) for k in _ATTENTION_OPS))
    return ModelCost(
        name=name or model.pretrained_cfg.get('architecture', type(model).__name__),
        input_size=input_size,
        params=sum(p.numel() for p in model.parameters()),
        macs=counter.get_total_flops() // 2,
        attn_macs=attn // 2,
    )


def all_costs(patterns: Sequence[str] = FAMILY_PATTERNS) -> List[ModelCost]:
    import timm_cct  # noqa: F401  (registers the models)
    costs = []
    for name in timm.list_models(list(patterns)):
        with torch.device('cpu'):
            costs.append(model_cost(timm.create_model(name), name=name))
    return costs


def markdown_table(costs: Sequence[ModelCost]) -> str:
    lines = [
        '| model | input | params (M) | GMACs | GMACs w/o attention matrices |',
        '|---|---|---:|---:|---:|',
    ]
    for c in costs:
        lines.append(
            f'| {c.name} | {c.input_size[1]}x{c.input_size[2]} | {c.params / 1e6:.2f} | '
            f'{c.macs / 1e9:.3f} | {c.macs_without_attn / 1e9:.3f} |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ._cli import CliParser, fail
    parser = CliParser(prog='python -m timm_cct.profile', description=__doc__.split('\n')[0])
    parser.add_argument('patterns', nargs='*', default=list(FAMILY_PATTERNS),
                        help='timm model names or wildcards (default: every Compact Transformer)')
    parser.add_argument('--csv', help='also write the figures to this CSV file')
    args = parser.parse_args(argv)
    import timm_cct  # noqa: F401  (registers the models)
    empty = [p for p in args.patterns if not timm.list_models(p)]
    if empty:
        return fail(parser.prog, f'no timm model matches {", ".join(map(repr, empty))}; expected model names or '
                                 f'wildcards such as {" ".join(FAMILY_PATTERNS)}.')
    if args.csv:
        path = Path(args.csv)
        if path.is_dir() or not path.parent.is_dir():
            return fail(parser.prog, f'--csv {args.csv} must name a file in an existing folder.')
    costs = all_costs(args.patterns)
    print(markdown_table(costs))
    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=[*asdict(costs[0]), 'macs_without_attn'])
            writer.writeheader()
            for c in costs:
                writer.writerow({**asdict(c), 'macs_without_attn': c.macs_without_attn})
    return 0


if __name__ == '__main__':
    sys.exit(main())
