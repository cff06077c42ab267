"""R-MSA ``"flex"``: one ``flex_attention`` call per layer for the whole batch, on region-sorted tokens.

The flex path is meant for CUDA, where ``"fast"`` picks it. On a CPU, torch runs its eager reference
of flex attention (the N x N scores, materialised) and refuses autograd: "FlexAttention does not
support backward on CPU" (torch 2.14). The gradient checks here therefore lift that one guard
(``torch.nn.attention.flex_attention._validate_device``, see :func:`cpu_flex_backward`) so that
torch's eager reference backward of the same higher-order op runs. What they check is our part:
the sort by (image, region), the block mask, the mask_mod, the q/k/v split and the un-sort, in
outputs and gradients. The CUDA kernels (forward and backward) are checked by
``benchmarks/gpu_check.py`` on a GPU, which this machine does not have.
"""

from __future__ import annotations

import re
import time
import warnings

import pytest
import torch

from monai_rat.networks import RAT
from monai_rat.networks.blocks import RegionAttention, RegionPlan
from monai_rat.networks.blocks import region_attention as ra
from test_region_attention import _check_same

pytestmark = [
    pytest.mark.skipif(not ra.HAVE_FLEX, reason="needs torch.nn.attention.flex_attention (torch >= 2.5)"),
    # on a CPU the eager reference is what these tests exercise; torch says once that it is not the fused kernel
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning"),
]

TOL = 1e-4  # fp32, the bound


@pytest.fixture
def cpu_flex_backward(monkeypatch):
    """Let torch's eager flex attention run its reference backward on the CPU (torch refuses by default)."""
    import torch.nn.attention.flex_attention as fa

    if not hasattr(fa, "_validate_device"):
        pytest.skip("this torch has no flex_attention._validate_device guard to lift: CPU flex backward not checked")
    real = fa._validate_device

    def allow_cpu_backward(query, key, value):
        if query.device.type != "cpu":
            real(query, key, value)

    monkeypatch.setattr(fa, "_validate_device", allow_cpu_backward)


def _stack(*maps):
    return torch.stack([torch.as_tensor(m) for m in maps])


def _region_maps() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(12), torch.arange(16), indexing="ij")
    uneven = torch.zeros(12, 16, dtype=torch.long)  # one big region, a band, a 2x2 block, single tokens
    uneven[:, 12:] = 1
    uneven[5:7, 3:5] = 2
    uneven[0, 0], uneven[11, 0] = 3, 4
    return {
        "one region": torch.full((1, 12, 16), 7),
        "many small regions": _stack((yy // 2) * 8 + xx // 2),  # 48 regions of 4 tokens
        "uneven sizes, negative labels": _stack(uneven * 5 - 3),
        "batch of 2, different maps": _stack(torch.randint(0, 3, (12, 16), generator=g), (yy // 3) * 4 + xx // 4),
        # 20 x 17 = 340 tokens: three 128-token tiles, the last one partial
        "N not a multiple of 128": _stack(torch.randint(0, 5, (20, 17), generator=g), torch.randint(0, 40, (20, 17), generator=g)),
    }


MAPS = _region_maps()


@pytest.mark.parametrize("name", list(MAPS))
def test_flex_equals_reference_outputs_and_gradients(name, cpu_flex_backward):
    _check_same(MAPS[name], channels=32, heads=4, tol=TOL, impl="flex", dtype=torch.float32)


def test_block_mask_skips_tiles_of_the_sorted_tokens():
    """Scattered regions, sorted: each region is a contiguous run, so only the tiles where a region meets
    itself are computed (here 4 regions x 2 x 2 tiles = 16 of 64 per image), and tiles inside one
    region need no mask."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = (yy % 2) * 2 + xx % 2  # 4 regions of 256 tokens, interleaved pixel by pixel
    plan = RegionPlan.from_labels(_stack(checker, checker.T.contiguous()))
    mask = plan.flex_block_mask()
    assert mask.BLOCK_SIZE == (128, 128)
    assert tuple(mask.shape) == (2, 1, 1024, 1024)
    computed = (mask.kv_num_blocks + mask.full_kv_num_blocks).sum().item()
    assert computed == 2 * 16, computed  # of 2 x 64 tiles
    assert mask.full_kv_num_blocks.sum().item() == 2 * 16  # every computed tile lies inside one region
    # unsorted, the same map touches every tile
    unsorted = ra.create_block_mask(lambda b, h, q, k: checker.flatten()[q] == checker.flatten()[k], 1, None, 1024, 1024, device="cpu")
    assert unsorted.kv_num_blocks.sum().item() + unsorted.full_kv_num_blocks.sum().item() == 64


class _Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _randomised(net):
    with torch.no_grad():
        for name, p in net.named_parameters():
            if re.search(r"(lambda_ra|lambda_wa|beta|gamma)$", name):
                p.normal_(0, 0.5)
    return net


def test_block_mask_is_built_once_per_forward_for_all_layers(monkeypatch):
    counting = _Counting(ra.create_block_mask)
    monkeypatch.setattr(ra, "create_block_mask", counting)
    model = RAT(feature_size=8, num_groups=2, layers_per_group=2, attention_impl="flex").eval()  # 4 R-MSA layers
    x, regions = torch.rand(2, 1, 32, 32), torch.randint(0, 5, (2, 1, 32, 32))
    with torch.no_grad():
        model(x, regions)
        assert counting.calls == 1
        model(x, regions)  # a new forward, a new plan
        assert counting.calls == 2
    plan = RegionPlan.from_labels(regions[:, 0, ::4, ::4])
    assert plan.flex_block_mask() is plan.flex_block_mask()  # cached ...
    assert plan.flex_block_mask(block_size=64) is not plan.flex_block_mask()  # ... by block size (and device, N)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops of our code; flex attention itself (a higher-order op) is counted and run as it is."""

    supports_higher_order_operators = True

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if isinstance(func, torch._ops.HigherOrderOperator):
            self.counts[func.name()] = self.counts.get(func.name(), 0) + 1
            return func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_flex_forward_has_no_host_synchronisation(monkeypatch):
    """No region sizes on the host, no .item(), no nonzero: nothing that would stall a GPU or break CUDA graphs."""
    import torch.nn.attention.flex_attention as fa

    # eager flex attention wraps its op in an internal torch.compile, which refuses to run under a dispatch
    # mode; torch's debugging switch calls the op directly (same op, same numbers)
    monkeypatch.setattr(fa, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)
    model = RAT(feature_size=8, num_groups=2, layers_per_group=2, attention_impl="flex").eval()
    x, regions = torch.rand(2, 1, 32, 32), torch.randint(0, 5, (2, 1, 32, 32))
    with torch.no_grad(), _CountOps() as probe:
        model(x, regions)
    plan = RegionPlan.from_labels(regions[:, 0, ::4, ::4])
    plan.sorted_labels
    with torch.no_grad(), _CountOps() as one_mask:
        plan.flex_block_mask()
    # one plan per forward (one sort by region), one block mask (torch sorts its tile indices)
    assert probe.counts.get("sort") == 1 + one_mask.counts.get("sort", 0), (probe.counts.get("sort"), one_mask.counts)
    assert probe.counts.get("flex_attention") == 4, probe.counts.get("flex_attention")  # one call per R-MSA layer
    for op in ("nonzero", "_local_scalar_dense", "unique", "_unique2"):
        assert op not in probe.counts, (op, probe.counts.get(op))


def test_fast_chooses_flex_only_for_cuda_tensors(monkeypatch):
    monkeypatch.delenv(ra.RMSA_ENV, raising=False)
    pick = ra.select_implementation
    assert pick("fast", torch.device("cuda"), 32) == "flex"
    assert pick("fast", "cuda:1", 32) == "flex"
    assert pick("fast", "cuda") == "flex"
    assert pick("fast", "cpu", 32) == "regions"
    assert pick("fast", torch.device("cpu")) == "regions"
    assert pick("fast", "mps", 32) == "regions"
    assert pick("fast", "cuda", 8) == "regions"  # flex's CUDA kernel needs a head dimension >= 16
    for impl in ("regions", "flex", "masked", "reference"):  # an explicit choice is kept, on any device
        assert pick(impl, "cuda", 32) == impl and pick(impl, "cpu", 32) == impl
    monkeypatch.setattr(ra, "is_exporting", lambda: True)
    assert pick("fast", "cuda", 32) == "masked" and pick("fast", "cpu", 32) == "masked"
    monkeypatch.setattr(ra, "is_exporting", lambda: False)
    monkeypatch.setattr(ra, "HAVE_FLEX", False)  # an older torch
    assert pick("fast", "cuda", 32) == "regions"
    with pytest.raises(ValueError, match="flex_attention"):
        pick("flex", "cuda", 32)


def test_environment_variable_overrides_what_fast_picks(monkeypatch):
    monkeypatch.setenv(ra.RMSA_ENV, "regions")
    assert ra.select_implementation("fast", "cuda", 32) == "regions"
    assert ra.select_implementation("masked", "cuda", 32) == "masked"  # only "fast" listens to it
    monkeypatch.setenv(ra.RMSA_ENV, "FLEX")
    assert ra.select_implementation("fast", "cpu", 32) == "flex"
    monkeypatch.setattr(ra, "is_exporting", lambda: True)
    assert ra.select_implementation("fast", "cuda", 32) == "masked"  # exports stay exact whatever it says
    monkeypatch.setattr(ra, "is_exporting", lambda: False)
    monkeypatch.setenv(ra.RMSA_ENV, "sparse")
    with pytest.raises(ValueError, match=ra.RMSA_ENV):
        ra.select_implementation("fast", "cuda", 32)


def test_fast_runs_regions_on_cpu_tensors(monkeypatch):
    monkeypatch.delenv(ra.RMSA_ENV, raising=False)
    called = []
    monkeypatch.setattr(RegionAttention, "_flex", lambda self, *a: called.append("flex"))
    attn = RegionAttention(32, 2)  # head dimension 16: flex would be eligible on CUDA
    attn(torch.randn(1, 32, 6, 6), RegionPlan.from_labels(torch.randint(0, 3, (1, 6, 6))))
    assert called == []


def test_whole_rat_with_flex_equals_the_regions_path(cpu_flex_backward):
    torch.manual_seed(0)
    flex = _randomised(RAT(feature_size=8, num_groups=2, layers_per_group=2, attention_impl="flex"))
    regions_net = _randomised(RAT(feature_size=8, num_groups=2, layers_per_group=2, attention_impl="regions"))
    regions_net.load_state_dict(flex.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 40, 56, generator=g)  # latent 10 x 14 = 140 tokens: a partial second tile
    regions = torch.stack([torch.randint(0, 6, (1, 40, 56), generator=g), torch.randint(0, 30, (1, 40, 56), generator=g)])
    yf, yr = flex(x, regions), regions_net(x, regions)
    torch.testing.assert_close(yf, yr, atol=TOL, rtol=0)
    yf.square().mean().backward()
    yr.square().mean().backward()
    for (n, pf), (_, pr) in zip(flex.named_parameters(), regions_net.named_parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=TOL, rtol=1e-4, msg=n)


def test_flex_on_cpu_without_the_guard_lifted_says_what_torch_lacks():
    """Training with "flex" on a CPU is refused by torch itself, with its own message (use "regions" there)."""
    attn = RegionAttention(32, 2, implementation="flex")
    x = torch.randn(1, 32, 6, 6, requires_grad=True)
    try:
        attn(x, RegionPlan.from_labels(torch.randint(0, 3, (1, 6, 6))))
    except NotImplementedError as e:
        assert "backward on CPU" in str(e)
    else:  # a torch with CPU flex backward: then the gradient tests above need no lifted guard
        pytest.skip("this torch supports flex attention's backward on the CPU")


# --------------------------------------------------------------------------------------- torch.compile
@pytest.fixture
def fresh_dynamo():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def test_whole_rat_with_flex_compiles_into_one_graph_without_recompiles(fresh_dynamo):
    """``fullgraph=True``: no graph break (the per-region path needs two per layer); new maps, no new graph."""
    counters = fresh_dynamo
    net = _randomised(RAT(feature_size=8, num_groups=1, layers_per_group=2, attention_impl="flex")).eval()
    # the eager check runs "regions": eager flex attention compiles internally and would add a graph of its own
    eager = _randomised(RAT(feature_size=8, num_groups=1, layers_per_group=2, attention_impl="regions")).eval()
    eager.load_state_dict(net.state_dict())
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # the recompile decision is dynamo's
    x = torch.rand(2, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    maps = [torch.randint(0, k, (2, 1, 32, 32), generator=g) for k in (3, 40)] + [torch.zeros(2, 1, 32, 32, dtype=torch.long)]
    with torch.no_grad():
        for regions in maps:
            torch.testing.assert_close(compiled(x, regions), eager(x, regions), atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compiled_flex_kernel_does_not_recompile_for_new_region_maps(fresh_dynamo):
    """The path "fast" takes on CUDA, forced on the CPU: ``torch.compile(flex_attention)`` (Inductor's CPU
    flex kernel, forward only) and ``torch.compile(create_block_mask)``, over two region maps of one size."""
    counters = fresh_dynamo
    flex = RegionAttention(32, 2, implementation="flex")
    flex.flex_compile = True
    ref = RegionAttention(32, 2, implementation="reference")
    ref.load_state_dict(flex.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 12, 20, generator=g)
    maps = [torch.randint(0, 4, (2, 12, 20), generator=g), torch.randint(0, 30, (2, 12, 20), generator=g)]
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        graphs = []
        for labels in maps:
            plan = RegionPlan.from_labels(labels)
            torch.testing.assert_close(flex(x, plan), ref(x, plan), atol=TOL, rtol=0)
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0], f"graphs after each map: {graphs} ({time.perf_counter() - t0:.0f} s)"
