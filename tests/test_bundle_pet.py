"""The PET bundle's training through the real ``python -m monai.bundle`` command line (tiny run, demo volumes)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import ROOT, TINY, run_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("bundle_pet")
    out_dir = work / "run"
    log = run_bundle(
        ["run", "training", "--config_file", "bundles/pet/train.json", "--output_dir", str(out_dir),
         "--region_cache_dir", str(work / "regions"), *TINY],
        work / "cache",
    )  # fmt: skip
    return {"work": work, "out_dir": out_dir, "log": log}


def test_tiny_training_run(trained):
    out_dir, log = trained["out_dir"], trained["log"]
    assert "Training schedule 'demo' (no dataset_dir is set)" in log
    assert "PET DEMO data (5 training / 2 validation / 2 test patients, split by anatomy" in log
    # air-only slices dropped and counted: 5 training and 2 validation volumes of 12 slices, 2 air-only each
    assert "PETSliceDataset: 5 volumes, 60 slices along axis 2: kept 50, dropped 10 air-only" in log
    assert "PETSliceDataset: 2 volumes, 24 slices along axis 2: kept 20, dropped 4 air-only" in log
    assert "val_00_bonescan" in log and "test_00_mrsmall" not in log  # training never reads a test volume
    assert (out_dir / "models" / "model.pt").is_file() and (out_dir / "models" / "last.pt").is_file()
    with open(out_dir / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    for r in rows:
        assert np.isfinite(float(r["val_psnr"])) and np.isfinite(float(r["val_ssim"])) and float(r["train_loss"]) > 0
    from monai_rat.networks import RAT

    # the demo schedule's RAT (its network_kwargs) at the tiny width: a plain state dict that loads into it
    demo = json.loads((ROOT / "bundles" / "pet" / "train.json").read_text())["schedules"]["demo"]
    net = RAT(in_channels=1, out_channels=1, feature_size=8, **demo["network_kwargs"]["rat"])
    net.load_state_dict(torch.load(out_dir / "models" / "model.pt", weights_only=True))
    history = json.loads((out_dir / "logs" / "metrics.json").read_text())["history"]
    assert history[-1]["lr"] == pytest.approx(1e-6)


def test_evaluation_per_slice_and_per_volume(trained):
    out_dir, work = trained["out_dir"], trained["work"]
    log = run_bundle(
        ["run", "evaluating", "--config_file", "['bundles/pet/train.json','bundles/pet/evaluate.json']",
         "--output_dir", str(out_dir), "--region_cache_dir", str(work / "regions"), "--feature_size", "8",
         "--baseline_methods", "['gaussian','tv']"],
        work / "cache",
    )  # fmt: skip
    assert "Per-volume (2 volumes, 20 slices)" in log
    ev = out_dir / "eval"
    with open(ev / "per_slice.csv", newline="") as f:
        slices = list(csv.DictReader(f))
    assert sorted(int(r["slice_index"]) for r in slices) == sorted(list(range(1, 11)) * 2)  # slices 0 and 11 are air-only
    with open(ev / "per_volume.csv", newline="") as f:
        volumes = list(csv.DictReader(f))
    # the demo's test split (the real MR_small patient and a textured phantom), not the validation volumes
    assert len(volumes) == 2 and all(int(v["num_slices"]) == 10 for v in volumes)
    assert sorted(Path(v["volume"]).name for v in volumes) == ["test_00_mrsmall.nii.gz", "test_01_textured.nii.gz"]
    summary = json.loads((ev / "volume_summary.json").read_text())
    assert summary["num_volumes"] == 2 and summary["num_slices"] == 20
    # per-slice PSNR / SSIM agree with MONAI's metric handlers (the common evaluation summary)
    common = json.loads((ev / "summary.json").read_text())["metrics"]
    for mine, theirs in (("psnr", "val_psnr"), ("ssim", "val_ssim"), ("input_psnr", "input_psnr"), ("input_ssim", "input_ssim")):
        assert summary["per_slice"][mine]["mean"] == pytest.approx(common[theirs]["mean"], abs=1e-3), mine
    assert summary["per_volume"]["input_psnr"]["mean"] > 25  # DRF 12 input vs full count, data range = activity_scale
    # the baselines beside the model on the same test slices, tuned on the validation volumes only
    report = json.loads((ev / "summary.json").read_text())
    assert [r["metric"] for r in report["comparison"]["PSNR (dB)"]] == ["input_psnr", "gaussian_psnr", "tv_psnr", "val_psnr"]
    assert report["metrics"]["tv_psnr"]["n"] == 20 and report["best_baseline"]["method"] in ("gaussian", "tv")
    assert report["baselines"]["shared_with_test"] == [] and "optimistic" not in log
    assert not any("test_" in Path(f).name for f in report["baselines"]["validation_files"])
    panels = sorted(p.name for p in (ev / "panels").glob("*.png"))
    assert len(panels) == 20 and panels[0].endswith("_slice001.png") and (ev / "overview.png").is_file()


@pytest.mark.parametrize("axis", [-1, 0])
def test_inference_whole_volume_keeps_shape_and_affine(trained, tmp_path, axis):
    """A volume whose in-plane size is not a multiple of 16, with an offset affine, along two slice axes."""
    import glob

    import nibabel as nib

    work = trained["work"]
    low = nib.load(sorted(glob.glob(str(work / "cache" / "pet_demo_*" / "low_dose" / "*.nii.gz")))[-1])
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    vol = low.get_fdata()[:60, :56].astype(np.float32)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "in" / "p1.nii.gz"))
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    run_bundle(
        ["run", "--config_file", "bundles/pet/inference.json", "--input_path", str(tmp_path / "in"),
         "--ckpt_path", str(trained["out_dir"] / "models" / "model.pt"), "--feature_size", "8",
         "--output_dir", str(tmp_path / "out"), "--region_cache_dir", str(work / "regions"), "--slice_axis", str(axis)],
        work / "cache",
    )  # fmt: skip
    out = nib.load(str(tmp_path / "out" / "p1_rat.nii.gz"))
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, affine)
    y = out.get_fdata()
    assert np.isfinite(y).all() and y.max() > 0.5  # back in activity units (the input's maximum is about 2.5)


def test_ddp_two_processes_gloo_on_cpu(trained, tmp_path):
    out_dir = tmp_path / "ddp"
    log = run_bundle(
        ["run", "training", "--config_file", "['bundles/pet/train.json','bundles/pet/multi_gpu_train.json']",
         "--output_dir", str(out_dir), "--region_cache_dir", str(trained["work"] / "regions"), *TINY],
        trained["work"] / "cache",
        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    )  # fmt: skip
    assert log.count("Validation at iteration") == 2, "the metric history must run on rank 0 only"
    state = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4
    assert not any(k.startswith("module.") for k in state["network"]), "the checkpoint must hold the bare network"


def test_verify_net_in_out(trained):
    """MONAI's own check of metadata.json's network_data_format against the inference network (image only)."""
    log = run_bundle(
        ["verify_net_in_out", "network_def", "--meta_file", "bundles/pet/configs/metadata.json", "--config_file",
         "bundles/pet/configs/inference.json", "--feature_size", "8", "--region_cache_dir", str(trained["work"] / "regions"),
         "--ckpt_path", str(trained["out_dir"] / "models" / "model.pt")],  # the tiny run's network (its record)
        trained["work"] / "cache",
    )  # fmt: skip
    assert "data shape of network is verified with no error" in log


def test_training_on_a_folder_uses_the_slice_store_and_suv_sidecars(trained, tmp_path):
    """Real-data route: --dataset_dir (low_dose/ + full_dose/) keeps slices in an on-disk store and normalises
    by SUV where a BIDS sidecar gives dose and weight (fixed scale elsewhere), as the log says per file."""
    import glob
    import shutil

    from monai_rat.data import pet_datalist

    demo = Path(sorted(glob.glob(str(trained["work"] / "cache" / "pet_demo_*")))[-1])
    data = tmp_path / "data"
    names = ["test_00_mrsmall", "train_00_shepplogan", "train_01_textured", "val_00_bonescan"]  # 4 of the 9 demo volumes
    for sub in ("low_dose", "full_dose"):
        (data / sub).mkdir(parents=True)
        for name in names:
            shutil.copy(demo / sub / f"{name}.nii.gz", data / sub)
    val = [it["name"] for it in pet_datalist(data)["validation"]]  # the bundle's own seeded split (1 of 4)
    assert len(val) == 1
    for sub in ("low_dose", "full_dose"):  # the validation patient (read in full) with sidecars; 0.021 MBq, 70 kg: SUV / 10 = activity / 3
        (data / sub / f"{val[0]}.json").write_text(json.dumps({"InjectedRadioactivity": 0.021, "BodyWeight": 70}))
    out_dir = tmp_path / "run"
    log = run_bundle(
        ["run", "training", "--config_file", "bundles/pet/train.json", "--dataset_dir", str(data), "--schedule_name", "demo",
         "--output_dir", str(out_dir),
         "--region_cache_dir", str(trained["work"] / "regions"), "--slice_cache_dir", str(tmp_path / "slices"), *TINY],
        trained["work"] / "cache",
    )  # fmt: skip
    # a seeded patient split, 3 training + 1 validation volume pairs; no test split asked for, so "test" = "validation",
    # and the log says so
    assert len(list((tmp_path / "slices").glob("slices_*.npy"))) == 4
    assert "PET data: " + str(data) + ": 3 training / 1 validation / 0 test patients" in log
    assert 'no test split, so "test" = "validation"' in log
    assert (out_dir / "models" / "model.pt").is_file()
    assert f"{val[0]}.nii.gz: suv normalisation" in log
    assert set(re.findall(r"(\w+)\.nii\.gz: fixed normalisation", log)) - set(val), "no training file (no sidecar) logged"
