"""torch.compile: one graph without breaks for every family, a dynamic batch dimension, training under compile.

Graph-break and training checks trace with dynamo and run the captured graph with the "eager" / "aot_eager"
backends (fast); one test compiles with inductor and checks it against the official logits of a fixture.
"""
import sys
from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn.functional as F
import timm

import timm_cct

sys.path.insert(0, str(Path(__file__).parent))
from official import fixture, rel_error  # noqa: E402

FAMILIES = ['cct_2_3x2_32', 'cvt_2_4_32', 'vit_lite_2_4_32', 'cct_2_3x2_32_sine']


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingBackend:
    """A dynamo backend that runs the captured graph eagerly and counts how many graphs it was given."""

    def __init__(self) -> None:
        self.graphs: List[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def official_model(name: str) -> torch.nn.Module:
    """Our model holding the weights of the stored official fixture, and its (x, official logits)."""
    state, x, logits = fixture(name)
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(timm_cct.checkpoint_filter_fn(state, model))
    return model.eval(), x, logits


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('name', FAMILIES)
def test_no_graph_breaks(name, training):
    model = timm.create_model(name).train(training)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize('how', ['dynamic', 'mark_dynamic'])
def test_dynamic_batch_one_graph(how):
    model, x, logits = official_model('cct_2_3x2_32')
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, dynamic=True if how == 'dynamic' else None)
    batches = [torch.cat([x] * n) for n in (1, 2, 3)]
    if how == 'mark_dynamic':
        for b in batches:
            torch._dynamo.mark_dynamic(b, 0)
    with torch.no_grad():
        outs = [compiled(b) for b in batches]
    assert len(backend.graphs) == 1, f'{len(backend.graphs)} graphs for batch sizes {[len(b) for b in batches]}'
    for n, out in zip((1, 2, 3), outs):
        assert out.shape == (n * len(x), logits.shape[1])
        assert rel_error(out, torch.cat([logits] * n)) < 1e-5


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    kwargs = dict(drop_path_rate=0., attn_drop_rate=0.)  # deterministic, so eager and compiled must agree
    eager = timm.create_model('cct_2_3x2_32', **kwargs).train()
    model = timm.create_model('cct_2_3x2_32', **kwargs).train()
    model.load_state_dict(eager.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    compiled = torch.compile(model, backend='aot_eager', dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    F.cross_entropy(eager(x), y).backward()
    loss = F.cross_entropy(compiled(x), y)
    loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        assert p.grad is not None, f'no gradient for {name}'
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f'gradient of {name}')
    opt.step()
    opt.zero_grad(set_to_none=True)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert 'blocks.0.attn.qkv.weight' in changed and 'head.weight' in changed
    # a second step with another batch size reuses the graph and keeps training finite
    loss2 = F.cross_entropy(compiled(torch.randn(3, 3, 32, 32)), y[:3])
    loss2.backward()
    opt.step()
    assert torch.isfinite(loss2)


def test_compiled_training_with_dropout_runs():
    model = timm.create_model('cct_2_3x2_32', drop_path_rate=0.1, attn_drop_rate=0.1).train()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend)
    out = compiled(torch.randn(2, 3, 32, 32))
    out.logsumexp(-1).mean().backward()
    assert len(backend.graphs) == 1
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_inductor_matches_official_logits():
    model, x, logits = official_model('cct_2_3x2_32')
    compiled = torch.compile(model, backend='inductor', dynamic=False)
    with torch.no_grad():
        out = compiled(x)
    assert rel_error(out, logits) < 1e-5
