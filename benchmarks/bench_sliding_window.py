"""Benchmark: peak memory and time of restoring an S x S RGB image through the pathology bundle's sliding window.

The route is the bundle's own: ``bundles/pathology/inference.json`` is parsed with MONAI's
``ConfigParser`` and its ``dataloader`` (LoadImaged -> float32 -> [0, 1] -> RegionPartitiond over the
whole image -> DivisiblePadd(16) -> RepeatChanneld), ``prepare_batch`` (the map as ``condition``),
``network`` (``ConditionRegionsNetwork`` around the full-size RAT, feature_size 64, random weights) and
``inferer`` (``SlidingWindowInferer``, roi 256, overlap 0.25, Gaussian blending) are called in that
order, under ``torch.no_grad()`` as MONAI's evaluator does. The region map is made by the bundle's
default partitioner (method ``"auto"`` with no SAM checkpoint: superpixels).

Each size runs in a fresh interpreter (one torch thread) so its peak resident memory is its own.
Memory figures (resident set size): ``python`` is the interpreter's before importing torch;
``imports`` after importing torch, MONAI and monai_rat; the ``load`` (read, scale, region map,
pad, repeat, collate), ``one window`` (the network on one roi alone) and ``sliding`` (all windows,
blending) phases report their own peak and that peak minus the resident memory just before them
(``/proc/self/clear_refs`` resets the kernel's peak between phases; as that also resets
``ru_maxrss``, the process's ``peak`` is the largest phase peak). The partition step inside the load
phase is watched too (resident memory before it, the phase's peak right after it). ``buffers`` are
the image-sized tensors the sliding window holds: the input, the condition (region map repeated over
the 3 channels) and MONAI's output and weight accumulators.

    python benchmarks/bench_sliding_window.py --json /tmp/sw.json                 # 1024, 2048, 4096
    python benchmarks/bench_sliding_window.py --sizes 512 1024 --json /tmp/sw.json
    python benchmarks/bench_sliding_window.py --sizes 4096 --modes route bundle     # also the real command

``--modes bundle`` runs the whole inference command (``monai.bundle.run`` with
``bundles/pathology/inference.json``, checkpoint of random weights, PNG written) in its own fresh
interpreter and reports its peak resident memory (``ru_maxrss``, never reset there). Every run starts
with an empty region cache (a warm cache would skip the partition).

Input: scikit-image's ``immunohistochemistry`` image (512 x 512 RGB) mirrored out to S x S and saved as
PNG (a real pathology texture, so the superpixel map has realistic regions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from proc_memory import reset_peak, status_bytes  # benchmarks/proc_memory.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bundles" / "pathology" / "configs" / "inference.json"
MB = 2**20


# ---------------------------------------------------------------------------------- memory accounting


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class _Phase:
    """Peak resident memory of a block minus the resident memory just before it, and its wall time."""

    def __enter__(self):
        self.exact = reset_peak()
        self.before = status_bytes("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.time_s = time.perf_counter() - self.t0
        self.peak = status_bytes("VmHWM")
        self.peak_mb = self.peak / MB
        self.extra_mb = (self.peak - self.before) / MB
        self.after_mb = status_bytes("VmRSS") / MB


class _Watch:
    """Wraps one transform of the bundle's Compose: resident memory before it and the phase's peak right after it."""

    def __init__(self, transform):
        self.transform = transform
        self.before_mb = self.peak_after_mb = self.time_s = 0.0

    def __call__(self, data):
        self.before_mb = status_bytes("VmRSS") / MB
        t0 = time.perf_counter()
        out = self.transform(data)
        self.time_s = time.perf_counter() - t0
        self.peak_after_mb = status_bytes("VmHWM") / MB
        return out


# ------------------------------------------------------------------------------------------ the input
def make_image(size: int, path: Path) -> Path:
    """The 512 x 512 ihc image mirrored out to ``size`` x ``size``, saved as an RGB PNG."""
    import numpy as np
    from PIL import Image
    from skimage.data import immunohistochemistry

    src = immunohistochemistry()
    reps = -(-size // src.shape[0])
    tiles = [[src[:: 1 - 2 * (i % 2), :: 1 - 2 * (j % 2)] for j in range(reps)] for i in range(reps)]
    rows = [np.concatenate(row, axis=1) for row in tiles]
    img = np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])
    Image.fromarray(img).save(path)
    return path


def _parser(overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update(overrides)
    return parser


# ----------------------------------------------------------------------------- one size, in-process
def run_route(image: Path, roi: int, overlap: float, feature_size: int, cache_dir: Path, threads: int = 1) -> dict:
    python_mb = status_bytes("VmRSS") / MB
    import torch

    import monai  # noqa: F401
    import monai_rat  # noqa: F401

    torch.set_num_threads(threads)
    imports_mb = status_bytes("VmRSS") / MB
    parser = _parser({
        "input_path": str(image), "roi_size": [roi, roi], "overlap": overlap, "feature_size": feature_size,
        "region_cache_dir": tempfile.mkdtemp(prefix="regions_", dir=cache_dir), "device": "$torch.device('cpu')", "amp": False,
    })  # fmt: skip
    torch.manual_seed(0)
    network = parser.get_parsed_content("network").eval()
    model_mb = status_bytes("VmRSS") / MB
    n_params = sum(p.numel() for p in network.parameters())
    dataloader = parser.get_parsed_content("dataloader")
    preprocessing = parser.get_parsed_content("preprocessing")  # the dataloader's own Compose (same object)
    names = [type(t).__name__ for t in preprocessing.transforms]
    watch = _Watch(preprocessing.transforms[names.index("RegionPartitiond")])
    preprocessing.transforms = tuple(watch if type(t).__name__ == "RegionPartitiond" else t for t in preprocessing.transforms)
    prepare_batch = parser.get_parsed_content("prepare_batch")
    inferer = parser.get_parsed_content("inferer")

    setup_peak_mb = _maxrss() / MB  # before the first reset
    with _Phase() as load:  # read, scale, region map of the whole image, pad, repeat the map
        batch = next(iter(dataloader))
        inputs, _, args, kwargs = prepare_batch(batch, torch.device("cpu"))
    del batch
    condition = kwargs["condition"]
    h, w = inputs.shape[-2:]

    calls, regions = [0], []

    def _count(module, a, kw):
        calls[0] += 1
        regions.append(int(torch.unique(kw["condition"][:, :1]).numel()))

    with _Phase() as one, torch.no_grad():  # the network on one window alone (cold)
        network(inputs[..., :roi, :roi], condition=condition[..., :roi, :roi])
    hook = network.register_forward_pre_hook(_count, with_kwargs=True)
    with _Phase() as sliding, torch.no_grad():
        pred = inferer(inputs, network, *args, **kwargs)
    hook.remove()
    assert pred.shape == inputs.shape and torch.isfinite(pred).all()
    buffers = {
        "input_mb": inputs.nbytes / MB,
        "condition_mb": condition.nbytes / MB,
        "condition_dtype": str(condition.dtype).removeprefix("torch."),
        "output_accumulator_mb": pred.nbytes / MB,
        "weight_accumulator_mb": h * w * pred.element_size() / MB,
    }
    buffers["total_mb"] = sum(v for k, v in buffers.items() if k.endswith("_mb"))
    return {
        "mode": "route", "size": int(image.stem.split("_")[-1]), "padded": [int(h), int(w)], "roi": roi,
        "overlap": overlap, "feature_size": feature_size, "parameters": n_params, "threads": torch.get_num_threads(),
        "windows": calls[0], "regions_per_window_mean": sum(regions) / max(len(regions), 1),
        "regions_per_window_max": max(regions, default=0), "regions_total": int(condition[:, :1].max()),
        "python_mb": python_mb, "imports_mb": imports_mb, "model_mb": model_mb,
        "load_time_s": load.time_s, "load_extra_mb": load.extra_mb, "after_load_mb": load.after_mb,
        "one_window_time_s": one.time_s, "one_window_extra_mb": one.extra_mb,
        "sliding_time_s": sliding.time_s, "s_per_window": sliding.time_s / max(calls[0], 1),
        "sliding_extra_mb": sliding.extra_mb, "before_sliding_mb": sliding.before / MB,
        "partition_time_s": watch.time_s, "before_partition_mb": watch.before_mb, "load_peak_after_partition_mb": watch.peak_after_mb,
        "load_peak_mb": load.peak_mb, "one_window_peak_mb": one.peak_mb, "sliding_peak_mb": sliding.peak_mb,
        # resetting the peak (clear_refs) also resets ru_maxrss: the whole-process peak is the largest phase peak
        "peak_mb": max(setup_peak_mb, load.peak_mb, one.peak_mb, sliding.peak_mb), "peak_exact": load.exact, **buffers,
    }  # fmt: skip


def run_bundle(image: Path, roi: int, overlap: float, feature_size: int, cache_dir: Path, threads: int = 1) -> dict:
    """The whole ``python -m monai.bundle run --config_file inference.json`` (random checkpoint, PNG out)."""
    python_mb = status_bytes("VmRSS") / MB
    import torch
    from monai.bundle import run

    from monai_rat.networks import RAT  # noqa: F401

    torch.set_num_threads(threads)
    imports_mb = status_bytes("VmRSS") / MB
    parser = _parser({"feature_size": feature_size})
    torch.manual_seed(0)
    ckpt = cache_dir / "random_model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    t0 = time.perf_counter()
    run(config_file=str(CONFIG), input_path=str(image), ckpt_path=str(ckpt), feature_size=feature_size,
        roi_size=[roi, roi], overlap=overlap, region_cache_dir=tempfile.mkdtemp(prefix="regions_", dir=cache_dir),
        output_dir=str(cache_dir / "out"), device="$torch.device('cpu')", amp=False)  # fmt: skip
    wall = time.perf_counter() - t0
    written = sorted((cache_dir / "out").glob("*_rat.png"))
    return {"mode": "bundle", "size": int(image.stem.split("_")[-1]), "roi": roi, "overlap": overlap,
            "feature_size": feature_size, "threads": torch.get_num_threads(), "python_mb": python_mb,
            "imports_mb": imports_mb, "bundle_time_s": wall, "peak_mb": _maxrss() / MB,
            "written": [p.name for p in written]}  # fmt: skip


# ------------------------------------------------------------------------------ driver (subprocesses)
def measure(mode: str, size: int, args: argparse.Namespace, work: Path) -> dict:
    """One measurement in a fresh interpreter; a crash or an out-of-memory kill is reported, not raised."""
    case = work / f"{mode}_{size}"
    case.mkdir(parents=True, exist_ok=True)
    image = work / f"ihc_{size}.png"
    if not image.exists():
        make_image(size, image)
    cmd = [sys.executable, __file__, "--one", mode, str(image), str(case),
           "--roi", str(args.roi), "--overlap", str(args.overlap), "--feature-size", str(args.feature_size),
           "--threads", str(args.threads)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "size": size, "error": f"timed out after {args.timeout} s"}
    if out.returncode != 0:
        reason = "killed (SIGKILL: out of memory?)" if out.returncode == -9 else f"exit {out.returncode}"
        return {"mode": mode, "size": size, "error": f"{reason}: {out.stderr.strip()[-500:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['mode']} | {r['size']}² | {r['error']} |"
    if r["mode"] == "bundle":
        return (f"| whole inference command | {r['size']}² | - | {r['bundle_time_s']:.0f} s | - | - | - | - | "
                f"**{r['peak_mb']:.0f} MB** |")  # fmt: skip
    return (f"| sliding-window route | {r['size']}² | {r['windows']} ({r['regions_per_window_mean']:.0f} regions/window) | "
            f"{r['load_time_s']:.0f} s (map {r['partition_time_s']:.0f} s) + {r['sliding_time_s']:.0f} s "
            f"({r['s_per_window']:.2f} s/window) | "
            f"{r['total_mb']:.0f} MB (input {r['input_mb']:.0f}, condition {r['condition_mb']:.0f} {r['condition_dtype']}, "
            f"output {r['output_accumulator_mb']:.0f}, weights {r['weight_accumulator_mb']:.0f}) | "
            f"{r['load_peak_mb']:.0f} MB (+{r['load_extra_mb']:.0f}) | {r['one_window_peak_mb']:.0f} MB "
            f"(+{r['one_window_extra_mb']:.0f}) | {r['sliding_peak_mb']:.0f} MB (+{r['sliding_extra_mb']:.0f}) | "
            f"**{r['peak_mb']:.0f} MB** |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="image sizes S (S x S RGB)")
    parser.add_argument("--roi", type=int, default=256, help="sliding-window size (the bundle's roi_size)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap (the bundle's)")
    parser.add_argument("--feature-size", type=int, default=64, help="RAT feature_size (64: the full-size model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    parser.add_argument("--modes", nargs="+", choices=["route", "bundle"], default=["route"],
                        help="route: the bundle's components, phase by phase; bundle: the whole inference command")
    parser.add_argument("--json", type=Path, help="write all results as JSON to this file")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--workdir", type=Path, help="folder for the images, region caches and outputs (default: a temporary one)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds allowed for one measurement")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "IMAGE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # torch is imported inside, after the interpreter's own memory is read
        mode, image, work = args.one
        fn = run_route if mode == "route" else run_bundle
        print(json.dumps(fn(Path(image), args.roi, args.overlap, args.feature_size, Path(work), args.threads)))
        return

    import torch

    header = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{args.threads} thread(s), fp32, CPU; roi {args.roi}, overlap {args.overlap}, gaussian, RAT feature_size "
              f"{args.feature_size} (random weights), superpixel region map of the whole image")  # fmt: skip
    table = ["| what | image | windows | time: load (map), sliding | image-sized buffers | load phase peak (extra) | "
             "one window peak (extra) | sliding phase peak (extra) | process peak RSS |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    print(header, flush=True)
    print("\n".join(table), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_sw_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            for mode in args.modes:
                res = measure(mode, size, args, work)
                results.append(res)
                table.append(_row(res))
                print(table[-1], flush=True)
                print("   ", json.dumps(res), flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"header": header, "command": " ".join(sys.argv), "results": results}, indent=2))
    if args.markdown:
        args.markdown.write_text("\n".join([header, "", *table]) + "\n")


if __name__ == "__main__":
    main()
