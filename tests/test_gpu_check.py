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
    assert set(parity) == {"regions/fp32", "regions/autocast", "masked/fp32", "masked/autocast", "RAT fast vs reference/fp32"}
    assert all(r["ok"] for r in parity.values())
    assert all(any("scaled_dot_product" in k for k in names) for names in res["kernels"].values() if isinstance(names, list))
    assert res["rmsa_vs_global"]["forward"]["ratio"] > 0
    for case in ("RAT, superpixel map", "RAT, one region", "MONAI Restormer"):
        assert res["train"][case]["step_ms"] > 0 and res["train"][case]["peak_memory_mb"] > 0
    assert res["ddp"]["ok"] and res["ddp"]["grads_equal_on_ranks"] and not res["ddp"]["grad_stride_warnings"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the real gpu_check needs a CUDA GPU (none here)")
def test_cuda_quick_run(tmp_path):
    res = _run(tmp_path, "--device", "cuda", "--quick")
    assert res["failed"] == []
