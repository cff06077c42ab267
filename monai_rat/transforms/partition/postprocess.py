"""The paper's post-processing (Eq. 1): SAM masks -> one region map that partitions the image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["masks_to_regions", "relabel_regions"]


def relabel_regions(labels: np.ndarray) -> np.ndarray:
    """Renumber an integer label map to contiguous labels ``1..L`` keeping the order of the old labels.

    Args:
        labels: integer array of any shape.

    Returns:
        int32 array of the same shape with labels ``1..L`` (L = number of distinct input labels).

    Raises:
        ValueError: when ``labels`` is empty or not of an integer / bool dtype.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"labels must not be empty, got shape {labels.shape}.")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}.")
    _, inverse = np.unique(labels, return_inverse=True)
    return (inverse.reshape(labels.shape) + 1).astype(np.int32)


def _as_mask_stack(masks: Any, shape: Sequence[int] | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Normalise the accepted inputs to a list of (H, W) bool masks and their areas."""
    if isinstance(masks, np.ndarray) or hasattr(masks, "detach"):
        arr = np.asarray(masks.detach().cpu() if hasattr(masks, "detach") else masks)
        if arr.ndim != 3:
            raise ValueError(f"a stacked mask array must have shape (L, H, W), got shape {arr.shape}.")
        if arr.dtype != bool:
            raise ValueError(f"a stacked mask array must be bool, got dtype {arr.dtype}.")
        return list(arr), arr.reshape(arr.shape[0], -1).sum(axis=1)
    if not isinstance(masks, Sequence):
        raise ValueError(
            "masks must be SamAutomaticMaskGenerator.generate output (a list of dicts with 'segmentation') "
            f"or an (L, H, W) bool array, got {type(masks).__name__}."
        )
    segs, areas = [], []
    for i, record in enumerate(masks):
        if not isinstance(record, Mapping) or "segmentation" not in record:
            raise ValueError(f"masks[{i}] must be a dict with a 'segmentation' entry, got {type(record).__name__}.")
        seg = np.asarray(record["segmentation"])
        if seg.ndim != 2 or seg.dtype != bool:
            raise ValueError(
                f"masks[{i}]['segmentation'] must be an (H, W) bool array (output_mode='binary_mask'), "
                f"got shape {seg.shape} dtype {seg.dtype}."
            )
        segs.append(seg)
        areas.append(int(record["area"]) if "area" in record else int(seg.sum()))
    return segs, np.asarray(areas, dtype=np.int64)


def masks_to_regions(masks: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """Turn overlapping masks into a partition: the region map of the paper (Eq. 1).

    Masks are sorted by area, largest first, and painted in that order onto an empty map, so the
    smallest mask wins wherever masks overlap (ties keep the input order: the later one wins).
    Pixels that no mask covers form one background region. A mask that smaller masks cover entirely
    leaves no trace. The result is renumbered to contiguous labels ``1..L``; the background, when
    there is one, is label 1, and the masks follow in painting order. Painting is one vectorised
    assignment per mask (no per-pixel Python).

    Args:
        masks: ``SamAutomaticMaskGenerator.generate`` output, a list of dicts with ``"segmentation"``
            ((H, W) bool) and optionally ``"area"`` (otherwise the mask's pixel count), in any order;
            or a stacked (L, H, W) bool numpy array / torch tensor.
        shape: (H, W) of the map; needed only when ``masks`` is an empty list, which gives one region.

    Returns:
        int32 (H, W) array with labels ``1..L``.

    Raises:
        ValueError: when the masks are not (H, W) bool arrays, differ in shape, or ``masks`` is empty and
            ``shape`` is not given.
    """
    segs, areas = _as_mask_stack(masks, shape)
    if not segs:
        if shape is None:
            raise ValueError("masks is empty: pass shape=(H, W) to get the one-region map.")
        if len(shape) != 2:
            raise ValueError(f"shape must be (H, W), got {tuple(shape)}.")
        return np.ones(tuple(int(s) for s in shape), dtype=np.int32)
    hw = segs[0].shape
    for i, seg in enumerate(segs):
        if seg.shape != hw:
            raise ValueError(f"all masks must have the same shape; masks[0] is {hw}, masks[{i}] is {seg.shape}.")
    if shape is not None and tuple(shape) != hw:
        raise ValueError(f"shape {tuple(shape)} does not match the masks' shape {hw}.")
    order = np.argsort(-areas, kind="stable")  # largest first; stable, so ties keep the input order
    canvas = np.zeros(hw, dtype=np.int32)  # 0 = not covered by any mask
    for rank, idx in enumerate(order, start=1):
        canvas[segs[idx]] = rank
    return relabel_regions(canvas)
