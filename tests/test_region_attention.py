"""R-MSA: the fast path equals the paper's dense-mask form, and never builds an N x N tensor."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from monai_rat.networks.blocks import RegionAttention, RegionPlan


def _pair(channels=32, heads=4, impl="fast", pad_budget=None, dtype=torch.float64):
    fast = RegionAttention(channels, heads, implementation=impl).to(dtype)
    fast.pad_budget = pad_budget
    ref = RegionAttention(channels, heads, implementation="reference").to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _check_same(labels, channels=32, heads=4, tol=1e-4, impl="fast", pad_budget=None, dtype=torch.float64):
    """``impl`` equals the dense reference in outputs, input gradients and parameter gradients; returns the output."""
    fast, ref = _pair(channels, heads, impl, pad_budget, dtype)
    b, h, w = labels.shape
    x = torch.randn(b, channels, h, w, dtype=dtype) * 2
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    plan = RegionPlan.from_labels(labels)
    yf, yr = fast(xf, plan), ref(xr, plan)
    torch.testing.assert_close(yf, yr, atol=tol, rtol=0)
    g = torch.randn_like(yf)
    (yf * g).sum().backward()
    (yr * g).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, atol=tol, rtol=0)
    for (n, pf), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=tol, rtol=0, msg=n)
    return yf


@pytest.mark.parametrize(
    "impl, pad_budget",
    [("fast", None), ("regions", -1), ("regions", 10**6), ("masked", None)],
    ids=["fast", "one-call-per-region", "all-regions-padded-into-one-call", "masked"],
)
def test_every_implementation_equals_reference_batch_with_different_region_counts(impl, pad_budget):
    labels = torch.stack(
        [
            torch.randint(0, 3, (8, 8)),  # 3 regions
            torch.randint(0, 9, (8, 8)) * 7 - 20,  # up to 9 regions, non-contiguous, negative labels
            torch.arange(64).reshape(8, 8) // 16,  # 4 horizontal bands
        ]
    )
    _check_same(labels, impl=impl, pad_budget=pad_budget)


def test_padded_calls_group_regions_of_similar_size():
    """Small regions share padded calls; a region much larger than the rest keeps a call of its own."""
    labels = torch.zeros(1, 256, dtype=torch.long)  # one region of 256 - 30 = 226 tokens ...
    labels[0, :30] = torch.arange(30) // 3 + 1  # ... and ten regions of 3 tokens
    labels = labels.reshape(1, 16, 16)
    plan = RegionPlan.from_labels(labels)
    calls = plan.batches(1024).shapes
    assert calls == [(1, 226), (10, 3)]
    assert plan.batches(0).shapes == [(1, 226), (10, 3)]  # equal sizes share a call without padding
    assert plan.batches(-1).shapes == [(1, 226)] + [(1, 3)] * 10  # negative: one call per region
    _check_same(labels, pad_budget=1024)


def test_fast_equals_reference_float32_tolerance():
    fast = RegionAttention(32, 4, implementation="fast")
    ref = RegionAttention(32, 4, implementation="reference")
    ref.load_state_dict(fast.state_dict())
    labels = torch.randint(0, 5, (2, 16, 16))
    plan = RegionPlan.from_labels(labels)
    x = torch.randn(2, 32, 16, 16)
    assert (fast(x, plan) - ref(x, plan)).abs().max() < 1e-4


def test_single_token_regions():
    labels = torch.zeros(2, 6, 6, dtype=torch.long)
    labels[0, 0, 0] = 5  # a region of one token
    labels[0, 3, 4] = 6
    labels[1] = torch.arange(36).reshape(6, 6)  # every token its own region
    y = _check_same(labels)
    # a lone token attends only to itself: its output is project_out(v) of that token
    fast, _ = _pair()
    x = torch.randn(1, 32, 6, 6, dtype=torch.float64)
    plan = RegionPlan.from_labels(labels[1:])
    v = fast.qkv(x)[:, 64:]
    torch.testing.assert_close(fast(x, plan), fast.project_out(v))
    assert y.shape == (2, 32, 6, 6)


def test_one_region_equals_global_attention():
    fast, ref = _pair()
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    plan = RegionPlan.from_labels(torch.full((2, 8, 8), 3))
    glob = fast(x, None)
    torch.testing.assert_close(fast(x, plan), glob)
    torch.testing.assert_close(ref(x, plan), glob)


def test_regions_do_not_leak():
    """Changing the features of one region leaves the other region's output unchanged."""
    fast, _ = _pair()
    labels = (torch.arange(64).reshape(1, 8, 8) % 8 >= 4).long()
    plan = RegionPlan.from_labels(labels)
    x = torch.randn(1, 32, 8, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 4:] += torch.randn_like(x2[..., 4:])
    y, y2 = fast(x, plan), fast(x2, plan)
    torch.testing.assert_close(y[..., :4], y2[..., :4])
    assert not torch.allclose(y[..., 4:], y2[..., 4:])


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_fast_path_never_builds_an_n_by_n_tensor(impl):
    """Every tensor the fast path creates (forward and backward) is far below N^2; the reference is not."""
    h = w = 48  # N = 2304 tokens, 16 regions of 144 tokens
    n = h * w
    labels = (torch.arange(h)[:, None] // 12 * 4 + torch.arange(w)[None, :] // 12).unsqueeze(0)
    attn = RegionAttention(8, 1, implementation=impl)
    x = torch.randn(1, 8, h, w, requires_grad=True)
    plan = RegionPlan.from_labels(labels)
    with _LargestOutput() as probe:
        attn(x, plan).sum().backward()
    if impl == "fast":
        assert probe.largest < n * n / 64, probe.largest
    else:
        assert probe.largest >= n * n


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match="implementation"):
        RegionAttention(8, 1, implementation="sparse")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        RegionAttention(10, 4)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_one_region_plan_per_forward_shared_by_all_layers():
    """The data-dependent part (sort by region, region starts copied to the host) runs once per forward."""
    from monai_rat.networks import RAT

    model = RAT(feature_size=8, num_groups=2, layers_per_group=2).eval()  # 4 R-MSA layers
    x, regions = torch.rand(2, 1, 32, 32), torch.randint(0, 5, (2, 1, 32, 32))
    with torch.no_grad(), _CountOps() as probe:
        model(x, regions)
    assert probe.counts.get("sort") == 1, probe.counts.get("sort")
    assert probe.counts.get("nonzero") == 1, probe.counts.get("nonzero")  # on the host copy of the region starts
    assert "_unique2" not in probe.counts and "unique_dim" not in probe.counts  # no torch.unique on the way
