"""From any intensity range to what a partitioner sees: a windowed or percentile-scaled 8-bit image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_image", "scale_intensity", "to_uint8_rgb"]


def check_image(img: np.ndarray, name: str = "img") -> None:
    """Check that an image is channel-first 2D or 3D with 1 or 3 channels and finite values.

    Args:
        img: (C, H, W) or (C, H, W, D) array.
        name: how error messages name the input.

    Raises:
        ValueError: when the shape is not (C, H, W) / (C, H, W, D), C is not 1 or 3, a spatial size is
            zero, or the image holds NaN or infinite values.
    """
    if img.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(img.shape)}."
        )
    if img.shape[0] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {img.shape[0]} (shape {tuple(img.shape)}).")
    if min(img.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty spatial size: shape {tuple(img.shape)}.")
    if not np.issubdtype(img.dtype, np.number) and img.dtype != bool:
        raise ValueError(f"{name} must be numeric, got dtype {img.dtype}.")
    if np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.complexfloating):
        bad = ~np.isfinite(img)
        if bad.any():
            n_nan = int(np.isnan(img).sum())
            raise ValueError(
                f"{name} holds {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values; "
                "a region map needs finite intensities."
            )


def scale_intensity(
    img: np.ndarray,
    window: Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> np.ndarray | None:
    """Map intensities to [0, 1] with an explicit window or, without one, the image's own percentiles.

    Values outside the window (or the percentile range) are clipped to its ends: that is the point of a
    display window (e.g. a CT soft-tissue window ``(-160, 240)`` HU).

    Args:
        img: array of any shape (all channels share one window).
        window: ``(low, high)`` in the image's units, ``low < high``; ``None`` to use ``percentiles``.
        percentiles: ``(low, high)`` percentiles in [0, 100] used when ``window`` is ``None``.

    Returns:
        float32 array in [0, 1] of the same shape, or ``None`` when the image is constant over the
        window (nothing to partition).

    Raises:
        ValueError: when ``window`` or ``percentiles`` is not an increasing pair (percentiles within [0, 100]).
    """
    x = img.astype(np.float64, copy=False)
    if window is not None:
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ValueError(f"window must be (low, high) with low < high, got {window!r}.")
        low, high = float(window[0]), float(window[1])
    else:
        if len(percentiles) != 2 or not 0 <= float(percentiles[0]) <= float(percentiles[1]) <= 100:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low <= high <= 100, got {percentiles!r}.")
        low, high = (float(v) for v in np.percentile(x, [float(percentiles[0]), float(percentiles[1])]))
        if not high > low:  # the percentile range is flat: fall back to the full range
            low, high = float(x.min()), float(x.max())
    clipped = np.clip(x, low, high)
    if clipped.max() == clipped.min():
        return None
    return ((clipped - low) / (high - low)).astype(np.float32)


def to_uint8_rgb(
    img2d: np.ndarray,
    window: Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> np.ndarray | None:
    """Convert a channel-first 2D image of any intensity range to the (H, W, 3) uint8 RGB image SAM expects.

    Args:
        img2d: (1, H, W) or (3, H, W) array; one channel is repeated to three.
        window: see :func:`scale_intensity`.
        percentiles: see :func:`scale_intensity`.

    Returns:
        (H, W, 3) uint8 array, or ``None`` when the image is constant (one region, no model needed).

    Raises:
        ValueError: when ``img2d`` is not (1|3, H, W) or the window / percentiles are invalid.
    """
    if img2d.ndim != 3 or img2d.shape[0] not in (1, 3):
        raise ValueError(f"img2d must be (1, H, W) or (3, H, W), got shape {tuple(img2d.shape)}.")
    unit = scale_intensity(img2d, window, percentiles)
    if unit is None:
        return None
    rgb = np.rint(unit * 255.0).astype(np.uint8)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
