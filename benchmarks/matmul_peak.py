"""Measure this machine's matrix-product peak (GFLOP/s) for a dtype, the ceiling for model throughput.

    python benchmarks/matmul_peak.py --threads 2 --dtype fp32
"""
import argparse
import time
from typing import Optional

import torch

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def matmul_peak_gflops(
        dtype: torch.dtype = torch.float32,
        device: str = 'cpu',
        size: int = 2048,
        min_time: float = 1.0,
        threads: Optional[int] = None,
) -> float:
    """Best GFLOP/s of repeated square (size x size) matrix products over about ``min_time`` seconds."""
    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.startswith('cuda'):
            torch.cuda.synchronize()

    for _ in range(2):
        torch.mm(a, b, out=out)
    sync()
    best, spent = float('inf'), 0.
    while spent < min_time:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * size ** 3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', default='fp32', choices=sorted(DTYPES))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--size', type=int, default=2048)
    parser.add_argument('--min-time', type=float, default=2.)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    gflops = matmul_peak_gflops(DTYPES[args.dtype], args.device, args.size, args.min_time, args.threads)
    print(f'{args.dtype} matmul peak on {args.device} ({torch.get_num_threads()} threads): {gflops:.1f} GFLOP/s')


if __name__ == '__main__':
    main()
