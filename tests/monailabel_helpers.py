"""What the real-server MONAI Label tests share: a tiny model trained by the CT bundle, test images, and
``monailabel start_server`` started on 127.0.0.1 and a free port, waited for and stopped.

Used by ``tests/test_monailabel.py`` (monai-rat's app) and ``tests/test_monailabel_stock.py`` (MONAI
Label's stock bundle tasks). Importing it needs ``monailabel`` only for :func:`write_log_config`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from monai_rat.networks import RAT

REPO = Path(__file__).resolve().parents[1]
TINY = {"feature_size": 8}  # the bundle overrides of the tiny training run
#: the tiny run's other settings: 4 iterations, validation every 2, batches of 2 patches of 32 x 32
TINY_RUN = {"num_iterations": 4, "val_interval": 2, "batch_size": 2, "patch_size": [32, 32]}
AFFINE = np.array([[0.7, 0.05, 0.0, -120.0], [0.0, -0.7, 0.0, 85.0], [0.0, 0.0, 2.5, -30.0], [0.0, 0.0, 0.0, 1.0]])


def tiny_rat(ckpt_path: Path) -> RAT:
    """The network the bundle's network_def builds for ``ckpt_path`` (its record) with the TINY overrides."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "ct" / "configs" / "inference.json"))
    parser["ckpt_path"] = str(ckpt_path)
    for key, value in TINY.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def#network")
    assert isinstance(net, RAT)  # the bundle's default network_name
    return net


def train_tiny(work: Path, dest: Path) -> RAT:
    """A tiny training run of the CT bundle (``python -m monai.bundle run training``, 4 iterations on the demo data);
    its best checkpoint is copied to ``dest`` (the bundle's ``models/model.pt``) and returned as a local model."""
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundles/ct/train.json"]
    args += ["--output_dir", str(work / "train"), "--region_cache_dir", str(work / "train_regions")]
    args += [a for k, v in TINY_RUN.items() for a in (f"--{k}", str(v).replace(" ", ""))]
    args += [a for k, v in TINY.items() for a in (f"--{k}", str(v))]
    env = dict(os.environ, MONAI_RAT_CACHE=str(work / "data_cache"), OMP_NUM_THREADS="1")
    env.pop("MONAI_RAT_SAM_CHECKPOINT", None)
    run = subprocess.run(args, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "train" / "models" / "model.pt", dest)
    model = tiny_rat(dest)
    model.load_state_dict(torch.load(dest, map_location="cpu", weights_only=True))
    return model.eval()


def phantom(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A CT-like slice or volume in HU: air, a body ellipse, two inserts, noise."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), -1000.0)
    img[((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1] = 40.0
    img[((yy - h * 0.4) / (0.1 * h)) ** 2 + ((xx - w * 0.35) / (0.1 * w)) ** 2 <= 1] = 300.0
    img[((yy - h * 0.6) / (0.12 * h)) ** 2 + ((xx - w * 0.62) / (0.08 * w)) ** 2 <= 1] = -80.0 + 10 * seed
    if len(shape) == 3:
        img = np.stack([img + 15.0 * k for k in range(shape[2])], axis=-1)
    return (img + rng.normal(0, 25.0, img.shape)).astype(np.float32)


def save_nifti(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def monailabel_command(app_dir: str | Path, port: int, studies: Path, log_config: Path, conf: Sequence[tuple[str, str]]) -> list[str]:
    """``monailabel start_server`` (the installed launcher, run with this interpreter) with ``--conf`` pairs."""
    launcher = Path(sys.executable).parent / "monailabel"
    head = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "monailabel.main"]
    args = head + ["start_server", "--app", str(app_dir), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for k, v in conf:
        args += ["--conf", k, v]
    return args + ["-l", str(log_config)]


def server_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.pop("MONAI_RAT_SAM_CHECKPOINT", None)  # superpixel region maps, as the tests' local ones
    env.update(
        {
            "MONAILABEL_PYEXE": sys.executable,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),
            "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
            "MONAI_RAT_DEVICE": "cpu",
            "MONAI_RAT_CACHE": str(tmp / "user_cache"),  # the region cache's default: not the user's own
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        }
    )
    return env


def write_log_config(tmp: Path) -> Path:
    import monailabel

    text = (Path(monailabel.__file__).parent / "logging.json").read_text()
    text = text.replace("${LOGDIR}", str(tmp)).replace("${LOGFILE}", str(tmp / "app.log"))
    path = tmp / "logging.json"
    path.write_text(text)
    return path


def log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


@contextlib.contextmanager
def running_server(args: list[str], tmp: Path, log: Path, timeout_s: float = 150) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """Start ``args`` (a ``monailabel start_server`` command; output to ``log``), wait until ``/info/`` answers,
    yield ``(url, process, seconds to /info/)``, and stop the server (SIGINT, then kill) on the way out.

    Fails the test, with the log's tail, when the server exits early or does not answer within ``timeout_s``.
    """
    port = int(args[args.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=server_env(tmp), cwd=str(tmp), start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode} before answering /info/:\n{log_tail(log)}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                pytest.fail(f"no /info/ within {timeout_s:.0f} s:\n{log_tail(log)}")
            time.sleep(0.5)
        yield url, proc, time.time() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
