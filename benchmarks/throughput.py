"""Throughput of timm_cct against vit-pytorch's CCT and the official implementation, side by side.

All implementations get identical weights and inputs and are timed round-robin (one step of each in turn, ``--reps``
times), so machine drift hits them equally; the table reports median images/s and the ratio to the official fp32
eager run of the same mode (to ours when the official code is not given).

    python benchmarks/throughput.py --model cct_7_3x1_32 --batch-size 64 \\
        --official-src /tmp/official_cct/src --modes infer,train --dtypes fp32,bf16 --csv results.csv

Training is forward, cross-entropy backward and an AdamW step. Peak memory (``--memory``): on CUDA
``max_memory_allocated``; on CPU, in a fresh subprocess per row (Linux only), the peak resident set size (VmHWM, reset
through /proc/self/clear_refs) during one step minus the resident size before it, with glibc told to serve large
blocks from mmap so that freed tensors leave the resident set: the working memory of a step on top of the weights and
optimizer state, to a few MB.
Achieved GFLOP/s uses the forward FLOPs of ``torch.utils.flop_counter.FlopCounterMode`` (training: 3x forward).
"""
import argparse
import csv
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from matmul_peak import matmul_peak_gflops  # noqa: E402
from timm_cct.cct import timm_to_official_key  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
IMPLS = ('official', 'vit-pytorch', 'ours')


@dataclass
class Row:
    impl: str
    mode: str
    dtype: str
    compiled: bool
    img_s: float = float('nan')
    ratio: float = float('nan')
    gflop_s: float = float('nan')
    pct_peak: float = float('nan')
    peak_mem_mb: float = float('nan')
    times: List[float] = field(default_factory=list)


def official_name(name: str) -> str:
    """Official name of one of our models (ViT-Lite is ``vit_*`` there)."""
    return 'vit_' + name[len('vit_lite_'):] if name.startswith('vit_lite_') else name


def to_official_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {timm_to_official_key(key): value for key, value in state_dict.items()}


def build_ours(name: str) -> nn.Module:
    import timm
    import timm_cct  # noqa: F401  (registers the models)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return timm.create_model(name)


def import_official(src: str, module: str) -> ModuleType:
    """``module`` of the official ``src/`` package at ``src`` (imported as a package from its parent)."""
    src_path = Path(src).resolve()
    sys.path.insert(0, str(src_path.parent))
    from timm.models import _registry
    saved = dict(_registry._model_entrypoints), dict(_registry._model_to_module)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        imported = importlib.import_module(f'{src_path.name}.{module}')
    # the official package registers models under our names in timm's registry: put ours back
    _registry._model_entrypoints.update(saved[0])
    _registry._model_to_module.update(saved[1])
    return imported


def build_official(name: str, src: str) -> nn.Module:
    """The official model ``name`` from the ``src/`` package at ``src``."""
    family = 'vit' if name.startswith('vit_') else name.split('_')[0]
    return getattr(import_official(src, family), official_name(name))()


def build_vit_pytorch(model: nn.Module) -> Optional[nn.Module]:
    """vit-pytorch's CCT in the configuration of our CCT model (None for CVT / ViT-Lite, which it lacks)."""
    from vit_pytorch.cct import CCT
    tok = model.tokenizer
    if model.num_prefix_tokens or not tok.layers[0].act_pool:
        return None
    conv = tok.layers[0].conv
    block = model.blocks[0]
    return CCT(
        img_size=model.img_size,
        embedding_dim=model.embed_dim,
        n_input_channels=model.in_chans,
        n_conv_layers=len(tok.layers),
        kernel_size=conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding[0],
        num_layers=len(model.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        num_classes=model.num_classes,
        positional_embedding=model.pos_embed_type,
    )


def build_models(args) -> Dict[str, nn.Module]:
    """Every implementation, with the same weights (official weights loaded into the others when given)."""
    from timm_cct import checkpoint_filter_fn
    torch.manual_seed(args.seed)
    ours = build_ours(args.model)
    models = {}
    if args.official_src:
        official = build_official(args.model, args.official_src)
        state = official.state_dict()
        ours.load_state_dict(checkpoint_filter_fn(state, ours))
        models['official'] = official
    else:
        state = to_official_keys(ours.state_dict())
    if not args.no_vit_pytorch:
        vp = build_vit_pytorch(ours)
        if vp is not None:
            missing, unexpected = vp.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.endswith('positional_emb')]:
                raise RuntimeError(f'vit-pytorch weights do not match: missing {missing}, unexpected {unexpected}')
            models['vit-pytorch'] = vp
    models['ours'] = ours
    return models


def check_agreement(models: Dict[str, nn.Module], x: torch.Tensor) -> List[str]:
    """Max abs error / max abs logit of each implementation against the reference, eval mode, fp32."""
    ref_name = 'official' if 'official' in models else 'ours'
    with torch.no_grad():
        outs = {k: m.eval()(x).float() for k, m in models.items()}
    ref = outs[ref_name]
    lines = []
    for k, out in outs.items():
        if k != ref_name:
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
            lines.append(f'{k} vs {ref_name} (fp32, eval): max abs err / max abs logit = {err:.2e}, top-1 agree {top1:.1%}')
    return lines


def check_low_precision(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, what: str) -> str:
    with torch.no_grad():
        ref = model.eval()(x).float()
        with torch.autocast(x.device.type, dtype=dtype):
            out = model(x).float()
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return f'ours {dtype} autocast vs fp32 on {what}: rel err {err:.2e}, top-1 agree {top1:.1%} of {len(x)}'


def fixture_check(name: str, dtype: torch.dtype) -> Optional[str]:
    """bf16 vs fp32 top-1 on the stored fixture of this model (tests/fixtures), if there is one."""
    tests = Path(__file__).resolve().parents[1] / 'tests'
    if not (tests / 'fixtures' / f'{official_name(name)}.safetensors').exists():
        return None
    sys.path.insert(0, str(tests))
    from official import fixture
    from timm_cct import checkpoint_filter_fn
    state, x, _ = fixture(official_name(name))
    model = build_ours(name)
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return check_low_precision(model, x, dtype, f'fixture {official_name(name)}')


def forward_gflops(model: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops() / 1e9


def make_step(model: nn.Module, mode: str, dtype: Optional[torch.dtype], x: torch.Tensor, y: torch.Tensor,
              adamw: str) -> Callable[[], None]:
    autocast = (lambda: torch.autocast(x.device.type, dtype=dtype)) if dtype is not None else nullcontext
    if mode == 'infer':
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast():
                model(x)
        return step

    model.train()
    kwargs = {} if adamw == 'default' else {adamw: True}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, **kwargs)

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_round_robin(steps: Dict[str, Callable[[], None]], reps: int, warmup: int, device) -> Dict[str, List[float]]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times = {k: [] for k in steps}
    for _ in range(reps):
        for k, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[k].append(time.perf_counter() - start)
    return times


def memory_probe(args) -> None:
    """Subprocess entry: peak memory of one step of one implementation; prints MB as JSON."""
    impl, mode, dtype_name = args.memory_probe.split(',')
    device = torch.device(args.device)
    models = build_models(args)
    model, img_size = models[impl].to(device), models['ours'].img_size
    del models
    x = torch.randn(args.batch_size, model_in_chans(model), *img_size, device=device)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    step = make_step(model, mode, DTYPES[dtype_name], x, y, args.adamw)
    step()  # creates the optimizer state
    before = _proc_status_kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak resident set size (VmHWM)
    step()
    print(json.dumps({'peak_mb': (_proc_status_kb('VmHWM') - before) / 1024}))


def _proc_status_kb(key: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(key + ':'):
            return int(line.split()[1])
    raise KeyError(key)


def cuda_peak_memory(step: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def model_in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError('model has no Conv2d tokenizer')


def cpu_peak_memory(args, impl: str, mode: str, dtype: str) -> float:
    cmd = [sys.executable, __file__, '--model', args.model, '--batch-size', str(args.batch_size),
           '--memory-probe', f'{impl},{mode},{dtype}', '--adamw', args.adamw, '--device', 'cpu']
    if args.official_src:
        cmd += ['--official-src', args.official_src]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    # large blocks straight from mmap, so that freed memory leaves the resident set and RSS follows live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    return json.loads(out)['peak_mb']


def print_table(rows: List[Row], ref_name: str) -> None:
    head = f'{"impl":<12} {"mode":<6} {"dtype":<5} {"compile":<7} {"img/s":>8} {"ratio":>6} {"GFLOP/s":>8} ' \
           f'{"%peak":>6} {"peak MB":>8}'
    print(head)
    print('-' * len(head))
    for r in rows:
        print(f'{r.impl:<12} {r.mode:<6} {r.dtype:<5} {str(r.compiled):<7} {r.img_s:8.1f} {r.ratio:6.2f} '
              f'{r.gflop_s:8.1f} {r.pct_peak:6.1f} {r.peak_mem_mb:8.0f}')
    print(f'ratio: images/s over {ref_name} fp32 eager of the same mode; %peak: of the fp32 matmul peak')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='cct_7_3x1_32', help='our model name (timm_cct)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--modes', default='infer,train', help='comma list of infer, train')
    parser.add_argument('--dtypes', default='fp32,bf16', help='comma list of fp32, bf16, fp16 (autocast)')
    parser.add_argument('--compile', action='store_true', help='also time torch.compile (inductor) of each')
    parser.add_argument('--compile-only', action='store_true', help='time only the compiled models')
    parser.add_argument('--impls', default=','.join(IMPLS), help='comma list of official, vit-pytorch, ours')
    parser.add_argument('--reps', type=int, default=5, help='round-robin repetitions (median reported)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--official-src', default=None, help="path of the official implementation's src/ package")
    parser.add_argument('--no-vit-pytorch', action='store_true')
    parser.add_argument('--adamw', default='default', choices=['default', 'foreach', 'fused'],
                        help='AdamW implementation, the same for every model')
    parser.add_argument('--memory', action='store_true', help='measure peak memory (CPU: one subprocess per row)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--csv', default=None, help='write the rows to this CSV file')
    parser.add_argument('--memory-probe', default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> List[Row]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_probe:
        memory_probe(args)
        return []
    modes, dtypes = args.modes.split(','), args.dtypes.split(',')
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f'Unknown dtype {d!r}; expected one of {list(DTYPES)}.')
    models = build_models(args)
    ours_img = models['ours'].img_size
    models = {k: m.to(device) for k, m in models.items() if k in args.impls.split(',')}
    ref_name = 'official' if 'official' in models else 'ours'
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, models['ours'].in_chans, *ours_img, generator=g).to(device)
    y = torch.randint(0, models['ours'].num_classes, (args.batch_size,), generator=g).to(device)

    peak = matmul_peak_gflops(torch.float32, args.device, min_time=1.)
    fwd_gflop = forward_gflops(models['ours'], x) / args.batch_size
    load = os.getloadavg()
    print(f'model {args.model}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}, '
          f'torch {torch.__version__}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    print(f'forward {fwd_gflop:.3f} GFLOP/image (FlopCounterMode; training counted as 3x); '
          f'fp32 matmul peak {peak:.1f} GFLOP/s')
    for line in check_agreement(models, x):
        print(line)
    for d in dtypes:
        if DTYPES[d] is not None:
            print(check_low_precision(models['ours'], x, DTYPES[d], 'the benchmark batch'))
            line = fixture_check(args.model, DTYPES[d])
            if line:
                print(line)

    variants = ([True] if args.compile_only else [False, True] if args.compile else [False])
    rows: List[Row] = []
    for compiled in variants:
        for mode in modes:
            for d in dtypes:
                steps = {}
                for k, m in models.items():
                    model = torch.compile(m) if compiled else m
                    steps[k] = make_step(model, mode, DTYPES[d], x, y, args.adamw)
                times = time_round_robin(steps, args.reps, args.warmup, device)
                for k in steps:
                    row = Row(k, mode, d, compiled, times=times[k])
                    if args.memory and device.type == 'cuda':
                        row.peak_mem_mb = cuda_peak_memory(steps[k], device)
                    row.img_s = args.batch_size / statistics.median(times[k])
                    row.gflop_s = row.img_s * fwd_gflop * (3 if mode == 'train' else 1)
                    row.pct_peak = 100 * row.gflop_s / peak
                    rows.append(row)
                print(f'done: {mode} {d} compile={compiled}', flush=True)
    if args.memory:
        for row in rows:
            if device.type == 'cpu' and not row.compiled:
                row.peak_mem_mb = cpu_peak_memory(args, row.impl, row.mode, row.dtype)
    base = {r.mode: r.img_s for r in rows if r.impl == ref_name and r.dtype == 'fp32' and not r.compiled}
    for r in rows:
        r.ratio = r.img_s / base[r.mode] if r.mode in base else float('nan')
    print_table(rows, ref_name)
    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['model', 'batch_size', 'device', 'threads', 'impl', 'mode', 'dtype', 'compiled',
                             'img_s', 'ratio', 'gflop_s', 'pct_peak', 'peak_mem_mb', 'times_s'])
            for r in rows:
                writer.writerow([args.model, args.batch_size, str(device), torch.get_num_threads(), r.impl, r.mode,
                                 r.dtype, r.compiled, f'{r.img_s:.2f}', f'{r.ratio:.3f}', f'{r.gflop_s:.1f}',
                                 f'{r.pct_peak:.1f}', f'{r.peak_mem_mb:.0f}', ' '.join(f'{t:.4f}' for t in r.times)])
    return rows


if __name__ == '__main__':
    main()
