"""The paper's post-processing (Eq. 1): masks_to_regions on hand-built overlapping masks, exact expected maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_rat.transforms import masks_to_regions, relabel_regions


def _box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _records(masks):
    return [{"segmentation": m, "area": int(m.sum())} for m in masks]


def test_overlaps_smallest_wins_background_is_one_region():
    shape = (6, 8)
    big = _box(shape, 0, 6, 0, 5)  # area 30
    mid = _box(shape, 1, 4, 3, 7)  # area 12, overlaps big and sticks out of it
    small = _box(shape, 2, 3, 4, 6)  # area 2, inside mid, half inside big
    # given smallest first: the order of the input must not matter
    regions = masks_to_regions(_records([small, big, mid]))
    # canvas: 0 = uncovered, big painted 1, mid 2, small 3 -> relabel: uncovered 1, big 2, mid 3, small 4
    expected = np.array(
        [
            [2, 2, 2, 2, 2, 1, 1, 1],
            [2, 2, 2, 3, 3, 3, 3, 1],
            [2, 2, 2, 3, 4, 4, 3, 1],
            [2, 2, 2, 3, 3, 3, 3, 1],
            [2, 2, 2, 2, 2, 1, 1, 1],
            [2, 2, 2, 2, 2, 1, 1, 1],
        ],
        dtype=np.int32,
    )
    assert regions.dtype == np.int32
    np.testing.assert_array_equal(regions, expected)


def test_fully_covered_mask_disappears_and_labels_stay_contiguous():
    shape = (4, 4)
    big = _box(shape, 0, 4, 0, 4)  # 16, covered by the two halves below
    top = _box(shape, 0, 2, 0, 4)  # 8
    bottom = _box(shape, 2, 4, 0, 4)  # 8
    regions = masks_to_regions(_records([big, top, bottom]))
    # no background, big disappears, top and bottom (tie: input order kept, bottom painted last)
    expected = np.array([[1] * 4, [1] * 4, [2] * 4, [2] * 4], dtype=np.int32)
    np.testing.assert_array_equal(regions, expected)
    assert sorted(np.unique(regions)) == [1, 2]


def test_stacked_array_and_tensor_equal_records():
    rng = np.random.default_rng(3)
    masks = rng.random((7, 16, 12)) > 0.6
    from_records = masks_to_regions(_records(list(masks)))
    np.testing.assert_array_equal(masks_to_regions(masks), from_records)
    np.testing.assert_array_equal(masks_to_regions(torch.from_numpy(masks)), from_records)
    labels = np.unique(from_records)
    np.testing.assert_array_equal(labels, np.arange(1, labels.size + 1))


def test_matches_the_reference_painting_loop():
    """Against a plain per-mask loop as the reference code writes it (sorted by area, reverse=True)."""
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(12):
        y0, x0 = rng.integers(0, 20, 2)
        recs.append(_box((32, 32), y0, y0 + rng.integers(2, 14), x0, x0 + rng.integers(2, 14)))
    recs = _records(recs)
    canvas = np.zeros((32, 32))
    for i, r in enumerate(sorted(recs, key=lambda x: x["area"], reverse=True)):
        canvas[r["segmentation"]] = i + 1
    _, inv = np.unique(canvas, return_inverse=True)
    np.testing.assert_array_equal(masks_to_regions(recs), inv.reshape(32, 32) + 1)


def test_empty_list_is_one_region():
    regions = masks_to_regions([], shape=(5, 7))
    assert regions.shape == (5, 7) and regions.dtype == np.int32 and (regions == 1).all()
    with pytest.raises(ValueError, match="shape"):
        masks_to_regions([])


def test_bad_masks_are_named():
    with pytest.raises(ValueError, match=r"masks\[1\]\['segmentation'\] must be an \(H, W\) bool"):
        masks_to_regions([{"segmentation": np.ones((3, 3), bool)}, {"segmentation": np.ones((3, 3))}])
    with pytest.raises(ValueError, match=r"masks\[1\] is \(4, 3\)"):
        masks_to_regions([{"segmentation": np.ones((3, 3), bool)}, {"segmentation": np.ones((4, 3), bool)}])
    with pytest.raises(ValueError, match="must be bool"):
        masks_to_regions(np.ones((2, 3, 3), dtype=np.uint8))


def test_relabel_regions():
    np.testing.assert_array_equal(relabel_regions(np.array([[7, 3], [3, 100]])), [[2, 1], [1, 3]])
    with pytest.raises(ValueError, match="integer"):
        relabel_regions(np.array([0.5]))
