"""The benchmark scripts run end to end on a tiny configuration (their figures are not checked here)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))

import attention_layer  # noqa: E402
import throughput  # noqa: E402


def test_attention_layer_benchmark_against_plain_ops():
    err, medians = attention_layer.main(
        ['--batch-size', '2', '--tokens', '16', '--dim', '32', '--heads', '4', '--reps', '2', '--warmup', '1'])
    assert err < 1e-5
    assert set(medians) == {'plain ops', 'timm_cct'} and all(t > 0 for t in medians.values())


@pytest.mark.parametrize('mode', ['infer', 'train'])
def test_throughput_benchmark_runs(mode, tmp_path):
    csv = tmp_path / 'rows.csv'
    rows = throughput.main([
        '--model', 'cct_2_3x2_32', '--batch-size', '2', '--modes', mode, '--dtypes', 'fp32', '--impls', 'ours',
        '--no-vit-pytorch', '--reps', '1', '--warmup', '0', '--csv', str(csv)])
    assert len(rows) == 1 and csv.read_text().count('\n') == 2
