"""Two-process DDP training on CPU (gloo) through torchrun and our launcher: the ranks stay in sync."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm
import timm_cct  # noqa: F401

MODELS = ['cct_2_3x2_32', 'cvt_2_4_32', 'vit_lite_2_4_32']
WORKER = Path(__file__).parent / 'dist_worker.py'


@pytest.fixture(scope='module')
def rank_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           '-m', 'timm_cct', str(WORKER), str(out), *MODELS]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(cmd, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'rank 0 of 2 done' in result.stdout and 'rank 1 of 2 done' in result.stdout
    return out


@pytest.mark.parametrize('name', MODELS)
def test_ranks_end_with_identical_weights(name, rank_weights):
    rank0 = torch.load(rank_weights / f'{name}.rank0.pt', weights_only=True)
    rank1 = torch.load(rank_weights / f'{name}.rank1.pt', weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # and they trained: away from rank 0's initial weights (same seed as the worker)
    torch.manual_seed(100)
    initial = timm.create_model(name, num_classes=4, drop_path_rate=0.1).state_dict()
    changed = [k for k in rank0 if rank0[k].is_floating_point() and not torch.equal(rank0[k], initial[k])]
    assert len(changed) > len(rank0) // 2
