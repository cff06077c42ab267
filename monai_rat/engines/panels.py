"""Pictures of an evaluation: a labelled PNG panel per test image, one overview, and optionally the restored arrays.

:class:`RestorationPanels` is an ignite handler for the bundles' evaluator. For every test image it
writes ``<output_dir>/panels/<name>.png``: the low-quality input, the model's restored image, the best
classical baseline (when :class:`~monai_rat.engines.ClassicalBaselines` runs), the target, and the
absolute error of the restored image, side by side, each labelled (with its PSNR against the
target), at a stated display window; at the end ``<output_dir>/overview.png`` holds all of them
(one row each, or a grid of thumbnails when there are many). With ``save_predictions`` the restored
image is also saved as ``<output_dir>/predictions/<name>.npy`` (float32, ``(C, H, W)``, network units,
the array as the network produced it).

Display: values in network units are mapped to display units by ``x * scale + offset`` (CT: HU);
grey images are shown in ``window`` (display units), or in ``[0, percentile of the target]`` (PET);
the error ``|restored - target|`` in ``[0, error_window]`` (display units), or in ``[0,
error_fraction x the window's width]``. RGB images are shown as RGB in the window, their error as the
mean over the channels, in grey. PNG and DICOM sources are read by MONAI as ``(x, y)`` (columns
first), so their panels are transposed back to the file's rows and columns. Labels are drawn with
PIL's default font (no matplotlib needed).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_rat.utils import as_flag, atomic_write

__all__ = ["RestorationPanels", "image_name"]

_EXTENSIONS = (".nii.gz", ".nii", ".png", ".dcm", ".ima", ".dicom", ".npy", ".jpg", ".jpeg", ".tif", ".tiff")


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def image_name(item: Mapping, input_key: str = "image", index: int | None = None) -> str:
    """A file-name-safe name for a test item: its input file's name without the extension (+ ``_slice<k>``).

    Args:
        item: a (decollated) batch item.
        input_key: the key whose MetaTensor's ``filename_or_obj`` names the image.
        index: a fallback number when the item names no file.
    """
    meta = getattr(item.get(input_key), "meta", None) or {}
    path = meta.get("filename_or_obj") or item.get("name") or ""
    if isinstance(path, (list, tuple)):
        path = path[0] if path else ""
    base = os.path.basename(str(path))
    for ext in _EXTENSIONS:
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    if not base:
        base = f"image_{index if index is not None else 0:04d}"
    sl = item.get("slice_index")
    if sl is not None:
        sl = int(torch.as_tensor(sl).reshape(-1)[0])
        base = f"{base}_slice{sl:03d}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", base)


def _kind(item: Mapping, input_key: str) -> str | None:
    from monai_rat.engines.inference import file_kind

    meta = getattr(item.get(input_key), "meta", None) or {}
    path = meta.get("filename_or_obj")
    if isinstance(path, (list, tuple)):
        path = path[0] if path else None
    return file_kind(path) if path else None


def _np(x: Any) -> np.ndarray:
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
    return t.detach().cpu().float().numpy()


class RestorationPanels:
    """Ignite handler: labelled before/after PNG panels per test image, an overview, optional ``.npy`` predictions.

    See the module docstring.

    Args:
        output_dir: the evaluation folder (``panels/``, ``overview.png`` and ``predictions/`` go there).
        baselines: optional :class:`~monai_rat.engines.ClassicalBaselines` attached before this handler;
            its best method's image (``engine.state.output[i]["baseline_<best>"]``) is shown.
        window: ``(low, high)`` display window in display units (CT: ``(-160, 240)`` HU); ``None``:
            ``(0, the target's percentile)``.
        error_window: upper end of the error display in display units (CT: 100 HU); ``None``:
            ``error_fraction`` x the window's width.
        scale: display units per network unit (CT: 4096 HU).
        offset: display value of network 0 (CT: -1024 HU).
        units: the display units' name for the caption (e.g. ``"HU"``).
        percentile: the target percentile that ends the window when ``window`` is ``None`` (PET: 99.5).
        error_fraction: the error window as a fraction of the window's width (default 0.25).
        input_label: the input's tile label (e.g. "low-dose input").
        model_label: the restored tile's label (e.g. "restored (rat)").
        target_label: the target's tile label (e.g. "full dose").
        data_range: data range of the network units, for the PSNR in the labels.
        metric_protocol: ``"float"`` or ``"reference"``, for the PSNR in the labels (as the summary).
        metric_window: the reference protocol's window.
        input_key: the input in the batch.
        label_key: the target in the batch.
        pred_key: the prediction in the output.
        panels: write the per-image panels and the overview (default True).
        max_panels: write panels for at most this many test images (the first ones; ``None``: all).
        save_predictions: also save each prediction as ``predictions/<name>.npy``.
        tile_min: smaller images are enlarged (nearest neighbour, integer factor) to at least this side.
        tile_max: larger images are reduced to at most this side.
        overview_rows: up to this many images the overview has one panel per row; beyond, a grid of
            thumbnails (at most ``overview_max``).
        overview_max: the most thumbnails in the overview.

    Raises:
        ValueError: when ``window`` is not ``(low, high)`` with high > low, or neither ``window`` nor
            ``percentile`` is given.
    """

    def __init__(
        self,
        output_dir: str,
        baselines: Any = None,
        window: Sequence[float] | None = None,
        error_window: float | None = None,
        scale: float = 1.0,
        offset: float = 0.0,
        units: str = "",
        percentile: float | None = None,
        error_fraction: float = 0.25,
        input_label: str = "input",
        model_label: str = "restored",
        target_label: str = "target",
        data_range: float = 1.0,
        metric_protocol: str = "float",
        metric_window: Sequence[float] | None = None,
        input_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        panels: bool = True,
        max_panels: int | None = None,
        save_predictions: bool = False,
        tile_min: int = 192,
        tile_max: int = 512,
        overview_rows: int = 12,
        overview_max: int = 64,
    ) -> None:
        if window is not None:
            lo, hi = (float(v) for v in window)
            if not hi > lo:
                raise ValueError(f"RestorationPanels: `window` must be (low, high) with high > low, got {window!r}.")
            window = (lo, hi)
        elif percentile is None:
            raise ValueError("RestorationPanels: give a display `window` or a target `percentile`.")
        self.output_dir = str(output_dir)
        self.baselines = baselines
        self.window = window
        self.error_window = None if error_window is None else float(error_window)
        self.scale, self.offset, self.units = float(scale), float(offset), str(units)
        self.percentile = percentile
        self.error_fraction = float(error_fraction)
        self.input_label, self.model_label, self.target_label = str(input_label), str(model_label), str(target_label)
        self.data_range = float(data_range)
        self.metric_protocol, self.metric_window = metric_protocol, metric_window
        self.input_key, self.label_key, self.pred_key = input_key, label_key, pred_key
        self.panels = as_flag(panels, "panels")
        self.max_panels = None if max_panels is None else int(max_panels)
        self.save_predictions = as_flag(save_predictions, "save_predictions")
        self.tile_min, self.tile_max = int(tile_min), int(tile_max)
        self.overview_rows, self.overview_max = int(overview_rows), int(overview_max)
        self.written: list[str] = []
        self.predictions: list[str] = []
        self._thumbs: list[Any] = []
        self._names: set[str] = set()
        self._seen = 0
        self.logger = logging.getLogger(__name__)

    @property
    def panel_dir(self) -> str:
        """``<output_dir>/panels``."""
        return os.path.join(self.output_dir, "panels")

    @property
    def overview_path(self) -> str:
        """``<output_dir>/overview.png``."""
        return os.path.join(self.output_dir, "overview.png")

    @property
    def prediction_dir(self) -> str:
        """``<output_dir>/predictions``."""
        return os.path.join(self.output_dir, "predictions")

    def attach(self, engine: Any) -> None:
        """Write at every ``ITERATION_COMPLETED``; the overview at ``EPOCH_COMPLETED`` (rank 0 only).

        Args:
            engine: the evaluator.
        """
        from ignite.engine import Events

        self.logger = engine.logger
        if not (self.panels or self.save_predictions):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_overview)

    def _reset(self, engine: Any = None) -> None:
        self.written, self.predictions, self._thumbs, self._names, self._seen = [], [], [], set(), 0

    # -- display ------------------------------------------------------------------------------------
    def _display(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.offset

    def _window_of(self, target_disp: np.ndarray) -> tuple[float, float]:
        if self.window is not None:
            return self.window
        hi = float(np.percentile(target_disp, self.percentile))
        return (0.0, hi if hi > 0 else 1.0)

    def _to_u8(self, disp: np.ndarray, lo: float, hi: float, transpose: bool) -> np.ndarray:
        v = np.clip((disp - lo) / (hi - lo), 0, 1)
        img = np.repeat(v, 3, axis=0) if v.shape[0] == 1 else v[:3]
        img = np.moveaxis(img, 0, -1)  # (H, W, 3)
        if transpose:
            img = np.swapaxes(img, 0, 1)
        return (img * 255 + 0.5).astype(np.uint8)

    def _psnr(self, pred: np.ndarray, target: np.ndarray) -> float:
        from monai_rat.metrics import restoration_metric

        m = restoration_metric("psnr", self.metric_protocol, self.data_range, window=self.metric_window)
        return float(m(torch.as_tensor(pred)[None], torch.as_tensor(target)[None]).reshape(-1)[0])

    def _tile(self, arr_u8: np.ndarray, factor: float):
        from PIL import Image

        im = Image.fromarray(arr_u8)
        if factor != 1:
            size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
            im = im.resize(size, Image.NEAREST if factor > 1 else Image.LANCZOS)
        return im

    def _panel(self, name: str, tiles: list[tuple[str, np.ndarray]], caption: str):
        from PIL import Image, ImageDraw

        h, w = tiles[0][1].shape[:2]
        side = max(h, w)
        factor = 1.0
        if side < self.tile_min:
            factor = float(math.ceil(self.tile_min / side))
        elif side > self.tile_max:
            factor = self.tile_max / side
        ims = [self._tile(a, factor) for _, a in tiles]
        tw, th = ims[0].width, ims[0].height
        font, small = _font(14), _font(12)
        pad, top, bottom = 4, 36, 22
        panel = Image.new("RGB", (len(ims) * (tw + pad) + pad, th + top + bottom), (255, 255, 255))
        draw = ImageDraw.Draw(panel)
        for i, ((label, _), im) in enumerate(zip(tiles, ims)):
            x = pad + i * (tw + pad)
            panel.paste(im, (x, top))
            first, _, second = label.partition("\n")
            draw.text((x + 2, 2), first, fill=(0, 0, 0), font=font)
            if second:
                draw.text((x + 2, 19), second, fill=(60, 60, 60), font=small)
        draw.text((pad + 2, top + th + 4), f"{name}: {caption}", fill=(0, 0, 0), font=small)
        return panel

    # -- events -------------------------------------------------------------------------------------
    def write(self, engine: Any) -> None:
        """Write the panel (and prediction) of each image of the batch just restored.

        Args:
            engine: the evaluator (decollated ``engine.state.batch`` and ``engine.state.output``).
        """
        from monai_rat.engines.metrics import _is_rank0

        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, Mapping) or isinstance(output, Mapping):
            raise TypeError("RestorationPanels needs a decollated batch and output (the evaluator's decollate=True).")
        for b, o in zip(batch, output):
            self._seen += 1
            name = image_name(b, self.input_key, self._seen - 1)
            if name in self._names:
                k = 2
                while f"{name}_{k}" in self._names:
                    k += 1
                name = f"{name}_{k}"
            self._names.add(name)
            pred = _np(o[self.pred_key])
            if not _is_rank0():
                continue
            if self.save_predictions:
                os.makedirs(self.prediction_dir, exist_ok=True)
                path = os.path.join(self.prediction_dir, f"{name}.npy")
                with atomic_write(path, "wb") as f:
                    np.save(f, pred.astype(np.float32))
                self.predictions.append(path)
            if not self.panels or (self.max_panels is not None and len(self.written) >= self.max_panels):
                continue
            self._write_panel(name, b, o, pred)

    def _write_panel(self, name: str, b: Mapping, o: Mapping, pred: np.ndarray) -> None:
        x, y = _np(b[self.input_key]), _np(b[self.label_key])
        transpose = _kind(b, self.input_key) in ("png", "dicom")
        yd = self._display(y)
        lo, hi = self._window_of(yd)
        emax = self.error_window if self.error_window is not None else self.error_fraction * (hi - lo)
        tiles = [(f"{self.input_label}\nPSNR {self._psnr(x, y):.2f} dB", self._to_u8(self._display(x), lo, hi, transpose)),
                 (f"{self.model_label}\nPSNR {self._psnr(pred, y):.2f} dB", self._to_u8(self._display(pred), lo, hi, transpose))]  # fmt: skip
        best = getattr(self.baselines, "best", None)
        if best is not None and self.baselines.output_key(best) in o:
            bimg = _np(o[self.baselines.output_key(best)])
            by = y[:, : bimg.shape[1], : bimg.shape[2]]
            if bimg.shape != y.shape:  # an SR baseline of a non-multiple size: shown on the target's grid, padded
                full = np.zeros_like(y)
                full[:, : bimg.shape[1], : bimg.shape[2]] = bimg
                bimg = full
            label = f"{self.baselines.label(best)}\nbest classical, PSNR {self._psnr(bimg[:, : by.shape[1], : by.shape[2]], by):.2f} dB"
            tiles.append((label, self._to_u8(self._display(bimg), lo, hi, transpose)))
        tiles.append((self.target_label, self._to_u8(yd, lo, hi, transpose)))
        err = np.abs(self._display(pred) - yd).mean(axis=0, keepdims=True)
        tiles.append((f"|restored - {self.target_label}|\n0 (black) to {emax:.4g} {self.units}".rstrip(), self._to_u8(err, 0.0, emax, transpose)))
        units = f" {self.units}" if self.units else ""
        caption = f"display window [{lo:.4g}, {hi:.4g}]{units}; error 0-{emax:.4g}{units}; PSNR ({self.metric_protocol} protocol) vs {self.target_label}"
        panel = self._panel(name, tiles, caption)
        os.makedirs(self.panel_dir, exist_ok=True)
        path = os.path.join(self.panel_dir, f"{name}.png")
        with atomic_write(path, "wb") as f:
            panel.save(f, format="PNG")
        self.written.append(path)
        if len(self._thumbs) < self.overview_max:
            width = 1400 if self._seen <= self.overview_rows else 480
            f = min(1.0, width / panel.width)
            self._thumbs.append(panel if f == 1.0 else panel.resize((round(panel.width * f), round(panel.height * f))))

    def write_overview(self, engine: Any = None) -> str | None:
        """Write ``overview.png``: every panel, one per row, or a grid of thumbnails when there are many.

        Args:
            engine: the evaluator (unused; ignite handler signature).

        Returns:
            the overview's path, or ``None`` when no panel was written.
        """
        from PIL import Image

        from monai_rat.engines.metrics import _is_rank0

        if self.save_predictions and self.predictions:
            self.logger.info(f"Saved {len(self.predictions)} predictions (network units, .npy) to {self.prediction_dir}.")
        if not self._thumbs or not _is_rank0():
            return None
        thumbs = self._thumbs
        if len(self.written) > self.overview_rows:  # a grid of equal thumbnails
            tw = min(t.width for t in thumbs)
            thumbs = [t.resize((tw, round(t.height * tw / t.width))) for t in thumbs]
            cols = math.ceil(math.sqrt(len(thumbs)))
        else:
            cols = 1
        rows = math.ceil(len(thumbs) / cols)
        cw, rh = max(t.width for t in thumbs), max(t.height for t in thumbs)
        sheet = Image.new("RGB", (cols * cw, rows * rh), (255, 255, 255))
        for i, t in enumerate(thumbs):
            sheet.paste(t, ((i % cols) * cw, (i // cols) * rh))
        with atomic_write(self.overview_path, "wb") as f:
            sheet.save(f, format="PNG")
        more = "" if len(self.written) <= len(thumbs) else f" (the first {len(thumbs)})"
        skipped = "" if self.max_panels is None or self._seen <= self.max_panels else f" of {self._seen} test images (--max_panels {self.max_panels})"
        self.logger.info(f"Wrote {len(self.written)} panels{skipped} to {self.panel_dir} and the overview{more} {self.overview_path}.")
        return self.overview_path
