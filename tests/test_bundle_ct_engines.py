"""Unit tests of the bundle helpers in ``monai_rat.engines`` (no bundle run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from monai_rat.engines import (
    AtomicCheckpointSaver,
    RegionLossAdapter,
    RegionMapNetwork,
    atomic_torch_save,
    inference_datalist,
    select_schedule,
)

ROOT = Path(__file__).resolve().parents[1]


def test_region_loss_adapter_reads_the_current_batch():
    calls = []

    def loss(pred, target, regions):
        calls.append(regions)
        return (pred - target).abs().mean()

    adapter = RegionLossAdapter(loss)
    pred, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    with pytest.raises(RuntimeError, match="not attached"):
        adapter(pred, target)
    engine = SimpleNamespace(state=SimpleNamespace(batch={"image": pred, "regions": torch.arange(32).view(2, 1, 4, 4)}))
    adapter.attach(engine)
    assert adapter(pred, target).item() == 1.0
    assert torch.equal(calls[-1], torch.arange(32).view(2, 1, 4, 4))
    engine.state.batch = {"image": pred}
    with pytest.raises(KeyError, match="'regions'"):
        adapter(pred, target)
    with pytest.raises(TypeError, match="callable"):
        RegionLossAdapter(3)


def test_region_loss_adapter_with_focal_region_loss_matches_direct_call():
    from monai_rat.losses import FocalRegionLoss

    pred, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    regions = torch.randint(0, 3, (2, 1, 8, 8))
    adapter = RegionLossAdapter(FocalRegionLoss(gamma=1e-3, delta=1.0))
    adapter.attach(SimpleNamespace(state=SimpleNamespace(batch={"regions": regions})))
    torch.testing.assert_close(adapter(pred, target), FocalRegionLoss(gamma=1e-3, delta=1.0)(pred, target, regions))


def test_atomic_save_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"a": torch.ones(3)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"], "no temporary file may be left behind"


_SAVER_LOOP = """
import sys, torch
from monai_rat.engines import atomic_torch_save
big = torch.zeros(40_000_000)  # 160 MB: a save takes long enough to be killed in the middle
i = 0
while True:
    i += 1
    big[0] = i
    atomic_torch_save({"i": i, "big": big}, sys.argv[1])
    print(i, flush=True)
"""


def test_kill_during_save_leaves_previous_checkpoint_usable(tmp_path):
    """SIGKILL a process in the middle of a 160 MB save: the previous checkpoint must still load."""
    killed_mid_save = False
    for attempt, delay in enumerate((0.1, 0.05, 0.2)):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        path = folder / "last.pt"
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER_LOOP, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
        try:
            assert proc.stdout.readline().strip() == "1"  # one complete save; the next one starts now
            time.sleep(delay)  # a save here takes 0.2-0.8 s
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        state = torch.load(path, weights_only=True)
        assert state["i"] >= 1 and state["big"][0].item() == state["i"] and state["big"].numel() == 40_000_000
        # a temporary file left behind proves the kill landed inside a save
        killed_mid_save = bool(list(folder.glob("last.pt.*.tmp")))
        if killed_mid_save:
            break
    assert killed_mid_save, "no attempt killed the process in the middle of a save"
    # the next run's saver removes what the killed save left
    saver = AtomicCheckpointSaver(str(folder), {"model": torch.nn.Linear(1, 1)}, "last.pt")
    assert saver.remove_stale_temporaries() and not list(folder.glob("last.pt.*.tmp"))
    assert folder.joinpath("last.pt").is_file()


def test_checkpoint_saver_best_and_resume(tmp_path):
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(2, 2)
    best = AtomicCheckpointSaver(str(tmp_path), {"model": net}, "model.pt", key_metric_name="psnr", weights_only_state=True)
    evaluator = Engine(lambda e, b: None)
    scores = iter([10.0, 12.0, 11.0])
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(psnr=next(scores)))
    best.attach(evaluator)
    for expected in (10.0, 12.0, 12.0):
        evaluator.run([0])
        assert best.best_metric == expected
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"weight", "bias"}  # a plain state dict
    with pytest.raises(ValueError, match="empty"):
        AtomicCheckpointSaver(str(tmp_path), {})
    with pytest.raises(ValueError, match="state_dict"):
        AtomicCheckpointSaver(str(tmp_path), {"x": 3})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "last.pt").write_bytes(b"not a checkpoint")
    trainer = Engine(lambda e, b: None)
    AtomicCheckpointSaver(str(broken), {"model": net}, resume=True, save_engine="trainer").attach(trainer)
    with pytest.raises(RuntimeError, match="Cannot resume from .*last.pt"):
        trainer.run([0], max_epochs=1)


def test_region_map_network_modes():
    seen = {}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x, regions):
            seen["regions"] = regions
            return self.conv(x)

    inner = Net()
    wrapped = RegionMapNetwork(inner, "single")
    x = torch.rand(2, 1, 8, 8)
    wrapped(x)
    assert seen["regions"].shape == (2, 1, 8, 8) and (seen["regions"] == 1).all()
    assert set(wrapped.state_dict()) == {"conv.weight", "conv.bias"}  # same keys as the bare network
    wrapped.load_state_dict(inner.state_dict())
    RegionMapNetwork(inner, "channel")(torch.cat([x, torch.full_like(x, 3.0)], 1))
    assert seen["regions"].dtype == torch.long and (seen["regions"] == 3).all()
    RegionMapNetwork(inner, lambda img: torch.zeros(1, *img.shape[1:], dtype=torch.long))(x)
    assert seen["regions"].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="partition"):
        RegionMapNetwork(inner, "sam")


def test_inference_datalist_kinds_and_errors(tmp_path):
    with pytest.raises(ValueError, match="--input_path"):
        inference_datalist("")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference_datalist(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no NIfTI"):
        inference_datalist(tmp_path)
    with pytest.raises(TypeError, match="notes.txt"):
        inference_datalist(tmp_path / "notes.txt")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)  # DICOM without a suffix
    (tmp_path / "s" / "b.IMA").write_bytes(b"")
    (tmp_path / "c.nii.gz").write_bytes(b"")
    kinds = {Path(d["image"]).name: d["kind"] for d in inference_datalist(tmp_path)}
    assert kinds == {"a.png": "png", "IM0001": "dicom", "b.IMA": "dicom", "c.nii.gz": "nifti"}
    (tmp_path / "a.nii").write_bytes(b"")
    with pytest.raises(ValueError, match="a_rat.nii.gz"):
        inference_datalist(tmp_path)


def test_apply_to_kinds():
    from monai.data import MetaTensor

    from monai_rat.engines import ApplyToKindsd

    mark = ApplyToKindsd(lambda d: {**d, "done": True}, kinds=["dicom"])
    assert mark({"kind": "dicom"})["done"] and "done" not in mark({"kind": "png"})
    assert mark({"image": "/x/IM1.dcm"})["done"]  # no kind entry: told by the file name (e.g. MONAI Label)
    assert "done" not in mark({"image": MetaTensor([1.0], meta={"filename_or_obj": "/x/a.nii.gz"})})
    with pytest.raises(KeyError, match="no 'kind' entry"):
        mark({"label": 1})


def test_validation_rounds():
    from monai_rat.engines import validation_rounds

    assert validation_rounds(240, 60) == 4
    with pytest.raises(ValueError, match=r"num_iterations \(250\) must be a multiple of val_interval \(60\)"):
        validation_rounds(250, 60)
    with pytest.raises(ValueError, match="positive integers"):
        validation_rounds(0, 60)


def test_select_schedule(caplog):
    schedules = {"paper": {"num_iterations": 200000}, "demo": {"num_iterations": 10}}
    with caplog.at_level("INFO", logger="monai_rat.bundle"):
        assert select_schedule(schedules, "")["num_iterations"] == 10
    assert "To train on real data" in caplog.text
    assert select_schedule(schedules, "/data/aapm")["num_iterations"] == 200000
    assert select_schedule(schedules, "", name="paper")["num_iterations"] == 200000
    with pytest.raises(KeyError, match="'fast'"):
        select_schedule(schedules, "", name="fast")
