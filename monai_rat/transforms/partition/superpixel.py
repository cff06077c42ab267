"""The offline region map: scikit-image superpixels with the same contract as the SAM map."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection

from .base import RegionPartitioner, RegionPartitionerd
from .intensity import scale_intensity
from .postprocess import relabel_regions

__all__ = ["SuperpixelPartition", "SuperpixelPartitiond", "SUPERPIXEL_METHODS"]

SUPERPIXEL_METHODS = ("felzenszwalb", "slic")


class SuperpixelPartition(RegionPartitioner):
    """Region map from scikit-image superpixels: no model, no download, same output as :class:`SAMPartition`.

    Each 2D slice is scaled to [0, 1] (an intensity ``window`` or the slice's ``percentiles``) and cut by
    ``skimage.segmentation.felzenszwalb`` (graph-based, follows edges; the default) or
    ``skimage.segmentation.slic`` (compact k-means superpixels). Labels are renumbered to 1..L; a
    constant slice is one region. Output (1, H, W) or, slice by slice, (1, H, W, D) int32.

    Args:
        method: ``"felzenszwalb"`` or ``"slic"``.
        scale: felzenszwalb: higher means larger regions.
        sigma: Gaussian smoothing before segmenting (both methods).
        min_size: felzenszwalb: smallest region in pixels; ``None`` for ``max(16, H * W // 1024)``
            (256 pixels at 512 x 512).
        n_segments: slic: approximate number of regions.
        compactness: slic: balance of intensity against space (intensities are in [0, 1]).
        window: ``(low, high)`` intensity window mapped to [0, 1]; ``None`` for percentile scaling.
        percentiles: ``(low, high)`` percentiles of each slice mapped to [0, 1] when ``window`` is ``None``.
        slice_axis: spatial axis along which 3D input is cut (2 = D of (C, H, W, D)).
        cache_dir: folder of the on-disk region cache; ``None`` for none.

    Raises:
        ValueError: when ``method`` is unknown or a setting is out of range.
    """

    def __init__(
        self,
        method: str = "felzenszwalb",
        scale: float = 100.0,
        sigma: float = 0.8,
        min_size: int | None = None,
        n_segments: int = 64,
        compactness: float = 0.1,
        window: Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        slice_axis: int = 2,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(slice_axis=slice_axis, cache_dir=cache_dir)
        if method not in SUPERPIXEL_METHODS:
            raise ValueError(f"method must be one of {SUPERPIXEL_METHODS}, got {method!r}.")
        if scale <= 0 or sigma < 0 or n_segments < 1 or compactness <= 0:
            raise ValueError(
                "need scale > 0, sigma >= 0, n_segments >= 1, compactness > 0; got "
                f"scale={scale!r}, sigma={sigma!r}, n_segments={n_segments!r}, compactness={compactness!r}."
            )
        if min_size is not None and min_size < 1:
            raise ValueError(f"min_size must be >= 1 or None, got {min_size!r}.")
        self.method = method
        self.scale = float(scale)
        self.sigma = float(sigma)
        self.min_size = None if min_size is None else int(min_size)
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.window = tuple(float(v) for v in window) if window is not None else None
        self.percentiles = tuple(float(v) for v in percentiles)

    def settings(self) -> dict[str, Any]:
        """Everything that changes the map (the cache key's settings).

        Returns:
            method and its parameters, intensity window / percentiles, slice axis.

        Raises:
            nothing: the settings were checked at construction.
        """
        params = (
            {"scale": self.scale, "sigma": self.sigma, "min_size": self.min_size}
            if self.method == "felzenszwalb"
            else {"n_segments": self.n_segments, "compactness": self.compactness, "sigma": self.sigma}
        )
        return {
            "method": f"superpixel-{self.method}",
            "params": params,
            "window": self.window,
            "percentiles": None if self.window is not None else self.percentiles,
            "slice_axis": self.slice_axis,
        }

    def partition_slices(self, slices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Superpixel maps of 2D slices.

        Args:
            slices: (C, H, W) finite arrays with C in {1, 3}.

        Returns:
            one int32 (H, W) map with labels 1..L per slice.

        Raises:
            ValueError: when the window or percentiles are invalid.
        """
        return [self._one(s) for s in slices]

    def _one(self, img2d: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb, slic

        unit = scale_intensity(img2d, self.window, self.percentiles)
        if unit is None:
            return np.ones(img2d.shape[1:], dtype=np.int32)
        if unit.shape[0] == 1:
            image, channel_axis = unit[0], None
        else:
            image, channel_axis = np.moveaxis(unit, 0, -1), -1
        if self.method == "felzenszwalb":
            h, w = img2d.shape[1:]
            min_size = self.min_size if self.min_size is not None else max(16, (h * w) // 1024)
            labels = felzenszwalb(image, scale=self.scale, sigma=self.sigma, min_size=min_size, channel_axis=channel_axis)
        else:
            labels = slic(
                image,
                n_segments=self.n_segments,
                compactness=self.compactness,
                sigma=self.sigma,
                channel_axis=channel_axis,
                start_label=1,
                enforce_connectivity=True,
            )
        return relabel_regions(labels)


class SuperpixelPartitiond(RegionPartitionerd):
    """Dictionary version of :class:`SuperpixelPartition`: adds the map of ``data[key]`` as ``data[regions_key]``.

    Args:
        keys: image key(s).
        regions_key: output key(s), one per image key; default ``"regions"``.
        allow_missing_keys: do not raise when a key is absent.
        kwargs: the arguments of :class:`SuperpixelPartition`.

    Raises:
        ValueError: as :class:`SuperpixelPartition`, or when ``regions_key`` does not match ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        regions_key: str | Sequence[str] = "regions",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, SuperpixelPartition(**kwargs), regions_key, allow_missing_keys)
