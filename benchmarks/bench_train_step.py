"""Benchmark: RAT training steps of this checkout against another checkout, in ONE process, interleaved.

On a shared machine absolute times drift with the load; a before/after ratio is only trustworthy
when both versions run in the same process, one step of each in turn, over several repetitions
(the median is reported). This script imports ``monai_rat`` twice: from ``--baseline`` (a checkout
of an older commit, e.g. made with ``git worktree add /tmp/rat-base <commit>``) and from this
checkout, builds the same network in both with the same weights, checks that outputs and gradients
agree, then times training steps (forward + focal region loss + backward) alternately. It reports
wall time and the process's CPU time (``time.process_time``): with one thread on a machine whose
cores other jobs share, CPU time leaves out the time the process waited for a core, and its ratio
is the steadier of the two.

    git worktree add /tmp/rat-base main
    python benchmarks/bench_train_step.py --baseline /tmp/rat-base --threads 1
    python benchmarks/bench_train_step.py --baseline /tmp/rat-base --cases demo64 --repeats 9

Cases :

* ``train256``: the full-size RAT (feature_size 64), batch 1 of the 256^2 top-left crop of the real
  quarter-dose CT slice in ``../shared/fixtures/rat-reference-example/`` (a synthetic image when it is
  absent; ``RAT_FIXTURES`` names another folder), with the crop's superpixel map
  (``RegionPartition(method="superpixel")``: 41 regions, 40 on the latent grid).
* ``demo64``: ``RAT(feature_size=16)``, batch 4 of 64^2 crops (the CT demo's training configuration):
  centre crops of four CT demo training slices (``monai_rat.data.ct_demo.make_ct_demo``: CT_small,
  Shepp-Logan, two ellipse phantoms), region maps as the CT bundle makes them (superpixels of the
  whole 128^2 slice, window [-160, 240] HU), then cropped.
* ``demo128``: ``RAT(feature_size=16)``, batch 4 of the same whole 128^2 slices.

Without ``--baseline`` only this checkout is timed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# the shared fixtures sit next to the checkout (../shared) or inside it (shared/); RAT_FIXTURES overrides
FIXTURES = Path(os.environ.get("RAT_FIXTURES") or next(
    (p for p in (ROOT.parent / "shared", ROOT / "shared") if (p / "fixtures" / "rat-reference-example").is_dir()),
    ROOT.parent / "shared",
) / "fixtures" / "rat-reference-example")
CASES = {  # name: (feature_size, batch, crop size)
    "train256": (64, 1, 256),
    "demo64": (16, 4, 64),
    "demo128": (16, 4, 128),
}


def import_package(root: Path):
    """Import ``monai_rat`` from ``root`` as a separate copy (its modules are removed from sys.modules after)."""
    saved = {k: v for k, v in sys.modules.items() if k == "monai_rat" or k.startswith("monai_rat.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        pkg = importlib.import_module("monai_rat")
        importlib.import_module("monai_rat.networks")
        importlib.import_module("monai_rat.losses")
        modules = {k: v for k, v in sys.modules.items() if k == "monai_rat" or k.startswith("monai_rat.")}
        assert Path(pkg.__file__).resolve().is_relative_to(root), f"imported {pkg.__file__}, not the copy in {root}"
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "monai_rat" or k.startswith("monai_rat.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return pkg, modules


def train256_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The 256^2 top-left crop of the real CT slice in [0, 1] and its superpixel map (synthetic if absent)."""
    from monai_rat.transforms import RegionPartition

    img_path = FIXTURES / "quarter_dose_ct_512.png"
    if img_path.exists():
        from PIL import Image

        image = np.asarray(Image.open(img_path), dtype=np.float32) / 255.0
        image = image[..., 0] if image.ndim == 3 else image
    else:
        yy, xx = np.mgrid[:512, :512]
        image = (((yy - 256) ** 2 / 200**2 + (xx - 256) ** 2 / 160**2) < 1).astype(np.float32) * 0.5
        image += np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    image = np.ascontiguousarray(image[:256, :256])
    regions = np.asarray(RegionPartition(method="superpixel")(image[None])).astype(np.int64)
    return torch.from_numpy(image)[None, None], torch.from_numpy(regions)[None]


def demo_inputs(size: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Four CT demo training slices (128^2, ``make_ct_demo``) with the CT bundle's region maps; centre crops of ``size``."""
    import nibabel as nib

    from monai_rat.data.ct_demo import make_ct_demo
    from monai_rat.transforms import RegionPartition

    datalist = {Path(e["image"]).name: e["image"] for e in make_ct_demo(cache)["training"]}
    xs, ms = [], []
    for name in ("ctsmall_id.nii.gz", "shepplogan_id.nii.gz", "ellipses_000.nii.gz", "ellipses_001.nii.gz"):
        hu = nib.load(datalist[name]).get_fdata().astype(np.float32)
        regions = np.asarray(RegionPartition(method="superpixel", window=(-160, 240))(hu[None]))[0].astype(np.int64)
        lo = (hu.shape[0] - size) // 2
        xs.append(torch.from_numpy((hu[lo : lo + size, lo : lo + size] + 1024) / 4096))
        ms.append(torch.from_numpy(regions[lo : lo + size, lo : lo + size].copy()))
    return torch.stack(xs)[:, None], torch.stack(ms)[:, None]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values for the zero-initialised scales, so every branch counts in the output comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(lambda_ra|lambda_wa|beta|gamma)$", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="root of another checkout (holding monai_rat/) to compare against")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each version per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier ratios)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--demo-cache", type=Path, default=Path(tempfile.gettempdir()) / "monai_rat_bench",
                        help="folder for the CT demo set of the demo cases (built once, about 4 s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    versions = {}
    if args.baseline:
        versions["baseline"] = import_package(args.baseline.resolve())[1]
    versions["current"] = import_package(ROOT)[1]
    results = []
    for name in args.cases:
        fs, batch, size = CASES[name]
        x, m = train256_inputs() if name == "train256" else demo_inputs(size, args.demo_cache)
        latent = [len(torch.unique(m[i, 0, ::4, ::4])) for i in range(batch)]
        noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        steps, outputs = {}, {}
        state = None
        for tag, mods in versions.items():
            model = mods["monai_rat.networks"].RAT(feature_size=fs).train()
            if state is None:
                torch.manual_seed(0)
                model = mods["monai_rat.networks"].RAT(feature_size=fs).train()
                randomise(model)
                state = model.state_dict()
            model.load_state_dict(state)
            loss_fn = mods["monai_rat.losses"].FocalRegionLoss()

            def step(model=model, loss_fn=loss_fn):
                model.zero_grad(set_to_none=True)
                y = model(noisy, m)
                loss_fn(y, x, m).backward()
                return y

            y = step()
            outputs[tag] = (y.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
            steps[tag] = step
        diff = grad_diff = None
        if "baseline" in outputs:
            (y0, g0), (y1, g1) = outputs["baseline"], outputs["current"]
            diff = float((y0 - y1).abs().max())
            grad_diff = max(float((g0[k] - g1[k]).abs().max() / g0[k].abs().max().clamp_min(1e-12)) for k in g0)
        times = {tag: [] for tag in steps}
        cpu = {tag: [] for tag in steps}
        for _ in range(args.repeats):
            for tag, step in steps.items():
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                times[tag].append(time.perf_counter() - t0)
                cpu[tag].append(time.process_time() - c0)
        med = {tag: statistics.median(v) for tag, v in times.items()}
        med_cpu = {tag: statistics.median(v) for tag, v in cpu.items()}
        res = {"case": name, "feature_size": fs, "batch": batch, "size": size, "latent_regions_per_image": latent,
               "median_s": med, "median_cpu_s": med_cpu, "times_s": times, "cpu_times_s": cpu,
               "max_output_diff": diff, "max_rel_grad_diff": grad_diff}
        if "baseline" in med:
            res["speedup"] = med["baseline"] / med["current"]
            res["speedup_cpu"] = med_cpu["baseline"] / med_cpu["current"]
        results.append(res)
        line = f"{name}: fs {fs}, {batch} x {size}^2, regions/image {latent}: " + ", ".join(
            f"{tag} {t * 1e3:.0f} ms wall / {med_cpu[tag] * 1e3:.0f} ms CPU" for tag, t in med.items()
        )
        if "speedup" in res:
            line += (f", speed-up {res['speedup']:.2f}x wall, {res['speedup_cpu']:.2f}x CPU time, "
                     f"max |dy| {diff:.2e}, max rel |dgrad| {grad_diff:.2e}")
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
