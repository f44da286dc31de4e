"""MAC counts against the analytic count of the architecture."""
import timm
import torch
import torch.nn.functional as F

import timm_cct  # noqa: F401
from timm_cct.profile import main, markdown_table, model_cost


def _analytic_macs(tokens: int, dim: int, depth: int, mlp_hidden: int, tokenizer_macs: int, classes: int):
    per_block = tokens * dim * 3 * dim + tokens * dim * dim + 2 * tokens * dim * mlp_hidden
    attention = depth * 2 * tokens * tokens * dim  # Q @ K^T and attn @ V
    seq_pool = 2 * tokens * dim  # Linear(D, 1) and weights @ tokens
    return tokenizer_macs + depth * per_block + seq_pool + dim * classes, attention


def test_cvt_macs_match_the_architecture():
    cost = model_cost(timm.create_model('cvt_2_4_32'))
    tokenizer = 64 * (3 * 4 * 4) * 128  # 8x8 patches of 4x4x3 -> 128
    linear, attention = _analytic_macs(64, 128, 2, 128, tokenizer, 10)
    assert cost.attn_macs == attention
    assert cost.macs_without_attn == linear
    assert cost.params == 214_539


def test_cct_7_3x1_attention_share():
    cost = model_cost(timm.create_model('cct_7_3x1_32'))
    tokenizer = 32 * 32 * (3 * 3 * 3) * 256  # 3x3 conv, stride 1, on 32x32, before the max-pool
    linear, attention = _analytic_macs(256, 256, 7, 512, tokenizer, 10)
    assert cost.attn_macs == attention
    assert cost.macs_without_attn == linear
    assert '| cct_7_3x1_32 | 32x32 | 3.76 |' in markdown_table([cost])


def test_command_line_errors(tmp_path, capsys):
    assert main(['nope_*']) == 2
    err = capsys.readouterr().err
    assert "no timm model matches 'nope_*'" in err and err.count('\n') == 1
    assert main(['cct_2_3x2_32', 'nope_*']) == 2
    assert "'nope_*'" in capsys.readouterr().err
    assert main(['cct_2_3x2_32', '--csv', str(tmp_path / 'missing' / 'x.csv')]) == 2
    assert 'existing folder' in capsys.readouterr().err
    assert main(['cct_2_3x2_32', '--csv', str(tmp_path / 'x.csv')]) == 0
    assert (tmp_path / 'x.csv').read_text().startswith('name,')


class _Attention(torch.nn.Module):
    """Only F.scaled_dot_product_attention, on queries and keys of different lengths."""
    pretrained_cfg = {'input_size': (1, 1, 1), 'architecture': 'sdpa'}

    def forward(self, x):
        q = torch.randn(2, 3, 5, 8) + x.sum()
        k, v = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_products_are_counted_from_the_shapes():
    cost = model_cost(_Attention())
    # batch 2 x heads 3: Q @ K^T is 5 x 8 @ 8 x 7, weights @ V is 5 x 7 @ 7 x 8
    assert cost.attn_macs == 2 * 3 * (5 * 8 * 7 + 5 * 7 * 8)
