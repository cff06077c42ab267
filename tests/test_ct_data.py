"""CT data: built-in demo set, ct_datalist dispatcher, AAPM discovery on temp DICOM folders, MONAI readers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose, LoadImage, LoadImaged

sys.path.insert(0, os.path.dirname(__file__))
from ct_dicom_helpers import write_ct_slice, write_series  # noqa: E402

from monai_rat.data import (  # noqa: E402
    EnsureSlice2D,
    aapm_datalist,
    ct_datalist,
    ct_load_transforms,
    load_paired_datalist,
    make_ct_demo,
)
from monai_rat.data import datalist as datalist_module  # noqa: E402

N = 4  # slices per series


# ----------------------------------------------------------------------------------------------- demo data
SMALL = dict(num_train=8, noise_draws=2, num_val=1, num_test=2, real_size=96)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    dl = make_ct_demo(root, **SMALL)
    return root, dl, time.perf_counter() - t0


def _pair(item):
    data = LoadImaged(["image", "label"], image_only=True)(item)
    return data["image"].numpy(), data["label"].numpy()


def test_demo_builds_fast_and_is_readable(demo):
    root, dl, seconds = demo
    assert seconds < 30.0, f"demo build took {seconds:.1f} s"
    assert len(dl["training"]) == 8 * 2 and len(dl["validation"]) == 1 + 1 and len(dl["test"]) == 2 + 1
    names = [d["name"] for split in dl.values() for d in split]
    assert len(set(names)) == len(names)
    assert any(n.startswith("ctsmall") for n in names) and any(n.startswith("shepplogan") for n in names)
    for item in dl["training"][:12:4] + dl["validation"][:1] + dl["test"][-1:]:
        low, full = _pair(item)
        assert low.shape == full.shape and low.dtype == np.float32
        assert -1200 < full.min() < -500 and full.max() > 0  # HU: air and tissue
        noise = float((low - full)[full > -500].std())
        assert 15 < noise < 200, noise  # quarter-dose noise is visible but not overwhelming
    # no leftovers of the atomic build
    assert not [p for p in os.listdir(root) if p.startswith(".ct_demo_tmp_")]


def test_demo_splits_hold_out_anatomy(demo):
    """No anatomy is in two splits; the real test slice is a patient seen nowhere else."""
    _, dl, _ = demo
    anatomy = {split: {d["anatomy"] for d in items} for split, items in dl.items()}
    assert not anatomy["training"] & anatomy["validation"]
    assert not anatomy["training"] & anatomy["test"] and not anatomy["validation"] & anatomy["test"]
    real = {split: [d for d in items if d["source"] == "real"] for split, items in dl.items()}
    assert len(real["validation"]) == 1 and "693_J2KI" in real["validation"][0]["anatomy"]
    assert len(real["test"]) == 1 and "J2K_pixelrep_mismatch" in real["test"][0]["anatomy"]
    assert all("CT_small" in d["anatomy"] for d in real["training"]) and len(real["training"]) == 4 * 2
    assert {d["source"] for items in dl.values() for d in items} == {"real", "phantom"}
    # real heads at real_size, phantoms and CT_small at image_size; the noise draws of a source differ
    assert _pair(real["test"][0])[0].shape == (96, 96) and _pair(dl["test"][0])[0].shape == (128, 128)
    (a, full_a), (b, full_b) = _pair(dl["training"][0]), _pair(dl["training"][1])
    assert dl["training"][0]["label"] == dl["training"][1]["label"] and np.array_equal(full_a, full_b)
    assert not np.allclose(a, b)
    # the two training draws of a source are at 1/8 and 1/2 of the full dose (dose_spread 2 around 1/4),
    # so the first is the noisier; validation and test are at quarter dose
    assert [d["dose_fraction"] for d in dl["training"][:2]] == [0.125, 0.5]
    assert np.std(a - full_a) > 1.5 * np.std(b - full_b)
    assert {d["dose_fraction"] for d in dl["validation"] + dl["test"]} == {0.25}


def test_textured_phantom_has_texture():
    """Flat ellipses favour TV; the demo's phantoms carry texture inside every tissue."""
    from monai_rat.data import ellipse_phantom, textured_phantom

    tex = textured_phantom(128, np.random.default_rng(0))
    flat = ellipse_phantom(128, np.random.default_rng(0))
    assert tex.shape == (128, 128) and np.isfinite(tex).all() and tex.min() >= -1001
    soft = (tex > -50) & (tex < 150)
    assert soft.mean() > 0.2
    # neighbouring-pixel differences inside soft tissue: texture, not flat patches
    dif_tex = np.abs(np.diff(tex, axis=1))[soft[:, 1:] & soft[:, :-1]]
    flat_soft = (flat > -50) & (flat < 150)
    dif_flat = np.abs(np.diff(flat, axis=1))[flat_soft[:, 1:] & flat_soft[:, :-1]]
    assert np.median(dif_tex) > 1.0 and np.median(dif_flat) == 0.0
    assert not np.array_equal(tex, textured_phantom(128, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="size"):
        textured_phantom(8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind"):
        textured_phantom(64, np.random.default_rng(0), kind="knee")


def test_head_phantom_has_a_dense_skull_around_textured_brain():
    from monai_rat.data import textured_phantom

    head = textured_phantom(128, np.random.default_rng(3), kind="head")
    assert head.shape == (128, 128) and np.isfinite(head).all()
    assert head.max() > 1000  # dense cortical bone
    row = head[64]  # a line through the middle crosses air, skin, skull, brain, skull, skin, air
    skull = np.flatnonzero(row > 900)
    assert skull.size >= 4 and row[0] < -900 and row[-1] < -900
    brain = head[(head > 15) & (head < 50)]
    assert brain.size > 0.15 * head.size and brain.std() > 2.0  # textured, not flat


def test_pydicom_ct_slice_reads_real_heads():
    from monai_rat.data import REAL_CT_SLICES, pydicom_ct_slice

    hu, px = pydicom_ct_slice("J2K_pixelrep_mismatch.dcm")
    assert hu.shape == (512, 512) and px == pytest.approx(0.431, abs=1e-3)
    assert hu.min() == -1000.0 and hu.max() > 1000  # padding outside the field of view became air; bone
    small, spx = pydicom_ct_slice("J2K_pixelrep_mismatch.dcm", 128)
    assert small.shape == (128, 128) and spx == pytest.approx(0.431 * 4, abs=1e-3)
    assert set(REAL_CT_SLICES) == {"CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"}
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        pydicom_ct_slice("nope.dcm")


def test_demo_is_reused_and_settings_do_not_mix(demo, tmp_path):
    root, dl, _ = demo
    folder = os.path.dirname(os.path.dirname(dl["training"][0]["image"]))
    stamp = os.path.getmtime(os.path.join(folder, "datalist.json"))
    t0 = time.perf_counter()
    again = make_ct_demo(root, **SMALL)
    assert time.perf_counter() - t0 < 1.0
    assert again == dl and os.path.getmtime(os.path.join(folder, "datalist.json")) == stamp
    small = make_ct_demo(tmp_path, image_size=64, num_train=7, num_val=1, num_test=0, noise_draws=1, real_size=64)
    assert len(small["training"]) == 7 and len(small["validation"]) == 2 and len(small["test"]) == 1
    assert LoadImage(image_only=True)(small["training"][0]["image"]).shape == (64, 64)
    with pytest.raises(ValueError, match="num_train"):
        make_ct_demo(tmp_path, num_train=3)
    with pytest.raises(ValueError, match="noise_draws"):
        make_ct_demo(tmp_path, noise_draws=0)
    with pytest.raises(ValueError, match="dose_spread"):
        make_ct_demo(tmp_path, dose_spread=0.5)
    os.remove(small["test"][0]["label"])  # a damaged cache is rebuilt, not handed out
    rebuilt = make_ct_demo(tmp_path, image_size=64, num_train=7, num_val=1, num_test=0, noise_draws=1, real_size=64)
    assert os.path.isfile(rebuilt["test"][0]["label"])


def test_ct_datalist_demo_logs_how_to_use_real_data(demo, caplog):
    root, dl, _ = demo
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.datalist"):
        out = ct_datalist(None, root, **SMALL)
        out2 = ct_datalist("", root, **SMALL)
    assert out == dl and out2 == dl
    assert "demo" in caplog.text.lower() and "--dataset_dir /path/to/AAPM" in caplog.text
    out["training"].clear()  # the memo hands out copies
    assert len(ct_datalist(None, root, **SMALL)["training"]) == 16


def test_ct_load_transforms_on_demo(demo):
    _, dl, _ = demo
    data = Compose(ct_load_transforms())(dl["training"][0])
    for key in ("image", "label"):
        assert tuple(data[key].shape) == (1, 128, 128) and data[key].dtype == torch.float32
    raw = LoadImage(image_only=True)(dl["training"][0]["label"]).numpy()
    np.testing.assert_allclose(data["label"][0].numpy(), (raw + 1024) / 4096, atol=1e-6)


# ----------------------------------------------------------------------------------------- datalist JSON
def test_ct_datalist_json(tmp_path, demo):
    _, dl, _ = demo
    items = [{"image": os.path.relpath(d["image"], tmp_path), "label": d["label"]} for d in dl["training"][:2]]
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"training": items, "validation": items[:1]}))
    out = ct_datalist(str(path))
    assert len(out["training"]) == 2 and len(out["validation"]) == 1 and out["test"] == out["validation"]
    assert os.path.isabs(out["training"][0]["image"]) and os.path.isfile(out["training"][0]["image"])
    path.write_text(json.dumps({"training": items}))
    with pytest.raises(ValueError, match="validation"):
        load_paired_datalist(path)
    path.write_text(json.dumps({"training": [{"image": "nope.nii.gz", "label": items[0]["label"]}], "validation": []}))
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        load_paired_datalist(path)
    path.write_text(json.dumps({"training": [{"image": items[0]["label"]}], "validation": []}))
    with pytest.raises(ValueError, match="'label'"):
        load_paired_datalist(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_paired_datalist(path)
    with pytest.raises(ValueError, match="do not apply"):
        ct_datalist(str(path), test_patients=("L1",))


def test_ct_datalist_missing_dir_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*L067/full_1mm/\*\.IMA.*quarter_1mm"):
        ct_datalist(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ct_datalist(str(tmp_path / "missing.json"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .json"):
        ct_datalist(str(tmp_path / "notes.txt"))


# ------------------------------------------------------------------------------------- AAPM discovery
def _classic(root, patients=("L067", "L096", "L506"), suffix="1mm", n=N, size=16, skip=None):
    skip = skip or {}
    for k, pid in enumerate(patients):
        for dose in ("full", "quarter"):
            write_series(root / pid / f"{dose}_{suffix}", pid, dose, n, size=size, z0=100.0 + k,
                         skip=skip.get((pid, dose), ()), rng=np.random.default_rng(k))
    return root


def test_aapm_classic_layout_and_split(tmp_path):
    root = _classic(tmp_path)
    dl = aapm_datalist(root)
    # three splits by patient: the test patient (L506) never chooses the checkpoint
    assert {d["patient"] for d in dl["training"]} == {"L067"}
    assert {d["patient"] for d in dl["validation"]} == {"L096"} and {d["patient"] for d in dl["test"]} == {"L506"}
    assert dl["report"]["val_patients"] == ["L096"] and dl["report"]["test_patients"] == ["L506"]
    assert len(dl["training"]) == N and len(dl["validation"]) == N and len(dl["test"]) == N
    assert dl["report"]["unpaired"] == 0 and dl["report"]["num_pairs"] == 3 * N
    assert dl["report"]["layout"] == ["classic"]
    for item in dl["training"]:
        assert "quarter_1mm" in item["image"] and "full_1mm" in item["label"]
        q, f = (pydicom.dcmread(item[k], stop_before_pixels=True) for k in ("image", "label"))
        assert float(q.ImagePositionPatient[2]) == float(f.ImagePositionPatient[2]) == item["position"]
        assert os.path.basename(item["image"]).split(".")[3] == os.path.basename(item["label"]).split(".")[3]
    positions = [d["position"] for d in dl["training"] if d["patient"] == "L067"]
    assert positions == sorted(positions)
    # the paired files load through the CT transforms, in the window
    data = Compose(ct_load_transforms())(dl["validation"][0])
    assert tuple(data["image"].shape) == (1, 16, 16) and abs(float(data["label"].mean()) - 1024 / 4096) < 0.02
    # other split, via the dispatcher
    dl2 = ct_datalist(str(root), test_patients=("L067",), val_patients="L506")
    assert {d["patient"] for d in dl2["test"]} == {"L067"} and {d["patient"] for d in dl2["validation"]} == {"L506"}
    assert {d["patient"] for d in dl2["training"]} == {"L096"}
    with pytest.raises(ValueError, match="both"):
        aapm_datalist(root, val_patients=("L506",))
    with pytest.raises(ValueError, match="L999"):
        aapm_datalist(root, val_patients=("L999",))


def test_aapm_too_few_patients_for_validation_warns(tmp_path, caplog):
    root = _classic(tmp_path, patients=("L067", "L506"))
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.aapm"):
        dl = aapm_datalist(root)
    assert {d["patient"] for d in dl["training"]} == {"L067"} and dl["validation"] == dl["test"]
    assert "not held out" in caplog.text


def test_aapm_rereleased_layout_3mm_and_sharp(tmp_path):
    for kernel, suffix in (("1mm B30", ""), ("1mm D45", "_sharp")):
        for pid in ("L067", "L506"):
            for dose in ("full", "quarter"):
                write_series(tmp_path / kernel / f"{dose}_1mm{suffix}" / pid / f"{dose}_1mm{suffix}", pid, dose, N)
    _classic(tmp_path / "other", patients=("L067", "L506"), suffix="3mm", n=2)
    dl = aapm_datalist(tmp_path)
    assert dl["report"]["layout"] == ["re-released"]
    assert len(dl["training"]) == N and all("1mm B30" in d["image"] for d in dl["training"])
    sharp = aapm_datalist(tmp_path, kernel="D45")
    assert all("1mm D45" in d["image"] for d in sharp["training"] + sharp["validation"])
    thick = aapm_datalist(tmp_path / "other", thickness="3mm")
    assert len(thick["training"]) == 2 and "quarter_3mm" in thick["training"][0]["image"]
    with pytest.raises(ValueError, match=r"(?s)No 1mm smooth.*full_3mm"):
        aapm_datalist(tmp_path / "other")
    with pytest.raises(ValueError, match="kernel"):
        aapm_datalist(tmp_path, kernel="B99")


def test_aapm_tcia_layout(tmp_path):
    for pid in ("L067", "L506"):
        study = tmp_path / pid / "08-23-2018-NA-NA-12345"
        for dose, folder in (("full", "1.000000-Full Dose Images-1111"), ("quarter", "2.000000-Low Dose Images-2222")):
            for i in range(N):
                write_ct_slice(study / folder / f"1-{i + 1:03d}.dcm", np.zeros((16, 16)), position_z=-i * 1.0,
                               instance=i + 1, patient=pid)
    dl = aapm_datalist(tmp_path)
    assert dl["report"]["layout"] == ["tcia"] and len(dl["training"]) == N
    assert all(os.path.basename(d["image"]) == os.path.basename(d["label"]) for d in dl["training"])


def test_aapm_missing_slice_is_reported(tmp_path, caplog):
    root = _classic(tmp_path, skip={("L096", "quarter"): (2,)})
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.aapm"):
        dl = aapm_datalist(root)
    rep = dl["report"]["patients"]["L096"]
    assert rep["full"] == N and rep["quarter"] == N - 1 and rep["paired"] == N - 1
    assert len(rep["full_only"]) == 1 and ".0003." in os.path.basename(rep["full_only"][0]) and rep["quarter_only"] == []
    assert dl["report"]["unpaired"] == 1 and len(dl["training"]) == N and len(dl["validation"]) == N - 1
    assert "L096" in caplog.text and "no partner" in caplog.text


def test_aapm_count_mismatch_names_both_series(tmp_path):
    root = _classic(tmp_path, skip={("L096", "quarter"): (0, 1, 2)})
    with pytest.raises(ValueError, match=r"(?s)L096.*full_1mm.*\(4 slices\).*quarter_1mm.*\(1 slices\)"):
        aapm_datalist(root)
    assert aapm_datalist(root, max_unpaired=3)["report"]["unpaired"] == 3


def test_aapm_shape_mismatch_names_both_files(tmp_path):
    root = tmp_path
    for pid in ("L067", "L506"):
        write_series(root / pid / "full_1mm", pid, "full", N, size=16)
        write_series(root / pid / "quarter_1mm", pid, "quarter", N, size=16 if pid == "L506" else 12)
    with pytest.raises(ValueError, match=r"(?s)L067.*shape mismatch.*quarter_1mm.*12x12.*full_1mm.*16x16"):
        aapm_datalist(root)


def test_aapm_unreadable_file_is_named(tmp_path):
    root = _classic(tmp_path)
    bad = root / "L096" / "quarter_1mm" / "L096_QD_1_1.CT.0003.0099.broken.IMA"
    bad.write_bytes(b"this is not DICOM" * 10)
    with pytest.raises(ValueError, match=r"Cannot read the DICOM header of .*broken\.IMA"):
        aapm_datalist(root)


def test_aapm_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*L067/full_1mm"):
        aapm_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"(?s)series kinds found: none.*L067/full_1mm/\*\.IMA"):
        aapm_datalist(tmp_path / "empty")
    root = _classic(tmp_path / "a", patients=("L067", "L096"))
    with pytest.raises(ValueError, match=r"one patient's folder.*its parent"):
        aapm_datalist(root / "L067")
    with pytest.raises(ValueError, match="test_patients"):
        aapm_datalist(root, test_patients=(67,))
    with pytest.raises(ValueError, match=r"test patient\(s\) \['L506'\] not found.*'L067', 'L096'"):
        aapm_datalist(root)
    shutil.rmtree(root / "L096" / "quarter_1mm")
    with pytest.raises(ValueError, match=r"L096.*no quarter-dose series"):
        aapm_datalist(root, test_patients="L067")
    root = _classic(tmp_path / "b", patients=("L067", "L506"))
    with pytest.raises(ValueError, match="no training patients"):
        aapm_datalist(root, test_patients=("L067", "L506"))


def test_aapm_instance_number_fallback(tmp_path):
    for pid in ("L067", "L506"):
        for dose in ("full", "quarter"):
            folder = tmp_path / pid / f"{dose}_1mm"
            for i in range(N):
                write_ct_slice(folder / f"{pid}_{dose}_{i}.IMA", np.zeros((8, 8)), position_z=None, instance=i + 1)
    dl = aapm_datalist(tmp_path)
    assert [d["position"] for d in dl["training"]] == [1.0, 2.0, 3.0, 4.0]


# --------------------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("reader", ["ITKReader", "PydicomReader", None])
def test_monai_readers_apply_rescale(tmp_path, reader):
    hu = np.arange(-1000, -1000 + 12 * 10 * 7, 7, dtype=float).reshape(12, 10)
    path = write_ct_slice(tmp_path / "a.IMA", hu, slope=0.5, intercept=-1024.0)
    raw = pydicom.dcmread(path).pixel_array
    assert not np.allclose(raw, hu)  # stored values are not HU
    img = LoadImage(image_only=True, reader=reader, ensure_channel_first=True)(path)
    img = EnsureSlice2D()(img)
    assert tuple(img.shape) == (1, 10, 12)  # transposed: (C, Columns, Rows)
    np.testing.assert_allclose(img[0].numpy(), hu.T, atol=0.5)


def test_ensure_slice_2d_errors():
    assert EnsureSlice2D()(torch.zeros(1, 4, 5, 1)).shape == (1, 4, 5)
    with pytest.raises(ValueError, match=r"\(1, 4, 5, 3\)"):
        EnsureSlice2D()(torch.zeros(1, 4, 5, 3))


def test_memo_is_per_arguments(tmp_path):
    root = _classic(tmp_path)
    before = len(datalist_module._MEMO)
    a = ct_datalist(str(root))
    b = ct_datalist(str(root))
    assert a == b and len(datalist_module._MEMO) == before + 1


def test_hidden_files_are_reported_not_read(tmp_path, caplog):
    root = _classic(tmp_path)
    (root / "L067" / "full_1mm" / "._L067_FD_1_1.CT.0001.0001.IMA").write_bytes(b"\x00\x05\x16\x07")
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.aapm"):
        dl = aapm_datalist(root)
    assert len(dl["training"]) + len(dl["validation"]) == 2 * N and "hidden" in caplog.text


def _build_small_demo(root):
    from monai_rat.data import make_ct_demo as build

    return build(root, image_size=32, num_train=7, num_val=1, num_test=0, noise_draws=1, real_size=32)["training"][0]["image"]


@pytest.mark.timeout(180)
def test_demo_concurrent_builders_end_with_one_copy(tmp_path):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(2) as pool:
        paths = pool.map(_build_small_demo, [str(tmp_path)] * 2)
    assert paths[0] == paths[1] and os.path.isfile(paths[0])
    assert [p for p in os.listdir(tmp_path) if p.startswith("ct_demo_")] == [os.path.basename(os.path.dirname(os.path.dirname(paths[0])))]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ct_demo_tmp_")]
