"""One attention layer, forward + backward in training mode (attention dropout on): timm_cct against the official one.

    python benchmarks/attention_layer.py --official-src /path/to/Compact-Transformers/src --batch-size 64 \\
        --tokens 256 --dim 256 --heads 4

Both layers get the same weights and input and are timed round-robin. Without ``--official-src`` the peer is the
official computation written out with plain torch ops (``softmax(q @ k^T * scale)``, ``nn.Dropout``, ``@ v``).
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import import_official, time_round_robin  # noqa: E402
from timm_cct.layers import Attention  # noqa: E402


class PlainAttention(nn.Module):
    """The official attention computation with plain torch ops (the peer when the official code is not given)."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


def build_peer(args) -> nn.Module:
    if not args.official_src:
        return PlainAttention(args.dim, args.heads, args.attn_drop)
    module = import_official(args.official_src, 'utils.transformers')
    return module.Attention(args.dim, num_heads=args.heads, attention_dropout=args.attn_drop, projection_dropout=0.)


def main(argv=None) -> Tuple[float, Dict[str, float]]:
    """Prints the table; returns the eval-output disagreement and the median seconds of each layer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official-src', default='', help="path of the official implementation's src/ package")
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--tokens', type=int, default=256)
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--attn-drop', type=float, default=0.1)
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    ours = Attention(args.dim, num_heads=args.heads, attn_drop=args.attn_drop)
    peer = build_peer(args)
    peer.load_state_dict(ours.state_dict())
    x = torch.randn(args.batch_size, args.tokens, args.dim)
    with torch.no_grad():
        ref = peer.eval()(x)
        err = (ours.eval()(x) - ref).abs().max().item() / ref.abs().max().item()
    layers = {'official' if args.official_src else 'plain ops': peer.train(), 'timm_cct': ours.train()}
    inputs = {name: x.clone().requires_grad_() for name in layers}

    def step(name):
        def run():
            out = layers[name](inputs[name])
            out.backward(torch.ones_like(out))
        return run

    times = time_round_robin({name: step(name) for name in layers}, args.reps, args.warmup, torch.device('cpu'))
    print(f'batch {args.batch_size}, {args.tokens} tokens, dim {args.dim}, {args.heads} heads, attention dropout '
          f'{args.attn_drop}, threads {torch.get_num_threads()}; eval outputs agree to {err:.1e} (max abs / max abs)')
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = next(iter(medians.values()))
    for name, median in medians.items():
        print(f'{name:10s} forward + backward {median * 1e3:8.1f} ms   speed-up {base / median:5.2f}x')
    return err, medians


if __name__ == '__main__':
    main()
