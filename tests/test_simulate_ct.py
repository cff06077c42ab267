"""SimulateLowDoseCT / SimulateLowDoseCTd: noise vs dose, mean HU kept, shapes, seeds, bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_rat.transforms import SimulateLowDoseCT, SimulateLowDoseCTd

SIZE = 96
PIXEL_MM = 2.0  # a 192 mm field of view: a 160 mm water disc inside
MEAN_TOL_HU = 5.0  # stated tolerance on the mean HU of a uniform region (measured: < 2 HU)


def _disc(size=SIZE, diameter_mm=160.0, px=PIXEL_MM, value=0.0):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    img = np.where(r < diameter_mm / px / 2, value, -1000.0)
    return img[None], r < 0.25 * diameter_mm / px  # the image (1, H, W) and a central uniform ROI


def _sim(dose, seed=0, **kw):
    t = SimulateLowDoseCT(dose_fraction=dose, pixel_size_mm=PIXEL_MM, **kw)
    t.set_random_state(seed)
    return t


def test_noise_rises_as_dose_falls_and_mean_is_kept():
    img, roi = _disc()
    clean = SimulateLowDoseCT(add_noise=False, pixel_size_mm=PIXEL_MM)(img)[0]
    stds = []
    for dose in (1.0, 0.5, 0.25, 0.1):
        out = _sim(dose)(img)[0]
        stds.append(float((out - clean)[roi].std()))
        assert abs(float(out[roi].mean()) - 0.0) < MEAN_TOL_HU, (dose, float(out[roi].mean()))
    assert all(a < b for a, b in zip(stds, stds[1:])), stds
    # Poisson-dominated: std ~ 1 / sqrt(dose); quarter dose about twice full dose
    assert 1.6 < stds[2] / stds[0] < 2.5, stds
    # the noise-free path keeps the uniform region's value and is nearly flat
    assert abs(float(clean[roi].mean())) < MEAN_TOL_HU
    assert float(clean[roi].std()) < 0.2 * stds[0]


def test_mean_kept_for_a_tissue_value():
    img, roi = _disc(value=60.0)
    out = _sim(0.25, seed=3)(img)[0]
    assert abs(float(out[roi].mean()) - 60.0) < MEAN_TOL_HU


@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 48, 80), (1, 80, 48)])
def test_shapes_numpy(shape):
    rng = np.random.default_rng(0)
    img = rng.uniform(-100, 100, shape)
    out = _sim(0.25)(img)
    assert out.shape == shape
    assert isinstance(out, np.ndarray)


def test_tensor_and_metatensor_keep_type_and_meta():
    img, _ = _disc(size=64)
    t = torch.as_tensor(img, dtype=torch.float32)
    out = _sim(0.25)(t)
    assert isinstance(out, torch.Tensor) and out.shape == t.shape and out.dtype == torch.float32
    mt = MetaTensor(t, meta={"filename_or_obj": "x.nii.gz"})
    out = _sim(0.25)(mt)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.nii.gz"


def test_reproducible_with_seed():
    img, _ = _disc(size=64)
    a = _sim(0.25, seed=7)(img)
    b = _sim(0.25, seed=7)(img)
    c = _sim(0.25, seed=8)(img)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_no_noise_is_deterministic_and_close_to_input():
    img, roi = _disc(size=64)
    a = SimulateLowDoseCT(add_noise=False, pixel_size_mm=PIXEL_MM)(img)
    b = SimulateLowDoseCT(add_noise=False, pixel_size_mm=PIXEL_MM)(img)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0][roi] - img[0][roi]).max() < 20.0


def test_prob_zero_returns_input():
    img, _ = _disc(size=32)
    t = SimulateLowDoseCT(prob=0.0)
    assert t(img) is img


def test_bad_inputs():
    t = SimulateLowDoseCT()
    img = np.zeros((1, 32, 32))
    img[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        t(img)
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        t(np.zeros((32, 32)))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        t(np.zeros((1, 1, 32, 32)))
    with pytest.raises(ValueError, match="empty"):
        t(np.zeros((1, 0, 32)))
    for kw in ({"dose_fraction": 0}, {"full_dose_photons": -1}, {"electronic_noise_std": -1},
               {"pixel_size_mm": 0}, {"num_angles": 1}, {"filter_name": "box"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            SimulateLowDoseCT(**kw)


def test_clamped_counts_are_reported(caplog):
    img, _ = _disc(size=32, diameter_mm=60, px=2.0, value=2000.0)
    t = SimulateLowDoseCT(full_dose_photons=20, dose_fraction=0.1, electronic_noise_std=5.0, pixel_size_mm=2.0)
    t.set_random_state(0)
    with caplog.at_level(logging.WARNING, logger="monai_rat.transforms.simulate_ct"):
        out = t(img)
    assert t.last_num_clamped > 0
    assert "clamped" in caplog.text
    assert np.isfinite(out).all()


def test_dict_version_delegates_and_seeds():
    img, roi = _disc(size=64)
    data = {"image": img.copy(), "label": img.copy(), "name": "x"}
    t = SimulateLowDoseCTd(keys="image", dose_fraction=0.25, pixel_size_mm=PIXEL_MM)
    t.set_random_state(5)
    out = t(data)
    ref = _sim(0.25, seed=5)(img)
    np.testing.assert_array_equal(out["image"], ref)
    assert out["label"] is data["label"] and out["name"] == "x"
    with pytest.raises(KeyError):
        SimulateLowDoseCTd(keys="missing")(data)
    assert SimulateLowDoseCTd(keys="missing", allow_missing_keys=True)(data)["image"] is data["image"]
    both = SimulateLowDoseCTd(keys=["image", "label"], pixel_size_mm=PIXEL_MM).set_random_state(1)(data)
    assert not np.allclose(both["image"], both["label"])  # each key its own noise draw


def test_pixel_size_from_metatensor():
    img, _ = _disc(size=48)
    mt = MetaTensor(torch.as_tensor(img), affine=torch.diag(torch.tensor([PIXEL_MM, PIXEL_MM, 1.0, 1.0], dtype=torch.float64)))
    a = SimulateLowDoseCT(pixel_size_mm=None, add_noise=False)(mt)
    b = SimulateLowDoseCT(pixel_size_mm=PIXEL_MM, add_noise=False)(img)
    np.testing.assert_allclose(a.numpy(), b, atol=1e-3)
    with pytest.raises(ValueError, match="pixdim"):
        SimulateLowDoseCT(pixel_size_mm=None)(img)
