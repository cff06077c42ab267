"""benchmarks/gpu_check.py: the CPU smoke run of every section (the real run needs a CUDA GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args, "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(out.read_text())


def test_cpu_quick_smoke_run_of_every_section(tmp_path):
    res = _run(tmp_path, "--device", "cpu", "--quick")
    assert res["failed"] == []
    parity = res["parity"]["results"]
    impls = ("regions", "flex", "masked")
    assert set(parity) == {f"{i}/{m}" for i in impls for m in ("fp32", "autocast")} | {"RAT fast vs reference/fp32", "RAT flex vs reference/fp32"}
    assert all(r["ok"] for r in parity.values())
    assert parity["regions/fp32"]["max_rel_grad_diff"] is not None
    assert parity["flex/fp32"]["max_rel_grad_diff"] is None and "no backward on a CPU" in parity["flex/fp32"]["gradients"]
    assert res["parity"]["fast_picks"] == {"layer": "regions", "RAT": "regions"}  # on a CPU
    kernels = res["kernels"]
    assert kernels["fast_picks"] == "regions"
    for key, names in kernels.items():
        if isinstance(names, list):
            assert any(("FlexAttention" if key.startswith("flex") else "scaled_dot_product") in k for k in names), (key, names)
    for name in ("forward", "forward+backward"):
        assert res["rmsa_vs_global"][name]["ratio"] > 0 and res["rmsa_vs_global"][name]["fast_picks"] == "regions"
    assert res["rmsa_vs_global"]["forward"]["flex_ms"] > 0
    assert 0 < res["rmsa_vs_global"]["flex_tiles_computed"] <= res["rmsa_vs_global"]["flex_tiles_of"]
    for case in ("RAT regions, superpixel map", "RAT, one region", "MONAI Restormer"):
        assert res["train"][case]["step_ms"] > 0 and res["train"][case]["peak_memory_mb"] > 0
    assert "no backward on a CPU" in res["train"]["RAT flex, superpixel map"]["skipped"]
    assert res["train"]["fast_picks"] == "regions" and res["ddp"]["rmsa"] == "regions"
    assert res["ddp"]["ok"] and res["ddp"]["grads_equal_on_ranks"] and not res["ddp"]["grad_stride_warnings"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the real gpu_check needs a CUDA GPU (none here)")
def test_cuda_quick_run(tmp_path):
    res = _run(tmp_path, "--device", "cuda", "--quick")
    assert res["failed"] == []
    assert res["parity"]["fast_picks"] == {"layer": "flex", "RAT": "flex"}  # head dimension 16 in the quick run
    assert res["parity"]["results"]["flex/fp32"]["max_rel_grad_diff"] is not None
