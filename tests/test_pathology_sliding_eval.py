"""The pathology bundle's evaluation goes through the inference route: sliding windows, whole-image region map as condition.

The real ``python -m monai.bundle run evaluating`` command runs on test images larger than the window
(100 x 140 and 104 x 136 with 32 x 32 windows, sides not multiples of the window) with a small RAT of
random weights. Its per-image PSNR / SSIM must equal those of MONAI's ``sliding_window_inference``
run by hand with the same network and region map, and must differ from a whole-image pass (so the
check fails if the evaluation went whole-image).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "['bundles/pathology/train.json','bundles/pathology/evaluate.json']"
ROI = 32
PSNR_TOL = 1e-4  # dB
TEST_CROPS = {"t1": (slice(200, 300), slice(100, 240)), "t2": (slice(300, 404), slice(260, 396))}


def _merged_parser(feature_size: int, dataset_dir: str = ""):
    """The merged evaluation config; ``dataset_dir`` as the command gets it (it picks the schedule, and with it
    the network's arguments: the demo's 2 x 2 latent layers, or the paper schedule's defaults)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundles" / "pathology" / "train.json"), str(ROOT / "bundles" / "pathology" / "evaluate.json")])
    parser["feature_size"] = feature_size
    parser["dataset_dir"] = dataset_dir
    return parser


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """Test images, a random feature_size-8 RAT checkpoint, and the real evaluation command run over them."""
    from PIL import Image
    from skimage.data import immunohistochemistry

    work = tmp_path_factory.mktemp("pathology_sliding_eval")
    src = immunohistochemistry()
    (work / "data" / "train").mkdir(parents=True)
    (work / "data" / "test").mkdir()
    Image.fromarray(src[:128, :128]).save(work / "data" / "train" / "a.png")
    for name, crop in TEST_CROPS.items():
        Image.fromarray(src[crop]).save(work / "data" / "test" / f"{name}.png")
    torch.manual_seed(0)
    rat = _merged_parser(8, str(work / "data")).get_parsed_content("rat_def")  # the bundle's own architecture, random weights
    torch.save(rat.state_dict(), work / "model.pt")

    env = dict(os.environ, MONAI_RAT_CACHE=str(work / "cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", CONFIGS,
           "--dataset_dir", str(work / "data"), "--output_dir", str(work / "run"), "--ckpt_path", str(work / "model.pt"),
           "--feature_size", "8", "--roi_size", f"[{ROI},{ROI}]", "--patch_size", f"[{ROI},{ROI}]", "--num_workers", "0",
           "--num_threads", "1", "--region_cache_dir", str(work / "regions")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed with {proc.returncode}:\n{log[-6000:]}"
    return {"work": work, "eval_dir": work / "run" / "eval", "log": log}


def _per_image(eval_dir: Path, metric: str) -> dict[str, float]:
    with open(eval_dir / f"{metric}_raw.csv", newline="") as f:
        return {Path(r["filename"]).stem: float(r["mean"]) for r in csv.DictReader(f)}


def test_evaluation_config_shares_the_inference_route():
    """evaluate.json holds inference.json's wrapper, prepare_batch, condition transform and inferer as copies that
    ``python -m monai_rat.bundle.sync --check`` keeps equal to inference.json's (its ``_shared_`` map names them)."""
    import json

    configs = ROOT / "bundles" / "pathology" / "configs"
    evaluate, inference = (json.loads((configs / f).read_text()) for f in ("evaluate.json", "inference.json"))
    for entry in ("network_def", "prepare_batch", "regions_to_condition", "inferer", "roi_size", "overlap", "sw_batch_size"):
        cid = "validate#inferer" if entry == "inferer" else entry
        assert evaluate["_shared_"][cid] == f"./inference.json#{entry}", entry
        assert evaluate[cid] == inference[entry], entry
    parser = _merged_parser(8)
    parser.parse()
    inferer = parser.get("validate#inferer")  # the x8 wrapper (off unless --self_ensemble true) around the sliding window
    assert inferer["_target_"].endswith("SelfEnsembleInferer") and inferer["enabled"] == "@self_ensemble"
    assert inferer["inferer"]["_target_"].endswith("SlidingWindowInferer") and inferer["inferer"]["mode"] == "gaussian"
    assert parser.get("roi_size") == [256, 256] and parser.get("overlap") == 0.25
    assert parser.get("prepare_batch")["extra_keys"] == {"condition": "regions"}


def test_metrics_finite_for_each_image(evaluated):
    eval_dir = evaluated["eval_dir"]
    for metric in ("val_psnr", "val_ssim", "input_psnr", "input_ssim"):
        values = _per_image(eval_dir, metric)
        assert sorted(values) == sorted(TEST_CROPS) and all(np.isfinite(v) for v in values.values()), (metric, values)
    summary = json.loads((eval_dir / "summary.json").read_text())["metrics"]
    for name in ("val_psnr", "val_ssim", "input_psnr", "input_ssim"):
        assert summary[name]["n"] == len(TEST_CROPS) and np.isfinite(summary[name]["mean"]) and summary[name]["std"] >= 0, name
    assert "Test split (2 images):" in evaluated["log"] and "restored (rat)" in evaluated["log"]
    # the super-resolution baselines on the same images: bicubic from the low-resolution image is the input itself
    assert summary["bicubic_psnr"]["mean"] == pytest.approx(summary["input_psnr"]["mean"], abs=1e-4)
    assert summary["lanczos_psnr"]["n"] == len(TEST_CROPS)


def test_evaluation_equals_sliding_window_by_hand_not_whole_image(evaluated):
    from monai.inferers import sliding_window_inference
    from monai.metrics import PSNRMetric, SSIMMetric
    from monai.transforms import Compose

    from monai_rat.data import pathology_load_transforms
    from monai_rat.engines.sliding_regions import ConditionRegionsNetwork
    from monai_rat.transforms import RegionPartitiond

    work = evaluated["work"]
    rat = _merged_parser(8, str(work / "data")).get_parsed_content("rat_def")
    rat.load_state_dict(torch.load(work / "model.pt", weights_only=True))
    net = ConditionRegionsNetwork(rat.eval())
    load = Compose(pathology_load_transforms(4) + [RegionPartitiond("image", "regions", method="auto", window=(0.0, 1.0))])
    got_psnr, got_ssim = _per_image(evaluated["eval_dir"], "val_psnr"), _per_image(evaluated["eval_dir"], "val_ssim")
    for name in TEST_CROPS:
        data = load({"image": str(work / "data" / "test" / f"{name}.png")})
        image, label = data["image"].as_tensor()[None], data["label"].as_tensor()[None]
        condition = data["regions"].as_tensor()[None].repeat(1, 3, 1, 1)  # whole-image map, cropped per window
        assert min(image.shape[2:]) > 2 * ROI  # several windows per side
        with torch.no_grad():
            windows = sliding_window_inference(image, (ROI, ROI), 1, net, overlap=0.25, mode="gaussian", condition=condition)
            whole = net(image, condition=condition)
        psnr_sw, ssim_sw = (float(PSNRMetric(1.0)(windows, label)), float(SSIMMetric(2, data_range=1.0)(windows, label)))
        psnr_whole = float(PSNRMetric(1.0)(whole, label))
        # the evaluation agrees with the windows by hand to float32 rounding (about 1e-7 dB measured) ...
        assert got_psnr[name] == pytest.approx(psnr_sw, abs=PSNR_TOL), (name, got_psnr[name], psnr_sw, psnr_whole)
        assert got_ssim[name] == pytest.approx(ssim_sw, abs=1e-5), (name, got_ssim[name], ssim_sw)
        # ... and the check can tell the routes apart: a whole-image pass scores 100 tolerances away or more
        # (0.028 dB measured for t1: each window sees only its own 32 x 32 context, and overlaps are blended)
        assert abs(psnr_whole - psnr_sw) > 100 * PSNR_TOL, (name, psnr_whole, psnr_sw)
