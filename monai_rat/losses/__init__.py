"""Loss functions: the focal region loss (RAT, Eq. 5)."""

from monai_rat.losses.focal_region import FocalRegionLoss

__all__ = ["FocalRegionLoss"]

# the other seed systems' losses: RDST (segmentation-based perceptual) and SRDA (diagnosis-guided attention)
from monai_rat.losses.diagnosis_attention import DiagnosisGuidedAttentionLoss
from monai_rat.losses.segmentation_perceptual import SegmentationPerceptualLoss

__all__ += ["DiagnosisGuidedAttentionLoss", "SegmentationPerceptualLoss"]
