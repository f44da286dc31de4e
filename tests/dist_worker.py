"""Worker of tests/test_distributed.py: a few DDP training steps per model on CPU (gloo), one process per rank.

Run as ``python -m torch.distributed.run --nproc_per_node=2 -m timm_cct tests/dist_worker.py OUT_DIR MODEL...``.
Each rank starts from its own random weights and sees its own batches; it saves its final state dict
to ``OUT_DIR/<model>.rank<r>.pt``.
"""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import timm
from timm.loss import SoftTargetCrossEntropy
from timm.data import Mixup
from timm.optim import create_optimizer_v2


def train(name: str, rank: int, out_dir: Path, steps: int = 3) -> None:
    torch.manual_seed(100 + rank)  # different start on every rank: DDP must broadcast rank 0's weights
    model = timm.create_model(name, num_classes=4, drop_path_rate=0.1)
    # as timm's train.py wraps it: device_ids=[device], no find_unused_parameters
    ddp = DistributedDataParallel(model, device_ids=[torch.device('cpu')])
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4)
    loss_fn = SoftTargetCrossEntropy()
    ddp.train()
    for _ in range(steps):
        images, targets = mixup(torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,)))
        loss = loss_fn(ddp(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), out_dir / f'{name}.rank{rank}.pt')


def main() -> None:
    out_dir, names = Path(sys.argv[1]), sys.argv[2:]
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.set_num_threads(1)
    for name in names:
        train(name, rank, out_dir)
    dist.barrier()
    dist.destroy_process_group()
    print(f'rank {rank} of {os.environ["WORLD_SIZE"]} done')


if __name__ == '__main__':
    main()
