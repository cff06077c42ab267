"""Image-quality metrics of the bundles, under two protocols: ``"float"`` (network units) and ``"reference"``.

See :mod:`monai_rat.metrics.protocol`; and the texture a restoration leaves on flat tissue
(:mod:`monai_rat.metrics.texture`), which PSNR and SSIM forgive.
"""

from monai_rat.metrics.protocol import (
    METRIC_PROTOCOLS,
    ReferencePSNRMetric,
    ReferenceSSIMMetric,
    describe_protocol,
    reference_psnr,
    reference_ssim,
    restoration_metric,
    to_reference_y,
)
from monai_rat.metrics.texture import flat_region_texture, flattest_window, grid_amplitude, high_pass_rms

__all__ = [
    "METRIC_PROTOCOLS",
    "ReferencePSNRMetric",
    "ReferenceSSIMMetric",
    "describe_protocol",
    "flat_region_texture",
    "flattest_window",
    "grid_amplitude",
    "high_pass_rms",
    "reference_psnr",
    "reference_ssim",
    "restoration_metric",
    "to_reference_y",
]
