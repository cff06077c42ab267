"""GPU check of RAT's region attention and training: parity, attention kernels, speed, memory, DDP.

    python benchmarks/gpu_check.py --json gpu.json --markdown gpu.md   # on one CUDA GPU, about 2-5 minutes
    python benchmarks/gpu_check.py --device cpu --quick                  # every section, tiny sizes, on the CPU

Sections (each reports what it measured; a failed correctness check is listed at the end and makes the
exit status 1; missed speed targets are listed too, without failing):

1. **parity**: R-MSA ``"regions"`` (per-region calls), ``"flex"`` (one compiled flex attention call
   per layer for the whole batch, what ``"fast"`` picks on CUDA) and ``"masked"`` (the exported form)
   against the dense reference, outputs and gradients, in float32 with TF32 off (bound 1e-4), and
   under autocast (bfloat16 where supported, else float16; bound 5e-2, stated against the float32
   reference); also the whole RAT, fast and flex against reference; and which path ``"fast"`` picks.
   On a CPU, flex attention has no backward (torch 2.14): its gradients are not checked there.
2. **kernels**: which attention kernel each path runs (profiler op names: SDPA's flash,
   memory-efficient, cuDNN or math; flex attention's op and Inductor's Triton template kernels), in
   float32 and under autocast.
3. **rmsa_vs_global**: one R-MSA layer's attention on the superpixel map of 4 x 256^2 images, per
   region (``"regions"``) and with flex attention (``"flex"``, block mask included), against one
   global SDPA call over the same number of query-key pairs (target: at most 2x for the path
   ``"fast"`` picks), forward and forward + backward; and the per-region layer's time for several
   padding budgets (how many extra query-key pairs a region may be padded by to share a call;
   ``PAD_BUDGET`` was chosen on a CPU).
4. **train**: 50 training steps (Adam) at 4 x 256^2: RAT with a superpixel map through the
   per-region path and through flex attention (not on a CPU: no flex backward there), RAT with one
   region (``"fast"``), MONAI's Restormer (the paper's configuration); median step time, images per
   second, peak memory (target: the throughput of the path ``"fast"`` picks at least Restormer's).
   Compilation of flex attention happens in the warm-up steps, outside the timed ones.
5. **ddp**: a 2-process DistributedDataParallel step (NCCL on two GPUs, else gloo), gradients equal
   on both ranks, no grad-stride warning.

Inputs: the real CT slice of ``../shared/fixtures/rat-reference-example/`` when present (else
scikit-image's ``camera``), four 256^2 crops, each with its superpixel map
(``RegionPartition(method="superpixel")``). Random weights; the zero-initialised scales are
randomised so that every branch reaches the output.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("RAT_FIXTURES") or next(
    (p for p in (ROOT.parent / "shared", ROOT / "shared") if (p / "fixtures" / "rat-reference-example").is_dir()),
    ROOT.parent / "shared",
) / "fixtures" / "rat-reference-example")  # fmt: skip
FP32_TOL = 1e-4
AMP_TOL = 5e-2


# ----------------------------------------------------------------------------------------------- inputs
@functools.lru_cache(maxsize=None)
def images_and_maps(size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``batch`` crops of ``size``^2 of a real image in [0, 1] and their superpixel maps."""
    from monai_rat.transforms import RegionPartition

    path = FIXTURES / "quarter_dose_ct_512.png"
    if path.exists():
        from PIL import Image

        image, source = np.asarray(Image.open(path), dtype=np.float32) / 255.0, "CT slice (rat-reference-example)"
        image = image[..., 0] if image.ndim == 3 else image
    else:
        from skimage import data

        image, source = data.camera().astype(np.float32) / 255.0, "scikit-image camera"
    h, w = image.shape
    corners = [(r, c) for r in (0, max(h - size, 0)) for c in (0, max(w - size, 0))]
    xs, ms = [], []
    for i in range(batch):
        r, c = corners[i % len(corners)]
        crop = np.ascontiguousarray(image[r : r + size, c : c + size])
        xs.append(torch.from_numpy(crop))
        ms.append(torch.from_numpy(np.asarray(RegionPartition(method="superpixel")(crop[None]))[0].astype(np.int64)))
    return torch.stack(xs)[:, None], torch.stack(ms)[:, None], source


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(lambda_ra|lambda_wa|beta|gamma)$", name):
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.3)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS (KiB on Linux)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


NO_CPU_FLEX_BACKWARD = "not checked: flex attention has no backward on a CPU (torch 2.14)"


def has_backward(impl: str, device: torch.device) -> bool:
    """Whether ``impl`` (after "fast" is resolved) can run autograd on ``device``: flex attention cannot on a CPU."""
    return not (impl == "flex" and device.type == "cpu")


def select_implementation(impl: str, device: torch.device, head_dim: int) -> str:
    from monai_rat.networks.blocks.region_attention import select_implementation as select

    return select(impl, device, head_dim)


# --------------------------------------------------------------------------------------------- sections
def parity(device, cfg) -> dict:
    from monai_rat.networks import RAT
    from monai_rat.networks.blocks import RegionAttention, RegionPlan

    _, maps, _ = images_and_maps(cfg["size"], cfg["batch"])
    labels = maps[:, 0, ::4, ::4].to(device)
    c = cfg["channels"]
    torch.manual_seed(0)
    x = torch.randn(labels.shape[0], *labels.shape[1:], c, device=device)
    out = {"tokens_per_image": int(labels[0].numel()), "regions": len(RegionPlan(labels).sizes),
           "fast_picks": {"layer": select_implementation("fast", device, c // 8),
                          "RAT": select_implementation("fast", device, cfg["feature_size"] * 4 // 8)}}
    ref_mod = RegionAttention(c, 8, implementation="reference").to(device)
    results = {}
    for impl in ("regions", "flex", "masked"):
        mod = RegionAttention(c, 8, implementation=impl).to(device)
        mod.load_state_dict(ref_mod.state_dict())
        grad = has_backward(impl, device)
        for mode in ("fp32", "autocast"):
            grads = []
            ys = []
            for m in (mod, ref_mod):
                m.zero_grad(set_to_none=True)
                xi = x.clone().requires_grad_(grad)
                plan = RegionPlan.from_labels(labels)
                use_amp = mode == "autocast" and m is mod  # the reference stays float32: the error is autocast's
                with torch.set_grad_enabled(grad), torch.autocast(device.type, dtype=amp_dtype(device), enabled=use_amp):
                    y = m.forward_tokens(xi, plan)
                if grad:
                    y.float().square().mean().backward()
                    grads.append([xi.grad.float()] + [p.grad.float() for p in m.parameters()])
                ys.append(y.detach().float())
            dy = float((ys[0] - ys[1]).abs().max() / ys[1].abs().max())
            dg = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(*grads)) if grad else None
            tol = FP32_TOL if mode == "fp32" else AMP_TOL
            res = {"max_rel_output_diff": dy, "max_rel_grad_diff": dg, "bound": tol, "ok": dy <= tol and (dg is None or dg <= tol)}
            if not grad:
                res["gradients"] = NO_CPU_FLEX_BACKWARD
            results[f"{impl}/{mode}"] = res
    # the whole network, fast and flex against reference (float32)
    xs, ms, _ = images_and_maps(min(cfg["size"], 128), 2)
    xs, ms = xs.to(device), ms.to(device)
    torch.manual_seed(0)
    ref = randomised(RAT(feature_size=cfg["feature_size"], attention_impl="reference")).to(device)
    yr = ref(xs, ms)
    yr.square().mean().backward()
    for impl in ("fast", "flex"):
        net = randomised(RAT(feature_size=cfg["feature_size"], attention_impl=impl)).to(device)
        net.load_state_dict(ref.state_dict())
        grad = has_backward(select_implementation(impl, device, cfg["feature_size"] * 4 // 8), device)
        with torch.set_grad_enabled(grad):
            y = net(xs, ms)
        dy = float((y - yr).abs().max())
        res = {"max_abs_output_diff": dy, "bound": FP32_TOL}
        if grad:
            y.square().mean().backward()
            dg = max(float((a.grad - b.grad).abs().max()) for a, b in zip(net.parameters(), ref.parameters()))
            res.update(max_abs_grad_diff=dg, ok=dy <= FP32_TOL and dg <= FP32_TOL)
        else:
            res.update(max_abs_grad_diff=None, gradients=NO_CPU_FLEX_BACKWARD, ok=dy <= FP32_TOL)
        results[f"RAT {impl} vs reference/fp32"] = res
    out["results"] = results
    return out


def kernels(device, cfg) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from monai_rat.networks.blocks import RegionAttention, RegionPlan

    _, maps, _ = images_and_maps(cfg["size"], cfg["batch"])
    labels = maps[:, 0, ::4, ::4].to(device)
    c = cfg["channels"]
    x = torch.randn(labels.shape[0], *labels.shape[1:], c, device=device, requires_grad=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {"fast_picks": select_implementation("fast", device, c // 8)}
    for impl in ("regions", "flex", "masked", "global"):
        mod = RegionAttention(c, 8, implementation="regions" if impl == "global" else impl).to(device)
        grad = has_backward(impl, device)
        for mode in ("fp32", "autocast"):
            plan = None if impl == "global" else RegionPlan.from_labels(labels)

            def run():
                with torch.set_grad_enabled(grad), torch.autocast(device.type, dtype=amp_dtype(device), enabled=mode == "autocast"):
                    y = mod.forward_tokens(x, plan)
                if grad:
                    y.float().sum().backward()
                sync(device)

            if impl == "flex":
                run()  # compile outside the profile (Inductor's own work would fill it)
                plan = RegionPlan.from_labels(labels)
            with profile(activities=acts) as prof:
                run()
            names = sorted({e.key for e in prof.key_averages() if re.search(
                r"scaled_dot_product|flash|efficient_attention|cudnn_attention|fmha|[Ff]lex|triton_tem", e.key)})
            out[f"{impl}/{mode}"] = names + ([] if grad else [f"forward only: {NO_CPU_FLEX_BACKWARD}"])
    return out


def rmsa_vs_global(device, cfg) -> dict:
    from monai_rat.networks.blocks import RegionAttention, RegionPlan

    _, maps, _ = images_and_maps(cfg["size"], cfg["batch"])
    labels = maps[:, 0, ::4, ::4].to(device)
    c, heads = cfg["channels"], 8
    mod = RegionAttention(c, heads).to(device)
    flex_mod = RegionAttention(c, heads, implementation="flex").to(device)
    flex_mod.load_state_dict(mod.state_dict())
    fast_picks = select_implementation("fast", device, c // heads)
    plan = RegionPlan.from_labels(labels)
    pairs = sum(s * s for s in plan.sizes)
    b, n = labels.shape[0], labels[0].numel()
    qkv = torch.randn(b, n, 3, heads, c // heads, device=device, requires_grad=True)
    side = int(round(pairs**0.5))
    q, k, v = (torch.randn(1, heads, side, c // heads, device=device, requires_grad=True) for _ in range(3))

    def rmsa_fwd():
        with torch.no_grad():
            mod._regions(qkv, RegionPlan.from_labels(labels))

    def rmsa_train():
        mod._regions(qkv, RegionPlan.from_labels(labels)).sum().backward()

    # flex attention's layer: q/k/v of region-sorted tokens (the sort of the input is the layer's, in forward_tokens)
    def flex_fwd():
        with torch.no_grad():  # detached: flex attention on a CPU refuses inputs that require grad, even here
            flex_mod._flex(qkv.detach(), RegionPlan.from_labels(labels))

    def flex_train():
        flex_mod._flex(qkv, RegionPlan.from_labels(labels)).sum().backward()

    def glob_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    def glob_train():
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    reps = cfg["repeats"]
    from monai_rat.networks.blocks.region_attention import PAD_BUDGET

    mask = plan.flex_block_mask(compile=flex_mod.flex_compile)
    tiles = int((mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum()).item())
    out = {"regions": len(plan.sizes), "calls": len(plan.batches(PAD_BUDGET).shapes), "pairs": pairs,
           "global_tokens": side, "plan_included": True, "fast_picks": fast_picks,
           "flex_tiles_computed": tiles, "flex_tiles_of": b * (-(-n // mask.BLOCK_SIZE[0])) * (-(-n // mask.BLOCK_SIZE[1])),
           "flex_tiles_full": int(mask.full_kv_num_blocks.sum().item())}
    # how the padding budget trades calls for padded pairs here (PAD_BUDGET was measured on a CPU only)
    budgets = {}
    for budget in (-1, PAD_BUDGET, 16 * PAD_BUDGET, 256 * PAD_BUDGET):
        mod.pad_budget = budget
        budgets[str(budget)] = {"calls": len(plan.batches(budget).shapes), "forward+backward_ms": timed(rmsa_train, device, reps) * 1e3}
    mod.pad_budget = None
    out["pad_budget"] = budgets
    cases = {"forward": (rmsa_fwd, flex_fwd, glob_fwd), "forward+backward": (rmsa_train, flex_train, glob_train)}
    for name, (a, f, g) in cases.items():
        ta, tg = timed(a, device, reps), timed(g, device, reps)
        res = {"regions_ms": ta * 1e3, "global_ms": tg * 1e3, "regions_ratio": ta / tg}
        if name == "forward" or has_backward("flex", device):
            tf = timed(f, device, reps)  # the warm-up calls compile flex attention (on CUDA)
            res.update(flex_ms=tf * 1e3, flex_ratio=tf / tg)
        else:
            res.update(flex_ms=None, flex_ratio=None, flex=NO_CPU_FLEX_BACKWARD)
        ratio = res["flex_ratio"] if fast_picks == "flex" else res["regions_ratio"]
        res.update(fast_picks=fast_picks, ratio=ratio, target=2.0, target_met=ratio <= 2.0)
        out[name] = res
    return out


def train(device, cfg, amp: str) -> dict:
    from monai.networks.nets.restormer import Restormer

    from monai_rat.losses import FocalRegionLoss
    from monai_rat.networks import RAT

    x, maps, source = images_and_maps(cfg["size"], cfg["batch"])
    x, maps = x.to(device), maps.to(device)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    one = torch.ones_like(maps)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    fast_picks = select_implementation("fast", device, cfg["feature_size"] * 4 // 8)
    out = {"input": source, "images": f"{cfg['batch']} x {cfg['size']}^2", "steps": cfg["steps"], "amp": amp,
           "fast_picks": fast_picks}
    cases = {
        "RAT regions, superpixel map": lambda: (randomised(RAT(feature_size=cfg["feature_size"], attention_impl="regions")), maps),
        "RAT flex, superpixel map": lambda: (randomised(RAT(feature_size=cfg["feature_size"], attention_impl="flex")), maps),
        "RAT, one region": lambda: (randomised(RAT(feature_size=cfg["feature_size"])), one),
        "MONAI Restormer": lambda: (Restormer(spatial_dims=2, in_channels=1, out_channels=1, **cfg["restormer"]), None),
    }
    for name, build in cases.items():
        if "flex" in name and not has_backward("flex", device):
            out[name] = {"skipped": NO_CPU_FLEX_BACKWARD}
            continue
        torch.manual_seed(0)
        model, regions = build()
        model = model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        loss_fn = FocalRegionLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                y = model(noisy, regions) if regions is not None else model(noisy)
                loss = loss_fn(y.float(), x, regions) if regions is not None else F.l1_loss(y.float(), x)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        reset_peak(device)
        t = timed(step, device, cfg["steps"], warmup=cfg["warmup"])
        out[name] = {"step_ms": t * 1e3, "images_per_s": cfg["batch"] / t, "peak_memory_mb": peak_memory_mb(device),
                     "parameters": sum(p.numel() for p in model.parameters())}
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rat = out[f"RAT {'flex' if fast_picks == 'flex' else 'regions'}, superpixel map"]["images_per_s"]
    rest = out["MONAI Restormer"]["images_per_s"]
    out["throughput_vs_restormer"] = {"path": fast_picks, "ratio": rat / rest, "target": 1.0, "target_met": rat >= rest}
    return out


def _ddp_worker(rank: int, port: int, backend: str, device_type: str, feature_size: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group(backend, rank=rank, world_size=2)
        if device_type == "cuda":
            device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        from monai_rat.losses import FocalRegionLoss
        from monai_rat.networks import RAT

        torch.manual_seed(0)
        model = randomised(RAT(feature_size=feature_size)).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        g = torch.Generator().manual_seed(rank)
        x = torch.rand(2, 1, 64, 64, generator=g).to(device)
        r = torch.randint(0, 4, (2, 1, 64, 64), generator=g).to(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            FocalRegionLoss()(ddp(x, r), x, r).backward()
            sync(device)
            seconds = time.perf_counter() - t0
        grads = torch.cat([p.grad.flatten() for p in model.parameters()]).cpu().numpy()  # by value: the worker exits first
        queue.put({"rank": rank, "seconds": seconds, "grads": grads, "warnings": [str(w.message)[:200] for w in caught]})
        torch.distributed.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        queue.put({"rank": rank, "error": f"{type(e).__name__}: {e}"})


def ddp(device, cfg) -> dict:
    import torch.multiprocessing as mp

    backend = "nccl" if device.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn" if device.type == "cuda" else "fork")  # CUDA cannot be used in a forked child
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, backend, device.type, cfg["feature_size"], queue)) for r in range(2)]
    for p in procs:
        p.start()
    res = sorted([queue.get(timeout=600) for _ in procs], key=lambda d: d["rank"])
    for p in procs:
        p.join(timeout=60)
    if any("error" in r for r in res):
        return {"backend": backend, "errors": [r.get("error") for r in res], "ok": False}
    same = bool(np.allclose(res[0]["grads"], res[1]["grads"], atol=1e-6))
    stride_warnings = [w for r in res for w in r["warnings"] if "stride" in w.lower()]
    return {"backend": backend, "devices": "2 GPUs" if backend == "nccl" else f"2 processes on {device.type}",
            "rmsa": select_implementation("fast", torch.device(device.type), cfg["feature_size"] * 4 // 8),
            "step_s": max(r["seconds"] for r in res), "grads_equal_on_ranks": same,
            "grad_stride_warnings": stride_warnings, "ok": same and not stride_warnings}


# ------------------------------------------------------------------------------------------------- main
def _oks(obj, key="ok", path=""):
    """(path, value) of every ``key`` entry: "ok" for correctness checks, "target_met" for the speed targets."""
    if isinstance(obj, dict):
        if key in obj:
            yield path, obj[key]
        for k, v in obj.items():
            if isinstance(v, dict):
                yield from _oks(v, key, f"{path}/{k}" if path else k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 steps: a smoke run of every section")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast in the training section")
    parser.add_argument("--sections", nargs="+", default=["parity", "kernels", "rmsa_vs_global", "train", "ddp"])
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write a Markdown summary")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device; run with --device cpu --quick for the CPU smoke run.")
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 matmuls differ from float32 by more than 1e-5
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(1)  # steadier on a shared machine; the CPU run is a smoke run, not a benchmark
    if args.quick:
        # 128 channels / 8 heads and feature size 32 (latent 128): head dimension 16, the least flex's CUDA kernel takes
        cfg = {"size": 64, "batch": 2, "channels": 128, "feature_size": 32, "steps": 2, "warmup": 1, "repeats": 2,
               "restormer": {"dim": 8, "num_blocks": (1, 1, 1, 1), "heads": (1, 1, 1, 1), "num_refinement_blocks": 1}}
    else:
        cfg = {"size": 256, "batch": 4, "channels": 256, "feature_size": 64, "steps": 50, "warmup": 5, "repeats": 10,
               "restormer": {"dim": 48, "num_blocks": (4, 6, 6, 8), "heads": (1, 2, 4, 8), "num_refinement_blocks": 4}}
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "quick": args.quick, "config": {k: v for k, v in cfg.items() if k != "restormer"}}
    results = {"info": info}
    t_all = time.perf_counter()
    for name in args.sections:
        t0 = time.perf_counter()
        fn = {"parity": parity, "kernels": kernels, "rmsa_vs_global": rmsa_vs_global, "ddp": ddp,
              "train": lambda d, c: train(d, c, args.amp)}[name]
        results[name] = fn(device, cfg)
        results[name]["seconds"] = time.perf_counter() - t0
        print(f"== {name} ({results[name]['seconds']:.1f} s)\n{json.dumps(results[name], indent=1, default=str)}", flush=True)
    info["seconds"] = time.perf_counter() - t_all
    failed = [p for p, ok in _oks(results) if not ok]
    missed = [p for p, met in _oks(results, "target_met") if not met]
    results["failed"], results["targets_missed"] = failed, missed
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.markdown:
        lines = [f"GPU check on {info['device']}, torch {info['torch']}, {info['seconds']:.0f} s", ""]
        lines += ["| check | kind | passed |", "| --- | --- | --- |"]
        for key, kind in (("ok", "correctness"), ("target_met", "speed target")):
            lines += [f"| {p} | {kind} | {'yes' if ok else 'NO'} |" for p, ok in _oks(results, key)]
        args.markdown.write_text("\n".join(lines) + "\n")
    print("failed correctness checks:", failed or "none")
    print("speed targets missed:", missed or "none", "(the targets are for a GPU)" if device.type != "cuda" else "")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
