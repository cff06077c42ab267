"""PET demo volumes, pet_datalist (demo / folder / JSON, patient split) and 3D -> 2D slicing with air-only drops."""

from __future__ import annotations

import json
import logging
import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_rat.data import PETSliceDataset, VolumeToSlicesd, make_pet_demo, pet_datalist, pet_volume_pairs
from monai_rat.data.pet_data import _MEMO


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pet_cache")
    t0 = time.perf_counter()
    out = make_pet_demo(root)  # the default settings, as the bundle builds them
    return root, out, time.perf_counter() - t0


def test_demo_layout_split_and_build_time(demo):
    root, out, seconds = demo
    assert seconds < 30, seconds
    assert len(out["training"]) == 3 and len(out["validation"]) == 1
    train_names = {it["name"] for it in out["training"]}
    assert not train_names & {it["name"] for it in out["validation"]}  # patient-level split
    assert out["test"] == out["validation"]
    for it in out["training"] + out["validation"]:
        low, full = nib.load(it["image"]), nib.load(it["label"])
        assert low.shape == full.shape == (64, 64, 16)
        np.testing.assert_allclose(low.affine, np.diag([4.0, 4.0, 4.0, 1.0]))
        lo, hi = low.get_fdata(), full.get_fdata()
        assert lo.min() >= 0 and hi.min() >= 0
        assert abs(lo.mean() / hi.mean() - 1) < 0.05  # same activity, same reconstruction
        assert hi[..., 0].max() == 0 and hi[..., -1].max() == 0  # the end slices are air-only
        assert hi[..., 8].max() > 0.5
    # nothing temporary left; a second call reuses the build
    assert [p.name for p in root.iterdir()] == [os.path.basename(os.path.dirname(os.path.dirname(out["training"][0]["image"])))]
    t0 = time.perf_counter()
    assert make_pet_demo(root) == out
    assert time.perf_counter() - t0 < 1.0


def test_demo_low_count_is_noisier(demo):
    _, out, _ = demo
    it = out["training"][0]
    lo, hi = nib.load(it["image"]).get_fdata(), nib.load(it["label"]).get_fdata()
    # relative RMS difference between LQ and HQ in the body: clearly noisy at DRF 12
    body = hi > 0.1
    assert np.sqrt(np.mean((lo - hi)[body] ** 2)) / hi[body].mean() > 0.2


def test_demo_rebuilds_missing_files_and_bad_settings(demo, tmp_path, caplog):
    root, out, _ = demo
    small = dict(num_patients=2, image_size=32, num_slices=4, num_iterations=1, num_subsets=2)
    first = make_pet_demo(tmp_path, **small)
    os.remove(first["training"][0]["label"])
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_demo"):
        again = make_pet_demo(tmp_path, **small)
    assert "missing" in caplog.text and os.path.isfile(again["training"][0]["label"])
    with pytest.raises(ValueError, match="num_val_patients"):
        make_pet_demo(tmp_path, num_patients=2, num_val_patients=2)
    with pytest.raises(ValueError, match="image_size"):
        make_pet_demo(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="dose_reduction_factor"):
        make_pet_demo(tmp_path, dose_reduction_factor=0.5)


def test_pet_datalist_demo_is_memoised_copy(demo, caplog):
    root, out, _ = demo
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        a = pet_datalist(cache_dir=root)
    assert "PET DEMO" in caplog.text
    assert a == out
    a["training"].clear()
    assert pet_datalist(cache_dir=root) == out


def _write_pairs(folder, names, shape=(8, 8, 5), full_shapes=None):
    for sub in ("low_dose", "full_dose"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(folder / "low_dose" / f"{name}.nii.gz"))
        fs = full_shapes[i] if full_shapes else shape
        nib.save(nib.Nifti1Image(np.ones(fs, np.float32), np.eye(4)), str(folder / "full_dose" / f"{name}.nii.gz"))


def test_folder_patient_split(tmp_path):
    names = [f"P{i:02d}" for i in range(10)]
    _write_pairs(tmp_path, names)
    out = pet_datalist(tmp_path, seed=1)
    assert len(out["validation"]) == 2 and len(out["training"]) == 8  # round(10 * 25 / 115) = 2
    assert {it["name"] for it in out["training"]} | {it["name"] for it in out["validation"]} == set(names)
    assert pet_datalist(tmp_path, seed=1) == out
    fixed = pet_datalist(tmp_path, val_patients=["P03", "P07"])
    assert [it["name"] for it in fixed["validation"]] == ["P03", "P07"]
    assert fixed["validation"][0]["image"].endswith(os.path.join("low_dose", "P03.nii.gz"))
    assert fixed["validation"][0]["label"].endswith(os.path.join("full_dose", "P03.nii.gz"))
    with pytest.raises(ValueError, match="P99"):
        pet_datalist(tmp_path, val_patients=["P99"])
    with pytest.raises(ValueError, match="both need"):
        pet_datalist(tmp_path, val_patients=names)
    with pytest.raises(ValueError, match="demo data only"):
        pet_datalist(tmp_path, num_slices=4)


def test_folder_bad_inputs(tmp_path):
    _MEMO.clear()
    with pytest.raises(FileNotFoundError, match="low_dose"):
        pet_datalist(tmp_path / "nope")
    a = tmp_path / "a"
    _write_pairs(a, ["P1", "P2"])
    os.remove(a / "full_dose" / "P2.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 5), np.float32), np.eye(4)), str(a / "full_dose" / "P3.nii.gz"))
    with pytest.raises(ValueError, match=r"only in low_dose/: \['P2'\]; only in full_dose/: \['P3'\]"):
        pet_volume_pairs(a)
    b = tmp_path / "b"
    _write_pairs(b, ["P1", "P2"], full_shapes=[(8, 8, 5), (8, 8, 6)])
    with pytest.raises(ValueError, match=r"'P2'.*\(8, 8, 5\) != .*\(8, 8, 6\)"):
        pet_volume_pairs(b)
    c = tmp_path / "c"
    _write_pairs(c, ["P1", "P2"])
    (c / "low_dose" / "P2.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="P2.nii.gz.*not a readable NIfTI"):
        pet_volume_pairs(c)
    (tmp_path / "empty" / "low_dose").mkdir(parents=True)
    (tmp_path / "empty" / "full_dose").mkdir()
    with pytest.raises(FileNotFoundError, match="no .nii"):
        pet_volume_pairs(tmp_path / "empty")


def test_json_datalist(tmp_path):
    _write_pairs(tmp_path, ["P1", "P2"])
    js = tmp_path / "list.json"
    js.write_text(json.dumps({
        "training": [{"image": "low_dose/P1.nii.gz", "label": "full_dose/P1.nii.gz"}],
        "validation": [{"image": "low_dose/P2.nii.gz", "label": "full_dose/P2.nii.gz"}],
    }))
    out = pet_datalist(js)
    assert out["validation"][0]["image"] == str(tmp_path / "low_dose" / "P2.nii.gz")


def _volume(shape=(1, 6, 5, 7)):
    vol = np.zeros(shape, np.float32)
    vol[:, 1:5, 1:4, 2:5] = 1.0
    vol[:, 2, 2, 1] = 0.005  # below 1 % of the max: still air
    return MetaTensor(torch.as_tensor(vol), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])),
                      meta={"filename_or_obj": "vol.nii.gz"})


@pytest.mark.parametrize("axis, kept, shape, spacing", [(-1, [2, 3, 4], (1, 6, 5), [2.0, 3.0]),
                                                       (0, [1, 2, 3, 4], (1, 5, 7), [3.0, 4.0]),
                                                       (1, [1, 2, 3], (1, 6, 7), [2.0, 4.0])])
def test_volume_to_slices_drops_air_and_logs(axis, kept, shape, spacing, caplog):
    vol = _volume()
    t = VolumeToSlicesd(axis=axis)
    with caplog.at_level(logging.INFO, logger="monai_rat.data.pet_data"):
        out = t({"image": vol * 2, "label": vol, "name": "p"})
    total = vol.shape[1 + axis % 3]
    assert [o["slice_index"] for o in out] == kept
    assert t.last_counts == {"kept": len(kept), "dropped_air": total - len(kept)}
    assert f"dropped {total - len(kept)} air-only" in caplog.text and "vol.nii.gz" in caplog.text
    first = out[0]
    assert first["image"].shape == shape and first["name"] == "p" and first["slice_axis"] == axis % 3
    np.testing.assert_allclose(np.diag(first["image"].affine.numpy())[:2], spacing)
    idx = [slice(None)] * 4
    idx[1 + axis % 3] = kept[0]
    np.testing.assert_array_equal(first["image"].numpy(), (vol * 2).numpy()[tuple(idx)])


def test_volume_to_slices_thresholds_and_errors(caplog):
    vol = _volume()
    assert len(VolumeToSlicesd(air_threshold=-1)({"image": vol, "label": vol})) == 7
    assert [o["slice_index"] for o in VolumeToSlicesd(air_threshold=0)({"image": vol, "label": vol})] == [1, 2, 3, 4]
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        assert VolumeToSlicesd()({"image": vol * 0, "label": vol * 0}) == []
    assert "kept 0 of 7" in caplog.text
    with pytest.raises(ValueError, match="axis"):
        VolumeToSlicesd(axis=3)
    with pytest.raises(ValueError, match="spatial shape"):
        VolumeToSlicesd()({"image": vol[:, :5], "label": vol})
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        VolumeToSlicesd()({"image": vol[:, 0], "label": vol[:, 0]})
    with pytest.raises(KeyError, match="reference_key"):
        VolumeToSlicesd(keys="image")({"image": vol})


def test_slice_dataset_on_demo(demo, caplog):
    _, out, _ = demo
    with caplog.at_level(logging.INFO, logger="monai_rat.data.pet_data"):
        ds = PETSliceDataset(out["training"], transform=lambda d: {**d, "seen": True})
    assert ds.counts == {"volumes": 3, "slices_total": 48, "kept": 42, "dropped_air": 6}
    assert "kept 42, dropped 6 air-only" in caplog.text
    item = ds[0]
    assert item["image"].shape == item["label"].shape == (1, 64, 64) and item["seen"]
    assert "seen" not in ds.slices[0]
    assert len(PETSliceDataset(out["validation"], axis=0)) > 50


@pytest.mark.filterwarnings("error:Setting affine, but the applied meta contains an affine")  # one affine, given once
def test_slice_dataset_on_disk_store_gives_the_same_slices_and_keeps_no_arrays(demo, tmp_path):
    import torch

    data = demo[1]["training"][:2]
    in_memory = PETSliceDataset(data)
    stored = PETSliceDataset(data, cache_dir=tmp_path / "slices")
    files = sorted((tmp_path / "slices").glob("slices_*.npy"))
    assert len(files) == 2 and len(stored) == len(in_memory)
    assert not any(isinstance(v, torch.Tensor) for s in stored.slices for v in s.values())  # only references in memory
    for i in (0, len(stored) // 2, len(stored) - 1):
        a, b = in_memory[i], stored[i]
        for k in ("image", "label"):
            torch.testing.assert_close(b[k].as_tensor(), a[k].as_tensor(), rtol=0, atol=0)
            torch.testing.assert_close(b[k].affine, a[k].affine)
            assert b[k].meta["filename_or_obj"] == a[k].meta["filename_or_obj"]
        assert b["slice_index"] == a["slice_index"] and b["name"] == a["name"]
    stamps = [f.stat().st_mtime_ns for f in files]
    PETSliceDataset(data, cache_dir=tmp_path / "slices")  # a second run reuses the store
    assert [f.stat().st_mtime_ns for f in files] == stamps and not list((tmp_path / "slices").glob(".*tmp"))
