"""PET demo volumes (three splits by anatomy), pet_datalist (demo / folder / JSON, patient splits) and 3D -> 2D slicing with air-only drops."""

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

from monai_rat.data import (
    PETSliceDataset,
    VolumeToSlicesd,
    make_pet_demo,
    pet_activity_phantoms,
    pet_datalist,
    pet_volume_pairs,
    textured_activity_phantom,
)
from monai_rat.data.pet_data import _MEMO


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pet_cache")
    t0 = time.perf_counter()
    out = make_pet_demo(root)  # the default settings, as the bundle builds them
    return root, out, time.perf_counter() - t0


def test_demo_layout_split_and_build_time(demo):
    root, out, seconds = demo
    assert seconds < 60, seconds  # about 15-35 s on the busy 2-core CPU (the target is ~30 s; timings vary 2x)
    assert [it["name"] for it in out["training"]] == ["train_00_shepplogan"] + [f"train_{i:02d}_textured" for i in (1, 2, 3, 4)]
    assert [it["name"] for it in out["validation"]] == ["val_00_bonescan", "val_01_textured"]
    assert [it["name"] for it in out["test"]] == ["test_00_mrsmall", "test_01_textured"]
    for it in out["training"] + out["validation"] + out["test"]:
        low, full = nib.load(it["image"]), nib.load(it["label"])
        assert low.shape == full.shape == (64, 64, 12)
        np.testing.assert_allclose(low.affine, np.diag([4.0, 4.0, 4.0, 1.0]))
        lo, hi = low.get_fdata(), full.get_fdata()
        assert lo.min() >= 0 and hi.min() >= 0
        assert abs(lo.mean() / hi.mean() - 1) < 0.05, it["name"]  # same activity, same reconstruction
        assert hi[..., 0].max() == 0 and hi[..., -1].max() == 0  # the end slices are air-only
        assert (hi[..., 1:-1].reshape(-1, 10).max(axis=0) > 0.01 * hi.max()).all(), it["name"]  # no other slice is
        assert hi[..., 6].max() > 0.5
    # nothing temporary left; a second call reuses the build
    assert [p.name for p in root.iterdir()] == [os.path.basename(os.path.dirname(os.path.dirname(out["training"][0]["image"])))]
    t0 = time.perf_counter()
    assert make_pet_demo(root) == out
    assert time.perf_counter() - t0 < 1.0


def test_demo_splits_are_disjoint_by_anatomy_and_the_real_mr_is_test_only(demo):
    _, out, _ = demo
    anatomy = {split: {it["anatomy"] for it in out[split]} for split in ("training", "validation", "test")}
    for a, b in (("training", "validation"), ("training", "test"), ("validation", "test")):
        assert not anatomy[a] & anatomy[b], (a, b)
    names = [it["name"] for split in out for it in out[split]]
    assert len(names) == len(set(names))
    real = {split: [it["anatomy"] for it in out[split] if it["source"] == "real"] for split in out}
    assert real["training"] == []
    assert len(real["validation"]) == 1 and "JPEG2000.dcm" in real["validation"][0] and "8NM1" in real["validation"][0]
    assert len(real["test"]) == 1 and "MR_small.dcm" in real["test"][0] and "4MR1" in real["test"][0]
    assert all(it["source"] == "phantom" for it in out["training"])
    assert all(it["source"] in ("real", "phantom") for split in out for it in out[split])
    # different anatomy also in the voxels: no two full-count volumes are the same or mirror images
    vols = {it["name"]: nib.load(it["label"]).get_fdata() for split in out for it in out[split]}
    keys = sorted(vols)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            for flip in (lambda v: v, lambda v: v[:, ::-1], lambda v: v[::-1]):
                assert np.corrcoef(vols[a].ravel(), flip(vols[b]).ravel())[0, 1] < 0.9, (a, b)


def test_activity_phantoms_are_seeded_per_split_and_index():
    small = dict(image_size=32, num_slices=6)
    a = pet_activity_phantoms(num_train=2, num_val=1, num_test=2, seed=3, **small)
    b = pet_activity_phantoms(num_train=3, num_val=0, num_test=2, seed=3, **small)
    by_name = lambda ps: {p["name"]: p for p in ps}  # noqa: E731
    a, b = by_name(a), by_name(b)
    assert sorted(a) == ["test_00_mrsmall", "test_01_textured", "test_02_textured", "train_00_shepplogan",
                         "train_01_textured", "val_00_bonescan", "val_01_textured"]  # fmt: skip
    for name in ("test_01_textured", "test_02_textured", "train_01_textured", "val_00_bonescan"):
        np.testing.assert_array_equal(a[name]["activity"], b[name]["activity"])  # other splits' counts do not matter
    assert not np.array_equal(a["test_01_textured"]["activity"], a["test_02_textured"]["activity"])
    other = by_name(pet_activity_phantoms(num_train=2, num_val=1, num_test=2, seed=4, **small))
    assert not np.array_equal(a["test_01_textured"]["activity"], other["test_01_textured"]["activity"])
    for p in a.values():
        act = p["activity"]
        assert act.shape == (32, 32, 6) and act.min() >= 0 and act.max() <= 2.2 + 1e-9
        assert act[..., 0].max() == 0 and act[..., -1].max() == 0 and act[..., 1:-1].max() > 0
    # a textured phantom has organs of different uptake, hot lesions and cold regions inside the body
    vol = textured_activity_phantom(64, 12, np.random.default_rng(0))
    body = vol[vol > 0]
    assert np.percentile(body, 99.5) > 1.0 and np.percentile(body, 1) < 0.12 and 0.15 < np.median(body) < 0.6
    with pytest.raises(ValueError, match="num_train"):
        pet_activity_phantoms(num_train=0)


def test_demo_rebuilds_missing_files_and_bad_settings(demo, tmp_path, caplog):
    small = dict(num_train=1, num_val=0, num_test=0, image_size=32, num_slices=4, num_iterations=1, num_subsets=2)
    first = make_pet_demo(tmp_path, **small)
    assert [len(first[s]) for s in ("training", "validation", "test")] == [1, 1, 1]
    os.remove(first["test"][0]["label"])
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_demo"):
        again = make_pet_demo(tmp_path, **small)
    assert "missing" in caplog.text and os.path.isfile(again["test"][0]["label"])
    with pytest.raises(ValueError, match="num_train"):
        make_pet_demo(tmp_path, num_train=0)
    with pytest.raises(ValueError, match="num_test"):
        make_pet_demo(tmp_path, num_test=-1)
    with pytest.raises(ValueError, match="image_size"):
        make_pet_demo(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="dose_reduction_factor"):
        make_pet_demo(tmp_path, dose_reduction_factor=0.5)


def test_pet_datalist_demo_is_memoised_copy(demo, caplog):
    root, out, _ = demo
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        a = pet_datalist(cache_dir=root)
    assert "PET DEMO" in caplog.text and "5 training / 2 validation / 2 test patients" in caplog.text
    assert "NOT held out" not in caplog.text  # the demo has its own test split
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


def test_folder_patient_split(tmp_path, caplog):
    names = [f"P{i:02d}" for i in range(10)]
    _write_pairs(tmp_path, names)
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        out = pet_datalist(tmp_path, seed=1)
    assert len(out["validation"]) == 2 and len(out["training"]) == 8  # round(10 * 25 / 115) = 2
    assert {it["name"] for it in out["training"]} | {it["name"] for it in out["validation"]} == set(names)
    assert out["test"] == out["validation"]  # no test split asked for: said so
    assert 'no test split, so "test" = "validation"' in caplog.text and "NOT held out" in caplog.text
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


def _split_names(out):
    return {split: {it["name"] for it in out[split]} for split in ("training", "validation", "test")}


def test_folder_test_split(tmp_path, caplog):
    names = [f"P{i:02d}" for i in range(12)]
    _write_pairs(tmp_path, names)
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        out = pet_datalist(tmp_path, test_fraction=0.25, seed=2)
    assert "NOT held out" not in caplog.text
    got = _split_names(out)
    assert [len(got[s]) for s in ("training", "validation", "test")] == [6, 3, 3]  # test round(3), validation round(12 * 25/115)
    assert not got["training"] & got["validation"] and not got["training"] & got["test"] and not got["validation"] & got["test"]
    assert got["training"] | got["validation"] | got["test"] == set(names)
    # the seeded order is the one of the two-way split: validation then comes after the test patients
    assert _split_names(pet_datalist(tmp_path, test_fraction=0.25, seed=2)) == got
    fixed = _split_names(pet_datalist(tmp_path, test_patients=["P00", "P11"], val_patients=["P05"]))
    assert fixed["test"] == {"P00", "P11"} and fixed["validation"] == {"P05"} and len(fixed["training"]) == 9
    by_fraction = _split_names(pet_datalist(tmp_path, test_patients=["P00"], seed=2))
    assert by_fraction["test"] == {"P00"} and "P00" not in by_fraction["validation"] and len(by_fraction["validation"]) == 3
    with pytest.raises(ValueError, match=r"\['P05'\] are in both validation and test"):
        pet_datalist(tmp_path, test_patients=["P05"], val_patients=["P05"])
    with pytest.raises(ValueError, match=r"`test_patients` \['P99'\]"):
        pet_datalist(tmp_path, test_patients=["P99"])
    with pytest.raises(ValueError, match="test_fraction"):
        pet_datalist(tmp_path, test_fraction=1.0)


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


def test_json_datalist(tmp_path, caplog):
    _write_pairs(tmp_path, ["P1", "P2", "P3"])
    pair = lambda n: {"image": f"low_dose/{n}.nii.gz", "label": f"full_dose/{n}.nii.gz"}  # noqa: E731
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"training": [pair("P1")], "validation": [pair("P2")]}))
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        out = pet_datalist(js)
    assert out["validation"][0]["image"] == str(tmp_path / "low_dose" / "P2.nii.gz")
    assert out["test"] == out["validation"] and "NOT held out" in caplog.text
    caplog.clear()
    js3 = tmp_path / "list3.json"
    js3.write_text(json.dumps({"training": [pair("P1")], "validation": [pair("P2")], "test": [pair("P3")]}))
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pet_data"):
        out = pet_datalist(js3)
    assert out["test"][0]["label"] == str(tmp_path / "full_dose" / "P3.nii.gz") and "NOT held out" not in caplog.text
    _write_pairs(tmp_path / "bad", ["P4"], full_shapes=[(8, 8, 6)])
    js_bad = tmp_path / "bad.json"
    js_bad.write_text(json.dumps({"training": [pair("P1")], "validation": [pair("P2")],
                                  "test": [{"image": "bad/low_dose/P4.nii.gz", "label": "bad/full_dose/P4.nii.gz"}]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"item 0 of 'test'.*\(8, 8, 5\) != full_dose shape \(8, 8, 6\)"):
        pet_datalist(js_bad)


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
    assert ds.counts == {"volumes": 5, "slices_total": 60, "kept": 50, "dropped_air": 10}  # 42 slices of 3 volumes before v2
    assert "kept 50, dropped 10 air-only" in caplog.text
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
