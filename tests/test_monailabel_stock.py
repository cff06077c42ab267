"""The CT bundle served by MONAI Label's *stock* bundle tasks, on a real server (no mocks).

``tests/monailabel_stock_app/main.py`` registers only ``monailabel.tasks.infer.bundle.BundleInferTask``
and ``monailabel.tasks.train.bundle.BundleTrainTask`` (what MONAI Label's ``monaibundle`` sample app
does). One server for the module: ``monailabel start_server`` on 127.0.0.1 and a free port, serving a
copy of ``bundles/ct`` whose ``models/model.pt`` is the checkpoint of a tiny training run of the bundle
(4 iterations, ``feature_size`` 8), and a second copy without a checkpoint (``ct_missing``). The stock
task takes no config overrides; the checkpoint's network record gives ``inference.json`` its network
(name, width, network_kwargs), so none is needed.

What these tests pin down (measured with MONAI Label 0.8.5; docs/monailabel.md, "MONAI Label's stock
bundle app", says the same):

- ``/info/`` lists the model as ``segmentation`` with the label ``{"image": 0}``: the stock task types
  every bundle whose folder name has none of its keywords as a segmentation model;
- a 2D NIfTI slice ``(H, W)`` comes back with HTTP 200 as float32 with the restored values of the
  bundle's own inference, but as an array ``(1, H, W)`` carrying the input's affine: the channel axis
  is written as the first spatial axis, so the result does not lie where the input lies;
- a one-slice volume ``(H, W, 1)`` comes back resized to ``(1, W, 1)`` (MONAI Label's ``Restored``
  resizes to the last two entries of the input's spatial shape): unusable;
- a bundle without ``models/model.pt`` has no infer task (a request for it is a bare HTTP 500);
- a volume ``(H, W, D)`` is an HTTP 500 (``Internal Server Error``, no message in the answer; the
  server log names the reason: the bundle's 2D slice check);
- ``POST /train/ct`` runs one epoch through the stock train task, fine-tuning the served checkpoint on
  the datastore's image / label pairs (low-dose image, full-dose "label"), and writes the bundle's
  ``runs/demo/models/model.pt`` and ``last.pt``; the served ``models/model.pt`` is not replaced.

Needs the ``monailabel`` extra (``pip install -e ".[test,monailabel]"``); skipped without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="needs the monailabel extra: pip install -e '.[test,monailabel]'")

import nibabel as nib  # noqa: E402
import requests  # noqa: E402
from monailabel_helpers import (  # noqa: E402
    REPO,
    TINY,
    TINY_RUN,
    free_port,
    log_tail,
    monailabel_command,
    phantom,
    running_server,
    save_nifti,
    train_tiny,
    write_log_config,
)

STOCK_APP = Path(__file__).resolve().parent / "monailabel_stock_app"
#: an orthogonal affine (voxel sizes 0.7, 0.8, 2.5 mm; y flipped; an origin), so that it survives ITK's writer unchanged
AFFINE = np.array([[0.7, 0.0, 0.0, -120.0], [0.0, -0.8, 0.0, 85.0], [0.0, 0.0, 2.5, -30.0], [0.0, 0.0, 0.0, 1.0]])
SLICE_CHECK = "Expected a channel-first 2D slice (C, X, Y) or (C, X, Y, 1)"


class StockServer:
    def __init__(self, url: str, log: Path, bundle: Path, tmp: Path) -> None:
        self.url, self.log, self.bundle, self.tmp = url, log, bundle, tmp

    def infer(self, path: Path, **params) -> requests.Response:
        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        return requests.post(f"{self.url}/infer/ct", params=params, files=files, timeout=300)


def write_training_pairs(studies: Path, n: int = 4) -> None:
    """``n`` low-dose slices in the datastore and their full-dose versions as its "final labels"
    (``labels/final/<same name>``): MONAI Label's datastore gives the stock train task
    ``{"image": low dose, "label": full dose}``, the pairs the bundle's train.json expects."""
    (studies / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(100)
    for i in range(n):
        full = phantom((64, 48), 20 + i)
        save_nifti(studies / "labels" / "final" / f"pair_{i}.nii.gz", full, AFFINE)
        save_nifti(studies / f"pair_{i}.nii.gz", (full + rng.normal(0, 40.0, full.shape)).astype(np.float32), AFFINE)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monailabel_stock")
    bundle = tmp / "bundles" / "ct"
    shutil.copytree(REPO / "bundles" / "ct" / "configs", bundle / "configs")
    shutil.copytree(REPO / "bundles" / "ct" / "configs", tmp / "bundles" / "ct_missing" / "configs")  # no checkpoint
    train_tiny(tmp, bundle / "models" / "model.pt")
    # The stock train task passes the bundle only max_epochs, the datalists, the device and its handlers;
    # one epoch of this bundle is val_interval iterations (demo schedule: 300) and no request setting
    # changes that. As a user of the stock app would, edit the served copy's train.json: its demo schedule
    # becomes the tiny run's (an epoch of 2 iterations; feature_size 8, so the served checkpoint loads).
    train_json = bundle / "configs" / "train.json"
    config = json.loads(train_json.read_text())
    config["schedules"]["demo"].update(TINY_RUN, **TINY)
    train_json.write_text(json.dumps(config, indent=4))
    studies = tmp / "studies"
    write_training_pairs(studies)
    log = tmp / "server.log"
    conf = [("bundles", f"{bundle},{bundle.parent / 'ct_missing'}")]
    args = monailabel_command(STOCK_APP, free_port(), studies, write_log_config(tmp), conf)
    with running_server(args, tmp, log) as (url, _proc, start_s):
        print(f"\nstock server answered /info/ {start_s:.1f} s after start")
        yield StockServer(url, log, bundle, tmp)


def local_inference(bundle: Path, src: Path, out_dir: Path, tmp: Path) -> np.ndarray:
    """The bundle's own inference on ``src``: ``python -m monai.bundle run --config_file .../inference.json``."""
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json")]
    args += ["--input_path", str(src), "--output_dir", str(out_dir)]
    env = dict(os.environ, MONAI_RAT_CACHE=str(tmp / "local_cache"), OMP_NUM_THREADS="1")  # its own region maps
    env.pop("MONAI_RAT_SAM_CHECKPOINT", None)
    run = subprocess.run(args, cwd=str(tmp), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = nib.load(str(out_dir / (src.name[: -len(".nii.gz")] + "_rat.nii.gz")))
    assert out.shape == nib.load(str(src)).shape
    np.testing.assert_allclose(out.affine, nib.load(str(src)).affine, atol=1e-5)
    return out.get_fdata(dtype=np.float32)


def test_info_types_the_restoration_bundle_as_segmentation(stock):
    info = requests.get(f"{stock.url}/info/", timeout=30).json()
    # without models/model.pt the stock infer task is invalid and left out; its train task is there
    assert set(info["models"]) == {"ct"} and set(info["trainers"]) == {"ct", "ct_missing"}, (info["models"], info["trainers"])
    model = info["models"]["ct"]
    # BundleInferTask._get_type: no 'deepedit' / 'deepgrow' / 'detection' / 'segmentation' / 'classification'
    # in the folder name -> segmentation; the labels come from metadata.json's output channel_def {"0": "image"}
    assert model["type"] == "segmentation", model
    assert model["labels"] == {"image": 0}, model
    assert model["dimension"] == 2, model  # metadata.json's input spatial_shape has 2 entries
    assert "Region Attention Transformer" in model["description"]


def test_restore_2d_slice_values_right_geometry_not(stock, tmp_path):
    hu = phantom((64, 48), 1)
    src = save_nifti(tmp_path / "slice.nii.gz", hu, AFFINE)
    t0 = time.time()
    r = stock.infer(src, output="image")
    latency = time.time() - t0
    assert r.status_code == 200, r.text
    (tmp_path / "restored.nii.gz").write_bytes(r.content)
    out = nib.load(str(tmp_path / "restored.nii.gz"))
    assert out.get_data_dtype() == np.float32  # an image, not a label map
    # the bundle's prediction is channel-first (1, H, W); MONAI Label's Restored keeps a 3-axis array as it is
    # and its writer takes it for a volume: the channel becomes the first spatial axis
    assert out.shape == (1,) + hu.shape, out.shape
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-4)  # the input's affine, on those shifted axes
    corner_in = AFFINE @ np.array([63, 47, 0, 1.0])
    corner_out = out.affine @ np.array([0, 63, 47, 1.0])  # where the result puts the same pixel
    assert np.linalg.norm(corner_in - corner_out) > 50.0, "the result lies where the input lies"
    got = out.get_fdata(dtype=np.float32)[0]
    assert not np.allclose(got, np.round(got)), "integer values: a label map"
    assert np.abs(got - hu).max() > 1.0, "the restored image equals the input"
    np.testing.assert_allclose(got, local_inference(stock.bundle, src, tmp_path / "local", stock.tmp), atol=5e-2, rtol=0)
    print(f"stock restore 64x48 slice: {latency:.2f} s round trip")


def test_one_slice_volume_comes_back_resized(stock, tmp_path):
    hu = phantom((64, 48), 2)[..., None]  # (H, W, 1): how a single slice is often stored (and ITK reads DICOM)
    r = stock.infer(save_nifti(tmp_path / "one.nii.gz", hu, AFFINE), output="image")
    assert r.status_code == 200, r.text
    (tmp_path / "out.nii.gz").write_bytes(r.content)
    # Restored resizes the (1, 64, 48) prediction to the last two entries of the input's shape (48, 1)
    assert nib.load(str(tmp_path / "out.nii.gz")).shape == (1, 48, 1)


def test_volume_is_a_bare_500_and_the_log_names_the_reason(stock, tmp_path):
    r = stock.infer(save_nifti(tmp_path / "vol.nii.gz", phantom((48, 64, 3), 3), AFFINE), output="image")
    assert r.status_code == 500, r.text
    assert r.text == "Internal Server Error"  # MONAI Label's endpoint passes no message on
    deadline = time.time() + 10
    while SLICE_CHECK not in log_tail(stock.log, 200000) and time.time() < deadline:
        time.sleep(0.2)
    text = log_tail(stock.log, 200000)
    assert SLICE_CHECK in text and "got shape (1, 48, 64, 3)" in text, text[-4000:]
    assert requests.get(f"{stock.url}/info/", timeout=30).status_code == 200  # the server stays up


def test_model_without_checkpoint_is_a_bare_500(stock, tmp_path):
    src = save_nifti(tmp_path / "slice.nii.gz", phantom((32, 32), 4), AFFINE)
    files = {"file": (src.name, src.read_bytes(), "application/octet-stream")}
    r = requests.post(f"{stock.url}/infer/ct_missing", params={"output": "image"}, files=files, timeout=60)
    assert r.status_code == 500 and r.text == "Internal Server Error", (r.status_code, r.text)
    deadline = time.time() + 10
    while "There is no model 'ct_missing' available" not in log_tail(stock.log, 200000) and time.time() < deadline:
        time.sleep(0.2)
    assert "There is no model 'ct_missing' available" in log_tail(stock.log, 200000)  # MONAI Label's reason, in the log only


def test_train_one_tiny_epoch_through_the_stock_train_task(stock):
    served = stock.bundle / "models" / "model.pt"
    served_bytes = served.read_bytes()
    run_dir = stock.bundle / "runs" / "demo"
    t0 = time.time()
    r = requests.post(f"{stock.url}/train/ct", json={"max_epochs": 1, "val_split": 0.5, "device": "cpu"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("SUBMITTED", "RUNNING"), r.json()
    deadline = time.time() + 240
    while True:
        task = requests.get(f"{stock.url}/train/", timeout=30).json()
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            break
        assert time.time() < deadline, f"training still {task['status']} after 240 s:\n{log_tail(stock.log)}"
        time.sleep(1.0)
    wall = time.time() - t0
    assert task["status"] == "DONE", f"{task}\n{log_tail(stock.log)}"
    # the bundle's trainer wrote its run: the best model (one validation) and the last state
    for name in ("model.pt", "last.pt"):
        assert (run_dir / "models" / name).is_file(), sorted(str(p) for p in run_dir.rglob("*"))
    history = json.loads((run_dir / "logs" / "metrics.json").read_text())
    print(f"stock training, 1 epoch: {wall:.1f} s; metrics.json: {json.dumps(history)[:300]}")
    text = log_tail(stock.log, 400000)
    assert "Total Records for Training: 2" in text and "Total Records for Validation: 2" in text, text[-4000:]
    assert f"Restored all variables from {served}" in text  # pretrained: the served checkpoint was the start
    assert "Validation at iteration 2/4" in text, text[-4000:]  # one epoch = val_interval = 2 iterations
    assert served.read_bytes() == served_bytes  # the served model is not replaced by the run's
