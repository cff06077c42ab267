"""Region maps follow MONAI's spatial transforms: crops, flips, 90-degree rotations, resizes (nearest for the map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    CenterSpatialCropd,
    Compose,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    Resized,
    SpatialPadd,
)
from sam_tiny_helpers import blob_image

from monai_rat.transforms import SuperpixelPartitiond


def _sample(seed=0):
    """A real partition of a textured image; the image's integer part encodes the region it lies in."""
    img = MetaTensor(torch.from_numpy(blob_image(64, 56, seed=seed)))
    d = SuperpixelPartitiond(keys="image")({"image": img})
    regions = d["regions"]
    assert int(regions.max()) >= 4
    # probe image: 10 * region + a fraction in [0, 1): any misalignment shows as floor(probe / 10) != region
    frac = (img - img.min()) / (img.max() - img.min() + 1) * 0.99
    d["image"] = regions.float() * 10 + frac
    return d


def _aligned(d):
    return np.array_equal(np.floor(np.asarray(d["image"]) / 10).astype(np.int64), np.asarray(d["regions"]).astype(np.int64))


@pytest.mark.parametrize("seed", range(4))
def test_crops_flips_rotations_keep_alignment(seed):
    keys = ["image", "regions"]
    aug = Compose(
        [
            RandSpatialCropd(keys, roi_size=(40, 36), random_size=False),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys, prob=1.0, max_k=3),
            CenterSpatialCropd(keys, roi_size=(32, 32)),
            SpatialPadd(keys, spatial_size=(40, 40)),
        ]
    ).set_random_state(seed)
    d = _sample(seed)
    before = d["regions"]
    out = aug(d)
    assert out["image"].shape == out["regions"].shape == (1, 40, 40)
    assert _aligned(out)
    assert out["regions"].dtype == torch.int32  # crops, flips and rotations keep the integer map
    assert set(np.unique(np.asarray(out["regions"]))) <= set(np.unique(np.asarray(before))) | {0}  # pad value 0


def test_resize_with_nearest_for_the_map():
    d = _sample(1)
    regions = np.asarray(d["regions"][0])
    out = Resized(["image", "regions"], spatial_size=(96, 84), mode=("bilinear", "nearest"))(d)
    got = np.asarray(out["regions"][0])
    # nearest keeps labels: only labels that existed, no blends between them
    assert set(np.unique(got)) == set(np.unique(regions))
    assert np.array_equal(got, np.rint(got))
    # aligned away from region borders (where bilinear image values blend two regions)
    img = np.asarray(out["image"][0])
    inner = np.ones_like(got, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= np.roll(got, (dy, dx), (0, 1)) == got
    inner[[0, -1], :] = inner[:, [0, -1]] = False
    assert inner.mean() > 0.6
    np.testing.assert_array_equal(np.floor(img[inner] / 10), got[inner])
    # down-sizing as the network does (x1/4, nearest): the map stays a valid labelling of the smaller grid
    small = Resized(["regions"], spatial_size=(16, 14), mode="nearest")({"regions": d["regions"]})["regions"]
    assert set(np.unique(np.asarray(small))) <= set(np.unique(regions))
    # Resize returns float32 even in nearest mode; casting back is exact
    assert small.dtype == torch.float32
    back = CastToTyped(["regions"], dtype=torch.int32)({"regions": small})["regions"]
    assert back.dtype == torch.int32 and np.array_equal(np.asarray(back), np.asarray(small))


def test_resize_bilinear_would_corrupt_the_map():
    """Why nearest: bilinear interpolation invents labels between regions."""
    d = _sample(2)
    blurred = np.asarray(Resized(["regions"], spatial_size=(96, 84), mode="bilinear")(d)["regions"])
    assert not np.array_equal(blurred, np.rint(blurred))
