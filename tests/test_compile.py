"""torch.compile of the whole RAT: one compilation serves every region map of a fixed image size.

The per-region R-MSA takes its region sizes from the data. Compiled naively, every new map would
mean new guards and a recompile. ``RegionAttention._regions`` is excluded from compilation
(``torch.compiler.disable``): the graphs around it are compiled once, and the data-dependent part
runs eagerly. The masked form (``attention_impl="masked"``) has no data-dependent sizes and compiles
into one graph.
"""

from __future__ import annotations

import re

import pytest
import torch

from monai_rat.networks import RAT

torch_dynamo = pytest.importorskip("torch._dynamo", reason="needs torch.compile (torch._dynamo)")
from torch._dynamo.utils import counters  # noqa: E402


def _model(**kwargs):
    torch.manual_seed(0)
    net = RAT(feature_size=8, num_groups=1, layers_per_group=2, **kwargs)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if re.search(r"(lambda_ra|lambda_wa|beta|gamma)$", name):
                p.normal_(0, 0.5)
    return net


def _maps(n, shape):
    g = torch.Generator().manual_seed(0)
    maps = [torch.randint(0, 2 + 4 * i, shape, generator=g) for i in range(n - 1)]
    return maps + [torch.zeros(shape, dtype=torch.long)]  # and one region


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_inference_does_not_recompile_for_new_region_maps():
    net = _model().eval()
    compiled = torch.compile(net)
    x = torch.rand(2, 1, 32, 32)
    maps = _maps(4, (2, 1, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, maps[0]), net(x, maps[0]), atol=1e-5, rtol=1e-4)
        after_first = _graphs()
        for regions in maps[1:]:  # other counts and sizes of regions, then a single region
            torch.testing.assert_close(compiled(x, regions), net(x, regions), atol=1e-5, rtol=1e-4)
    assert after_first > 0
    assert _graphs() == after_first, f"recompiled for new region maps: {after_first} -> {_graphs()} graphs"


def test_compiled_training_step_does_not_recompile_and_matches_eager():
    """Forward and backward through the compiled graphs and the eager region attention between them."""
    net = _model().train()
    ref = _model().train()
    compiled = torch.compile(net, backend="aot_eager")  # the recompile decision is dynamo's, whatever the backend
    x = torch.rand(2, 1, 32, 32)
    counts = []
    for regions in _maps(3, (2, 1, 32, 32)):
        for m in (net, ref):
            m.zero_grad(set_to_none=True)
        compiled(x, regions).square().mean().backward()
        ref(x, regions).square().mean().backward()
        counts.append(_graphs())
        for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert counts[0] > 0 and counts[1:] == counts[:1] * (len(counts) - 1), counts


def test_masked_form_compiles_into_one_graph_without_breaks():
    net = _model(attention_impl="masked").eval()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break raises
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        for regions in _maps(3, (1, 1, 32, 32)):
            torch.testing.assert_close(compiled(x, regions), net(x, regions), atol=1e-5, rtol=1e-4)
    assert _graphs() == 1
