"""What every partitioner shares: input checks, 2D / slice-by-slice 3D, the cache, MONAI types in and out."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, ensure_tuple, ensure_tuple_rep

from .cache import RegionCache
from .intensity import check_image

__all__ = ["RegionPartitioner", "RegionPartitionerd"]

logger = logging.getLogger(__name__)


class RegionPartitioner(Transform):
    """Base of the region-map transforms: (C, H, W) or (C, H, W, D) image in, (1, H, W[, D]) int32 map out.

    A subclass implements :meth:`partition_slices` (a list of (C, H, W) float/uint arrays to a list of
    (H, W) int32 maps with labels 1..L) and :meth:`settings` (everything that changes the map, for the
    cache key). This class checks the input, cuts 3D volumes into 2D slices along ``slice_axis`` and
    stacks the maps back (each slice is labelled 1..L on its own), looks the whole input up in the cache
    first, and returns the map in the input's type (a ``MetaTensor`` keeps the image's metadata, so the
    map follows the same spatial transforms and can be saved with the same affine).

    Args:
        slice_axis: spatial axis (0, 1 or 2 of H, W, D) along which a 3D image is cut into 2D slices.
        cache_dir: folder of the on-disk cache (:class:`RegionCache`); ``None`` for no cache.

    Raises:
        ValueError: when ``slice_axis`` is not 0, 1 or 2.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, slice_axis: int = 2, cache_dir: str | os.PathLike | None = None) -> None:
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of (C, H, W, D)), got {slice_axis!r}.")
        self.slice_axis = int(slice_axis)
        self.cache = RegionCache(cache_dir) if cache_dir is not None else None
        #: counters of the last calls, for summaries: {"hits": int, "misses": int}
        self.stats = {"hits": 0, "misses": 0}

    # -- to implement -------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that changes the map, JSON-serialisable (part of the cache key).

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def partition_slices(self, slices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Partition 2D channel-first slices.

        Args:
            slices: (C, H, W) arrays, C in {1, 3}, finite.

        Returns:
            one int32 (H, W) map with labels 1..L per slice.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------------------
    def cache_key(self, img: Any) -> str:
        """The cache key of ``img`` under this transform's settings.

        Args:
            img: the image as passed to ``__call__``.

        Returns:
            hex digest.

        Raises:
            ValueError: when the image is not a valid 2D / 3D channel-first image.
        """
        arr = self._to_numpy(img)
        return RegionCache.key(arr, self.settings())

    def cached(self, img: Any) -> np.ndarray | None:
        """The cached map of ``img`` as a numpy array, or ``None`` (also without a cache).

        Args:
            img: the image as passed to ``__call__``.

        Raises:
            ValueError: when the image is not a valid 2D / 3D channel-first image.
        """
        if self.cache is None:
            return None
        return self.cache.load(self.cache_key(img))

    def __call__(self, img: Any) -> Any:
        """Return the region map of ``img``.

        Args:
            img: (C, H, W) or (C, H, W, D) numpy array or torch tensor (``MetaTensor`` included), C in {1, 3},
                any intensity range.

        Returns:
            (1, H, W) or (1, H, W, D) int32 map in the type of ``img``.

        Raises:
            ValueError: when the image has the wrong shape or channel count, or holds NaN / inf.
        """
        return self.call_batch([img])[0]

    def call_batch(self, imgs: Sequence[Any]) -> list[Any]:
        """Region maps of several images; slices that miss the cache are partitioned together.

        Lets a partitioner batch work (SAM encodes several slices in one forward pass).

        Args:
            imgs: images as for ``__call__``.

        Returns:
            the maps, in order, each in the type of its image.

        Raises:
            ValueError: when an image has the wrong shape or channel count, or holds NaN / inf.
        """
        arrays = [self._to_numpy(img) for img in imgs]
        outs: list[np.ndarray | None] = [None] * len(arrays)
        keys: list[str | None] = [None] * len(arrays)
        todo = []
        settings = self.settings() if self.cache is not None else None
        for i, arr in enumerate(arrays):
            if self.cache is not None:
                keys[i] = RegionCache.key(arr, settings)
                hit = self.cache.load(keys[i])
                if hit is not None and hit.shape == (1, *arr.shape[1:]):
                    outs[i] = hit
                    self.stats["hits"] += 1
                    continue
            todo.append(i)
        if todo:
            slices, owners = [], []
            for i in todo:
                for s in self._slices(arrays[i]):
                    slices.append(s)
                    owners.append(i)
            maps = self.partition_slices(slices)
            for i in todo:
                mine = [m for m, o in zip(maps, owners) if o == i]
                outs[i] = self._assemble(mine, arrays[i].shape)
                self.stats["misses"] += 1
                if self.cache is not None:
                    self.cache.save(keys[i], outs[i], settings)
        return [
            convert_to_dst_type(np.asarray(o, dtype=np.int32), dst=img, dtype=torch.int32 if isinstance(img, torch.Tensor) else np.int32)[0]
            for o, img in zip(outs, imgs)
        ]

    def _to_numpy(self, img: Any) -> np.ndarray:
        arr = convert_to_numpy(img, wrap_sequence=True)
        check_image(arr, "img")
        return arr

    def _slices(self, arr: np.ndarray) -> list[np.ndarray]:
        if arr.ndim == 3:
            return [arr]
        axis = 1 + self.slice_axis
        return [np.take(arr, k, axis=axis) for k in range(arr.shape[axis])]

    def _assemble(self, maps: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        if len(shape) == 3:
            return maps[0][None].astype(np.int32)
        return np.stack(maps, axis=self.slice_axis)[None].astype(np.int32)


class RegionPartitionerd(MapTransform):
    """Base of the dictionary region-map transforms: writes the map of ``data[key]`` to ``data[regions_key]``.

    Args:
        keys: image key(s) to partition.
        partitioner: the array transform that does the work.
        regions_key: output key(s), one per image key (a single name is allowed for a single key).
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: when the number of ``regions_key`` names does not match ``keys``, or an output name repeats.
    """

    def __init__(
        self,
        keys: KeysCollection,
        partitioner: RegionPartitioner,
        regions_key: str | Sequence[str] = "regions",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        names = ensure_tuple(regions_key)
        if len(names) == 1 and len(self.keys) > 1:
            raise ValueError(
                f"one regions_key {names[0]!r} for {len(self.keys)} keys {self.keys}: give one output name per key."
            )
        names = ensure_tuple_rep(names, len(self.keys))
        if len(set(names)) != len(names):
            raise ValueError(f"regions_key names must differ, got {names}.")
        self.regions_keys = names
        self.partitioner = partitioner

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the region map(s) to a copy of ``data``.

        Args:
            data: dictionary holding the image(s).

        Returns:
            the dictionary with ``regions_key`` entries added.

        Raises:
            KeyError: when a key is missing and ``allow_missing_keys`` is False.
            ValueError: as the array transform does for a bad image.
        """
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.regions_keys):
            d[out_key] = self.partitioner(d[key])
        return d
