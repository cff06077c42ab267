"""Image-quality metrics of the bundles, under two protocols: ``"float"`` (network units) and ``"reference"``.

See :mod:`monai_rat.metrics.protocol`.
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

__all__ = [
    "METRIC_PROTOCOLS",
    "ReferencePSNRMetric",
    "ReferenceSSIMMetric",
    "describe_protocol",
    "reference_psnr",
    "reference_ssim",
    "restoration_metric",
    "to_reference_y",
]
