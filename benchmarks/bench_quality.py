"""Restoration quality, measured: RAT against classical and learned baselines and its own ablations.

One command per task trains every learned method through the task's own MONAI bundle (the same
engines, data, patch size, loss, iteration budget and learning-rate search for every network),
evaluates each on the bundle's held-out **test** split, tunes every classical filter on the
**validation** split only, and writes paper-style tables and a panel to ``docs/quality.md``::

    python benchmarks/bench_quality.py --task ct                 # quick budget (about 30-40 min on 2 CPU cores)
    python benchmarks/bench_quality.py --task pet --budget full  # meant for a GPU (CUDA is used when present)
    python benchmarks/bench_quality.py --task ct --methods rat redcnn --seeds 1   # a subset

Protocol (the same for every method, so a reader can trust the comparison):

- data: the bundle's built-in demo data with its training / validation / test splits (by anatomy or
  patient: no test image's anatomy is in training or validation), or ``--dataset_dir`` as the bundle
  takes it;
- learned methods: each trained with the bundle's training command and the budget's iterations;
  the learning rate is chosen per method on the validation PSNR of seed 0 from the budget's small
  grid; the ablations (Table 4 of the paper) use RAT's chosen rate, all else equal; then every
  method is trained with ``--seeds`` seeds; the checkpoint kept is the one with the best validation
  PSNR (the bundle's ``model.pt``), and only that is evaluated on the test split;
- classical methods: one parameter each, tuned by ``monai_rat.transforms.tune_classical`` on the
  validation images (never the test split), then applied to the test images;
- scores: PSNR / SSIM as the bundle evaluates them (network units, data range 1.0), per test image;
  tables give the mean over seeds of the mean over images, the std over images (of the seed-mean
  image scores) and the spread over seeds (std and min-max of the per-seed means).

What BasicSR / KAIR users expect, measured on request (both need the bundles' ``ema_decay`` and
``self_ensemble`` config ids; the benchmark stops, naming the id, when a bundle does not define one):

- ``--methods ... rat_ema``: RAT trained with an EMA of its weights (``--ema_decay``; 0.99 at the quick
  budget's 400 iterations, BasicSR's 0.999 at the full budget's 20k), validated and kept as the EMA
  (an ablation: RAT's learning rate, all else equal);
- ``--x8 [METHOD ...]`` (default ``rat``): each listed method's kept checkpoint is also evaluated with
  the test-time x8 self-ensemble (``--self_ensemble true``, into ``eval_x8/``): an extra row
  "<method> x8" from the same training runs.

Runs are resumable: finished runs under ``--work`` are reused (delete the folder to start afresh).
Each run is one bundle command (``python -m monai.bundle run training ...``); the commands are in
``<work>/commands.txt`` so a reader can reproduce any row.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Method:
    """A learned method: a bundle network plus overrides."""

    key: str
    label: str
    network_name: str
    feature_size: int | None
    network_kwargs: dict
    overrides: tuple = ()  # extra (id, value) bundle overrides, e.g. (("focal_gamma", 0.0),)
    kind: str = "learned"  # "learned" (own learning-rate search) or "ablation" (RAT's learning rate)


# RAT at the demo recipe's size, and baselines sized to cost about the same per iteration on a CPU
# (measured: docs/quality.md, "Sizes"); the full budget uses the papers' sizes.
RAT_QUICK = dict(num_groups=2, layers_per_group=2, identity_init=True)


def _rat(key: str, label: str, extra: dict | None = None, overrides: tuple = (), kind: str = "ablation") -> Method:
    return Method(key, label, "rat", 16, {**RAT_QUICK, **(extra or {})}, overrides, kind)


QUICK_METHODS = {
    "rat": Method("rat", "RAT (R-MSA, focal region loss)", "rat", 16, RAT_QUICK),
    "nafnet": Method("nafnet", "NAFNet (RAT's U-shape, NAFBlocks in the latent)", "nafnet", 16,
                     {"middle_blocks": 4, "identity_init": True}),
    "redcnn": Method("redcnn", "RED-CNN", "redcnn", 48, {"output_relu": False}),
    "restormer": Method("restormer", "Restormer (MONAI)", "restormer", 16,
                        {"num_blocks": [1, 1, 1, 1], "heads": [1, 2, 4, 8], "num_refinement_blocks": 1}),
    "edsr": Method("edsr", "EDSR (same-size)", "edsr", 32, {"num_res_blocks": 8}),
    "srcnn": Method("srcnn", "SRCNN", "srcnn", None, {"global_residual": True}),
    "rdst": Method("rdst", "RDST (same-size)", "rdst", 30, {"num_blocks": 2}),
    "rat_global": _rat("rat_global", "RAT, MSA (global attention)", {"attention": "global"}),
    "rat_window": _rat("rat_window", "RAT, W-MSA (window attention)", {"attention": "window"}),
    "rat_l1": _rat("rat_l1", "RAT, L1 loss", overrides=(("focal_gamma", 0.0),)),
    "rat_single": _rat("rat_single", "RAT, one region (no partition)", overrides=(("region_method", "single"),)),
    # 400 iterations: decay 0.99 (an average over about the last 100); BasicSR's 0.999 needs far longer runs
    "rat_ema": _rat("rat_ema", "RAT, EMA of the weights (decay 0.99)", overrides=(("ema_decay", 0.99),)),
}
FULL_METHODS = {
    **QUICK_METHODS,
    "rat": Method("rat", "RAT (R-MSA, focal region loss)", "rat", 64, {"identity_init": True}),
    "nafnet": Method("nafnet", "NAFNet (RAT's U-shape, NAFBlocks in the latent)", "nafnet", 64, {"identity_init": True}),
    "redcnn": Method("redcnn", "RED-CNN", "redcnn", 96, {"output_relu": False}),
    "restormer": Method("restormer", "Restormer (MONAI)", "restormer", 48, {}),
    "edsr": Method("edsr", "EDSR (same-size)", "edsr", 64, {}),
    "rdst": Method("rdst", "RDST (same-size)", "rdst", 60, {}),
    **{k: dataclasses.replace(QUICK_METHODS[k], feature_size=64, network_kwargs={
        **{kk: vv for kk, vv in QUICK_METHODS[k].network_kwargs.items() if kk not in ("num_groups", "layers_per_group")}})
       for k in ("rat_global", "rat_window", "rat_l1", "rat_single", "rat_ema")},
}
FULL_METHODS["rat_ema"] = dataclasses.replace(  # 20k iterations: BasicSR's decay
    FULL_METHODS["rat_ema"], label="RAT, EMA of the weights (decay 0.999)", overrides=(("ema_decay", 0.999),))
ABLATIONS = ("rat_global", "rat_window", "rat_l1", "rat_single")

TASKS = {
    "ct": dict(
        bundle="bundles/ct",
        classical=("gaussian", "tv", "nlm", "bm3d"),
        methods=("rat", "redcnn", "restormer", "nafnet", *ABLATIONS),
        window=(-160.0, 240.0),  # HU, the display window of the panel
        to_display=lambda a, lo=-160.0, hi=240.0: np.clip((a * 4096.0 - 1024.0 - lo) / (hi - lo), 0, 1),
        error_scale=100.0 / 4096.0,  # 100 HU is white in the error map
        input_name="low-dose input",
    ),
    "pet": dict(
        bundle="bundles/pet",
        classical=("gaussian", "tv", "nlm", "bm3d"),
        methods=("rat", "redcnn", "restormer", *ABLATIONS),
        to_display=None,  # scaled to the target's 99.5th percentile
        error_scale=None,
        input_name="low-count input",
        sliced=True,  # volumes, scored per non-air slice (the bundle's PETSliceDataset and per_slice.csv)
    ),
    "pathology": dict(
        bundle="bundles/pathology",
        classical=("bicubic", "lanczos"),
        methods=("rat", "edsr", "srcnn", "rdst", *ABLATIONS),
        to_display=lambda a: np.clip(a, 0, 1),
        error_scale=0.25,
        input_name="bicubic input",
    ),
}

BUDGETS = {
    # CPU-sized: every method at the CT demo's patch (64^2 x 4) for the same number of iterations
    "quick": dict(num_iterations=400, val_interval=100, learning_rates=(5e-4, 2e-3), warmup_iterations=20, seeds=3),
    # GPU-sized: the papers' widths, 128^2 patches, 20k iterations, a wider learning-rate grid
    "full": dict(num_iterations=20000, val_interval=1000, learning_rates=(2.5e-4, 5e-4, 1e-3, 2e-3),
                 warmup_iterations=500, seeds=3, patch_size=[128, 128], batch_size=8, num_threads=0),
    # a few iterations, for the benchmark's own test
    "smoke": dict(num_iterations=4, val_interval=2, learning_rates=(1e-3,), warmup_iterations=0, seeds=1,
                  patch_size=[32, 32], batch_size=2),
}


#: a small CT demo set for the benchmark's own test (``--demo_options``)
SMOKE_DEMO = {"num_train": 8, "noise_draws": 1, "num_val": 2, "num_test": 2, "real_size": 64}


@dataclasses.dataclass
class Run:
    method: Method
    lr: float
    seed: int
    out_dir: Path

    @property
    def done(self) -> bool:
        return (self.out_dir / "done.json").is_file()

    @property
    def evaluated(self) -> bool:
        return self.evaluated_in("eval")

    def evaluated_in(self, eval_name: str) -> bool:
        """Whether the evaluation into ``<out_dir>/<eval_name>`` (``eval``; ``eval_x8``: x8 self-ensemble) is done."""
        return (self.out_dir / eval_name / "summary.json").is_file()


#: the evaluation folder of the x8 self-ensemble runs (next to the bundle's ``eval``)
X8_EVAL = "eval_x8"
#: training-only overrides that the evaluation of a kept checkpoint must not get (``ema_decay``: model.pt
#: already holds the EMA weights, and the evaluator restores them into the plain network)
TRAINING_ONLY = ("ema_decay", "ema_warmup")


def _fmt(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def training_command(task: str, run: Run, budget: dict, args) -> list[str]:
    """The bundle command line that trains ``run`` (what a user runs to reproduce the row)."""
    bundle = TASKS[task]["bundle"]
    m = run.method
    cmd = ["run", "training", "--config_file", f"{bundle}/train.json", "--output_dir", str(run.out_dir),
           "--network_name", m.network_name, "--network_kwargs", _fmt(m.network_kwargs),
           "--learning_rate", repr(run.lr), "--seed", str(run.seed),
           "--num_iterations", str(budget["num_iterations"]), "--val_interval", str(budget["val_interval"]),
           "--warmup_iterations", str(budget["warmup_iterations"]), "--resume", "true"]
    if m.feature_size is not None:
        cmd += ["--feature_size", str(m.feature_size)]
    else:
        cmd += ["--feature_size", "None"]  # the bundle CLI (fire) reads None as None; "null" stays a string
    for key in ("patch_size", "batch_size", "num_threads"):
        if key in budget:
            cmd += [f"--{key}", _fmt(budget[key])]
    for key, value in m.overrides:
        cmd += [f"--{key}", _fmt(value)]
    cmd += common_overrides(args)
    return cmd


def common_overrides(args) -> list[str]:
    """Overrides shared by every command of a task (data, caches)."""
    out = ["--region_cache_dir", str(Path(args.work) / "regions")]
    if args.dataset_dir:
        out += ["--dataset_dir", args.dataset_dir]
    if getattr(args, "demo_options", None):
        out += ["--demo_options", _fmt(args.demo_options)]
    return out


def evaluation_command(task: str, run: Run, budget: dict, args, self_ensemble: bool = False) -> list[str]:
    """The bundle's evaluation of ``run``'s best checkpoint on the test split (predictions kept for the panel).

    With ``self_ensemble``, the test-time x8 self-ensemble (``--self_ensemble true``), written to
    ``<out_dir>/eval_x8`` instead of ``<out_dir>/eval``.
    """
    bundle = TASKS[task]["bundle"]
    train = training_command(task, run, budget, args)
    keep = []
    skip = {"--num_iterations", "--val_interval", "--warmup_iterations", "--resume", "--learning_rate", "--seed",
            *(f"--{k}" for k in TRAINING_ONLY)}
    it = iter(train[4:])  # after "run training --config_file X"
    for flag in it:
        value = next(it)
        if flag not in skip:
            keep += [flag, value]
    x8 = ["--self_ensemble", "true", "--eval_dir", str(run.out_dir / X8_EVAL)] if self_ensemble else []
    return ["run", "evaluating", "--config_file", f"['{bundle}/train.json','{bundle}/evaluate.json']", *keep,
            "--save_predictions", "true", "--baseline_methods", "[]", *x8]


def missing_config_ids(task: str, ids, evaluate: bool = False) -> list[str]:
    """The ids among ``ids`` that the task's bundle config does not define (train.json; + evaluate.json).

    A bundle override of an id that no config entry reads is accepted by MONAI and changes nothing, so a
    method row would silently be its base method: the benchmark checks first.
    """
    from monai.bundle import ConfigParser

    bundle = ROOT / TASKS[task]["bundle"]
    parser = ConfigParser()
    parser.read_config([str(bundle / "train.json"), *([str(bundle / "evaluate.json")] if evaluate else [])])
    return [i for i in ids if i not in parser]


# ----------------------------------------------------------------------------------------------- running
def bundle_env(args) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if not args.cuda:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("MONAI_RAT_CACHE", str(Path(args.work) / "data"))
    return env


def run_commands(jobs: list[tuple[Run, list[str], Path]], args, progress, total_its: dict) -> None:
    """Run bundle commands, ``args.jobs`` at a time; progress by the runs' metric logs."""
    env = bundle_env(args)
    pending = list(jobs)
    running: list[tuple[Run, subprocess.Popen, Path, float]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            run, cmd, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log.parent / "command.txt", "a") as f:
                f.write("python -m monai.bundle " + " ".join(shlex.quote(c) for c in cmd) + "\n")
            fh = open(log, "w")
            proc = subprocess.Popen([sys.executable, "-m", "monai.bundle", *cmd], cwd=ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            running.append((run, proc, log, time.time()))
        time.sleep(2.0)
        for item in list(running):
            run, proc, log, t0 = item
            _update_progress(progress, total_its, run)
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                tail = log.read_text()[-3000:]
                raise SystemExit(f"bench_quality: a bundle command failed ({proc.returncode}); its log {log} ends:\n{tail}")
            if log.name == "train.log":
                (run.out_dir / "done.json").write_text(json.dumps({"wall_s": round(time.time() - t0, 1)}))


def _update_progress(progress, total_its: dict, run: Run) -> None:
    if progress is None:
        return
    hist = history(run)
    it = hist[-1]["iteration"] if hist else 0
    key = str(run.out_dir)
    delta = it - total_its.get(key, 0)
    if delta > 0:
        total_its[key] = it
        progress.update(delta)
        progress.set_postfix_str(f"{run.method.key} lr={run.lr:g} seed={run.seed}")


def history(run: Run) -> list[dict]:
    path = run.out_dir / "logs" / "metrics.json"
    try:
        return list(json.loads(path.read_text()).get("history", []))
    except (OSError, ValueError):
        return []


def best_val(run: Run) -> float:
    values = [h["val_psnr"] for h in history(run) if isinstance(h.get("val_psnr"), (int, float)) and math.isfinite(h["val_psnr"])]
    return max(values) if values else float("-inf")


# ----------------------------------------------------------------------------------------------- scores
def per_image(run: Run, metric: str, eval_name: str = "eval") -> dict[str, float]:
    """Per-image test scores of an evaluated run: {image name: value} from MONAI's MetricsSaver CSV in ``eval_name``.

    A bundle that scores slices of volumes (PET) names only the volume in that CSV, once per slice; its
    ``per_slice.csv`` (``volume, slice_index, psnr, ssim, ...``) is read instead, each slice named as the
    bundle names its panels and predictions (``<volume>_slice<k>``, :func:`monai_rat.engines.panels.image_name`).
    """
    sliced = run.out_dir / eval_name / "per_slice.csv"
    if sliced.is_file():
        column = {"val_psnr": "psnr", "val_ssim": "ssim", "input_psnr": "input_psnr", "input_ssim": "input_ssim"}[metric]
        with open(sliced, newline="") as f:
            return {slice_name(r["volume"], r["slice_index"]): float(r[column]) for r in csv.DictReader(f)}
    path = run.out_dir / eval_name / f"{metric}_raw.csv"
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t" if "\t" in f.readline() else ","))
    for row in rows:
        if len(row) >= 2:
            try:
                out[_stem(row[0])] = float(row[1])
            except ValueError:
                continue
    return out


def slice_name(volume: str, slice_index) -> str:
    """The name the bundles give slice ``slice_index`` of ``volume`` (panels, predictions, per-slice scores)."""
    from monai_rat.engines.panels import image_name

    return image_name({"name": str(volume), "slice_index": int(slice_index)})


def _stem(path: str) -> str:
    name = os.path.basename(str(path))
    for suffix in (".nii.gz", ".nii", ".png", ".npy", ".dcm", ".tif", ".tiff", ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def summarise(per_seed: list[dict[str, float]], subset: set[str] | None = None) -> dict:
    """Mean over seeds of the image-mean, std over images of the seed-mean scores, seed spread."""
    names = sorted(set.intersection(*[set(s) for s in per_seed]))
    if subset is not None:
        names = [n for n in names if n in subset]
    if not names:
        return {}
    table = np.array([[s[n] for n in names] for s in per_seed])  # seeds x images
    seed_means = table.mean(axis=1)
    image_means = table.mean(axis=0)
    return {
        "mean": float(seed_means.mean()),
        "std_images": float(image_means.std()),
        "std_seeds": float(seed_means.std()),
        "min_seed": float(seed_means.min()),
        "max_seed": float(seed_means.max()),
        "n_images": len(names),
        "n_seeds": len(per_seed),
    }


# ----------------------------------------------------------------------------------------------- classical
#: classical denoisers whose parameter is tried both as one fixed weight and as a factor on each image's own
#: noise estimate (ClassicalRestore's noise_relative), the better on validation kept: a fixed weight tuned on
#: validation slices mis-serves test slices of another noise level (CT), and a noise estimate can be far off
#: (PET slices that are mostly air)
NOISE_RELATIVE = ("tv", "nlm", "bm3d")


def load_split(task: str, args, split: str) -> list[dict]:
    """The split's items after the bundle's own validation preprocessing (network units, region maps)."""
    from monai.bundle import ConfigParser

    bundle = ROOT / TASKS[task]["bundle"]
    parser = ConfigParser()
    parser.read_config(str(bundle / "train.json"))
    parser["region_cache_dir"] = str(Path(args.work) / "regions")
    if args.dataset_dir:
        parser["dataset_dir"] = args.dataset_dir
    if getattr(args, "demo_options", None):
        parser["demo_options"] = args.demo_options
    cwd = os.getcwd()
    os.chdir(ROOT)  # relative paths in the arguments are the repository root's, as for the training commands
    try:
        out = []
        if TASKS[task].get("sliced"):
            # volumes scored slice by slice (PET): the bundle's own validation dataset over this split, so the
            # slices (air-only ones dropped) and their names are the ones the bundle's evaluation scores
            parser["validate#dataset#data"] = f"$@datalist[{split!r}]"
            for d in parser.get_parsed_content("validate#dataset"):
                volume = getattr(d["image"], "meta", {}).get("filename_or_obj", "")
                name = slice_name(volume, d["slice_index"])
                out.append({"name": name, "item": {"image": str(volume), "slice_index": int(d["slice_index"]), "name": name},
                            "image": np.asarray(d["image"], dtype=np.float64), "label": np.asarray(d["label"], dtype=np.float64)})
            return out
        items = parser.get_parsed_content("datalist")[split]
        transform = parser.get_parsed_content("validate#preprocessing")
        for item in items:
            d = transform(dict(item))
            out.append({"name": _stem(item.get("image")) if not item.get("name") else item["name"], "item": item,
                        "image": np.asarray(d["image"], dtype=np.float64), "label": np.asarray(d["label"], dtype=np.float64)})
        return out
    finally:
        os.chdir(cwd)


def classical_scores(task: str, args, work: Path, test: list[dict]) -> dict:
    """Tune each classical method on validation, score it on ``test``; cached in ``<work>/classical.json``."""
    from monai_rat.transforms import tune_classical
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    cache = work / "classical.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    val = None
    (work / "classical_predictions").mkdir(parents=True, exist_ok=True)
    for method in ["identity", *(args.classical if args.classical is not None else TASKS[task]["classical"])]:
        if method in done:
            continue
        if val is None:
            val = load_split(task, args, "validation")
        sr = method in ("bicubic", "lanczos")
        if method == "bm3d":
            try:
                import bm3d  # noqa: F401
            except ImportError:
                done[method] = {"skipped": "the bm3d package is not installed (pip install 'monai-rat[baselines]')"}
                continue
        t0 = time.time()
        vx = [lowres(d) if sr else d["image"] for d in val]
        # a noise-dependent filter is tuned in both parameterisations, on validation only, and the better kept:
        # a factor on each image's own noise estimate (CT: test slices of another noise level), or one fixed
        # weight (PET: a wavelet noise estimate on slices that are mostly air is far too low)
        tried = [(tune_classical(method, vx, [d["label"] for d in val], progress=not args.no_progress, **options), options)
                 for options in ([{"noise_relative": True}, {}] if method in NOISE_RELATIVE else [{}])]
        tuned, options = max(tried, key=lambda t: t[0].best_psnr)
        restore = tuned.as_transform()
        psnr, ssim = {}, {}
        for d in test:
            out = restore(lowres(d) if sr else d["image"])
            psnr[d["name"]] = float(peak_signal_noise_ratio(d["label"], out, data_range=1.0))
            ssim[d["name"]] = float(_ssim(d["label"], out, structural_similarity))
            np.save(work / "classical_predictions" / f"{method}__{d['name']}.npy", out.astype(np.float32))
        done[method] = {"parameter": tuned.best_parameter, "options": options, "val_psnr": tuned.best_psnr,
                        "tried": [{"options": o, "parameter": r.best_parameter, "val_psnr": r.best_psnr} for r, o in tried],
                        "tuned_on": [d["name"] for d in val], "psnr": psnr, "ssim": ssim, "seconds": round(time.time() - t0, 1)}
        cache.write_text(json.dumps(done, indent=1))
        print(f"  classical {method}: parameter {tuned.best_parameter}, validation {tuned.best_psnr:.2f} dB, "
              f"test {np.mean(list(psnr.values())):.2f} dB ({time.time() - t0:.0f} s)", flush=True)
    return done


def _ssim(target: np.ndarray, image: np.ndarray, structural_similarity) -> float:
    # (C, H, W): MONAI's SSIM in the bundles is an 11 x 11 Gaussian window; the same here, per channel mean
    return float(np.mean([structural_similarity(t, i, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False) for t, i in zip(target, image)]))


def lowres(d: dict) -> np.ndarray:
    """The low-resolution image a super-resolution input was made from (the degradation's down-step)."""
    import torch
    import torch.nn.functional as F

    label = torch.as_tensor(d["label"], dtype=torch.float32)[None]
    h, w = label.shape[-2:]
    return F.interpolate(label, size=(h // 4, w // 4), mode="bicubic", align_corners=False, antialias=True)[0].double().numpy()


# ----------------------------------------------------------------------------------------------- report
def params_of(m: Method, task: str) -> int:
    from monai_rat.networks import restoration_network

    channels = 3 if task == "pathology" else 1
    net = restoration_network(m.network_name, in_channels=channels, out_channels=channels, feature_size=m.feature_size,
                              network_kwargs=m.network_kwargs)
    return sum(p.numel() for p in net.parameters())


def write_report(task: str, budget_name: str, args, work: Path, chosen: dict, runs: dict, classical: dict,
                 test: list[dict], elapsed: float, x8: tuple = ()) -> None:
    budget = BUDGETS[budget_name]
    spec = TASKS[task]
    subsets = {}
    for d in test:
        if d["item"].get("source"):
            subsets.setdefault(d["item"]["source"], set()).add(d["name"])
    rows = []
    for key in chosen:
        m = runs[key][0].method
        per_seed_psnr = [per_image(r, "val_psnr") for r in runs[key]]
        per_seed_ssim = [per_image(r, "val_ssim") for r in runs[key]]
        walls = [h[-1].get("elapsed_s", float("nan")) for h in (history(r) for r in runs[key]) if h]
        rows.append(dict(key=key, label=m.label, kind=m.kind, params=params_of(m, task), lr=chosen[key],
                         psnr=summarise(per_seed_psnr), ssim=summarise(per_seed_ssim),
                         subsets={s: summarise(per_seed_psnr, names) for s, names in subsets.items()},
                         val=float(np.mean([best_val(r) for r in runs[key]])), train_s=float(np.mean(walls)) if walls else None))
        if key in x8:  # the same checkpoints, evaluated with the x8 self-ensemble (no training, no validation of its own)
            x8_psnr = [per_image(r, "val_psnr", X8_EVAL) for r in runs[key]]
            rows.append(dict(key=f"{key}_x8", label=f"{m.label} x8 (self-ensemble)", kind="x8", params=rows[-1]["params"],
                             lr=chosen[key], psnr=summarise(x8_psnr), ssim=summarise([per_image(r, "val_ssim", X8_EVAL) for r in runs[key]]),
                             subsets={s: summarise(x8_psnr, names) for s, names in subsets.items()}, val=None, train_s=None))
    crow = []
    for method, res in classical.items():
        if "skipped" in res:
            crow.append(dict(key=method, skipped=res["skipped"]))
            continue
        s = summarise([res["psnr"]])
        crow.append(dict(key=method, parameter=res["parameter"], val=res["val_psnr"], psnr=s,
                         ssim=summarise([res["ssim"]]),
                         subsets={k: summarise([res["psnr"]], names) for k, names in subsets.items()},
                         seconds=res["seconds"]))
    record = dict(task=task, budget=budget_name, settings=budget, machine=machine(), seeds=args.seeds, rows=rows,
                  classical=crow, elapsed_s=round(elapsed, 1), date=time.strftime("%Y-%m-%d"))
    out_dir = Path(args.docs) / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{task}_{budget_name}.json").write_text(json.dumps(record, indent=1))
    panel = make_panel(task, work, runs, chosen, classical, test, out_dir / f"{task}_{budget_name}_panel.png")
    section = markdown(task, budget_name, record, panel, runs, chosen)
    update_doc(Path(args.docs) / "quality.md", task, budget_name, section)
    print(section)


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def _pm(s: dict, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std_images']:.{digits}f}"


def _spread(s: dict, digits: int = 2) -> str:
    if not s or s.get("n_seeds", 1) < 2:
        return "-"
    return f"± {s['std_seeds']:.{digits}f} ({s['min_seed']:.{digits}f}-{s['max_seed']:.{digits}f})"


def markdown(task: str, budget_name: str, rec: dict, panel: str | None, runs: dict, chosen: dict) -> str:
    b = rec["settings"]
    subset_names = sorted({k for r in rec["rows"] + rec["classical"] for k in r.get("subsets", {})})
    head = ["method", "params", "lr / parameter", "val PSNR", "test PSNR (dB)", "seed spread", "test SSIM"]
    head += [f"test PSNR, {s}" for s in subset_names]
    head += ["train time"]
    lines = [f"<!-- bench_quality:{task}:{budget_name} -->", f"### {task.upper()}, budget `{budget_name}`", "",
             f"`python benchmarks/bench_quality.py --task {task} --budget {budget_name}` on {rec['machine']}, "
             f"{rec['date']}: {b['num_iterations']} iterations per run, learning rates {list(b['learning_rates'])} "
             f"(chosen per method on seed 0's validation PSNR), {rec['seeds']} seed(s); this invocation "
             f"{rec['elapsed_s'] / 60:.0f} min (finished runs of earlier invocations are reused; each method's own "
             "training time is its last column). Test scores: mean over seeds of the mean over test images ± std "
             "over images; seed spread: std (min-max) of the per-seed means.", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for c in rec["classical"]:
        if "skipped" in c:
            lines.append(f"| {c['key']} | - | skipped: {c['skipped']} |" + " |" * (len(head) - 3))
            continue
        name = "input (" + TASKS[task]["input_name"] + ")" if c["key"] == "identity" else c["key"]
        cells = [name, "-", "-" if c["parameter"] is None else f"{c['parameter']:.4g}", f"{c['val']:.2f}", _pm(c["psnr"]),
                 "-", _pm(c["ssim"], 4)] + [_pm(c["subsets"].get(s, {})) for s in subset_names] + [f"{c['seconds']:.0f} s (tuning)"]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rec["rows"]:
        cells = [("**" + r["label"] + "**") if r["key"] == "rat" else r["label"], f"{r['params']:,}", f"{r['lr']:g}",
                 "-" if r.get("val") is None else f"{r['val']:.2f}", _pm(r["psnr"]), _spread(r["psnr"]), _pm(r["ssim"], 4)]
        cells += [_pm(r["subsets"].get(s, {})) + " " + _spread(r["subsets"].get(s, {})) for s in subset_names]
        cells += [f"{r['train_s'] / 60:.1f} min" if r["train_s"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    tuned = [c for c in rec["classical"] if "psnr" in c and c["key"] != "identity"]
    best_classical = max(tuned, key=lambda c: c["psnr"]["mean"], default=None)  # the strictest comparison
    best_on_val = max(tuned, key=lambda c: c["val"], default=None)  # what a user would pick (the protocol)
    rat = next((r for r in rec["rows"] if r["key"] == "rat"), None)
    if best_classical and rat:
        gap = rat["psnr"]["mean"] - best_classical["psnr"]["mean"]
        lines += ["", f"RAT against the classical baseline that scores best on the test split ({best_classical['key']}): "
                      f"{gap:+.2f} dB (mean over seeds)."]
        if best_on_val["key"] != best_classical["key"]:
            lines[-1] += (f" Against the one best on validation ({best_on_val['key']}, the one the protocol would pick): "
                          f"{rat['psnr']['mean'] - best_on_val['psnr']['mean']:+.2f} dB.")
        for s in subset_names:
            if s in rat["subsets"] and s in best_classical["subsets"] and rat["subsets"][s]:
                lines.append(f"On the `{s}` test images alone: {rat['subsets'][s]['mean'] - best_classical['subsets'][s]['mean']:+.2f} dB.")
    curve = budget_curve(runs, chosen)
    if curve:
        lines += ["", "Budget curve (RAT, seed 0, validation PSNR against training time):", "",
                  "| iteration | minutes | val PSNR (dB) |", "| --- | --- | --- |"]
        lines += [f"| {it} | {mins:.1f} | {v:.2f} |" for it, mins, v in curve]
    if panel:
        lines += ["", f"![{task} test image: input, each method, target, error]({panel})"]
    lines += [f"<!-- /bench_quality:{task}:{budget_name} -->"]
    return "\n".join(lines) + "\n"


def budget_curve(runs: dict, chosen: dict) -> list[tuple[int, float, float]]:
    if "rat" not in runs:
        return []
    hist = history(runs["rat"][0])
    return [(h["iteration"], h.get("elapsed_s", float("nan")) / 60, h["val_psnr"]) for h in hist if "val_psnr" in h]


def update_doc(path: Path, task: str, budget_name: str, section: str) -> None:
    start, end = f"<!-- bench_quality:{task}:{budget_name} -->", f"<!-- /bench_quality:{task}:{budget_name} -->"
    text = path.read_text() if path.is_file() else "# Restoration quality\n\n"
    if start in text and end in text:
        i, j = text.index(start), text.index(end) + len(end) + 1
        text = text[:i] + section + text[j:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def make_panel(task: str, work: Path, runs: dict, chosen: dict, classical: dict, test: list[dict], path: Path) -> str | None:
    """One test image (a real one when there is one): input, the best classical, each method (seed 0), target, error."""
    from PIL import Image, ImageDraw

    spec = TASKS[task]
    if not test:
        return None
    # a real image when there is one; for slices of volumes (PET) the slice with the most activity in its target
    # (chosen from the target alone, so the choice cannot favour a method); else the first test image
    d = next((t for t in test if t["item"].get("source") == "real"), None)
    if d is None:
        d = max(test, key=lambda t: float(np.mean(t["label"]))) if spec.get("sliced") else test[0]
    name, inp, target = d["name"], d["image"], d["label"]
    preds = []
    for key in ["rat", *[k for k in chosen if k != "rat"]]:
        f = runs[key][0].out_dir / "eval" / "predictions" / f"{name}.npy" if key in runs else None
        if f is not None and f.is_file():
            preds.append((key, np.load(f).reshape(target.shape)))
    best = max((k for k, v in classical.items() if "psnr" in v and k != "identity"),
               key=lambda k: np.mean(list(classical[k]["psnr"].values())), default=None)
    cols = [("input", inp)]
    if best and (work / "classical_predictions" / f"{best}__{name}.npy").is_file():
        cols.append((best, np.load(work / "classical_predictions" / f"{best}__{name}.npy")))
    cols += preds + [("target", target)]
    hi = float(np.percentile(target, 99.5)) or 1.0
    disp = spec["to_display"] or (lambda a: np.clip(a / hi, 0, 1))
    err_scale = spec["error_scale"] or 0.25 * hi
    tiles = [disp(a) for _, a in cols]
    labels = [k for k, _ in cols]
    if preds:
        tiles.append(np.clip(np.abs(preds[0][1] - target) / err_scale, 0, 1))
        labels.append(f"|{preds[0][0]} - target|")
    tiles = [np.repeat(t, 3, axis=0) if t.shape[0] == 1 else t for t in tiles]
    zoom = max(1, 160 // max(tiles[0].shape[1:]))  # small images (PET's 64 x 64 slices) enlarged, pixels kept square
    tiles = [t.repeat(zoom, axis=1).repeat(zoom, axis=2) for t in tiles]
    h, w = tiles[0].shape[1:]
    canvas = Image.new("RGB", (w * len(tiles), h + 14), "black")
    draw = ImageDraw.Draw(canvas)
    for i, (t, lab) in enumerate(zip(tiles, labels)):
        canvas.paste(Image.fromarray((np.moveaxis(t, 0, -1) * 255).round().astype(np.uint8)), (i * w, 14))
        draw.text((i * w + 2, 1), lab[:28], fill="white")
    canvas.save(path)
    return f"quality/{path.name}"


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--budget", default="quick", choices=sorted(BUDGETS))
    ap.add_argument("--methods", nargs="*", help="learned methods to run (default: the task's list)")
    ap.add_argument("--seeds", type=int, help="seeds per method (default: the budget's, 3)")
    ap.add_argument("--jobs", type=int, help="runs at a time (default: 2 on a CPU, one thread each; 1 on CUDA)")
    ap.add_argument("--work", help="run folder (default: runs/quality/<task>_<budget> in the repository)")
    ap.add_argument("--dataset_dir", default="", help="the bundle's --dataset_dir (default: its demo data)")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where quality.md and quality/ are written (default: docs/)")
    ap.add_argument("--classical", nargs="*", help="classical methods (default: the task's list)")
    ap.add_argument("--demo_options", type=json.loads, default=None,
                    help="the CT bundle's demo_options as JSON (a smaller demo set, e.g. for a test)")
    ap.add_argument("--x8", nargs="*", default=None, metavar="METHOD",
                    help="also evaluate these methods with the test-time x8 self-ensemble (--x8 alone: rat); "
                         "an extra row '<method> x8' each")
    ap.add_argument("--no_progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    args.cuda = torch.cuda.is_available()
    budget = dict(BUDGETS[args.budget])
    args.seeds = args.seeds or budget["seeds"]
    args.jobs = args.jobs or (1 if args.cuda else 2)
    args.work = str(Path(args.work or ROOT / "runs" / "quality" / f"{args.task}_{args.budget}").resolve())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    catalogue = FULL_METHODS if args.budget == "full" else QUICK_METHODS
    keys = args.methods or list(TASKS[args.task]["methods"])
    unknown = [k for k in keys if k not in catalogue]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {sorted(catalogue)}")
    if any(catalogue[k].kind == "ablation" for k in keys) and "rat" not in keys:
        ap.error("the ablations use RAT's learning rate: include 'rat' in --methods")
    methods = [catalogue[k] for k in keys]
    x8 = tuple(args.x8 if args.x8 else ["rat"]) if args.x8 is not None else ()
    if set(x8) - set(keys):
        ap.error(f"--x8 {sorted(set(x8) - set(keys))}: only methods that are run (--methods {keys}) can be evaluated x8")
    needed = sorted({k for m in methods for k, _ in m.overrides})
    missing = missing_config_ids(args.task, needed) + (missing_config_ids(args.task, ["self_ensemble"], evaluate=True) if x8 else [])
    if missing:
        ap.error(f"{TASKS[args.task]['bundle']}'s configs define no {missing}: the override(s) would change nothing. "
                 "Wire them first (docs/models.md, 'EMA of the weights and x8 self-ensemble').")
    t_start = time.time()
    print(f"bench_quality: task {args.task}, budget {args.budget}, methods {keys}, {args.seeds} seed(s), "
          f"{args.jobs} job(s) at a time, {'CUDA' if args.cuda else 'CPU'}; runs in {work}", flush=True)

    def run_of(m: Method, lr: float, seed: int) -> Run:
        return Run(m, lr, seed, work / m.key / f"lr{lr:g}" / f"seed{seed}")

    from tqdm import tqdm

    lrs = list(budget["learning_rates"])
    search = [run_of(m, lr, 0) for m in methods if m.kind == "learned" for lr in lrs]
    n_total = len(search) + sum(args.seeds - 1 for m in methods if m.kind == "learned") + sum(args.seeds for m in methods if m.kind == "ablation")
    progress = None if args.no_progress else tqdm(total=n_total * budget["num_iterations"], desc="training", unit="it")
    seen: dict = {}
    for r in search:
        if r.done:
            _update_progress(progress, seen, r)

    # 1. learning-rate search (seed 0) for the learned methods
    run_commands([(r, training_command(args.task, r, budget, args), r.out_dir / "train.log") for r in search if not r.done],
                 args, progress, seen)
    chosen = {}
    for m in methods:
        if m.kind == "learned":
            scores = {lr: best_val(run_of(m, lr, 0)) for lr in lrs}
            chosen[m.key] = max(lrs, key=lambda lr: (scores[lr], -lr))
            print(f"  {m.key}: validation PSNR by learning rate {{{', '.join(f'{lr:g}: {s:.2f}' for lr, s in scores.items())}}} "
                  f"-> {chosen[m.key]:g}", flush=True)
    for m in methods:
        if m.kind == "ablation":
            chosen[m.key] = chosen["rat"]
    # 2. the other seeds (and the ablations) at the chosen rates
    runs = {m.key: [run_of(m, chosen[m.key], s) for s in range(args.seeds)] for m in methods}
    rest = [r for m in methods for r in runs[m.key] if not r.done]
    for r in rest:
        if r.done:
            _update_progress(progress, seen, r)
    run_commands([(r, training_command(args.task, r, budget, args), r.out_dir / "train.log") for r in rest], args, progress, seen)
    if progress is not None:
        progress.close()
    # 3. evaluation on the test split
    todo = [r for m in methods for r in runs[m.key] if not r.evaluated]
    print(f"  evaluating {len(todo)} run(s) on the test split ...", flush=True)
    run_commands([(r, evaluation_command(args.task, r, budget, args), r.out_dir / "eval.log") for r in todo], args, None, {})
    todo_x8 = [r for key in x8 for r in runs[key] if not r.evaluated_in(X8_EVAL)]
    if todo_x8:
        print(f"  evaluating {len(todo_x8)} run(s) with the x8 self-ensemble ...", flush=True)
    run_commands([(r, evaluation_command(args.task, r, budget, args, self_ensemble=True), r.out_dir / "eval_x8.log")
                  for r in todo_x8], args, None, {})
    with open(work / "commands.txt", "w") as f:
        for m in methods:
            for r in runs[m.key]:
                f.write("python -m monai.bundle " + " ".join(shlex.quote(c) for c in training_command(args.task, r, budget, args)) + "\n")
    # 4. classical baselines (tuned on validation), then the report
    print("  classical baselines (tuned on the validation split) ...", flush=True)
    test = load_split(args.task, args, "test")
    classical = classical_scores(args.task, args, work, test)
    write_report(args.task, args.budget, args, work, chosen, runs, classical, test, time.time() - t_start, x8=x8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
