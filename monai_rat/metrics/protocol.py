"""PSNR and SSIM under two protocols, as MONAI metrics (``CumulativeIterationMetric``), for validation and evaluation.

``"float"`` (the default of every bundle): the images as the network sees them (CT: HU mapped from
``[-1024, 3072]`` to ``[0, 1]``; PET: normalised activity; pathology: RGB in ``[0, 1]``), no clipping,
no rounding; MONAI's ``PSNRMetric(max_val=data_range)`` and ``SSIMMetric(data_range=data_range)``
(Gaussian 11 x 11, sigma 1.5, over all channels).

``"reference"``: how the paper's reference code (BasicSR's ``calculate_psnr`` / ``calculate_ssim``
with ``test_y_channel=True`` on 8-bit images) scores, so our figures can be set beside its Table 2:

1. the image in its ``window`` (network units; default ``[0, data_range]``) is mapped to ``[0, 1]``,
   clamped to ``[0, 1]``, multiplied by 255 and rounded to 8-bit integers (what saving a PNG does;
   halves round to even, as numpy does);
2. the 8-bit image, read as colour (a grey image has R = G = B), goes to the luma channel of
   ITU-R BT.601 ``Y'CbCr``: ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with ``R, G, B`` the 8-bit
   values divided by 255, so ``Y`` lies in ``[16, 235]`` (BasicSR's ``bgr2ycbcr(..., y_only=True)``
   on the BGR image OpenCV reads; our channels are RGB, so the red weight goes to channel 0);
3. PSNR on ``Y`` with peak 255: ``10 log10(255^2 / MSE)``;
   SSIM on ``Y`` as BasicSR's ``_ssim``: Gaussian window 11 x 11, sigma 1.5 (OpenCV's
   ``getGaussianKernel(11, 1.5)``), ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, the SSIM map
   over the valid region only (5 pixels trimmed at every border), averaged.

Optionally ``crop_border`` pixels are removed at every border first (BasicSR's ``crop_border``; 0 by
default). For a grey image, step 2 multiplies differences by 219 / 255, so the reference PSNR is the
PSNR of the same 8-bit values scored directly plus exactly ``20 log10(255 / 219) = 1.3219`` dB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

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

#: the protocols :func:`restoration_metric` knows.
METRIC_PROTOCOLS = ("float", "reference")

#: ITU-R BT.601 luma weights for R, G, B in [0, 1], giving Y in [16, 235].
BT601_Y = (65.481, 128.553, 24.966)
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def _window(window: Sequence[float] | None, where: str) -> tuple[float, float]:
    lo, hi = (0.0, 1.0) if window is None else (float(v) for v in window)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"{where}: `window` must be (low, high) with high > low, got {window!r}.")
    return lo, hi


def to_reference_y(img: torch.Tensor, window: Sequence[float] | None = None, crop_border: int = 0) -> torch.Tensor:
    """The reference protocol's 8-bit luma ``Y`` of a batch ``(B, C, H, W)``, C = 1 (grey) or 3 (RGB).

    Steps 1-2 of :mod:`monai_rat.metrics.protocol`: window -> clamp to [0, 1] -> round to 8 bits ->
    BT.601 ``Y`` in [16, 235], float64, shape ``(B, 1, H, W)`` (``crop_border`` removed).

    Args:
        img: the images in network units.
        window: ``(low, high)`` in network units that maps to 0..255 (default ``(0, 1)``).
        crop_border: pixels removed at each border (default 0).

    Raises:
        ValueError: when ``img`` is not ``(B, 1 or 3, H, W)``, ``window`` is invalid, or ``crop_border``
            is negative or leaves no pixel.
    """
    where = "to_reference_y"
    lo, hi = _window(window, where)
    x = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{where}: expected a (B, C, H, W) batch with C = 1 (grey) or 3 (RGB), got shape {tuple(x.shape)}.")
    crop = int(crop_border)
    if crop < 0 or 2 * crop >= min(x.shape[2:]):
        raise ValueError(f"{where}: `crop_border` must be >= 0 and leave pixels in a {tuple(x.shape[2:])} image, got {crop_border!r}.")
    if crop:
        x = x[..., crop:-crop, crop:-crop]
    u8 = torch.round(((x.detach().double() - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0)
    rgb = u8 / 255.0
    if rgb.shape[1] == 1:
        return 16.0 + sum(BT601_Y) * rgb
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    return 16.0 + BT601_Y[0] * r + BT601_Y[1] * g + BT601_Y[2] * b


def reference_psnr(
    y_pred: torch.Tensor, y: torch.Tensor, window: Sequence[float] | None = None, crop_border: int = 0
) -> torch.Tensor:
    """Per-image PSNR (dB) of the reference protocol: 8-bit BT.601 ``Y``, peak 255; shape ``(B, 1)``, float64.

    Args:
        y_pred: restored images ``(B, C, H, W)`` in network units.
        y: targets, same shape.
        window: see :func:`to_reference_y`.
        crop_border: see :func:`to_reference_y`.
    """
    a, b = to_reference_y(y_pred, window, crop_border), to_reference_y(y, window, crop_border)
    mse = ((a - b) ** 2).flatten(1).mean(1, keepdim=True)
    return 10.0 * torch.log10(255.0**2 / mse)  # inf when equal, as BasicSR


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """OpenCV's ``getGaussianKernel(size, sigma)`` outer product, float64 ``(1, 1, size, size)``."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def reference_ssim(
    y_pred: torch.Tensor, y: torch.Tensor, window: Sequence[float] | None = None, crop_border: int = 0
) -> torch.Tensor:
    """Per-image SSIM of the reference protocol (BasicSR's ``_ssim`` on 8-bit BT.601 ``Y``); shape ``(B, 1)``, float64.

    Args:
        y_pred: restored images ``(B, C, H, W)`` in network units.
        y: targets, same shape.
        window: see :func:`to_reference_y`.
        crop_border: see :func:`to_reference_y`.

    Raises:
        ValueError: when an image (after ``crop_border``) is smaller than the 11 x 11 window.
    """
    a, b = to_reference_y(y_pred, window, crop_border), to_reference_y(y, window, crop_border)
    if min(a.shape[2:]) < 11:
        raise ValueError(f"reference_ssim: the images must be at least 11 x 11 (the SSIM window), got {tuple(a.shape[2:])}.")
    w = _gaussian_window().to(a.device)

    def filt(t: torch.Tensor) -> torch.Tensor:  # valid region only, as BasicSR's [5:-5, 5:-5]
        return F.conv2d(t, w)

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = filt(a * a) - mu1_sq, filt(b * b) - mu2_sq, filt(a * b) - mu12
    ssim_map = ((2 * mu12 + _SSIM_C1) * (2 * s12 + _SSIM_C2)) / ((mu1_sq + mu2_sq + _SSIM_C1) * (s1 + s2 + _SSIM_C2))
    return ssim_map.flatten(1).mean(1, keepdim=True)


class _ReferenceMetric(RegressionMetric):
    _fn: Any = None

    def __init__(
        self,
        window: Sequence[float] | None = None,
        crop_border: int = 0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.window = _window(window, type(self).__name__)
        if int(crop_border) != crop_border or crop_border < 0:
            raise ValueError(f"{type(self).__name__}: `crop_border` must be an integer >= 0, got {crop_border!r}.")
        self.crop_border = int(crop_border)

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(y_pred, y, self.window, self.crop_border).float()


class ReferencePSNRMetric(_ReferenceMetric):
    """PSNR of the reference protocol (see :mod:`monai_rat.metrics.protocol`), a MONAI cumulative metric.

    Use like MONAI's ``PSNRMetric``: ``metric(y_pred, y)`` per batch (``(B, C, H, W)``, C = 1 or 3),
    then ``aggregate()``; in an ignite engine through ``monai.handlers.IgniteMetricHandler(metric_fn=...)``.

    Args:
        window: ``(low, high)`` in network units mapped to 0..255 (default ``(0, 1)``).
        crop_border: pixels removed at every border first (default 0).
        reduction: MONAI metric reduction (default mean).
        get_not_nans: also return the count of non-NaN values from ``aggregate``.

    Raises:
        ValueError: when ``window`` or ``crop_border`` is invalid; at call time when the shapes differ
            or an image is not grey or RGB.
    """

    _fn = staticmethod(reference_psnr)


class ReferenceSSIMMetric(_ReferenceMetric):
    """SSIM of the reference protocol (see :mod:`monai_rat.metrics.protocol`), a MONAI cumulative metric.

    Args:
        window: ``(low, high)`` in network units mapped to 0..255 (default ``(0, 1)``).
        crop_border: pixels removed at every border first (default 0).
        reduction: MONAI metric reduction (default mean).
        get_not_nans: also return the count of non-NaN values from ``aggregate``.

    Raises:
        ValueError: when ``window`` or ``crop_border`` is invalid; at call time when the shapes differ,
            an image is not grey or RGB, or is smaller than 11 x 11.
    """

    _fn = staticmethod(reference_ssim)


def _check_protocol(protocol: str) -> str:
    p = str(protocol).lower()
    if p not in METRIC_PROTOCOLS:
        raise ValueError(f"Unknown metric protocol {protocol!r}; valid: {', '.join(map(repr, METRIC_PROTOCOLS))} (--metric_protocol).")
    return p


def restoration_metric(
    kind: str,
    protocol: str = "float",
    data_range: float = 1.0,
    spatial_dims: int = 2,
    window: Sequence[float] | None = None,
    crop_border: int = 0,
    reduction: MetricReduction | str = MetricReduction.MEAN,
) -> Any:
    """The MONAI metric object for ``kind`` (``"psnr"`` or ``"ssim"``) under ``protocol``.

    ``"float"``: ``monai.metrics.PSNRMetric(max_val=data_range)`` / ``SSIMMetric(spatial_dims, data_range)``.
    ``"reference"``: :class:`ReferencePSNRMetric` / :class:`ReferenceSSIMMetric` with ``window``
    (default ``(0, data_range)``) and ``crop_border``. The bundles build their ``val_psnr`` /
    ``val_ssim`` (and evaluation's input and baseline) metrics with this, from ``--metric_protocol``.

    Args:
        kind: ``"psnr"`` or ``"ssim"``.
        protocol: one of :data:`METRIC_PROTOCOLS`.
        data_range: the images' data range in network units (float protocol; the reference's default window).
        spatial_dims: 2 (the reference protocol is 2D only).
        window: the reference protocol's 8-bit window in network units; ``None``: ``(0, data_range)``.
        crop_border: the reference protocol's border crop (default 0).
        reduction: MONAI metric reduction.

    Raises:
        ValueError: for an unknown ``kind`` or ``protocol``, or the reference protocol with ``spatial_dims != 2``.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    kind = str(kind).lower()
    if kind not in ("psnr", "ssim"):
        raise ValueError(f"restoration_metric: `kind` must be 'psnr' or 'ssim', got {kind!r}.")
    protocol = _check_protocol(protocol)
    if protocol == "float":
        if kind == "psnr":
            return PSNRMetric(max_val=data_range, reduction=reduction)
        return SSIMMetric(spatial_dims=spatial_dims, data_range=data_range, reduction=reduction)
    if spatial_dims != 2:
        raise ValueError(f"restoration_metric: the reference protocol scores 2D images only, got spatial_dims={spatial_dims}.")
    window = (0.0, float(data_range)) if window is None else window
    cls = ReferencePSNRMetric if kind == "psnr" else ReferenceSSIMMetric
    return cls(window=window, crop_border=crop_border, reduction=reduction)


def describe_protocol(
    protocol: str = "float", data_range: float = 1.0, window: Sequence[float] | None = None, crop_border: int = 0
) -> str:
    """One sentence saying how the figures were computed (written into evaluation summaries).

    Args:
        protocol: one of :data:`METRIC_PROTOCOLS`.
        data_range: as :func:`restoration_metric`.
        window: as :func:`restoration_metric`.
        crop_border: as :func:`restoration_metric`.

    Raises:
        ValueError: for an unknown protocol.
    """
    protocol = _check_protocol(protocol)
    if protocol == "float":
        return (
            f"float: images in network units, not clipped or rounded; PSNR with data range {data_range:g}, "
            f"SSIM (MONAI, Gaussian 11x11, sigma 1.5) with data range {data_range:g}"
        )
    lo, hi = (0.0, float(data_range)) if window is None else (float(v) for v in window)
    crop = f", {int(crop_border)} border pixels cropped" if crop_border else ""
    return (
        f"reference: window [{lo:g}, {hi:g}] of network units -> clamp to [0, 1] -> round to 8 bits -> BT.601 Y "
        f"(16 + 65.481 R + 128.553 G + 24.966 B){crop}; PSNR with peak 255 and SSIM (BasicSR: Gaussian 11x11, "
        f"sigma 1.5, C1 = (0.01*255)^2, C2 = (0.03*255)^2, valid region) on Y; about +1.32 dB over float scoring "
        "of the same 8-bit values"
    )
