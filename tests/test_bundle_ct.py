"""The CT bundle end to end, through the real ``python -m monai.bundle`` command line.

One tiny training run (demo data, 4 iterations, 32x32 crops, feature_size 8) is shared by the tests of
evaluation, inference, resume, export and MONAI's checks; the 2-process DDP run and the mlflow run are
their own. Each subprocess runs with one OpenMP thread (two processes on two cores in the DDP test; on
a busy machine more threads per process only add contention).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import ROOT, TINY_CT as TINY, bundle_env, run_bundle


#: the demo schedule the tiny runs train with (its learning rate, validation interval and RAT size)
DEMO = json.loads((ROOT / "bundles" / "ct" / "train.json").read_text())["schedules"]["demo"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle_ct")


@pytest.fixture(scope="module")
def trained(work: Path) -> dict:
    """Train the tiny bundle once with the user's command plus size overrides."""
    out_dir = work / "run"
    out = run_bundle(
        ["run", "training", "--config_file", "bundles/ct/train.json", "--output_dir", str(out_dir),
         "--region_cache_dir", str(work / "regions"), *TINY],
        work / "cache",
    )  # fmt: skip
    return {"out_dir": out_dir, "log": out, "cache": work / "cache", "regions": work / "regions"}


def test_training_run_writes_checkpoints_and_metrics(trained):
    out_dir, log = trained["out_dir"], trained["log"]
    assert "Training schedule 'demo' (no dataset_dir is set)" in log
    assert "To train on real data" in log and "--dataset_dir" in log
    assert "using superpixels" in log  # no SAM checkpoint configured: the fallback is logged
    assert "nvImageCodec" not in log  # MONAI's optional-GPU-decoder notices are filtered (monai_rat.notices)
    assert (out_dir / "models" / "model.pt").is_file()
    assert (out_dir / "models" / "last.pt").is_file()
    rows = _rows(out_dir / "logs" / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    for r in rows:
        assert np.isfinite(float(r["val_psnr"])) and np.isfinite(float(r["val_ssim"])) and float(r["train_loss"]) > 0
    history = json.loads((out_dir / "logs" / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [2, 4]
    # cosine annealing per iteration, down to the floor at the last iteration
    assert history[-1]["lr"] == pytest.approx(1e-6)
    lr = DEMO["learning_rate"]
    assert history[0]["lr"] == pytest.approx(1e-6 + (lr - 1e-6) * (1 + np.cos(np.pi * 2 / 4)) / 2)
    assert list((out_dir / "logs").glob("events.out.tfevents.*")), "no TensorBoard event file"
    # the best checkpoint is a plain state dict of the demo's RAT (what inference.json and MONAI Label load)
    from monai_rat.networks import RAT

    net = RAT(feature_size=8, **DEMO["network_kwargs"]["rat"])
    net.load_state_dict(torch.load(out_dir / "models" / "model.pt", weights_only=True))
    state = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    assert set(state) == {"network", "optimizer", "lr_scheduler", "best_saver", "trainer"}
    assert state["trainer"]["iteration"] == 4
    assert state["best_saver"]["best_metric"] == pytest.approx(max(float(r["val_psnr"]) for r in rows), abs=1e-4)
    # both checkpoints record the network they belong to (read back without building anything)
    from monai_rat.networks import read_network_record

    for f in ("model.pt", "last.pt"):
        record = read_network_record(out_dir / "models" / f)
        assert record["name"] == "rat" and record["feature_size"] == 8 and record["in_channels"] == 1, f
    # a few validation images (input, restored, target) in TensorBoard, one run folder per image, at every validation
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for k in (0, 1):  # the tiny demo has 2 validation images
        acc = EventAccumulator(str(out_dir / "logs" / "images" / f"val_{k}"), size_guidance={"images": 0})
        acc.Reload()
        tags = acc.Tags()["images"]
        assert {"input_0_HW_0", "input_1_HW_0", "output_HW_0"} <= set(tags), tags  # input, target, restored
        assert [e.step for e in acc.Images("output_HW_0")] == [1, 2]  # validation rounds


def test_training_with_a_datalist_json_uses_the_paper_schedule(trained, work):
    """A MONAI datalist JSON mixing the demo NIfTI pairs and DICOM slices (read by ITK as (1, X, Y, 1))."""
    from pydicom.data import get_testdata_file

    demo = sorted(Path(trained["cache"]).glob("ct_demo_*/datalist.json"))[0]
    lists = json.loads(demo.read_text())
    dcm_dir = work / "json_dicom"
    dcm_dir.mkdir()
    for name in ("low.dcm", "full.dcm"):
        shutil.copy(get_testdata_file("CT_small.dcm"), dcm_dir / name)
    dicom_pair = {"image": str(dcm_dir / "low.dcm"), "label": str(dcm_dir / "full.dcm")}
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({
        "training": [{k: str(demo.parent / v) if k in ("image", "label") else v for k, v in d.items()}
                     for d in lists["training"]] + [dicom_pair],
        "validation": [dicom_pair],
    }))  # fmt: skip
    out_dir = work / "json_run"
    log = run_bundle(
        ["run", "training", "--config_file", "bundles/ct/train.json", "--dataset_dir", str(datalist),
         "--output_dir", str(out_dir), "--region_cache_dir", str(trained["regions"]),
         *[("2" if prev == "--num_iterations" else a) for prev, a in zip([None, *TINY], TINY)],
         "--num_workers", "0", "--cache_rate", "0.0"],
        trained["cache"],
    )  # fmt: skip
    assert "Training schedule 'paper' (a dataset_dir is set)" in log
    assert "To train on real data" not in log
    assert [int(r["iteration"]) for r in _rows(out_dir / "logs" / "metrics.csv")] == [2]
    # the paper's optimiser settings: Adam from 2e-4, cosine to 1e-6 (reached at the last iteration)
    state = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2e-4)
    cosine = state["lr_scheduler"]["lr_lambdas"][0]  # monai_rat.engines.WarmupCosine's settings
    assert cosine["min_lr"] == pytest.approx(1e-6) and cosine["total"] == 2 and cosine["warmup"] == 0


def test_resume_continues_from_last_checkpoint(trained, work):
    out_dir = work / "resume"
    shutil.copytree(trained["out_dir"], out_dir)
    before = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    args = ["run", "training", "--config_file", "bundles/ct/train.json", "--output_dir", str(out_dir),
            "--region_cache_dir", str(trained["regions"]), *TINY]  # fmt: skip
    # same settings: the run had completed, so nothing is trained again
    log = run_bundle(args, trained["cache"])
    assert "Resumed from" in log and "at iteration 4" in log
    assert "Epoch: 1/" not in log and "Epoch: 3/" not in log
    # a longer schedule continues from iteration 4 (model, optimizer, scheduler and iteration restored)
    args[args.index("--num_iterations") + 1] = "8"
    log = run_bundle(args, trained["cache"])
    assert "Resumed from" in log and "at iteration 4" in log
    assert "Epoch: 3/4, Iter: 1/2" in log and "Epoch: 1/4" not in log
    after = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 8
    assert after["optimizer"]["state"][0]["step"] == before["optimizer"]["state"][0]["step"] + 4
    assert after["lr_scheduler"]["last_epoch"] == 8 and after["lr_scheduler"]["lr_lambdas"][0]["total"] == 8
    history = json.loads((out_dir / "logs" / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [2, 4, 6, 8]
    # iteration 6 of the new 8-iteration cosine, not a restart of the old one
    lr = DEMO["learning_rate"]
    assert history[2]["lr"] == pytest.approx(1e-6 + (lr - 1e-6) * (1 + np.cos(np.pi * 6 / 8)) / 2, rel=1e-4)


def _demo_split(trained, split: str) -> set[str]:
    demo = sorted(Path(trained["cache"]).glob("ct_demo_*/datalist.json"))[0]
    items = json.loads(demo.read_text())[split]
    return {os.path.abspath(demo.parent / d[k]) for d in items for k in ("image", "label")}


def test_evaluation_reports_the_model_beside_the_input_and_the_tuned_baselines(trained):
    """The user's evaluation command: input, each classical baseline (tuned on validation only) and the model on the
    same test slices, the best baseline named, per-source means, panels, predictions; re-running does not re-tune."""
    from PIL import Image

    out_dir = trained["out_dir"]
    methods = ["gaussian", "tv", "bm3d"] if importlib.util.find_spec("bm3d") else ["gaussian", "tv"]
    args = ["run", "evaluating", "--config_file", "['bundles/ct/train.json','bundles/ct/evaluate.json']",
            "--output_dir", str(out_dir), "--region_cache_dir", str(trained["regions"]), *TINY,
            "--baseline_methods", repr(methods), "--save_predictions", "true"]  # fmt: skip
    log = run_bundle(args, trained["cache"])
    assert "Test split (3 images):" in log and "low-dose input" in log and "restored (rat)" in log
    assert "<- best classical (chosen on validation)" in log and "vs the best classical baseline" in log
    assert "Test split, source = 'real' (1 images):" in log and "Test split, source = 'phantom' (2 images):" in log
    summary = json.loads((out_dir / "eval" / "summary.json").read_text())
    assert summary["data_range"] == 1.0 and "4096 HU" in summary["data_range_note"]
    assert summary["metric_protocol"].startswith("float:")
    metrics = summary["metrics"]
    for name in ("val_psnr", "val_ssim", "input_psnr", "input_ssim", *[f"{m}_{k}" for m in methods for k in ("psnr", "ssim")]):
        assert metrics[name]["n"] == 3  # every demo test slice (2 phantoms, 1 real head), whole, none skipped
        assert np.isfinite(metrics[name]["mean"]) and metrics[name]["std"] >= 0
    assert metrics["input_psnr"]["mean"] > 25  # quarter-dose demo input vs full dose
    assert metrics["tv_psnr"]["mean"] > metrics["input_psnr"]["mean"]  # a tuned filter denoises
    rows = summary["comparison"]["PSNR (dB)"]
    assert [r["metric"] for r in rows] == ["input_psnr", *[f"{m}_psnr" for m in methods], "val_psnr"]
    assert rows[0]["compares"] == "low-dose input vs full dose" and rows[-1]["compares"] == "restored (rat) vs full dose"
    # tuned on exactly the validation files; none of them is a test file; the best is the best on validation
    b = summary["baselines"]
    assert set(b["validation_files"]) == _demo_split(trained, "validation")
    assert not set(b["validation_files"]) & _demo_split(trained, "test") and b["shared_with_test"] == []
    best = max(b["methods"], key=lambda m: b["methods"][m]["validation_psnr"])
    assert summary["best_baseline"]["method"] == best and set(b["methods"]) == set(methods)
    assert not any(v["from_cache"] for v in b["methods"].values())
    # per-subset means: the held-out real head apart from the phantoms
    assert summary["subsets"]["real"]["val_psnr"]["n"] == 1 and summary["subsets"]["phantom"]["tv_psnr"]["n"] == 2
    csv_rows = {(r["metric"], r["subset"]): r for r in _rows(out_dir / "eval" / "summary.csv")}
    assert float(csv_rows[("input_psnr", "all")]["mean"]) == pytest.approx(metrics["input_psnr"]["mean"])
    assert ("tv_psnr", "real") in csv_rows and csv_rows[("tv_psnr", "all")]["compares"].endswith("of the low-dose input vs full dose")
    raw = (out_dir / "eval" / "val_psnr_raw.csv").read_text()
    assert raw.count("\n") == 4 and "phantom_test_000" in raw and "J2K_pixelrep_mismatch" in raw  # header + a row per image
    # a panel per test image (5 labelled tiles), an overview, and the predictions in network units
    panels = sorted((out_dir / "eval" / "panels").glob("*.png"))
    assert [p.stem for p in panels] == ["phantom_test_000", "phantom_test_001", "real_test_J2K_pixelrep_mismatch"]
    for p in panels:
        pred = np.load(out_dir / "eval" / "predictions" / f"{p.stem}.npy")
        side = max(pred.shape[1:])
        tile = side * -(-192 // side) if side < 192 else side
        with Image.open(p) as im:
            assert im.size == (5 * (tile + 4) + 4, tile + 36 + 22), p
    assert (out_dir / "eval" / "overview.png").is_file()
    assert np.load(out_dir / "eval" / "predictions" / "phantom_test_000.npy").dtype == np.float32
    # the texture each method leaves on flat tissue, in HU, for every method of the summary and the target
    texture = json.loads((out_dir / "eval" / "texture.json").read_text())
    assert texture["units"] == "HU" and set(texture["images"]) | set(texture["skipped"]) == {p.stem for p in panels}
    assert {"low-dose input", "restored (rat)", "full dose"} <= set(texture["summary"])
    assert len(texture["summary"]) == 3 + len(methods) and "Flat-region texture (HU)" in log
    s = texture["summary"]  # simulated low dose is noisier than full dose on flat tissue
    assert s["low-dose input"]["high_pass_rms"] > s["full dose"]["high_pass_rms"]
    # the same command again takes the tuned parameters from the cache
    log = run_bundle(args, trained["cache"])
    assert log.count("from the cache") == len(methods) and "searching" not in log
    again = json.loads((out_dir / "eval" / "summary.json").read_text())
    assert all(v["from_cache"] for v in again["baselines"]["methods"].values())
    assert again["metrics"]["tv_psnr"]["mean"] == pytest.approx(metrics["tv_psnr"]["mean"])


def test_reference_metric_protocol_scores_8bit_y(trained):
    """--metric_protocol reference: the evaluation's scores are those of the reference protocol on the test pairs."""
    import nibabel as nib

    from monai_rat.metrics import reference_psnr

    out_dir = trained["out_dir"]
    eval_dir = trained["out_dir"].parent / "eval_reference"
    run_bundle(
        ["run", "evaluating", "--config_file", "['bundles/ct/train.json','bundles/ct/evaluate.json']",
         "--output_dir", str(out_dir), "--eval_dir", str(eval_dir), "--region_cache_dir", str(trained["regions"]), *TINY,
         "--baseline_methods", "[]", "--panels", "false", "--metric_protocol", "reference"],
        trained["cache"],
    )  # fmt: skip
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["metric_protocol"].startswith("reference:") and "BT.601" in summary["metric_protocol"]
    assert "baselines" not in summary and not (eval_dir / "panels").exists()
    demo = sorted(Path(trained["cache"]).glob("ct_demo_*/datalist.json"))[0]
    values = []
    for d in json.loads(demo.read_text())["test"]:
        x, y = ((np.asarray(nib.load(demo.parent / d[k]).dataobj, np.float32) + 1024) / 4096 for k in ("image", "label"))
        values.append(reference_psnr(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item())
    assert summary["metrics"]["input_psnr"]["mean"] == pytest.approx(np.mean(values), abs=1e-4)


def test_inference_nifti_png_dicom_any_size(trained, work):
    import nibabel as nib
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    src = work / "infer_in"
    (src / "series").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "series" / "CT_small.dcm")
    demo = sorted(Path(trained["cache"]).glob("ct_demo_*/low_dose/phantom_test_000.nii.gz"))[0]
    hu = np.asarray(nib.load(demo).get_fdata())
    nib.save(nib.Nifti1Image(hu[:100, :72].astype(np.float32), np.eye(4)), src / "odd.nii.gz")
    Image.fromarray(np.clip(hu[:90, :110] + 1024, 0, 65535).astype(np.uint16)).save(src / "slice.png")
    out_dir = work / "infer_out"
    # no --feature_size: the checkpoint records its network (RAT, feature_size 8)
    args = ["run", "--config_file", "bundles/ct/inference.json", "--input_path", str(src), "--output_dir", str(out_dir),
            "--ckpt_path", str(trained["out_dir"] / "models" / "model.pt"), "--region_cache_dir", str(trained["regions"])]  # fmt: skip
    log = run_bundle(args, trained["cache"])
    progress = re.findall(r"restored (\d)/3 (\S+) in [0-9.]+ s", log)  # one line per image, with its time
    assert [int(i) for i, _ in progress] == [1, 2, 3]
    assert sorted(n for _, n in progress) == ["CT_small.dcm", "odd.nii.gz", "slice.png"]
    assert "Restored 3 images in" in log and (out_dir / "inference_manifest.json").is_file()
    odd = nib.load(out_dir / "odd_rat.nii.gz").get_fdata()
    assert odd.shape == (100, 72) and np.isfinite(odd).all()
    assert np.abs(odd - hu[:100, :72]).mean() < 500  # in HU, near the input (4 training iterations)
    assert nib.load(out_dir / "slice_rat.nii.gz").get_fdata().shape == (110, 90)  # MONAI's PNG axis order
    dicom_nifti = nib.load(out_dir / "series" / "CT_small_rat.nii.gz")
    assert dicom_nifti.shape == (128, 128)
    ref = pydicom.dcmread(src / "series" / "CT_small.dcm")
    # the slice keeps its place: z row = (0, 0, SliceThickness, ImagePositionPatient z), not (0, 0, 1, 0)
    np.testing.assert_allclose(dicom_nifti.affine[2], [0, 0, float(ref.SliceThickness), float(ref.ImagePositionPatient[2])], atol=1e-4)
    written = list((out_dir / "dicom").rglob("*.dcm"))
    assert len(written) == 1  # DICOM out for the DICOM input only
    ds, ref = pydicom.dcmread(written[0]), pydicom.dcmread(src / "series" / "CT_small.dcm")
    assert ds.PatientID == ref.PatientID and ds.SeriesInstanceUID != ref.SeriesInstanceUID
    assert int(ds.SeriesNumber) != int(ref.SeriesNumber)  # the derived series is numbered on its own
    assert ds.SOPInstanceUID != ref.SOPInstanceUID and ds.ImageType[0] == "DERIVED"
    assert ds.pixel_array.shape == ref.pixel_array.shape
    # the same command again: complete, nothing restored, and how to start afresh
    log = run_bundle(args, trained["cache"])
    assert "Inference already complete" in log and "--overwrite true" in log and "restored 1/3" not in log
    # a changed input makes it run again; --overwrite true too
    os.utime(src / "odd.nii.gz")
    assert "restored 3/3" in run_bundle(args, trained["cache"])
    assert "restored 3/3" in run_bundle([*args, "--overwrite", "true"], trained["cache"])


def test_inference_checkpoint_errors_are_one_line(trained, work):
    """Missing, truncated and mismatched checkpoints: the command fails and its error says which file and what to pass."""
    from bundle_helpers import run_bundle_commands

    model = trained["out_dir"] / "models" / "model.pt"
    truncated = work / "truncated.pt"
    truncated.write_bytes(model.read_bytes()[:4000])
    src = sorted(Path(trained["cache"]).glob("ct_demo_*/low_dose/phantom_test_000.nii.gz"))[0]
    base = ["run", "--config_file", "bundles/ct/inference.json", "--input_path", str(src),
            "--region_cache_dir", str(trained["regions"])]  # fmt: skip
    cases = {
        "missing": ([*base, "--ckpt_path", str(work / "nowhere.pt"), "--output_dir", str(work / "e1")],
                    rf"there is no checkpoint file '{work / 'nowhere.pt'}'.*--ckpt_path"),
        "truncated": ([*base, "--ckpt_path", str(truncated), "--output_dir", str(work / "e2")],
                      rf"'{truncated}' is not a complete PyTorch checkpoint .*truncated"),
        "width": ([*base, "--ckpt_path", str(model), "--feature_size", "16", "--output_dir", str(work / "e3")],
                  rf"'{model}' holds rat\(feature_size=8, .*does not fit the network asked for \(--feature_size 16\).*pass --feature_size 8"),
        "network": ([*base, "--ckpt_path", str(model), "--network_name", "redcnn", "--output_dir", str(work / "e4")],
                    r"holds rat\(.*asked for \(--network_name 'redcnn'\)"),
    }  # fmt: skip
    results = run_bundle_commands([c for c, _ in cases.values()], trained["cache"], work / "ckpt_errors")
    for (name, (_, pattern)), res in zip(cases.items(), results):
        assert res["returncode"] != 0, name
        last = [ln for ln in res["output"].splitlines() if ln.strip()][-1]  # the command ends on the reason
        assert re.search(pattern, last), f"{name}: the last line does not match {pattern!r}:\n{res['output'][-3000:]}"
        assert re.match(r"^\w+Error: ckpt_path: ", last) and len(last) < 600, last
        assert len(res["output"].splitlines()) < 120, f"{name}: {len(res['output'].splitlines())} lines"  # no page of PyTorch's


def test_verify_net_in_out_and_torchscript_export(trained, work):
    common = ["--meta_file", "bundles/ct/configs/metadata.json", "--config_file", "bundles/ct/configs/inference.json",
              "--feature_size", "8", "--region_cache_dir", str(trained["regions"]),
              "--ckpt_path", str(trained["out_dir"] / "models" / "model.pt")]  # fmt: skip (the network its record names)
    log = run_bundle(["verify_net_in_out", "network_def", *common], trained["cache"])
    assert "data shape of network is verified with no error" in log
    ts_path = work / "export" / "model.ts"
    ts_path.parent.mkdir()
    run_bundle(
        ["ckpt_export", "network_export", "--filepath", str(ts_path), "--ckpt_file",
         str(trained["out_dir"] / "models" / "model.pt"), "--use_trace", "True", "--input_shape", "[1, 2, 32, 32]",
         *common],
        trained["cache"],
    )  # fmt: skip
    from monai_rat.networks import RAT

    net = RAT(feature_size=8, **DEMO["network_kwargs"]["rat"]).eval()
    net.load_state_dict(torch.load(trained["out_dir"] / "models" / "model.pt", weights_only=True))
    ts = torch.jit.load(str(ts_path))
    x = torch.rand(1, 1, 48, 64)  # another size (a multiple of 16) and a region map unlike the trace's
    regions = torch.zeros(1, 1, 48, 64, dtype=torch.long)
    regions[..., :20, :] = 3
    regions[..., 30:, 40:] = 7
    with torch.no_grad():
        torch.testing.assert_close(ts(torch.cat([x, regions.float()], 1)), net(x, regions), atol=1e-5, rtol=1e-4)


def test_bundle_files_follow_the_spec_with_one_source_of_truth():
    ct = ROOT / "bundles" / "ct"
    for name in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json", "logging.conf"):
        link = ct / name
        assert link.is_symlink() and os.readlink(link) == f"configs/{name}", f"{link} must link to configs/{name}"
        assert (ct / "configs" / name).is_file() and not (ct / "configs" / name).is_symlink()
    listed = subprocess.run(
        ["git", "ls-files", "-s", "bundles/ct/train.json"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    if listed:  # in a git checkout: stored as a symlink (mode 120000), so a clone recreates it
        assert listed.startswith("120000"), listed
    assert (ct / "docs" / "README.md").is_file() and (ct / "models").is_dir()
    from monai.bundle import ConfigParser

    meta = ConfigParser.load_config_file(ct / "metadata.json")
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    # inference.json is self-contained (MONAI Label loads it from any working directory): no macros
    def strings(v):
        if isinstance(v, dict):
            return [s for x in v.values() for s in strings(x)]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        return [v] if isinstance(v, str) else []

    assert not [s for s in strings(ConfigParser.load_config_file(ct / "inference.json")) if s.startswith("%")]


def test_ddp_two_processes_gloo_on_cpu(work, trained):
    out_dir = work / "ddp"
    log = run_bundle(
        ["run", "training", "--config_file", "['bundles/ct/train.json','bundles/ct/multi_gpu_train.json']",
         "--output_dir", str(out_dir), "--region_cache_dir", str(trained["regions"]), *TINY],
        trained["cache"],
        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    )  # fmt: skip
    assert log.count("Validation at iteration") == 2, "the metric history must run on rank 0 only"
    assert (out_dir / "models" / "last.pt").is_file() and (out_dir / "models" / "model.pt").is_file()
    state = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4
    assert not any(k.startswith("module.") for k in state["network"]), "the checkpoint must hold the bare network"
    assert [int(r["iteration"]) for r in _rows(out_dir / "logs" / "metrics.csv")] == [2, 4]


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("mlflow") is None, reason="mlflow not installed (pip install monai-rat[mlflow])"
)
def test_mlflow_tracking(work, trained):
    out_dir = work / "mlflow"
    run_bundle(
        ["run", "training", "--config_file", "bundles/ct/train.json", "--output_dir", str(out_dir),
         "--region_cache_dir", str(trained["regions"]), "--tracking", "mlflow", *TINY],
        trained["cache"],
    )  # fmt: skip
    assert (out_dir / "mlruns.db").is_file()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out_dir / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["monai_experiment"])
    assert len(runs) >= 1 and "metrics.train_loss" in runs.columns and "metrics.val_psnr" in runs.columns


def test_bad_dataset_dir_and_iteration_count_fail_with_their_reason(work):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundles/ct/train.json",
           "--output_dir", str(work / "bad"), "--dataset_dir", str(work / "no_such_folder")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=bundle_env(work / "cache"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"dataset_dir '{work / 'no_such_folder'}' does not exist" in proc.stderr + proc.stdout
    cmd[-2:] = ["--num_iterations", "250"]
    proc = subprocess.run(cmd, cwd=ROOT, env=bundle_env(work / "cache"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"num_iterations (250) must be a multiple of val_interval ({DEMO['val_interval']})" in proc.stderr + proc.stdout
    assert not (work / "bad" / "models" / "last.pt").exists()
