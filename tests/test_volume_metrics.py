"""SliceVolumeMetrics: slices grouped by volume, per-volume PSNR from the pooled MSE, mean ± std, bad input."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from monai_rat.engines.volume_metrics import SliceVolumeMetrics


def _item(volume, idx, err):
    label = torch.full((1, 16, 16), 0.5)
    return ({"pred": label + err, "label": label, "image": MetaTensor(label + 2 * err, meta={"filename_or_obj": volume})},
            {"slice_index": idx})


def test_grouping_and_values(tmp_path):
    h = SliceVolumeMetrics(str(tmp_path), data_range=1.0)
    items = [_item("a.nii.gz", 3, 0.1), _item("a.nii.gz", 4, 0.2), _item("b.nii.gz", 7, 0.1)]
    engine = SimpleNamespace(state=SimpleNamespace(output=[o for o, _ in items], batch=[b for _, b in items]))
    h._collect(engine)
    h._write(engine)
    with open(tmp_path / "per_slice.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["volume"], int(r["slice_index"])) for r in rows] == [("a.nii.gz", 3), ("a.nii.gz", 4), ("b.nii.gz", 7)]
    assert float(rows[0]["psnr"]) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert float(rows[0]["input_psnr"]) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-4)
    with open(tmp_path / "per_volume.csv", newline="") as f:
        vols = {r["volume"]: r for r in csv.DictReader(f)}
    assert float(vols["a.nii.gz"]["psnr"]) == pytest.approx(10 * math.log10(1 / 0.025), abs=1e-4)  # pooled mse
    assert int(vols["a.nii.gz"]["num_slices"]) == 2
    summary = json.loads((tmp_path / "volume_summary.json").read_text())
    assert summary["num_volumes"] == 2 and summary["num_slices"] == 3
    assert summary["per_volume"]["psnr"]["mean"] == pytest.approx((10 * math.log10(40) + 20) / 2, abs=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="data_range"):
        SliceVolumeMetrics("x", data_range=0)
    h = SliceVolumeMetrics("x")
    with pytest.raises(ValueError, match="decollated"):
        h._collect(SimpleNamespace(state=SimpleNamespace(output={"pred": 1}, batch={})))
