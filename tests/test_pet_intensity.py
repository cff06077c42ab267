"""PET intensity normalisation: SUV from datalist fields or a BIDS sidecar, fixed scale otherwise, inverted on output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, DivisiblePadd, EnsureTyped, Invertd, LoadImaged

from monai_rat.transforms import PETIntensityd, pet_intensity_factor, suv_info_from_sidecar

ROOT = Path(__file__).resolve().parents[1]


def _img(value: float, path: str = "/nowhere/p1.nii.gz") -> MetaTensor:
    return MetaTensor(torch.full((1, 4, 4, 2), value), meta={"filename_or_obj": path})


def test_suv_from_datalist_fields_is_concentration_times_weight_over_dose():
    d = {"image": _img(5000.0), "injected_dose_bq": 370e6, "body_weight_kg": 74.0}
    out = PETIntensityd("image", suv_scale=10.0)(d)
    suv = 5000.0 * 74_000.0 / 370e6  # Bq/mL * g / Bq = 1.0
    torch.testing.assert_close(out["image"].as_tensor(), torch.full((1, 4, 4, 2), suv / 10.0))


def test_sidecar_units_and_decay_correction(tmp_path):
    side = {
        "InjectedRadioactivity": 10.0, "InjectedRadioactivityUnits": "mCi", "BodyWeight": 80.0, "Units": "kBq/mL",
        "TracerRadionuclide": "F18", "InjectionStart": 0, "ImageDecayCorrected": True, "ImageDecayCorrectionTime": 3600,
    }  # fmt: skip
    info = suv_info_from_sidecar(side)
    assert info["dose_bq"] == pytest.approx(3.7e8 * 2 ** (-3600 / 6586.2))
    assert info["unit_to_bq_ml"] == 1e3
    (tmp_path / "p1.json").write_text(json.dumps(side))
    factor, mode = pet_intensity_factor(str(tmp_path / "p1.nii.gz"), {}, suv_scale=5.0)
    assert mode == "suv" and factor == pytest.approx(1e3 * 80_000 / info["dose_bq"] / 5.0)
    # not decay-corrected: the dose decays to ScanStart instead
    side2 = dict(side, ImageDecayCorrected=False, ScanStart=1800)
    assert suv_info_from_sidecar(side2)["dose_bq"] == pytest.approx(3.7e8 * 2 ** (-1800 / 6586.2))
    # the item's own fields win over the sidecar
    factor2, _ = pet_intensity_factor(str(tmp_path / "p1.nii.gz"), {"injected_dose_bq": 1e8, "body_weight_kg": 50})
    assert factor2 == pytest.approx(50_000 / 1e8 / 10.0)


def test_fallback_and_errors(tmp_path):
    assert pet_intensity_factor(str(tmp_path / "none.nii.gz"), {}, activity_scale=4.0) == (0.25, "fixed")
    assert pet_intensity_factor(None, {"injected_dose_bq": 1e8, "body_weight_kg": 50}, mode="fixed") == (1 / 3.0, "fixed")
    with pytest.raises(ValueError, match="none.nii.gz"):
        pet_intensity_factor(str(tmp_path / "none.nii.gz"), {}, mode="suv")
    with pytest.raises(ValueError, match="half-life"):
        suv_info_from_sidecar({"InjectedRadioactivity": 1, "BodyWeight": 1, "TracerRadionuclide": "X99",
                               "InjectionStart": 0, "ImageDecayCorrectionTime": 10})  # fmt: skip
    with pytest.raises(ValueError, match="Units"):
        suv_info_from_sidecar({"InjectedRadioactivity": 1, "BodyWeight": 1, "Units": "SUV"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        pet_intensity_factor(str(tmp_path / "bad.nii"), {})
    with pytest.raises(ValueError, match="mode"):
        PETIntensityd("image", mode="suvbw")


def test_invertd_restores_the_input_units_through_padding(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).uniform(0, 20000, (10, 12, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "p1.nii.gz"))
    (tmp_path / "p1.json").write_text(json.dumps({"InjectedRadioactivity": 300, "BodyWeight": 70}))  # MBq, Bq/mL
    pre = Compose([
        LoadImaged("image", image_only=True, ensure_channel_first=True), EnsureTyped("image", dtype=torch.float32),
        PETIntensityd("image"), DivisiblePadd("image", k=[16, 16, 1], method="end"),
    ])  # fmt: skip
    d = pre({"image": str(tmp_path / "p1.nii.gz")})
    assert d["image"].shape == (1, 16, 16, 3)
    expected = vol * 70_000 / 300e6 / 10.0
    np.testing.assert_allclose(d["image"][0, :10, :12].numpy(), expected, rtol=1e-5)
    d["pred"] = d["image"].clone()
    out = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(d)
    np.testing.assert_allclose(np.asarray(out["pred"])[0], vol, rtol=1e-5)


def test_pet_inference_bundle_uses_suv_so_dose_scaled_inputs_give_scaled_outputs(tmp_path):
    """Volume V with dose D and volume 2V with dose 2D have the same SUV: the (non-linear) network must then give
    outputs in the ratio 2 exactly. With the fixed scale the two inputs would differ and the ratio would not be 2."""
    import nibabel as nib

    from monai_rat.networks import RAT

    torch.manual_seed(0)
    net = RAT(in_channels=1, out_channels=1, feature_size=8, enc_blocks=[2, 2], dec_blocks=[2, 2], num_groups=4,
              layers_per_group=3, num_heads=8, window_size=4, mlp_ratio=2.0)  # fmt: skip
    torch.save(net.state_dict(), tmp_path / "model.pt")
    vol = np.zeros((32, 32, 3), np.float32)
    vol[8:24, 6:26] = np.random.default_rng(1).uniform(2000, 9000, (16, 20, 3))
    (tmp_path / "in").mkdir()
    for name, scale in (("a", 1.0), ("b", 2.0)):
        nib.save(nib.Nifti1Image(vol * scale, np.eye(4)), str(tmp_path / "in" / f"{name}.nii.gz"))
        (tmp_path / "in" / f"{name}.json").write_text(json.dumps({"InjectedRadioactivity": 200 * scale, "BodyWeight": 70}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/pet/inference.json",
           "--input_path", str(tmp_path / "in"), "--ckpt_path", str(tmp_path / "model.pt"), "--feature_size", "8",
           "--output_dir", str(tmp_path / "out"), "--region_cache_dir", str(tmp_path / "regions"), "--intensity_mode", "suv"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    a = nib.load(str(tmp_path / "out" / "a_rat.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "out" / "b_rat.nii.gz")).get_fdata()
    assert a.shape == vol.shape and np.abs(a).max() > 1000  # back in Bq/mL, not in SUV / suv_scale
    # float32 maths on identical network inputs: equal up to round-off (the fixed scale misses by ~1e-4 of the maximum)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-6, atol=1e-6 * np.abs(a).max())
