"""Per-slice and per-volume PSNR / SSIM for models that restore 3D volumes slice by slice (the PET bundle).

The evaluator runs on 2D slices (``monai_rat.data.PETSliceDataset``); :class:`SliceVolumeMetrics`
groups them back by volume (the slice's ``filename_or_obj``) and writes, in ``output_dir``:

- ``per_slice.csv``: volume, slice_index, psnr, ssim, input_psnr, input_ssim (restored vs target and
  input vs target);
- ``per_volume.csv``: volume, num_slices, psnr, ssim, input_psnr, input_ssim, where a volume's PSNR is
  computed from the mean squared error over all its evaluated slices, and its SSIM is the mean of its
  slices' SSIM;
- ``volume_summary.json``: mean and std over volumes and over slices (the paper's Table 1 reports
  mean ± std).

Only the slices the dataset kept are evaluated (air-only slices are dropped and counted by the
dataset), and the summary says how many.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict

import numpy as np
import torch

__all__ = ["SliceVolumeMetrics"]

logger = logging.getLogger(__name__)

_FIELDS = ("psnr", "ssim", "input_psnr", "input_ssim")


class SliceVolumeMetrics:
    """Ignite handler: per-slice and per-volume PSNR / SSIM of a slice-wise evaluation (see module docstring).

    Args:
        output_dir: where the CSV and JSON files go (created).
        data_range: the data range for PSNR and SSIM (default 1.0).
        pred_key: key of the prediction in the engine output (default "pred").
        label_key: key of the target (default "label").
        input_key: key of the network input (default "image"); its metadata names the volume.
        slice_key: key of the slice index in the batch (default "slice_index", as
            ``monai_rat.data.VolumeToSlicesd`` writes).

    Raises:
        ValueError: when ``data_range`` is not > 0.
    """

    def __init__(
        self,
        output_dir: str,
        data_range: float = 1.0,
        pred_key: str = "pred",
        label_key: str = "label",
        input_key: str = "image",
        slice_key: str = "slice_index",
    ) -> None:
        if not (math.isfinite(data_range) and data_range > 0):
            raise ValueError(f"SliceVolumeMetrics: `data_range` must be > 0, got {data_range!r}.")
        self.output_dir = str(output_dir)
        self.data_range = float(data_range)
        self.pred_key, self.label_key, self.input_key, self.slice_key = pred_key, label_key, input_key, slice_key
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        """Collect at each iteration, write when the evaluation completes.

        Args:
            engine: a MONAI ``SupervisedEvaluator`` (decollated output, the default).
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _ssim(self, a: torch.Tensor, b: torch.Tensor) -> float:
        from monai.metrics import SSIMMetric

        return float(SSIMMetric(spatial_dims=2, data_range=self.data_range)(a[None].float(), b[None].float()).mean())

    def _psnr_mse(self, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        mse = float(torch.mean((a.float() - b.float()) ** 2))
        return (10 * math.log10(self.data_range**2 / mse) if mse > 0 else float("inf")), mse

    def _collect(self, engine) -> None:
        outputs, batches = engine.state.output, engine.state.batch
        if isinstance(outputs, dict):
            raise ValueError("SliceVolumeMetrics needs a decollated evaluator output (decollate=True, MONAI's default).")
        for out, item in zip(outputs, batches):
            pred, label, inp = (torch.as_tensor(out[k]).detach().cpu() for k in (self.pred_key, self.label_key, self.input_key))
            meta = getattr(out[self.input_key], "meta", {}) or {}
            volume = str(meta.get("filename_or_obj", "<unknown>"))
            idx = item.get(self.slice_key, -1) if isinstance(item, dict) else -1
            psnr, mse = self._psnr_mse(pred, label)
            in_psnr, in_mse = self._psnr_mse(inp, label)
            self.rows.append({
                "volume": volume, "slice_index": int(idx), "psnr": psnr, "ssim": self._ssim(pred, label),
                "input_psnr": in_psnr, "input_ssim": self._ssim(inp, label), "_mse": mse, "_in_mse": in_mse,
            })  # fmt: skip

    def _write(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "per_slice.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("volume", "slice_index") + _FIELDS)
            for r in self.rows:
                w.writerow([r["volume"], r["slice_index"]] + [f"{r[k]:.6f}" for k in _FIELDS])
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in self.rows:
            groups[r["volume"]].append(r)
        volumes = []
        for name, rs in groups.items():
            mse, in_mse = np.mean([r["_mse"] for r in rs]), np.mean([r["_in_mse"] for r in rs])
            volumes.append({
                "volume": name, "num_slices": len(rs),
                "psnr": 10 * math.log10(self.data_range**2 / mse) if mse > 0 else float("inf"),
                "ssim": float(np.mean([r["ssim"] for r in rs])),
                "input_psnr": 10 * math.log10(self.data_range**2 / in_mse) if in_mse > 0 else float("inf"),
                "input_ssim": float(np.mean([r["input_ssim"] for r in rs])),
            })  # fmt: skip
        with open(os.path.join(self.output_dir, "per_volume.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("volume", "num_slices") + _FIELDS)
            for v in volumes:
                w.writerow([v["volume"], v["num_slices"]] + [f"{v[k]:.6f}" for k in _FIELDS])

        def stats(values):
            arr = np.asarray(values, dtype=np.float64)
            return {"mean": float(arr.mean()), "std": float(arr.std())} if arr.size else {"mean": None, "std": None}

        summary = {
            "num_volumes": len(volumes),
            "num_slices": len(self.rows),
            "data_range": self.data_range,
            "per_volume": {k: stats([v[k] for v in volumes]) for k in _FIELDS},
            "per_slice": {k: stats([r[k] for r in self.rows]) for k in _FIELDS},
            "notes": "per-volume PSNR from the MSE over the volume's evaluated (non-air) slices; per-volume SSIM = "
            "mean of its slices' SSIM; std is the population std (ddof 0)",
        }
        with open(os.path.join(self.output_dir, "volume_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        pv = summary["per_volume"]
        if volumes:
            logger.info(
                "Per-volume (%d volumes, %d slices): PSNR %.4f ± %.4f dB (input %.4f ± %.4f), SSIM %.4f ± %.4f (input %.4f ± %.4f); "
                "written to %s",
                len(volumes), len(self.rows), pv["psnr"]["mean"], pv["psnr"]["std"], pv["input_psnr"]["mean"],
                pv["input_psnr"]["std"], pv["ssim"]["mean"], pv["ssim"]["std"], pv["input_ssim"]["mean"],
                pv["input_ssim"]["std"], self.output_dir,
            )
