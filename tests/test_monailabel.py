"""The monai-rat MONAI Label app on a real server (no mocks).

One server for the module: ``monailabel start_server`` on 127.0.0.1 and a free port, serving a copy of
``bundles/ct`` (as ``ct``, with the checkpoint of a tiny training run of the bundle: 4 iterations,
``feature_size`` 8, served with ``--conf ct.feature_size 8``) and a second copy without a checkpoint
(``ct_missing``). Results are compared with the same model run locally.

Needs the ``monailabel`` extra (``pip install -e ".[test,monailabel]"``); skipped without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monailabel", reason="needs the monailabel extra: pip install -e '.[test,monailabel]'")

import nibabel as nib  # noqa: E402
import requests  # noqa: E402
from monailabel_helpers import (  # noqa: E402
    AFFINE,
    REPO,
    TINY,
    free_port,
    monailabel_command,
    phantom,
    running_server,
    save_nifti,
    server_env,
    train_tiny,
    write_log_config,
)

from monai_rat.apps.monailabel import APP_DIR  # noqa: E402
from monai_rat.networks import RAT  # noqa: E402
from monai_rat.transforms import RegionPartition  # noqa: E402

HU_WINDOW = (-1024.0, 3072.0)
REGION_WINDOW = (-160.0, 240.0)


def local_regions(hu2d: np.ndarray) -> np.ndarray:
    """The bundle's region map of one slice, computed here (superpixels on the [-160, 240] HU window)."""
    return np.asarray(RegionPartition(method="superpixel", window=REGION_WINDOW)(torch.from_numpy(hu2d)[None]))[0]


def local_restore(model: RAT, hu: np.ndarray) -> np.ndarray:
    """What the bundle's inference does, written out by hand: HU -> [0, 1], RAT with the region map, back to HU."""
    lo, hi = HU_WINDOW
    slices = [hu] if hu.ndim == 2 else [hu[..., k] for k in range(hu.shape[-1])]
    out = []
    for s in slices:
        x = torch.from_numpy((s - lo) / (hi - lo)).float()[None, None]
        r = torch.from_numpy(local_regions(s)).long()[None, None]
        with torch.no_grad():
            out.append(model(x, r)[0, 0].numpy() * (hi - lo) + lo)
    return out[0] if hu.ndim == 2 else np.stack(out, axis=-1)


def server_command(
    port: int, studies: Path, bundles: Path, log_config: Path, models: tuple[str, ...] = ("ct", "ct_missing")
) -> list[str]:
    """``monailabel start_server`` with monai-rat's app and the tiny-model overrides."""
    conf = [("models", ",".join(models)), ("bundles", str(bundles))]
    for model in (m for m in models if (bundles / m).is_dir()):
        conf += [(f"{model}.{k}", str(v)) for k, v in TINY.items()]
    return monailabel_command(APP_DIR, port, studies, log_config, conf)


class Server:
    """A running server: its URL, process and log file."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path, model: RAT, bundles: Path) -> None:
        self.url, self.proc, self.log, self.model, self.bundles = url, proc, log, model, bundles
        self.start_s = 0.0

    def post(self, task: str, path: Path | None = None, data: bytes | None = None, name: str | None = None, **params) -> requests.Response:
        content = data if data is not None else path.read_bytes()
        files = {"file": (name or path.name, content, "application/octet-stream")}
        return requests.post(f"{self.url}/infer/{task}", params=params, files=files, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monailabel")
    bundles = tmp / "bundles"
    for name in ("ct", "ct_missing"):
        shutil.copytree(REPO / "bundles" / "ct" / "configs", bundles / name / "configs")
    model = train_tiny(tmp, bundles / "ct" / "models" / "model.pt")
    studies = tmp / "studies"
    studies.mkdir()
    save_nifti(studies / "study_0.nii.gz", phantom((64, 48), 0))
    log = tmp / "server.log"
    with running_server(server_command(free_port(), studies, bundles, write_log_config(tmp)), tmp, log) as (url, proc, start_s):
        srv = Server(url, proc, log, model, bundles)
        srv.start_s = start_s
        print(f"\nserver answered /info/ {srv.start_s:.1f} s after start")
        yield srv


def test_info_lists_tasks_with_descriptions(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    models = info["models"]
    assert set(models) == {"restore_ct", "regions_ct", "restore_ct_missing", "regions_ct_missing"}, models.keys()
    for name, task in models.items():
        assert isinstance(task["description"], str) and len(task["description"]) > 40, name
    assert models["restore_ct"]["type"] == "others" and models["regions_ct"]["type"] == "segmentation"
    assert models["restore_ct"]["checkpoint_found"] is True
    assert models["restore_ct_missing"]["checkpoint_found"] is False
    assert "NOT READY" in models["restore_ct_missing"]["description"]


def test_restore_2d_nifti_matches_the_model(server, tmp_path):
    hu = phantom((64, 48), 1)
    src = save_nifti(tmp_path / "slice.nii.gz", hu)
    t0 = time.time()
    r = server.post("restore_ct", src, output="image")
    latency = time.time() - t0
    assert r.status_code == 200, r.text
    out_file = tmp_path / "restored.nii.gz"
    out_file.write_bytes(r.content)
    out = nib.load(str(out_file))
    assert out.shape == hu.shape
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-5)
    got = out.get_fdata(dtype=np.float32)
    assert np.abs(got - hu).max() > 1.0, "the restored image equals the input"
    np.testing.assert_allclose(got, local_restore(server.model, hu), atol=5e-2, rtol=0)
    print(f"restore 64x48 slice: {latency:.2f} s round trip")


def test_restore_3d_volume_slice_by_slice(server, tmp_path):
    hu = phantom((48, 64, 3), 2)
    r = server.post("restore_ct", save_nifti(tmp_path / "vol.nii.gz", hu), output="image")
    assert r.status_code == 200, r.text
    (tmp_path / "out.nii.gz").write_bytes(r.content)
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert out.shape == hu.shape
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(out.get_fdata(dtype=np.float32), local_restore(server.model, hu), atol=5e-2, rtol=0)


def test_regions_full_partition(server, tmp_path):
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    hu = phantom((64, 48), 3)
    r = server.post("regions_ct", save_nifti(tmp_path / "slice.nii.gz", hu), result_dtype="uint8")
    assert r.status_code == 200, r.text
    parts = {p.headers[b"Content-Disposition"].split(b";")[1].strip(): p for p in MultipartDecoder.from_response(r).parts}
    params = json.loads(parts[b'name="params"'].text)
    (tmp_path / "regions.nii.gz").write_bytes(parts[b'name="image"'].content)
    out = nib.load(str(tmp_path / "regions.nii.gz"))
    assert out.shape == hu.shape
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-5)
    labels = np.asarray(out.dataobj)
    assert np.issubdtype(labels.dtype, np.integer)
    n = int(labels.max())
    assert n >= 2 and set(np.unique(labels).tolist()) == set(range(1, n + 1)), "not a partition labelled 1..L"
    np.testing.assert_array_equal(labels, local_regions(hu))
    assert params["regions_per_slice"] == [n]
    assert params["label_names"] == {f"region {k}": k for k in range(1, n + 1)}


def test_missing_checkpoint_is_a_clear_error_and_the_server_stays_up(server, tmp_path):
    src = save_nifti(tmp_path / "slice.nii.gz", phantom((64, 48), 4))
    r = server.post("restore_ct_missing", src, output="image")
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert str(Path("ct_missing") / "models" / "model.pt") in detail and "monai.bundle run training" in detail, detail
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
    assert server.post("regions_ct_missing", src, output="image").status_code == 200  # needs no checkpoint
    assert server.post("restore_ct", src, output="image").status_code == 200
    # a checkpoint copied into place is used by the next request, without a restart
    ckpt = server.bundles / "ct_missing" / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(server.bundles / "ct" / "models" / "model.pt", ckpt)
    try:
        assert server.post("restore_ct_missing", src, output="image").status_code == 200
        task = requests.get(f"{server.url}/info/", timeout=30).json()["models"]["restore_ct_missing"]
        assert task["checkpoint_found"] is True and "NOT READY" not in task["description"]
    finally:
        ckpt.unlink()


def test_malformed_uploads_are_4xx_with_a_message(server, tmp_path):
    r = server.post("restore_ct", data=b"this is not a NIfTI file" * 10, name="broken.nii.gz", output="image")
    assert r.status_code == 400, r.text
    assert "Cannot read the uploaded image" in r.json()["detail"] and "NIFTI" in r.json()["detail"]
    r = server.post("restore_ct", data=b"hello", name="notes.txt", output="image")
    assert r.status_code == 415, r.text
    assert ".txt" in r.json()["detail"] and "NIfTI" in r.json()["detail"]
    src = save_nifti(tmp_path / "slice.nii.gz", phantom((32, 32), 5))
    r = server.post("restore_nope", src, output="image")
    assert r.status_code == 404 and "restore_ct" in r.json()["detail"], r.text


def test_eight_concurrent_requests(server, tmp_path):
    images = [phantom((48, 48), 10 + i) for i in range(8)]
    paths = [save_nifti(tmp_path / f"c{i}.nii.gz", im) for i, im in enumerate(images)]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda p: server.post("restore_ct", p, output="image"), paths))
    wall = time.time() - t0
    for i, (r, hu) in enumerate(zip(responses, images)):
        assert r.status_code == 200, (i, r.text)
        f = tmp_path / f"o{i}.nii.gz"
        f.write_bytes(r.content)
        np.testing.assert_allclose(nib.load(str(f)).get_fdata(dtype=np.float32), local_restore(server.model, hu), atol=5e-2, rtol=0)
    print(f"8 concurrent restore requests (48x48): {wall:.2f} s wall")


def test_regions_through_the_monailabel_client_as_slicer_asks(server, tmp_path):
    """MONAI Label's own Python client (what the 3D Slicer module uses), with Slicer's result_extension / result_dtype."""
    from monailabel.client import MONAILabelClient

    hu = phantom((64, 48), 6)
    src = save_nifti(tmp_path / "slicer.nii.gz", hu)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"))
    assert "regions_ct" in client.info()["models"]
    result_file, params = client.infer("regions_ct", "", {"result_extension": ".nrrd", "result_dtype": "uint8"}, file=str(src))
    params = json.loads(params) if isinstance(params, str) else params
    out = nib.load(result_file)
    np.testing.assert_array_equal(np.asarray(out.dataobj), local_regions(hu))
    assert params["dtype"] == "uint8" and params["label_names"]["region 1"] == 1


def test_unknown_model_stops_the_server_with_the_available_list(tmp_path):
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles" / "ct" / "configs", bundles / "ct" / "configs")
    (tmp_path / "studies").mkdir()
    cmd = server_command(free_port(), tmp_path / "studies", bundles, write_log_config(tmp_path), models=("ct", "pet"))
    proc = subprocess.run(cmd, env=server_env(tmp_path), cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "no bundle for 'pet'" in text and "Available models: ct" in text, text[-3000:]
