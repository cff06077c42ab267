"""Loss functions: the focal region loss (RAT, Eq. 5)."""

from monai_rat.losses.focal_region import FocalRegionLoss

__all__ = ["FocalRegionLoss"]
