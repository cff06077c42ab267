"""benchmarks/bench_quality.py end to end at its tiny 'smoke' budget: the real bundle commands train and
evaluate, classical filters are tuned on validation only, and the report has its rows, panel and commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_quality as bq  # noqa: E402


def test_plan_uses_the_same_budget_for_every_method_and_rat_rate_for_ablations(tmp_path):
    args = type("A", (), {"work": str(tmp_path), "dataset_dir": "", "demo_options": None})()
    budget = bq.BUDGETS["quick"]
    cmds = {k: bq.training_command("ct", bq.Run(m, 1e-3, 0, tmp_path / k), budget, args) for k, m in bq.QUICK_METHODS.items()}
    for cmd in cmds.values():  # same iterations, warm-up and data for every network
        i = cmd.index("--num_iterations")
        assert cmd[i + 1] == str(budget["num_iterations"]) and "--warmup_iterations" in cmd
    assert cmds["rat_l1"][cmds["rat_l1"].index("--focal_gamma") + 1] == "0.0"
    assert cmds["rat_single"][cmds["rat_single"].index("--region_method") + 1] == "single"
    assert "'attention': 'global'" in cmds["rat_global"][cmds["rat_global"].index("--network_kwargs") + 1].replace('"', "'")
    assert all(bq.QUICK_METHODS[k].kind == "ablation" for k in bq.ABLATIONS)
    # SRCNN has no width: the bundle must receive None (the CLI, fire, keeps "null" as a string, which failed)
    import fire

    srcnn = bq.training_command("pathology", bq.Run(bq.QUICK_METHODS["srcnn"], 1e-3, 0, tmp_path / "s"), budget, args)
    width = srcnn[srcnn.index("--feature_size") + 1]
    assert fire.Fire(lambda feature_size=8: feature_size, command=["--feature_size", width]) is None
    ev = bq.evaluation_command("ct", bq.Run(bq.QUICK_METHODS["rat"], 1e-3, 0, tmp_path / "r"), budget, args)
    assert ev[:2] == ["run", "evaluating"] and "--save_predictions" in ev and "--num_iterations" not in ev


def test_ema_and_x8_plans_and_the_check_that_the_bundle_defines_their_ids(tmp_path):
    """rat_ema trains with --ema_decay (not passed to the evaluation: model.pt holds the EMA); x8 evaluates the
    same checkpoint again with --self_ensemble true into eval_x8; an id no config defines is reported."""
    args = type("A", (), {"work": str(tmp_path), "dataset_dir": "", "demo_options": None})()
    budget = bq.BUDGETS["quick"]
    for catalogue, decay in ((bq.QUICK_METHODS, "0.99"), (bq.FULL_METHODS, "0.999")):
        m = catalogue["rat_ema"]
        assert m.kind == "ablation" and m.network_name == "rat"
        train = bq.training_command("ct", bq.Run(m, 1e-3, 0, tmp_path / "e"), budget, args)
        assert train[train.index("--ema_decay") + 1] == decay
        assert "--ema_decay" not in bq.evaluation_command("ct", bq.Run(m, 1e-3, 0, tmp_path / "e"), budget, args)
    assert bq.FULL_METHODS["rat_ema"].feature_size == bq.FULL_METHODS["rat"].feature_size == 64
    run = bq.Run(bq.QUICK_METHODS["rat"], 1e-3, 0, tmp_path / "r")
    plain, x8 = (bq.evaluation_command("ct", run, budget, args, self_ensemble=s) for s in (False, True))
    assert "--self_ensemble" not in plain and "--eval_dir" not in plain
    assert x8[x8.index("--self_ensemble") + 1] == "true" and x8[x8.index("--eval_dir") + 1] == str(tmp_path / "r" / "eval_x8")
    assert x8[: len(plain)] == plain  # otherwise the same evaluation of the same checkpoint
    assert bq.missing_config_ids("ct", ["focal_gamma", "region_method", "no_such_id_xyz"]) == ["no_such_id_xyz"]
    assert bq.missing_config_ids("ct", ["eval_dir"]) == ["eval_dir"]  # an evaluate.json id, not train.json's
    assert bq.missing_config_ids("ct", ["eval_dir"], evaluate=True) == []


def test_an_x8_row_has_no_validation_or_training_time_of_its_own():
    s = {"mean": 30.0, "std_images": 1.0, "std_seeds": 0.0, "min_seed": 30.0, "max_seed": 30.0, "n_images": 2, "n_seeds": 1}
    row = dict(key="rat", label="RAT", kind="learned", params=10, lr=1e-3, psnr=s, ssim=s, subsets={}, val=29.0, train_s=60.0)
    x8 = dict(row, key="rat_x8", label="RAT x8 (self-ensemble)", kind="x8", val=None, train_s=None)
    rec = dict(settings=bq.BUDGETS["smoke"], machine="test", date="today", elapsed_s=60.0, seeds=1, rows=[row, x8], classical=[])
    text = bq.markdown("ct", "smoke", rec, None, {}, {})
    line = next(ln for ln in text.splitlines() if ln.startswith("| RAT x8"))
    assert line.split(" | ")[3] == "-" and line.rstrip(" |").endswith("-")


def test_sliced_scores_are_read_per_slice_and_named_as_the_bundle_names_predictions(tmp_path):
    """PET scores slices of volumes: MetricsSaver's CSV names only the volume (once per slice, so a dict by file
    name would keep one slice per volume); the per-slice CSV gives each slice under its prediction's name."""
    ev = tmp_path / "eval"
    ev.mkdir()
    vol = "/data/low_dose/test_00_mrsmall.nii.gz"
    (ev / "val_psnr_raw.csv").write_text(f"filename,class0,mean\n{vol},30.0,30.0\n{vol},31.0,31.0\n")
    (ev / "per_slice.csv").write_text("volume,slice_index,psnr,ssim,input_psnr,input_ssim\n"
                                      f"{vol},1,30.0,0.9,28.0,0.8\n{vol},12,31.0,0.91,29.0,0.81\n")
    run = bq.Run(bq.QUICK_METHODS["rat"], 1e-3, 0, tmp_path)
    assert bq.per_image(run, "val_psnr") == {"test_00_mrsmall_slice001": 30.0, "test_00_mrsmall_slice012": 31.0}
    assert bq.per_image(run, "input_ssim") == {"test_00_mrsmall_slice001": 0.8, "test_00_mrsmall_slice012": 0.81}
    from monai_rat.engines.panels import image_name

    assert bq.slice_name(vol, 12) == image_name({"name": vol, "slice_index": 12})
    (ev / "per_slice.csv").unlink()  # a 2D bundle: one row per image file
    assert bq.per_image(run, "val_psnr") == {"test_00_mrsmall": 31.0}


def test_summary_statistics():
    per_seed = [{"a": 40.0, "b": 42.0}, {"a": 41.0, "b": 45.0}]
    s = bq.summarise(per_seed)
    assert s["mean"] == pytest.approx((41 + 43) / 2) and s["n_seeds"] == 2 and s["n_images"] == 2
    assert s["std_seeds"] == pytest.approx(1.0) and s["min_seed"] == 41.0 and s["max_seed"] == 43.0
    assert s["std_images"] == pytest.approx(abs(40.5 - 43.5) / 2)
    assert bq.summarise(per_seed, subset={"a"})["mean"] == pytest.approx(40.5)


@pytest.mark.timeout(900)
def test_smoke_run_writes_the_report(tmp_path):
    docs = tmp_path / "docs"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MONAI_RAT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--task", "ct", "--budget", "smoke",
           "--methods", "rat", "rat_l1", "--work", str(tmp_path / "work"), "--docs", str(docs), "--no_progress",
           "--classical", "gaussian", "--demo_options", json.dumps(bq.SMOKE_DEMO)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    text = (docs / "quality.md").read_text()
    assert "<!-- bench_quality:ct:smoke -->" in text and "RAT, L1 loss" in text and "gaussian" in text
    assert "test PSNR, real" in text  # the held-out real slice reported on its own
    record = json.loads((docs / "quality" / "ct_smoke.json").read_text())
    assert {r["key"] for r in record["rows"]} == {"rat", "rat_l1"}
    gauss = next(c for c in record["classical"] if c["key"] == "gaussian")
    assert gauss["psnr"]["n_images"] == record["rows"][0]["psnr"]["n_images"] > 0
    # the classical filter was tuned on the validation split and scored on the test split, never mixed
    tuned = json.loads((tmp_path / "work" / "classical.json").read_text())["gaussian"]
    from monai_rat.data import make_ct_demo

    dl = make_ct_demo(tmp_path / "cache", **bq.SMOKE_DEMO)
    assert sorted(tuned["tuned_on"]) == sorted(d["name"] for d in dl["validation"])
    assert sorted(tuned["psnr"]) == sorted(d["name"] for d in dl["test"])
    assert not set(tuned["tuned_on"]) & set(tuned["psnr"])
    assert (docs / "quality" / "ct_smoke_panel.png").is_file()
    commands = (tmp_path / "work" / "commands.txt").read_text().splitlines()
    assert len(commands) == 2 and all(c.startswith("python -m monai.bundle run training") for c in commands)
    # a second run reuses every finished run (resumable) and rewrites the same section, not a second one
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (docs / "quality.md").read_text().count("<!-- bench_quality:ct:smoke -->") == 1
