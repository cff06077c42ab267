"""warmup_cosine_schedule: the paper's cosine exactly without warm-up, a linear ramp with it, resumable."""

import pytest
import torch

from monai_rat.engines import warmup_cosine_schedule


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt(lr=2e-3):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_without_warmup_it_is_cosine_annealing():
    ours = _lrs(warmup_cosine_schedule(_opt(), 0, 50, 1e-6), 51)
    ref = _lrs(torch.optim.lr_scheduler.CosineAnnealingLR(_opt(), T_max=50, eta_min=1e-6), 51)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert ours[0] == pytest.approx(2e-3) and ours[50] == pytest.approx(1e-6)


def test_warmup_ramps_linearly_then_anneals_to_the_floor():
    lrs = _lrs(warmup_cosine_schedule(_opt(), 10, 60, 1e-6), 61)
    assert lrs[:10] == pytest.approx([2e-3 * (i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(2e-3) and lrs[60] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone after the warm-up


def test_state_resumes_mid_run():
    first = warmup_cosine_schedule(_opt(), 5, 40, 1e-6)
    _lrs(first, 17)
    again = warmup_cosine_schedule(_opt(), 5, 40, 1e-6)
    again.optimizer.load_state_dict(first.optimizer.state_dict())  # as the bundle's checkpoint restores both
    again.load_state_dict(first.state_dict())
    assert _lrs(again, 10) == pytest.approx(_lrs(first, 10))


def test_bad_lengths_are_named():
    with pytest.raises(ValueError, match="warmup_iterations"):
        warmup_cosine_schedule(_opt(), 50, 50, 1e-6)
    with pytest.raises(ValueError, match="min_learning_rate"):
        warmup_cosine_schedule(_opt(1e-3), 0, 50, 1e-2)
