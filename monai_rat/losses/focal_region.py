"""Focal region loss (RAT, Eq. 5): L1 weighted up in the regions that are restored worst."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_rat.utils import as_region_labels, region_groups

__all__ = ["FocalRegionLoss"]


class FocalRegionLoss(_Loss):
    """``|error| * (1 + gamma * w(region))``, averaged: focuses training on hard regions.

    For each image and each of its regions i, ``w_i = (mean |input - target| over the region's pixels
    and channels) ** delta``, divided by the largest ``w`` over that image's regions, and detached (no
    gradient flows through the weights). ``gamma = 0`` gives plain L1 (``torch.nn.L1Loss``). Computed
    for the whole batch at once: no Python loop over images or regions.

    Args:
        gamma: focus strength (1e-3 in the paper).
        delta: exponent on the region error (1 in the paper).
        reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"`` (per-element, input's shape).

    Raises:
        ValueError: for negative ``gamma``, non-positive ``delta``, an unknown reduction, or (in
            ``forward``) shapes that do not match.
    """

    def __init__(self, gamma: float = 1e-3, delta: float = 1.0, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}.")
        self.gamma = gamma
        self.delta = delta

    def forward(self, input: torch.Tensor, target: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: (B, C, H, W) prediction.
            target: same shape as ``input``.
            regions: (B, 1, H, W) or (B, H, W) integer region labels (any values, any count per image).

        Raises:
            ValueError: when shapes do not match or ``regions`` is malformed.
        """
        if input.shape != target.shape:
            raise ValueError(f"input and target must have the same shape, got {tuple(input.shape)} and {tuple(target.shape)}.")
        if input.ndim < 3:
            raise ValueError(f"input must have shape (B, C, *spatial), got {tuple(input.shape)}.")
        err = (input - target).abs()
        b, c = err.shape[:2]
        labels = as_region_labels(regions, b, tuple(err.shape[2:])).to(err.device)
        group, group_batch, num = region_groups(labels)  # group: (B, M)
        with torch.no_grad():
            # region sums in float32 (at least): an fp16 sum over a large region overflows (65504) or
            # loses the small errors; the weights go back to the input's dtype at the end
            acc = torch.promote_types(err.dtype, torch.float32)
            flat = group.reshape(-1)
            per_pixel = err.detach().to(acc).sum(1).reshape(-1)
            total = torch.zeros(num, dtype=acc, device=err.device).index_add_(0, flat, per_pixel)
            count = torch.bincount(flat, minlength=num).to(acc) * c
            w = (total / count).pow(self.delta)
            top = torch.zeros(b, dtype=acc, device=err.device).scatter_reduce_(0, group_batch, w, "amax")
            w = torch.where(top[group_batch] > 0, w / top[group_batch].clamp_min(torch.finfo(acc).tiny), 0.0)
            weight = (1 + self.gamma * w[group]).reshape(b, 1, *err.shape[2:]).to(err.dtype)
        loss = err * weight
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
