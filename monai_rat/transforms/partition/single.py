"""The one-region map: every pixel in region 1 (RAT's region attention then is global attention)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import RegionPartitioner

__all__ = ["SingleRegionPartition"]


class SingleRegionPartition(RegionPartitioner):
    """A region map with a single region (label 1 everywhere), with the same contract as the SAM map.

    Table 4's "one region" ablation: with one region, R-MSA attends over all pixels (the paper's MSA)
    and the focal region loss weighs the whole image as one region (L1 times ``1 + gamma``). Having it
    as a partition method lets a bundle run that ablation with ``--region_method single`` and nothing
    else changed. Nothing is cached (there is nothing to compute).

    Args:
        slice_axis: spatial axis along which 3D input is cut (as the other partitions).
    """

    def __init__(self, slice_axis: int = 2) -> None:
        super().__init__(slice_axis=slice_axis, cache_dir=None)

    def settings(self) -> dict[str, Any]:
        """The settings (none change the map)."""
        return {"method": "single"}

    def partition_slices(self, slices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One int32 (H, W) map of ones per (C, H, W) slice."""
        return [np.ones(s.shape[1:], dtype=np.int32) for s in slices]
