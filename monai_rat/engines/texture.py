"""Evaluation handler: the texture each method leaves on flat tissue, beside PSNR and SSIM.

:class:`FlatRegionTexture` measures, on every test image, the high-pass RMS and the grid amplitude
(:mod:`monai_rat.metrics.texture`) of the input, the restored image, each classical baseline and the
target, in the target's flattest window of soft tissue, in display units (CT: HU). A restored image
whose high-pass energy there is above the target's has added texture (or left noise) that PSNR may
forgive. It writes ``<output_dir>/texture.json`` and logs one table (means over the test images).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_rat.utils import atomic_write

__all__ = ["FlatRegionTexture"]


class FlatRegionTexture:
    """Ignite handler: flat-region texture of the input, the model, the baselines and the target per test image.

    Args:
        output_dir: where ``texture.json`` is written.
        baselines: optional :class:`~monai_rat.engines.ClassicalBaselines` attached before this handler;
            each of its methods is measured too.
        value_range: ``(low, high)`` in display units: the window's mean in the target must lie in it
            (CT soft tissue, e.g. ``(-50, 100)`` HU, so that flat air is not chosen).
        size: the window's side in pixels.
        sigma: the high-pass filter's Gaussian sigma (pixels).
        scale: display units per network unit (CT: 4096).
        offset: display value of network 0 (CT: -1024).
        units: the display units' name (for the log).
        input_label: the input's name in the table.
        model_label: the restored image's name.
        target_label: the target's name.
        input_key: the input in the batch.
        label_key: the target in the batch.
        pred_key: the prediction in the output.
    """

    def __init__(
        self,
        output_dir: str,
        baselines: Any = None,
        value_range: Sequence[float] = (-50.0, 100.0),
        size: int = 32,
        sigma: float = 2.0,
        scale: float = 1.0,
        offset: float = 0.0,
        units: str = "",
        input_label: str = "input",
        model_label: str = "restored",
        target_label: str = "target",
        input_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"FlatRegionTexture: value_range must be (low, high) with high > low, got {value_range!r}.")
        self.output_dir, self.baselines = str(output_dir), baselines
        self.value_range, self.size, self.sigma = (lo, hi), int(size), float(sigma)
        self.scale, self.offset, self.units = float(scale), float(offset), str(units)
        self.input_label, self.model_label, self.target_label = str(input_label), str(model_label), str(target_label)
        self.input_key, self.label_key, self.pred_key = input_key, label_key, pred_key
        self.images: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.logger = logging.getLogger(__name__)

    @property
    def path(self) -> str:
        """``<output_dir>/texture.json``."""
        return os.path.join(self.output_dir, "texture.json")

    def attach(self, engine: Any) -> None:
        """Measure at every ``ITERATION_COMPLETED``; write and log at ``EPOCH_COMPLETED``."""
        from ignite.engine import Events

        self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.measure)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _reset(self, engine: Any = None) -> None:
        self.images, self.skipped = {}, {}

    def _grey(self, x: Any) -> np.ndarray:
        from monai_rat.engines.panels import _np

        a = _np(x).astype(np.float64)
        a = a.mean(axis=0) if a.ndim == 3 else a  # (C, H, W) -> (H, W); grey images have C = 1
        return a * self.scale + self.offset

    def measure(self, engine: Any) -> None:
        """Measure each image of the batch just restored (decollated ``engine.state.batch`` / ``output``)."""
        from monai_rat.engines.panels import image_name
        from monai_rat.metrics.texture import flat_region_texture

        for b, o in zip(engine.state.batch, engine.state.output):
            name = image_name(b, self.input_key, len(self.images) + len(self.skipped))
            target = self._grey(b[self.label_key])
            images = {self.input_label: self._grey(b[self.input_key]), self.model_label: self._grey(o[self.pred_key])}
            for m in getattr(self.baselines, "methods", None) or []:
                key = self.baselines.output_key(m)
                if key in o and np.shape(o[key])[-2:] == target.shape:
                    images[self.baselines.label(m)] = self._grey(o[key])
            try:
                res = flat_region_texture(images, target, self.size, self.value_range, self.sigma)
            except ValueError as e:  # too small, or no soft-tissue window: said in the log and the file
                self.skipped[name] = str(e)
                continue
            res["methods"][self.target_label] = res["methods"].pop("target")
            self.images[name] = res

    def summary(self) -> dict:
        """``{method: {"high_pass_rms": mean, "grid_amplitude": mean, "above_target": count}}`` over the images."""
        out: dict[str, dict] = {}
        for res in self.images.values():
            ref = res["methods"][self.target_label]["high_pass_rms"]
            for m, v in res["methods"].items():
                s = out.setdefault(m, {"high_pass_rms": [], "grid_amplitude": [], "above_target": 0})
                s["high_pass_rms"].append(v["high_pass_rms"])
                s["grid_amplitude"].append(v["grid_amplitude"])
                s["above_target"] += int(v["high_pass_rms"] > ref)
        return {m: {"high_pass_rms": float(np.mean(s["high_pass_rms"])), "grid_amplitude": float(np.mean(s["grid_amplitude"])),
                    "above_target": s["above_target"]} for m, s in out.items()}  # fmt: skip

    def write(self, engine: Any = None) -> str | None:
        """Write ``texture.json`` and log the table (rank 0); return the path (``None`` when nothing was measured)."""
        from monai_rat.engines.metrics import _is_rank0

        if not _is_rank0():
            return None
        self.logger = getattr(engine, "logger", None) or self.logger
        for name, why in self.skipped.items():
            self.logger.info(f"Flat-region texture: {name} skipped ({why})")
        if not self.images:
            return None
        summary = self.summary()
        record = {"units": self.units, "value_range": list(self.value_range), "size": self.size, "sigma": self.sigma,
                  "summary": summary, "images": self.images, "skipped": self.skipped}  # fmt: skip
        os.makedirs(self.output_dir, exist_ok=True)
        with atomic_write(self.path, "w") as f:
            json.dump(record, f, indent=1)
        u = f" ({self.units})" if self.units else ""
        lines = [f"Flat-region texture{u} in each test image's flattest {self.size} x {self.size} window of the "
                 f"{self.target_label} with mean in [{self.value_range[0]:g}, {self.value_range[1]:g}] "
                 f"({len(self.images)} images; above the {self.target_label}'s high-pass RMS = texture or noise left):",
                 f"  {'method':<34}{'high-pass RMS':>15}{'grid amplitude':>16}{'images above':>14}"]  # fmt: skip
        for m, s in summary.items():
            lines.append(f"  {m:<34}{s['high_pass_rms']:>15.2f}{s['grid_amplitude']:>16.2f}{s['above_target']:>14d}")
        self.logger.info("\n".join(lines))
        return self.path

