"""The evaluation's report pieces on a real MONAI evaluator: classical baselines tuned on validation only, the
summary table (input, each baseline, the model; the best named; per-subset means), panels and predictions."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine

from monai_rat.engines import ClassicalBaselines, MetricsSummary, RestorationPanels
from monai_rat.metrics import restoration_metric


def _pair(rng, size, name, folder: Path, sigma=0.04):
    """A smooth target and its noisy input, each backed by a (tiny) file so the cache can key on it."""
    yy, xx = np.mgrid[:size, :size] / size
    target = (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)[None]
    noisy = (target + rng.normal(0, sigma, target.shape)).astype(np.float32)
    paths = []
    for kind, arr in (("image", noisy), ("label", target)):
        p = folder / f"{name}_{kind}.npy"
        np.save(p, arr)
        paths.append(str(p))
    return {
        "image": MetaTensor(torch.from_numpy(noisy), meta={"filename_or_obj": paths[0]}),
        "label": MetaTensor(torch.from_numpy(target), meta={"filename_or_obj": paths[1]}),
    }


class _Halfway(torch.nn.Module):
    """A 'model' that removes half of the noise it is not told about: somewhere between input and target."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets
        self.calls = 0

    def forward(self, x):
        y = self.targets[self.calls]
        self.calls += 1
        return (x + y.to(x)) / 2


def _evaluate(tmp_path, methods, settings=None, val_items=None, test_items=None, panels_kwargs=None, seed=0):
    rng = np.random.default_rng(seed)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    val_items = val_items or [_pair(rng, 32, f"val{i}", data) for i in range(3)]
    test_items = test_items or [dict(_pair(rng, 40, f"test{i}", data), source=s) for i, s in enumerate(["real", "phantom", "phantom"])]
    seen = []

    class Spy(Dataset):
        def __getitem__(self, i):
            seen.append(i)
            return super().__getitem__(i)

    baselines = ClassicalBaselines(
        methods, val_dataset=lambda: Spy(val_items), cache_dir=str(tmp_path / "cache"), refine=2, grid_points=5,
        settings=settings, test_data=[{"image": d["image"].meta["filename_or_obj"]} for d in test_items], progress=False,
    )  # fmt: skip
    out = tmp_path / "eval"
    panels = RestorationPanels(str(out), baselines=baselines, window=(0.0, 1.0), error_window=0.2, units="",
                               input_label="noisy input", model_label="restored (halfway)", target_label="clean",
                               save_predictions=True, **(panels_kwargs or {}))  # fmt: skip
    summary = MetricsSummary(
        str(out), input_label="noisy input", model_label="restored (halfway)", target_label="clean", baselines=baselines,
        subset_key="source", metric_names=["val_psnr", "val_ssim", "input_psnr", "input_ssim"],
        pairs={"PSNR (dB)": ["val_psnr", "input_psnr"], "SSIM": ["val_ssim", "input_ssim"]},
    )  # fmt: skip

    def metric(kind, src):
        return IgniteMetricHandler(metric_fn=restoration_metric(kind), output_transform=from_engine([src, "label"]))

    net = _Halfway([d["label"].as_tensor()[None] for d in test_items])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(test_items), batch_size=1), network=net,
        key_val_metric={"val_psnr": metric("psnr", "pred")},
        additional_metrics={"val_ssim": metric("ssim", "pred"), "input_psnr": metric("psnr", "image"),
                            "input_ssim": metric("ssim", "image")},
        val_handlers=[baselines, panels, summary],
    )  # fmt: skip
    evaluator.run()
    return {"baselines": baselines, "panels": panels, "summary": summary, "out": out, "seen": seen,
            "val_items": val_items, "test_items": test_items, "evaluator": evaluator}  # fmt: skip


def test_baselines_are_tuned_on_validation_only_and_reported_beside_input_and_model(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    r = _evaluate(tmp_path, ["gaussian", "tv"])
    b = r["baselines"]
    # tuning read exactly the validation items, and recorded their files; none of the test files
    assert sorted(set(r["seen"])) == [0, 1, 2]
    val_files = {d[k].meta["filename_or_obj"] for d in r["val_items"] for k in ("image", "label")}
    test_files = {d[k].meta["filename_or_obj"] for d in r["test_items"] for k in ("image", "label")}
    assert set(b.validation_files) == val_files and not set(b.validation_files) & test_files
    assert b.shared_with_test == []
    s = json.loads((r["out"] / "summary.json").read_text())
    rows = s["comparison"]["PSNR (dB)"]
    assert [x["role"] for x in rows] == ["input", "baseline", "baseline", "model"]
    assert [x["metric"] for x in rows] == ["input_psnr", "gaussian_psnr", "tv_psnr", "val_psnr"]
    assert rows[0]["compares"] == "noisy input vs clean" and rows[-1]["compares"] == "restored (halfway) vs clean"
    assert rows[1]["compares"].startswith("gaussian (sigma (px) ") and rows[1]["compares"].endswith("of the noisy input vs clean")
    assert all(x["n"] == 3 for x in rows)
    # the best is the one with the higher validation PSNR, named in the summary and the log
    tuned = s["baselines"]["methods"]
    best = max(tuned, key=lambda m: tuned[m]["validation_psnr"])
    assert s["best_baseline"]["method"] == best and s["best_baseline"]["chosen_on"] == "validation PSNR"
    assert "<- best classical (chosen on validation)" in caplog.text and "vs the best classical baseline" in caplog.text
    # the baselines denoise; the baseline scores are those of the tuned transform on the test inputs
    assert s["metrics"]["tv_psnr"]["mean"] > s["metrics"]["input_psnr"]["mean"] + 3
    for m in ("gaussian", "tv"):
        expected = np.mean([
            restoration_metric("psnr")(torch.as_tensor(b.transforms[m](d["image"]))[None], d["label"][None]).item()
            for d in r["test_items"]
        ])  # fmt: skip
        assert s["metrics"][f"{m}_psnr"]["mean"] == pytest.approx(expected, abs=1e-4)
    # per-subset means, in the JSON, the CSV and the log
    assert s["subsets"]["key"] == "source" and s["subsets"]["real"]["val_psnr"]["n"] == 1 and s["subsets"]["phantom"]["tv_psnr"]["n"] == 2
    with open(r["out"] / "summary.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert {(x["metric"], x["subset"]) for x in csv_rows} >= {("tv_psnr", "all"), ("tv_psnr", "real"), ("val_psnr", "phantom")}
    assert all(x["compares"] for x in csv_rows)
    assert "Test split, source = 'real' (1 images)" in caplog.text


def test_tuned_parameters_are_cached_by_validation_files_and_settings(tmp_path, caplog, monkeypatch):
    import monai_rat.transforms as transforms

    caplog.set_level(logging.INFO)
    first = _evaluate(tmp_path, ["tv"])
    param = first["baselines"].tuned["tv"]["parameter"]
    calls = []
    real = transforms.tune_classical
    monkeypatch.setattr(transforms, "tune_classical", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    caplog.clear()
    again = _evaluate(tmp_path, ["tv"], val_items=first["val_items"], test_items=first["test_items"])
    assert calls == [] and again["baselines"].tuned["tv"]["from_cache"] and again["baselines"].tuned["tv"]["parameter"] == param
    assert "from the cache" in caplog.text
    # another setting, or a validation file that changed on disk: tuned again
    _evaluate(tmp_path, ["tv"], settings={"tv": {"refine": 1}}, val_items=first["val_items"], test_items=first["test_items"])
    assert calls == ["tv"]
    f = first["val_items"][0]["image"].meta["filename_or_obj"]
    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 10**9))
    _evaluate(tmp_path, ["tv"], val_items=first["val_items"], test_items=first["test_items"])
    assert calls == ["tv", "tv"]


def test_bm3d_without_its_package_is_skipped_with_the_reason(tmp_path, caplog, monkeypatch):
    import monai_rat.engines.baselines as mod

    caplog.set_level(logging.INFO)
    real = mod.importlib.util.find_spec
    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name, *a: None if name == "bm3d" else real(name, *a))
    r = _evaluate(tmp_path, ["gaussian", "bm3d"])
    assert r["baselines"].methods == ["gaussian"]
    assert "Baseline bm3d skipped" in caplog.text and "monai-rat[baselines]" in caplog.text and "non-commercial" in caplog.text
    s = json.loads((r["out"] / "summary.json").read_text())
    assert "bm3d" in s["baselines"]["skipped"] and "bm3d_psnr" not in s["metrics"]


def test_shared_validation_and_test_files_are_warned_about(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rng = np.random.default_rng(1)
    (tmp_path / "data").mkdir()
    items = [dict(_pair(rng, 32, f"x{i}", tmp_path / "data"), source="real") for i in range(2)]
    r = _evaluate(tmp_path, ["gaussian"], val_items=items, test_items=items)
    assert len(r["baselines"].shared_with_test) == 2
    assert "share 2 files" in caplog.text and "optimistic" in caplog.text


def test_panels_overview_and_predictions(tmp_path):
    from PIL import Image

    r = _evaluate(tmp_path, ["tv"])
    panels = sorted((r["out"] / "panels").glob("*.png"))
    assert [p.stem for p in panels] == ["test0_image", "test1_image", "test2_image"]
    with Image.open(panels[0]) as im:
        # 5 tiles (input, restored, best baseline, target, error) of 40 px enlarged x5 to 200, 4 px apart, plus labels
        assert im.size == (5 * (200 + 4) + 4, 200 + 36 + 22) and im.mode == "RGB"
    with Image.open(r["out"] / "overview.png") as im:
        assert im.size[1] == 3 * (200 + 36 + 22)  # one row per test image
    preds = sorted((r["out"] / "predictions").glob("*.npy"))
    assert [p.stem for p in preds] == ["test0_image", "test1_image", "test2_image"]
    d = r["test_items"][0]
    np.testing.assert_allclose(np.load(preds[0]), ((d["image"] + d["label"]) / 2).numpy(), atol=1e-6)
    # without baselines there are 4 tiles; many images make the overview a grid
    rng = np.random.default_rng(3)
    (tmp_path / "many").mkdir()
    many = [dict(_pair(rng, 24, f"m{i}", tmp_path / "many"), source="phantom") for i in range(14)]
    r2 = _evaluate(tmp_path / "many", [], test_items=many, panels_kwargs={"max_panels": 13})
    assert len(list((r2["out"] / "panels").glob("*.png"))) == 13 and len(list((r2["out"] / "predictions").glob("*.npy"))) == 14
    with Image.open(next((r2["out"] / "panels").glob("*.png"))) as im:
        assert im.size == (4 * (192 + 4) + 4, 192 + 36 + 22)
    with Image.open(r2["out"] / "overview.png") as im:
        assert im.size[0] > im.size[1]  # 4 x 4 grid of thumbnails, not 13 rows


def test_bad_methods_are_named():
    with pytest.raises(ValueError, match="Unknown baseline method 'median'"):
        ClassicalBaselines(["median"], [])
    with pytest.raises(ValueError, match="needs the low-resolution image"):
        ClassicalBaselines(["lanczos"], [])
    with pytest.raises(ValueError, match="twice"):
        ClassicalBaselines(["tv", "tv"], [])
    with pytest.raises(ValueError, match="unknown settings"):
        ClassicalBaselines(["tv"], [], settings={"tv": {"sigma": 1}})


def test_super_resolution_baselines_start_from_the_low_resolution_image(tmp_path, caplog):
    """Bicubic of the degradation's own LR image is the input; a side that is not a multiple of 4 is scored cropped."""
    from monai_rat.transforms import BicubicDegraded

    caplog.set_level(logging.INFO)
    rng = np.random.default_rng(5)
    (tmp_path / "data").mkdir()

    def sr_item(name, size):
        d = _pair(rng, size, name, tmp_path / "data")
        hr = d["label"]
        out = BicubicDegraded(keys="image", low_res_keys="image_lr")({"image": hr.clone(), "label": hr})
        out["image"].meta["filename_or_obj"] = d["image"].meta["filename_or_obj"]
        return out

    val = [sr_item(f"v{i}", 32) for i in range(2)]
    test = [sr_item("t0", 40), sr_item("t1", 42)]  # 42: the LR image is 10 x 10, Lanczos gives 40 x 40
    baselines = ClassicalBaselines(["bicubic", "lanczos"], val, low_res_key="image_lr", progress=False)
    summary = MetricsSummary(str(tmp_path / "eval"), baselines=baselines, metric_names=["input_psnr"],
                             pairs={"PSNR (dB)": ["input_psnr", "input_psnr"]})  # fmt: skip
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(test), batch_size=1), network=torch.nn.Identity(),
        key_val_metric={"input_psnr": IgniteMetricHandler(metric_fn=restoration_metric("psnr"), output_transform=from_engine(["image", "label"]))},
        val_handlers=[baselines, summary],
    )  # fmt: skip
    evaluator.run()
    details = evaluator.state.metric_details
    assert float(details["bicubic_psnr"][0]) == pytest.approx(float(details["input_psnr"][0]), abs=1e-4)  # the same image
    assert baselines.cropped == {"bicubic": 1, "lanczos": 1}
    assert "not multiples of the scale" in caplog.text
