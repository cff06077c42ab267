"""Focal region loss (Eq. 5) against a direct per-image, per-region computation."""

import pytest
import torch

from monai_rat.losses import FocalRegionLoss


def _loop_reference(pred, target, regions, gamma, delta):
    """Eq. 5 written out region by region, image by image."""
    err = (pred - target).abs()
    weight = torch.zeros_like(err)
    for b in range(err.shape[0]):
        labels = regions[b, 0]
        means = {int(v): err[b][:, labels == v].mean() ** delta for v in labels.unique()}
        top = max(means.values())
        for v, m in means.items():
            weight[b][:, labels == v] = m / top if top > 0 else 0.0
    return (err * (1 + gamma * weight)).mean()


@pytest.mark.parametrize("gamma,delta", [(1e-3, 1.0), (0.7, 2.0), (2.0, 0.5)])
def test_matches_region_by_region_definition(gamma, delta):
    pred, target = torch.rand(3, 2, 12, 10, dtype=torch.float64), torch.rand(3, 2, 12, 10, dtype=torch.float64)
    regions = torch.stack([torch.randint(0, k, (1, 12, 10)) * 5 - 3 for k in (1, 3, 7)])
    got = FocalRegionLoss(gamma, delta)(pred, target, regions)
    torch.testing.assert_close(got, _loop_reference(pred, target, regions, gamma, delta))


def test_gamma_zero_is_l1():
    pred, target = torch.rand(2, 1, 9, 9), torch.rand(2, 1, 9, 9)
    regions = torch.randint(0, 4, (2, 9, 9))
    torch.testing.assert_close(FocalRegionLoss(gamma=0.0)(pred, target, regions), torch.nn.L1Loss()(pred, target))


def test_weights_are_normalised_per_image_and_detached():
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.zeros(2, 1, 4, 4)
    regions = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    regions[..., 2:] = 1
    pred[0, :, :, :2], pred[0, :, :, 2:] = 1.0, 2.0  # image 0: region errors 1 and 2 -> w = 0.5, 1
    pred[1, :, :, :2], pred[1, :, :, 2:] = 10.0, 40.0  # image 1: errors 10 and 40 -> w = 0.25, 1
    pred.requires_grad_()
    loss = FocalRegionLoss(gamma=1.0, reduction="none")(pred, target, regions)
    expected_w = torch.tensor([[0.5, 1.0], [0.25, 1.0]])
    torch.testing.assert_close(loss[:, 0, 0, [0, 2]], pred.detach()[:, 0, 0, [0, 2]] * (1 + expected_w))
    loss.sum().backward()
    # no gradient through the weights: d/dpred = sign(err) * (1 + gamma * w)
    torch.testing.assert_close(pred.grad[:, 0, 0, [0, 2]], 1 + expected_w)


def test_reductions_and_zero_error():
    pred = torch.rand(2, 3, 5, 5)
    regions = torch.randint(0, 3, (2, 1, 5, 5))
    none = FocalRegionLoss(0.5, reduction="none")(pred, pred * 0.5, regions)
    assert none.shape == pred.shape
    torch.testing.assert_close(FocalRegionLoss(0.5, reduction="sum")(pred, pred * 0.5, regions), none.sum())
    torch.testing.assert_close(FocalRegionLoss(0.5)(pred, pred * 0.5, regions), none.mean())
    zero = FocalRegionLoss(1.0)(pred, pred, regions)
    assert zero.item() == 0.0 and torch.isfinite(zero)


def test_bad_inputs():
    loss = FocalRegionLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expected shape \(1, 1, 4, 4\)"):
        loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="gamma"):
        FocalRegionLoss(gamma=-1)
    with pytest.raises(ValueError, match="delta"):
        FocalRegionLoss(delta=0)
    with pytest.raises(ValueError):
        FocalRegionLoss(reduction="max")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_region_sums_in_float32(dtype):
    """A 256 x 256 region with error 1 sums to about 65536: in float16 the running sum stalls at 2048
    (2048 + 1 rounds back to 2048) and would overflow past 65504; in bfloat16 it stalls at 256. Summed in
    the input's dtype, this region's weight came out 0.06 instead of 1 (loss 1.03 instead of 1.5)."""
    pred = torch.ones(1, 1, 256, 256)
    target = torch.zeros(1, 1, 256, 256)
    target[..., :8, :8] = 0.5  # a small second region with half the error
    regions = torch.zeros(1, 1, 256, 256, dtype=torch.long)
    regions[..., :8, :8] = 1
    loss_fn = FocalRegionLoss(gamma=0.5, reduction="none")
    half = loss_fn(pred.to(dtype), target.to(dtype), regions)
    assert half.dtype == dtype and torch.isfinite(half).all()
    full = loss_fn(pred, target, regions)
    torch.testing.assert_close(half.float(), full, atol=0, rtol=1e-2)
    assert float(full[0, 0, 100, 100]) == pytest.approx(1.5)  # w = 1 in the worst region: 1 * (1 + 0.5)
