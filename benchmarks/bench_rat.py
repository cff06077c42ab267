"""Benchmark: fast vs reference region attention (R-MSA) and the whole RAT model, on this machine.

Every measurement runs in its own subprocess so that its peak memory is its own. Memory figures:
``extra`` is the peak resident memory during the operation minus the resident memory just before it
(what the operation allocates); ``peak`` is the subprocess's whole peak resident memory.

    python benchmarks/bench_rat.py                 # everything (the reference path takes ~15 minutes)
    python benchmarks/bench_rat.py --quick         # skip the slowest reference cases
    python benchmarks/bench_rat.py --markdown out.md
    python benchmarks/bench_rat.py --threads 1     # one thread: steadier ratios on a busy machine

Inputs: the real quarter-dose CT slice and its SAM region map from
``../shared/fixtures/rat-reference-example/`` (a synthetic 38-region map if that folder is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from proc_memory import reset_peak, status_bytes  # benchmarks/proc_memory.py (the script's folder is on sys.path)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "rat-reference-example"


# ----------------------------------------------------------------------------------------------- inputs
def load_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The top-left ``size`` x ``size`` crop of the real CT slice and its SAM map (or synthetic ones)."""
    img_path, map_path = FIXTURES / "quarter_dose_ct_512.png", FIXTURES / "sam_regions_512.nii"
    if img_path.exists() and map_path.exists():
        import nibabel as nib
        from PIL import Image

        image = np.asarray(Image.open(img_path), dtype=np.float32) / 255.0
        regions = np.asarray(nib.load(str(map_path)).get_fdata()).astype(np.int64)
        source = "real SAM map (rat-reference-example)"
    else:
        rng = np.random.default_rng(0)
        image = rng.random((512, 512), dtype=np.float32)
        yy, xx = np.mgrid[:512, :512]
        regions = 1 + (yy // 86) * 6 + (xx // 86)  # 36 blocks of about 86 x 86 pixels
        regions[200:300, 150:420] = 99
        source = "synthetic map (fixtures absent)"
    if image.ndim == 3:
        image = image[..., 0]
    x = torch.from_numpy(np.ascontiguousarray(image[:size, :size]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(regions[:size, :size]))[None, None]
    return x, r, source


# ---------------------------------------------------------------------------------- one measurement
def run_case(case: str, size: int, impl: str, repeats: int) -> dict:
    from monai_rat.losses import FocalRegionLoss
    from monai_rat.networks import RAT
    from monai_rat.networks.blocks import RegionAttention, RegionPlan

    torch.manual_seed(0)
    x, r, source = load_inputs(size)
    if case == "rmsa":
        attn = RegionAttention(256, 8, implementation=impl).eval()
        feats = torch.randn(1, 256, size // 4, size // 4)
        plan = RegionPlan.from_labels(r[:, 0, ::4, ::4])

        def step():
            with torch.no_grad():
                attn(feats, plan)

        info = {"tokens": feats.shape[-1] * feats.shape[-2], "regions": len(plan.sizes),
                "pair_fraction": sum(s * s for s in plan.sizes) / (feats.shape[-1] * feats.shape[-2]) ** 2}
    else:
        model = RAT(attention_impl=impl.removesuffix("-ckpt"), use_checkpoint=impl.endswith("-ckpt"))
        if case == "infer":
            model.eval()

            def step():
                with torch.no_grad():
                    model(x, r)
        else:
            model.train()
            loss_fn = FocalRegionLoss()
            target = x.clone()
            noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)

            def step():
                model.zero_grad(set_to_none=True)
                loss_fn(model(noisy, r), target, r).backward()

        info = {"tokens": (size // 4) ** 2}
    # Memory from the first (cold) run: a warm-up would leave freed blocks in the allocator that later
    # runs reuse, hiding what the operation really needs. Time: median of the runs after it, if any.
    base = status_bytes("VmRSS")
    exact = reset_peak()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = status_bytes("VmHWM")
    times = []
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"case": case, "size": size, "impl": impl, "time_s": float(np.median(times)) if times else first,
            "first_s": first, "repeats": repeats, "extra_mb": (peak - base) / 2**20, "peak_mb": peak / 2**20,
            "peak_exact": exact, "input": source, **info}


def measure(case: str, size: int, impl: str, repeats: int, timeout: int) -> dict:
    """Run one case in a fresh interpreter; a crash or an out-of-memory kill is reported, not raised."""
    cmd = [sys.executable, __file__, "--one", case, str(size), impl, str(repeats)]
    if torch.get_num_threads() != (os.cpu_count() or 1):
        cmd += ["--threads", str(torch.get_num_threads())]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "size": size, "impl": impl, "error": f"timed out after {timeout} s"}
    if out.returncode != 0:
        reason = "killed (SIGKILL: out of memory?)" if out.returncode == -9 else f"exit {out.returncode}"
        return {"case": case, "size": size, "impl": impl, "error": f"{reason}: {out.stderr.strip()[-300:]}".rstrip(": ")}
    return json.loads(out.stdout.strip().splitlines()[-1])


PLAN = [  # (case, size, reference repeats, slow)
    ("rmsa", 256, 3, False),
    ("rmsa", 512, 1, False),
    ("infer", 128, 3, False),
    ("infer", 256, 1, False),
    ("infer", 512, 1, True),
    ("train", 128, 1, False),
    ("train", 256, 1, True),
    ("train-ckpt", 256, 1, True),  # the fast path with use_checkpoint=True against the plain reference
]


def _fmt(res: dict) -> tuple[str, str]:
    if "error" in res:
        return res["error"], "-"
    return f"{res['time_s']:.3f} s", f"{res['extra_mb']:.0f} MB extra / {res['peak_mb']:.0f} MB peak"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the slowest reference cases (512^2 model, 256^2 training)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--timeout", type=int, default=3000, help="seconds allowed for one measurement")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per measurement (default: torch's own choice, one per core)")
    parser.add_argument("--one", nargs=4, metavar=("CASE", "SIZE", "IMPL", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        case, size, impl, repeats = args.one
        print(json.dumps(run_case(case, int(size), impl, int(repeats))))
        return

    header = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
    print(header)
    rows = []
    for case, size, ref_repeats, slow in PLAN:
        fast_impl = "fast-ckpt" if case.endswith("-ckpt") else "fast"
        case = case.removesuffix("-ckpt")
        fast = measure(case, size, fast_impl, 3, args.timeout)
        ref = ({"case": case, "size": size, "impl": "reference", "error": "skipped (--quick)"} if args.quick and slow
               else measure(case, size, "reference", ref_repeats, args.timeout))
        speed = mem = "-"
        if "error" not in fast and "error" not in ref:
            speed = f"{ref['time_s'] / fast['time_s']:.1f}x"
            mem = f"{ref['extra_mb'] / max(fast['extra_mb'], 1.0):.1f}x"
        label = {"rmsa": "R-MSA forward", "infer": "RAT inference", "train": "RAT train step (fwd+bwd)"}[case]
        if fast_impl == "fast-ckpt":
            label += ", fast path with use_checkpoint=True"
        extra = f" ({fast.get('tokens')} tokens, {fast.get('regions', '?')} regions)" if case == "rmsa" else ""
        row = (f"{label} {size}x{size}{extra}", *_fmt(fast), *_fmt(ref), speed, mem)
        rows.append(row)
        print(" | ".join(row), flush=True)
        for res in (fast, ref):
            print("   ", json.dumps(res), flush=True)
    if args.markdown:
        lines = [header, "", "| case | fast time | fast memory | reference time | reference memory | speed-up | memory ratio (extra) |",
                 "| --- | --- | --- | --- | --- | --- | --- |"] + ["| " + " | ".join(r) + " |" for r in rows]
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
