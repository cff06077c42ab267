"""One region-map transform for pipelines and bundles: SAM when a checkpoint is configured, superpixels otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Transform

from .base import RegionPartitioner, RegionPartitionerd
from .sam import SAMPartition
from .single import SingleRegionPartition
from .superpixel import SuperpixelPartition

__all__ = ["RegionPartition", "RegionPartitiond", "CHECKPOINT_ENV", "PARTITION_METHODS"]

logger = logging.getLogger(__name__)

#: environment variable read when no ``checkpoint`` argument is given
CHECKPOINT_ENV = "MONAI_RAT_SAM_CHECKPOINT"
PARTITION_METHODS = ("auto", "sam", "superpixel", "single")


class RegionPartition(Transform):
    """Region map by SAM (as the paper) when a checkpoint is configured, by superpixels otherwise.

    ``method="auto"`` uses :class:`SAMPartition` when a SAM checkpoint is configured (the ``checkpoint``
    argument, else the ``MONAI_RAT_SAM_CHECKPOINT`` environment variable) or a built ``model`` is given,
    and :class:`SuperpixelPartition` otherwise; ``"sam"`` and ``"superpixel"`` force one; ``"single"`` is
    :class:`SingleRegionPartition`, one region everywhere (Table 4's one-region ablation). The choice is
    logged (logger ``monai_rat.transforms.partition.factory``, level INFO) and kept in
    :attr:`method_used`. Both give a (1, H, W) (or slice-by-slice (1, H, W, D)) int32 map with
    labels 1..L per slice, in the input's type.

    Args:
        method: ``"auto"``, ``"sam"``, ``"superpixel"`` or ``"single"``.
        checkpoint: SAM checkpoint path (e.g. ``sam_vit_b_01ec64.pth``); ``None`` or ``""`` to read
            ``MONAI_RAT_SAM_CHECKPOINT``.
        model_type: SAM architecture (``"vit_b"`` as the paper).
        model: an already-built ``Sam`` (instead of a checkpoint).
        device: device for SAM (CUDA when available by default).
        sam_kwargs: further :class:`SAMPartition` arguments (``points_per_side``, ``pred_iou_thresh``, ...,
            ``points_per_batch``, ``batch_size``).
        superpixel_method: ``"felzenszwalb"`` or ``"slic"``.
        superpixel_kwargs: further :class:`SuperpixelPartition` arguments (``scale``, ``sigma``, ``min_size``,
            ``n_segments``, ``compactness``).
        window: ``(low, high)`` intensity window (e.g. ``(-160, 240)`` HU for CT); ``None`` for percentiles.
        percentiles: ``(low, high)`` percentiles per slice when ``window`` is ``None``.
        slice_axis: spatial axis along which 3D input is cut.
        cache_dir: folder of the on-disk region cache; ``None`` for none.

    Raises:
        ValueError: when ``method`` is unknown, or ``"sam"`` is forced with neither checkpoint nor model.
        FileNotFoundError: when the configured checkpoint is not a file (names ``checkpoint`` and the path).
    """

    def __init__(
        self,
        method: str = "auto",
        checkpoint: str | os.PathLike | None = None,
        model_type: str = "vit_b",
        model: Any = None,
        device: str | torch.device | None = None,
        sam_kwargs: Mapping[str, Any] | None = None,
        superpixel_method: str = "felzenszwalb",
        superpixel_kwargs: Mapping[str, Any] | None = None,
        window: Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        slice_axis: int = 2,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if method not in PARTITION_METHODS:
            raise ValueError(f"method must be one of {PARTITION_METHODS}, got {method!r}.")
        source = "argument `checkpoint`"
        if checkpoint is not None and not os.fspath(checkpoint):
            checkpoint = None  # "" from a config or command line means: not configured
        if checkpoint is None and model is None and method != "superpixel" and os.environ.get(CHECKPOINT_ENV):
            checkpoint, source = os.environ[CHECKPOINT_ENV], f"environment variable {CHECKPOINT_ENV}"
        use_sam = method == "sam" or (method == "auto" and (checkpoint is not None or model is not None))
        common = {"window": window, "percentiles": percentiles, "slice_axis": slice_axis, "cache_dir": cache_dir}
        self.partitioner: RegionPartitioner
        if use_sam:
            if checkpoint is None and model is None:
                raise ValueError(
                    f"method='sam' needs a SAM checkpoint: pass `checkpoint` (e.g. sam_vit_b_01ec64.pth), "
                    f"set {CHECKPOINT_ENV}, or pass a built `model`; or use method='auto' / 'superpixel'."
                )
            self.partitioner = SAMPartition(
                model_type=model_type, checkpoint=checkpoint, model=model, device=device, **dict(sam_kwargs or {}), **common
            )
            self.method_used = "sam"
            logger.info(
                "RegionPartition: using SAM (%s) with %s.",
                model_type,
                f"checkpoint {os.fspath(checkpoint)!r} from the {source}" if checkpoint is not None else "a given model",
            )
        elif method == "single":
            self.partitioner = SingleRegionPartition(slice_axis=slice_axis)
            self.method_used = "single"
            logger.info("RegionPartition: one region everywhere (method='single'): region attention is global attention.")
        else:
            self.partitioner = SuperpixelPartition(method=superpixel_method, **dict(superpixel_kwargs or {}), **common)
            self.method_used = "superpixel"
            why = "method='superpixel'" if method == "superpixel" else f"no SAM checkpoint configured (`checkpoint` or {CHECKPOINT_ENV})"
            logger.info("RegionPartition: using superpixels (%s): %s.", superpixel_method, why)

    def __call__(self, img: Any) -> Any:
        """Region map of ``img``.

        Args:
            img: (C, H, W) or (C, H, W, D) image, C in {1, 3}, any intensity range.

        Returns:
            (1, H, W) or (1, H, W, D) int32 map in the type of ``img``.

        Raises:
            ValueError: when the image has the wrong shape or channel count, or holds NaN / inf.
        """
        return self.partitioner(img)

    def call_batch(self, imgs: Sequence[Any]) -> list[Any]:
        """Region maps of several images (SAM encodes cache misses together).

        Args:
            imgs: images as for ``__call__``.

        Returns:
            the maps in order.

        Raises:
            ValueError: when an image is invalid.
        """
        return self.partitioner.call_batch(imgs)


class RegionPartitiond(RegionPartitionerd):
    """Dictionary version of :class:`RegionPartition`: ``data[regions_key]`` = region map of ``data[key]``.

    The transform for pipelines and bundle configs; all arguments are plain values, e.g.::

        {"_target_": "monai_rat.transforms.RegionPartitiond", "keys": "image", "regions_key": "regions",
         "method": "auto", "checkpoint": null, "model_type": "vit_b", "cache_dir": "$@bundle_root + '/regions'",
         "window": [-160, 240]}

    Put it before random spatial transforms and list ``regions_key`` in their keys (nearest interpolation
    for the map) so image and map stay aligned; with ``cache_dir`` each image is partitioned once.

    Args:
        keys: image key(s).
        regions_key: output key(s), one per image key; default ``"regions"``.
        method: ``"auto"`` (SAM when a checkpoint is configured, else superpixels), ``"sam"``, ``"superpixel"``
            or ``"single"`` (one region).
        checkpoint: SAM checkpoint path; ``None`` to read ``MONAI_RAT_SAM_CHECKPOINT``.
        model_type: SAM architecture (``"vit_b"`` as the paper).
        cache_dir: folder of the on-disk region cache; ``None`` for none.
        window: ``(low, high)`` intensity window; ``None`` for percentile scaling.
        allow_missing_keys: do not raise when a key is absent.
        kwargs: further :class:`RegionPartition` arguments (``model``, ``device``, ``sam_kwargs``,
            ``superpixel_method``, ``superpixel_kwargs``, ``percentiles``, ``slice_axis``).

    Raises:
        ValueError: as :class:`RegionPartition`, or when ``regions_key`` does not match ``keys``.
        FileNotFoundError: when the configured checkpoint is not a file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        regions_key: str | Sequence[str] = "regions",
        method: str = "auto",
        checkpoint: str | os.PathLike | None = None,
        model_type: str = "vit_b",
        cache_dir: str | os.PathLike | None = None,
        window: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        partitioner = RegionPartition(
            method=method, checkpoint=checkpoint, model_type=model_type, cache_dir=cache_dir, window=window, **kwargs
        )
        super().__init__(keys, partitioner, regions_key, allow_missing_keys)  # type: ignore[arg-type]
        self.method_used = partitioner.method_used
