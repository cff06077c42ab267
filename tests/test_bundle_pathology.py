"""The pathology bundle's training through the real ``python -m monai.bundle`` command line (tiny run, demo tiles)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import ROOT, TINY, run_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("bundle_pathology")
    out_dir = work / "run"
    log = run_bundle(
        ["run", "training", "--config_file", "bundles/pathology/train.json", "--output_dir", str(out_dir),
         "--region_cache_dir", str(work / "regions"), *TINY],
        work / "cache",
    )  # fmt: skip
    return {"work": work, "out_dir": out_dir, "log": log}


def test_tiny_training_run(trained):
    out_dir, log = trained["out_dir"], trained["log"]
    assert "Training schedule 'demo' (no dataset_dir is set)" in log
    assert "PATHOLOGY DEMO tiles (21 training / 4 validation / 4 test" in log
    assert (out_dir / "models" / "model.pt").is_file() and (out_dir / "models" / "last.pt").is_file()
    with open(out_dir / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    for r in rows:
        assert np.isfinite(float(r["val_psnr"])) and np.isfinite(float(r["val_ssim"])) and float(r["train_loss"]) > 0
    from monai_rat.networks import RAT

    # the demo schedule's RAT (its network_kwargs) at the tiny width: a plain state dict that loads into it
    demo = json.loads((ROOT / "bundles" / "pathology" / "train.json").read_text())["schedules"]["demo"]
    net = RAT(in_channels=3, out_channels=3, feature_size=8, **demo["network_kwargs"]["rat"])
    net.load_state_dict(torch.load(out_dir / "models" / "model.pt", weights_only=True))
    history = json.loads((out_dir / "logs" / "metrics.json").read_text())["history"]
    assert history[-1]["lr"] == pytest.approx(1e-6)



def test_patch_size_is_the_datalist_min_size_and_overlay_resolves():
    """An image smaller than the patch fails in pathology_datalist (tested in test_pathology_data.py) because the
    bundle passes min_size=max(patch_size); the multi-GPU overlay resolves (the PET bundle runs it)."""
    from monai.bundle import ConfigParser

    text = (ROOT / "bundles" / "pathology" / "configs" / "train.json").read_text()
    assert "min_size=max(@patch_size)" in text
    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundles" / "pathology" / "train.json"), str(ROOT / "bundles" / "pathology" / "multi_gpu_train.json")])
    parser.parse()
    assert parser.get("train#sampler")["_target_"] == "DistributedSampler"
    assert parser.get("network")["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser.get("train#dataloader#sampler") in ("@train#sampler", "@train::sampler")  # MONAI writes # as ::


def test_evaluation_whole_tiles_mean_and_std(trained):
    out_dir, work = trained["out_dir"], trained["work"]
    log = run_bundle(
        ["run", "evaluating", "--config_file", "['bundles/pathology/train.json','bundles/pathology/evaluate.json']",
         "--output_dir", str(out_dir), "--region_cache_dir", str(work / "regions"), "--feature_size", "8"],
        work / "cache",
    )  # fmt: skip
    summary = json.loads((out_dir / "eval" / "summary.json").read_text())["metrics"]
    for name in ("val_psnr", "val_ssim", "input_psnr", "input_ssim"):
        assert summary[name]["n"] == 4 and np.isfinite(summary[name]["mean"]) and summary[name]["std"] >= 0, name
    # the test block's tiles (columns 384-511 of ihc.png), not the validation block the checkpoint was chosen on
    with open(out_dir / "eval" / "val_psnr_raw.csv", newline="") as f:
        names = sorted(Path(r["filename"]).stem for r in csv.DictReader(f))
    assert names == [f"ihc_test_y{y:03d}_x384" for y in (0, 128, 256, 384)], names
    # the bicubic input of ihc tiles: about 28.4 dB against the originals (MONAI PSNR, data range 1 = 255)
    assert 26 < summary["input_psnr"]["mean"] < 31
    assert "Test split (4 images):" in log and "bicubic input" in log and "low-dose" not in log
    report = json.loads((out_dir / "eval" / "summary.json").read_text())
    notes = report["metric_names"]
    assert notes["input_psnr"] == "bicubic input vs original image" and notes["val_ssim"] == "restored (rat) vs original image"
    # the super-resolution baselines start from the low-resolution image the degradation made: bicubic is the input itself
    assert summary["bicubic_psnr"]["mean"] == pytest.approx(summary["input_psnr"]["mean"], abs=1e-4)
    assert np.isfinite(summary["lanczos_psnr"]["mean"]) and report["best_baseline"]["method"] in ("bicubic", "lanczos")
    assert notes["lanczos_psnr"] == "lanczos (scale 4) of the low-resolution image vs original image"
    from PIL import Image

    panels = sorted((out_dir / "eval" / "panels").glob("*.png"))
    assert len(panels) == 4 and (out_dir / "eval" / "overview.png").is_file()
    with Image.open(panels[0]) as im:
        assert im.mode == "RGB" and im.size[0] == 5 * (im.size[1] - 58 + 4) + 4  # 5 square tiles of the tile's side


def test_sliding_window_inference_any_size_png(trained, tmp_path):
    """A 40 x 56 RGB image (not a multiple of 16) through 32 x 32 overlapping windows; PNG out, same size, aligned."""
    from PIL import Image
    from skimage.data import immunohistochemistry

    src = immunohistochemistry()[100:140, 200:256]
    (tmp_path / "in").mkdir()
    Image.fromarray(src).save(tmp_path / "in" / "tile.png")
    log = run_bundle(
        ["run", "--config_file", "bundles/pathology/inference.json", "--input_path", str(tmp_path / "in"),
         "--ckpt_path", str(trained["out_dir"] / "models" / "model.pt"), "--feature_size", "8", "--roi_size", "[32,32]",
         "--output_dir", str(tmp_path / "out"), "--region_cache_dir", str(trained["work"] / "regions")],
        trained["work"] / "cache",
    )  # fmt: skip
    out = np.asarray(Image.open(tmp_path / "out" / "tile_rat.png"))
    assert out.shape == src.shape and out.dtype == np.uint8, log[-2000:]
    # the restored image lines up with the input (the model starts near the identity: global residual)
    corr = np.corrcoef(out.astype(float).ravel(), src.astype(float).ravel())[0, 1]
    assert corr > 0.8, corr


def test_verify_net_in_out(trained):
    """MONAI's own check of metadata.json's network_data_format against the inference network (image only)."""
    log = run_bundle(
        ["verify_net_in_out", "network_def", "--meta_file", "bundles/pathology/configs/metadata.json", "--config_file",
         "bundles/pathology/configs/inference.json", "--feature_size", "8", "--region_cache_dir", str(trained["work"] / "regions"),
         "--ckpt_path", str(trained["out_dir"] / "models" / "model.pt")],  # the tiny run's network (its record)
        trained["work"] / "cache",
    )  # fmt: skip
    assert "data shape of network is verified with no error" in log
