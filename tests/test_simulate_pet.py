"""SimulateLowCountPET / SimulateLowCountPETd: noise vs dose reduction, mean kept, seeds, shapes, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_rat.transforms import SimulateLowCountPET, SimulateLowCountPETd, osem_reconstruct

SIZE = 48
MEAN_TOL = 0.05  # stated tolerance: the ROI mean and the image mean within 5 % of the true activity


def _disc(size=SIZE, radius=18, value=1.0):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    return np.where(r < radius, value, 0.0)[None], r < radius / 2.5


def _sim(drf=12.0, seed=0, **kw):
    t = SimulateLowCountPET(dose_reduction_factor=drf, output="both", **kw)
    t.set_random_state(seed)
    return t


def test_noise_rises_with_dose_reduction_and_mean_is_kept():
    img, roi = _disc()
    stds = []
    for drf in (1.0, 4.0, 12.0, 30.0):
        high, low = _sim(drf)(img)
        stds.append(float(low[0][roi].std()))
        assert abs(float(low[0][roi].mean()) - 1.0) < MEAN_TOL, (drf, float(low[0][roi].mean()))
        assert abs(float(low.mean()) / img.mean() - 1.0) < MEAN_TOL, (drf, float(low.mean()), img.mean())
        assert abs(float(high.mean()) / img.mean() - 1.0) < MEAN_TOL
        assert (low >= 0).all() and (high >= 0).all()
    assert all(a < b for a, b in zip(stds, stds[1:])), stds
    # DRF 1 keeps every count: LQ == HQ
    high, low = _sim(1.0)(img)
    np.testing.assert_allclose(low, high)


def test_thinning_keeps_one_count_in_drf():
    img, _ = _disc()
    t = _sim(12.0, seed=1)
    t(img)
    full, low = t.last_counts
    assert full > 1e5
    assert abs(low / full - 1 / 12) < 0.01, (full, low)


def test_hq_is_cleaner_and_same_reconstruction():
    img, roi = _disc()
    high, low = _sim(12.0)(img)
    assert float(high[0][roi].std()) < 0.6 * float(low[0][roi].std())
    # more counts -> less noise in HQ (same reconstruction settings)
    high_more, _ = _sim(12.0, count_level=100.0)(img)
    assert float(high_more[0][roi].std()) < float(high[0][roi].std())


def test_reproducible_with_seed_and_outputs():
    img, _ = _disc(size=32, radius=12)
    a = _sim(seed=7)(img)
    b = _sim(seed=7)(img)
    c = _sim(seed=8)(img)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1], c[1])
    low = SimulateLowCountPET(output="low").set_random_state(7)(img)
    high = SimulateLowCountPET(output="high").set_random_state(7)(img)
    np.testing.assert_array_equal(low, a[1])
    np.testing.assert_array_equal(high, a[0])


@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 24, 40), (1, 40, 24)])
def test_shapes_and_types(shape):
    img = np.random.default_rng(0).uniform(0, 2, shape)
    out = SimulateLowCountPET(num_iterations=1, num_subsets=4).set_random_state(0)(img)
    assert out.shape == shape and isinstance(out, np.ndarray)
    mt = MetaTensor(torch.as_tensor(img, dtype=torch.float32), meta={"filename_or_obj": "p.nii.gz"})
    out = SimulateLowCountPET(num_iterations=1, num_subsets=4).set_random_state(0)(mt)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.meta["filename_or_obj"] == "p.nii.gz"


def test_dictionary_writes_hq_and_lq_like_the_array_transform():
    img, _ = _disc(size=32, radius=12)
    d = SimulateLowCountPETd(keys="activity", hq_keys="label", lq_keys="image").set_random_state(3)({"activity": img})
    high, low = _sim(seed=3)(img)
    np.testing.assert_array_equal(d["label"], high)
    np.testing.assert_array_equal(d["image"], low)
    assert d["activity"] is img
    # default hq_keys: overwrite the source key
    d = SimulateLowCountPETd(keys="x", lq_keys="y").set_random_state(3)({"x": img})
    np.testing.assert_array_equal(d["x"], high)
    # prob=0: both keys get the source unchanged
    d = SimulateLowCountPETd(keys="x", lq_keys="y", prob=0.0)({"x": img})
    assert d["x"] is img and d["y"] is img
    with pytest.raises(ValueError, match="lq_keys"):
        SimulateLowCountPETd(keys=("a", "b"), lq_keys="y")
    with pytest.raises(KeyError):
        SimulateLowCountPETd(keys="missing", lq_keys="y")({"x": img})


def test_osem_with_one_subset_is_mlem_and_converges():
    from skimage.transform import radon

    img, roi = _disc(size=32, radius=12)
    theta = np.linspace(0, 180, 50, endpoint=False)
    sino = 10.0 * radon(img[0], theta=theta, circle=False)  # noise-free counts
    x = osem_reconstruct(sino, theta, 32, num_iterations=30, num_subsets=1, scale=10.0)
    assert abs(float(x[roi].mean()) - 1.0) < 0.03
    assert float(x.sum()) == pytest.approx(float(img.sum()), rel=0.02)


@pytest.mark.parametrize(
    "img, match",
    [
        (np.full((1, 16, 16), -1.0), "negative"),
        (np.where(np.eye(16, dtype=bool), np.nan, 1.0)[None], "NaN"),
        (np.full((1, 16, 16), np.inf), "NaN or inf"),
        (np.ones((16, 16)), r"\(C, H, W\)"),
        (np.ones((1, 0, 16)), "empty"),
    ],
)
def test_bad_inputs(img, match):
    with pytest.raises(ValueError, match=match):
        SimulateLowCountPET()(img)
    with pytest.raises(ValueError, match=match):
        SimulateLowCountPETd(keys="a", lq_keys="b")({"a": img})
    with pytest.raises(ValueError, match=match):  # checked even when the transform is skipped
        SimulateLowCountPET(prob=0.0)(img)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"count_level": 0}, "count_level"),
        ({"count_level": float("nan")}, "count_level"),
        ({"dose_reduction_factor": 0.5}, "dose_reduction_factor"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"num_subsets": 0}, "num_subsets"),
        ({"num_subsets": 8, "num_angles": 4}, "num_angles"),
        ({"output": "lq"}, "output"),
    ],
)
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SimulateLowCountPET(**kwargs)
