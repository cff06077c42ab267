"""Classical baselines beside the model in an evaluation: tuned on the validation split, applied to every test image.

:class:`ClassicalBaselines` is an ignite handler for the bundles' evaluator. When the evaluation
starts it tunes each method's one parameter (:func:`monai_rat.transforms.tune_classical`) on the
**validation** images, preprocessed as the test images are, and never on the test split; it caches
the tuned parameters in a small JSON file keyed by the validation files (paths, sizes, modification
times), the method and its tuning settings, so a second evaluation does not tune again. Then, for
every test image the evaluator restores, it restores the same input with each tuned method, scores
it with the same protocol as the model (:func:`monai_rat.metrics.restoration_metric`), and leaves the
restored image in the engine output (``baseline_<method>``) for the panels
(:class:`monai_rat.engines.RestorationPanels`). At the end of the epoch the per-image scores go to
``engine.state.metric_details`` / ``engine.state.metrics`` as ``<method>_psnr`` and ``<method>_ssim``,
so MONAI's ``MetricsSaver`` and :class:`monai_rat.engines.MetricsSummary` report them with the model's.

The best classical baseline is the one with the highest validation PSNR after tuning (chosen on
validation, as the model's checkpoint is); the summary also says which scored best on the test split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["ClassicalBaselines", "PARAMETER_NAMES"]

#: what each method's one parameter is called in logs and summaries
PARAMETER_NAMES = {
    "gaussian": "sigma (px)",
    "tv": "weight",
    "nlm": "h",
    "bm3d": "noise std",
    "bicubic": "scale",
    "lanczos": "scale",
}
_SUPER_RESOLUTION = ("bicubic", "lanczos")
_TUNING_KEYS = ("grid", "refine", "grid_points", "max_extend")
_CACHE_VERSION = 1


def _plain(x: Any) -> torch.Tensor:
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
    return t.detach().cpu()


def _file_record(path: Any) -> list | None:
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    st = os.stat(path)
    return [os.path.abspath(str(path)), int(st.st_size), int(st.st_mtime_ns)]


def _meta_file(x: Any) -> str | None:
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else None


def _write_json_atomically(obj: Any, path: str) -> None:
    from monai_rat.utils import atomic_write

    with atomic_write(path) as f:
        json.dump(obj, f, indent=1)


def _fmt(p: Any) -> str:
    return "-" if p is None else (f"{p:.4g}" if isinstance(p, float) else str(p))


class ClassicalBaselines:
    """Ignite handler: tune classical methods on validation images, then restore and score every test image with them.

    Attach to the evaluator before MONAI's ``StatsHandler`` / ``MetricsSaver`` and
    :class:`~monai_rat.engines.MetricsSummary` (the bundles' ``eval_handlers`` do), so that they see
    the baselines' metrics. See the module docstring.

    Tuning settings: every method gets a coarse log-spaced grid of ``grid_points`` values over the
    range of :func:`~monai_rat.transforms.classical.default_grid` (which follows the validation noise
    level), then ``refine`` golden-section steps; ``settings[method]`` may override ``grid`` (explicit
    values), ``grid_points``, ``refine`` and ``max_extend``, and give method options (e.g.
    ``{"bm3d": {"noise_psd": "estimate", "grid": [1.0, 1.41, 2.0], "refine": 2}}``: ``"estimate"``
    is :func:`~monai_rat.transforms.estimate_noise_psd` of the validation residuals, and the parameter
    becomes a factor on that PSD's noise std). Costs: Gaussian, TV and NLM take well under a second per
    256 x 256 image here, BM3D 5-10 s, so a 17-evaluation search of BM3D over a handful of validation
    images takes minutes; that is why the bundles give it a short grid (3-4 values) and 2-3 refinements.

    Args:
        methods: method names (from :data:`monai_rat.transforms.CLASSICAL_METHODS`, not ``"identity"``:
            the input itself is the model's input row), e.g. ``["gaussian", "tv", "nlm", "bm3d"]``;
            empty: the handler does nothing. ``"bm3d"`` without the ``bm3d`` package is skipped with a
            log line saying why.
        val_dataset: the validation images, preprocessed as the test images: a dataset of dictionaries
            (MONAI ``Dataset``, ``PETSliceDataset``), a list of such dictionaries, or a callable returning
            one (e.g. a config component with ``"_mode_": "callable"``, so nothing is loaded when
            ``methods`` is empty).
        cache_dir: where ``classical_baselines.json`` keeps tuned parameters; ``None``: no cache.
        data_range: the data range of the network units (tuning's PSNR; the metrics' float protocol).
        metric_protocol: ``"float"`` or ``"reference"`` (see :mod:`monai_rat.metrics`), as the model's metrics.
        metric_window: the reference protocol's 8-bit window (``None``: ``(0, data_range)``).
        refine: golden-section refinement steps after the grid (default 8).
        grid_points: values in the coarse grid (default 9).
        max_images: tune on at most this many validation images, evenly spaced over the split
            (default 16; ``None``: all). BM3D's cost grows with it.
        settings: per-method overrides (see above).
        input_key: the network input in the batch (default ``"image"``).
        label_key: the target in the batch (default ``"label"``).
        low_res_key: the low-resolution image in the batch, for ``"bicubic"`` / ``"lanczos"``
            (pathology: ``"image_lr"``); their output is compared with the target cropped to its
            size when the target's sides are not multiples of the scale.
        output_prefix: key prefix of the restored images in the engine output (default ``"baseline_"``).
        test_data: the test items (e.g. ``datalist["test"]``), only to warn when files are shared with
            the validation split.
        progress: show tuning progress bars (tqdm) besides the log lines.

    Raises:
        ValueError: for an unknown or duplicated method, ``"identity"``, a super-resolution method
            without ``low_res_key``, an unknown setting, or a non-positive ``refine`` / ``grid_points``
            / ``max_images``; at tuning time when the validation split is empty.
    """

    def __init__(
        self,
        methods: Sequence[str],
        val_dataset: Any,
        cache_dir: str | None = None,
        data_range: float = 1.0,
        metric_protocol: str = "float",
        metric_window: Sequence[float] | None = None,
        refine: int = 8,
        grid_points: int = 9,
        max_images: int | None = 16,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        input_key: str = "image",
        label_key: str = "label",
        low_res_key: str | None = None,
        output_prefix: str = "baseline_",
        test_data: Sequence[Mapping] | None = None,
        progress: bool = True,
    ) -> None:
        from monai_rat.metrics import restoration_metric
        from monai_rat.transforms.classical import CLASSICAL_METHODS, _OPTIONS

        methods = [str(m).lower() for m in (methods or [])]
        for m in methods:
            if m not in CLASSICAL_METHODS or m == "identity":
                valid = ", ".join(c for c in CLASSICAL_METHODS if c != "identity")
                raise ValueError(
                    f"Unknown baseline method {m!r} in --baseline_methods; valid: {valid} ([] for none; the input itself "
                    "is always reported)."
                )
            if m in _SUPER_RESOLUTION and not low_res_key:
                raise ValueError(f"Baseline {m!r} needs the low-resolution image: set `low_res_key` (pathology: 'image_lr').")
        if len(set(methods)) != len(methods):
            raise ValueError(f"--baseline_methods lists a method twice: {methods}.")
        settings = {str(k).lower(): dict(v or {}) for k, v in (settings or {}).items()}
        for m, s in settings.items():
            allowed = set(_TUNING_KEYS) | set(_OPTIONS.get(m, {}))
            unknown = sorted(set(s) - allowed)
            if m in _OPTIONS and unknown:
                raise ValueError(f"baseline_settings[{m!r}]: unknown settings {unknown}; allowed: {sorted(allowed)}.")
        for name, v in (("refine", refine), ("grid_points", grid_points), ("max_images", max_images)):
            if v is None and name == "max_images":
                continue
            if int(v) != v or v < (0 if name == "refine" else 1):
                raise ValueError(f"baseline {name} must be an integer >= {0 if name == 'refine' else 1}, got {v!r}.")
        self.requested = list(methods)
        self.methods: list[str] = []
        self.skipped: dict[str, str] = {}
        self.val_dataset = val_dataset
        self.cache_dir = cache_dir
        self.data_range = float(data_range)
        self.metric_protocol = metric_protocol
        self.metric_window = metric_window
        self.refine = int(refine)
        self.grid_points = int(grid_points)
        self.max_images = None if max_images is None else int(max_images)
        self.settings = settings
        self.input_key, self.label_key, self.low_res_key = input_key, label_key, low_res_key
        self.output_prefix = output_prefix
        self.test_data = list(test_data or [])
        self.progress = progress
        self._metric = lambda kind: restoration_metric(kind, metric_protocol, self.data_range, window=metric_window)
        restoration_metric("psnr", metric_protocol)  # an unknown protocol fails here, at construction
        self.tuned: dict[str, dict] = {}
        self.transforms: dict[str, Any] = {}
        self.validation_files: list[str] = []
        self.validation_images = 0
        self.shared_with_test: list[str] = []
        self.best: str | None = None
        self.test_means: dict[str, float] = {}
        self.cropped: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._metrics: dict[tuple[str, str], Any] = {}
        self.logger = logging.getLogger(__name__)

    # -- ignite ---------------------------------------------------------------------------------------
    def attach(self, engine: Any) -> None:
        """Tune at ``STARTED``, restore and score at every ``ITERATION_COMPLETED``, report at ``EPOCH_COMPLETED``.

        Args:
            engine: the evaluator.
        """
        from ignite.engine import Events

        self.logger = engine.logger
        if not self.requested:
            return
        engine.add_event_handler(Events.STARTED, self.tune)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.apply)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    @property
    def cache_path(self) -> str | None:
        """``<cache_dir>/classical_baselines.json`` (or ``None`` without a cache folder)."""
        return None if not self.cache_dir else os.path.join(str(self.cache_dir), "classical_baselines.json")

    def metric_names(self, kind: str) -> list[str]:
        """``<method>_<kind>`` for every method in use, e.g. ``["tv_psnr", "bm3d_psnr"]``."""
        return [f"{m}_{kind}" for m in self.methods]

    def output_key(self, method: str) -> str:
        """The engine-output key of ``method``'s restored image (``baseline_<method>``)."""
        return f"{self.output_prefix}{method}"

    def parameter_name(self, method: str, with_psd: bool | None = None) -> str:
        """What ``method``'s parameter is (``"weight"``, ``"sigma (px)"``; BM3D with a noise PSD: ``"PSD factor"``)."""
        if with_psd is None:
            with_psd = bool(self.tuned.get(method, {}).get("noise_psd"))
        if self.tuned.get(method, {}).get("noise_relative") or self.settings.get(method, {}).get("noise_relative"):
            return "x noise std"  # a factor on each image's own noise estimate
        return "PSD factor" if (method == "bm3d" and with_psd) else PARAMETER_NAMES.get(method, "parameter")

    def label(self, method: str) -> str:
        """``"tv (weight 0.0102)"``: the method and its tuned parameter."""
        p = self.tuned.get(method, {}).get("parameter")
        return f"{method} ({self.parameter_name(method)} {_fmt(p)})" if p is not None else method

    # -- tuning -------------------------------------------------------------------------------------
    def _available(self) -> list[str]:
        methods = []
        for m in self.requested:
            if m == "bm3d" and importlib.util.find_spec("bm3d") is None:
                self.skipped[m] = (
                    "the bm3d package is not installed; it is an optional extra because its licence is for non-commercial "
                    "use only: pip install 'monai-rat[baselines]' to include it"
                )
                self.logger.warning(f"Baseline bm3d skipped: {self.skipped[m]}.")
                continue
            methods.append(m)
        return methods

    def _load_validation(self) -> list[dict]:
        ds = self.val_dataset
        if callable(ds) and not hasattr(ds, "__getitem__"):
            ds = ds()
        n = len(ds)
        if n == 0:
            raise ValueError("The validation split is empty: there is nothing to tune the classical baselines on.")
        idx = list(range(n))
        if self.max_images is not None and n > self.max_images:
            idx = sorted({int(round(i)) for i in np.linspace(0, n - 1, self.max_images)})
        items = []
        for i in idx:
            d = ds[i]
            if isinstance(d, (list, tuple)):  # a random-crop dataset would give several; take the first
                d = d[0]
            item = {"input": _plain(d[self.input_key]).float(), "target": _plain(d[self.label_key]).float()}
            if self.low_res_key and self.low_res_key in d:
                item["low_res"] = _plain(d[self.low_res_key]).float()
            item["files"] = [f for f in {_meta_file(d[self.input_key]), _meta_file(d[self.label_key])} if f]
            item["slice"] = d.get("slice_index") if isinstance(d, Mapping) else None
            items.append(item)
        self.validation_images = len(items)
        return items

    def _key(self, method: str, settings: dict, items: list[dict]) -> tuple[str, dict]:
        files = sorted({tuple(r) for it in items for f in it["files"] if (r := _file_record(f))})
        digest = hashlib.sha1()
        for it in items:
            for k in ("input", "target", "low_res"):
                if k in it:
                    digest.update(str(tuple(it[k].shape)).encode())
                    digest.update(it[k].numpy().astype(np.float32).tobytes())
        described = {
            "method": method,
            "settings": {k: ("estimated from the validation residuals" if k == "noise_psd" else v) for k, v in settings.items()},
            "refine": settings.get("refine", self.refine),
            "grid_points": settings.get("grid_points", self.grid_points),
            "data_range": self.data_range,
            "max_images": self.max_images,
            "files": [list(f) for f in files],
            "content_sha1": digest.hexdigest(),
            "version": _CACHE_VERSION,
        }
        key = hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return key, described

    def _read_cache(self) -> dict:
        path = self.cache_path
        if not path or not os.path.isfile(path):
            return {}
        try:
            with open(path) as f:
                data = json.load(f)
            return dict(data.get("entries", {})) if data.get("version") == _CACHE_VERSION else {}
        except (OSError, ValueError) as e:
            self.logger.warning(f"Ignoring the unreadable baseline cache {path} ({e}); tuning again.")
            return {}

    def _grid(
        self, method: str, settings: dict, inputs: list, targets: list, with_psd: bool, relative: bool = False
    ) -> tuple | None:
        from monai_rat.transforms.classical import default_grid

        if method in _SUPER_RESOLUTION:
            return None
        if settings.get("grid") is not None:
            return tuple(float(g) for g in settings["grid"])
        noise = float(np.sqrt(np.mean([float(((x.double() - y.double()) ** 2).mean()) for x, y in zip(inputs, targets)])))
        base = default_grid(method, noise if noise > 0 else None, with_psd=with_psd, noise_relative=relative)
        n = int(settings.get("grid_points", self.grid_points))
        if n == len(base):
            return tuple(base)
        if n == 1:
            return (float(f"{math.sqrt(base[0] * base[-1]):.4g}"),)
        return tuple(float(f"{v:.4g}") for v in np.geomspace(base[0], base[-1], n))

    def tune(self, engine: Any = None) -> dict[str, dict]:
        """Tune every method on the validation images (or take the cached result); choose the best.

        Args:
            engine: the evaluator (unused; ignite handler signature).

        Returns:
            ``{method: {"parameter", "validation_psnr", "evaluations", "seconds", "from_cache", ...}}``.
        """
        from monai_rat.transforms import ClassicalRestore, estimate_noise_psd, tune_classical

        self.methods = self._available()
        if not self.methods:
            return {}
        t0 = time.time()
        items = self._load_validation()
        self.validation_files = sorted({f for it in items for f in it["files"]})
        test_files = {os.path.abspath(str(v)) for d in self.test_data for k, v in d.items() if k in (self.input_key, self.label_key) and isinstance(v, str)}
        self.shared_with_test = sorted({os.path.abspath(f) for f in self.validation_files} & test_files)
        self.logger.info(
            f"Classical baselines {', '.join(self.methods)}: tuning on {len(items)} validation images "
            f"({len(self.validation_files)} files, loaded in {time.time() - t0:.1f} s; never the test split)."
        )
        if self.shared_with_test:
            self.logger.warning(
                f"The validation and test splits share {len(self.shared_with_test)} files (e.g. {self.shared_with_test[0]}): "
                "the baselines are tuned on images they are then scored on, so their test scores are optimistic."
            )
        cache = self._read_cache()
        changed = False
        inputs = [it["input"] for it in items]
        targets = [it["target"] for it in items]
        for method in self.methods:
            settings = dict(self.settings.get(method, {}))
            key, described = self._key(method, settings, items)
            options = {k: v for k, v in settings.items() if k not in _TUNING_KEYS}
            xs = [it["low_res"] for it in items] if method in _SUPER_RESOLUTION else inputs
            if method in _SUPER_RESOLUTION and any("low_res" not in it for it in items):
                raise KeyError(f"Baseline {method!r}: the validation items have no {self.low_res_key!r} (the low-resolution image).")
            ys = targets
            if method in _SUPER_RESOLUTION:  # the target cropped to scale x low-res, when its sides are not multiples
                ys = [y[:, : x.shape[1] * (y.shape[1] // x.shape[1]), : x.shape[2] * (y.shape[2] // x.shape[2])] for x, y in zip(xs, ys)]
            if options.get("noise_psd") == "estimate":
                shape = (max(x.shape[1] for x in xs), max(x.shape[2] for x in xs))
                options["noise_psd"] = estimate_noise_psd([x.numpy() for x in xs], [y.numpy() for y in ys], shape=shape)
            psd = options.get("noise_psd") is not None
            if key in cache:
                entry = dict(cache[key], from_cache=True)
                self.logger.info(
                    f"  {method}: {self.parameter_name(method, psd)} {_fmt(entry['parameter'])} from the cache "
                    f"{self.cache_path} (validation PSNR {entry['validation_psnr']:.4f} dB; tuned earlier in "
                    f"{entry['evaluations']} evaluations)."
                )
            else:
                grid = self._grid(method, settings, xs, ys, with_psd=psd, relative=bool(options.get("noise_relative")))
                refine = int(settings.get("refine", self.refine))
                n_grid = 1 if grid is None else len(grid)
                self.logger.info(
                    f"  {method}: searching {n_grid} grid values + {refine if n_grid > 1 else 0} refinements on "
                    f"{len(xs)} images ..."
                )
                t = time.time()
                result = tune_classical(
                    method, [x.numpy() for x in xs], [y.numpy() for y in ys], grid=grid, data_range=self.data_range,
                    refine=refine, max_extend=int(settings.get("max_extend", 4)), progress=self.progress, **options,
                )  # fmt: skip
                entry = {
                    "parameter": result.best_parameter,
                    "validation_psnr": result.best_psnr,
                    "evaluations": len(result.scores),
                    "scores": {_fmt(k): v for k, v in result.scores.items()},
                    "seconds": round(time.time() - t, 1),
                    "described": described,
                }
                cache[key] = entry
                changed = True
                entry = dict(entry, from_cache=False)
                self.logger.info(
                    f"  {method}: {self.parameter_name(method, psd)} {_fmt(entry['parameter'])}, validation PSNR "
                    f"{entry['validation_psnr']:.4f} dB ({entry['evaluations']} evaluations in {entry['seconds']} s)."
                )
            entry["noise_psd"] = psd
            entry["noise_relative"] = bool(options.get("noise_relative"))
            self.tuned[method] = entry
            self.transforms[method] = ClassicalRestore(method, entry["parameter"], **options)
        if changed and self.cache_path:
            _write_json_atomically({"version": _CACHE_VERSION, "entries": cache}, self.cache_path)
        self.best = max(self.methods, key=lambda m: self.tuned[m]["validation_psnr"])
        self.logger.info(
            f"Best classical baseline on validation: {self.label(self.best)} "
            f"({self.tuned[self.best]['validation_psnr']:.4f} dB); tuning took {time.time() - t0:.1f} s."
        )
        return self.tuned

    # -- per test image -----------------------------------------------------------------------------
    def _reset(self, engine: Any = None) -> None:
        self._metrics = {(m, k): self._metric(k) for m in self.methods for k in ("psnr", "ssim")}
        self.cropped = {m: 0 for m in self.methods}
        self.seconds = {m: 0.0 for m in self.methods}

    def apply(self, engine: Any) -> None:
        """Restore each image of the batch with every tuned method, score it, and put it in the output.

        Args:
            engine: the evaluator; reads ``engine.state.batch`` (decollated) and writes
                ``engine.state.output[i]["baseline_<method>"]``.
        """
        if not self.methods:
            return
        if not self._metrics:
            self._reset()
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, Mapping) or isinstance(output, Mapping):
            raise TypeError("ClassicalBaselines needs a decollated batch and output (the evaluator's decollate=True).")
        for b, o in zip(batch, output):
            x = _plain(b[self.input_key]).float()
            y = _plain(b[self.label_key]).float()
            for m in self.methods:
                src = _plain(b[self.low_res_key]).float() if m in _SUPER_RESOLUTION else x
                t = time.time()
                restored = torch.as_tensor(self.transforms[m](src)).float()
                self.seconds[m] += time.time() - t
                target = y
                if tuple(restored.shape) != tuple(y.shape):
                    target = y[:, : restored.shape[1], : restored.shape[2]]
                    if m not in _SUPER_RESOLUTION or tuple(target.shape) != tuple(restored.shape):
                        raise ValueError(f"Baseline {m}: restored shape {tuple(restored.shape)} does not match the target {tuple(y.shape)}.")
                    self.cropped[m] += 1
                for k in ("psnr", "ssim"):
                    self._metrics[(m, k)](restored[None], target[None])
                o[self.output_key(m)] = restored

    def report(self, engine: Any) -> None:
        """Write each method's per-image scores and means into the engine state.

        Args:
            engine: the evaluator.
        """
        if not self.methods:
            return
        details = getattr(engine.state, "metric_details", None)
        if details is None:
            engine.state.metric_details = details = {}
        for (m, k), metric in self._metrics.items():
            try:
                buf = metric.get_buffer()
            except Exception:  # noqa: BLE001 - no image seen
                continue
            if buf is None or (hasattr(buf, "numel") and buf.numel() == 0):
                continue
            details[f"{m}_{k}"] = buf
            engine.state.metrics[f"{m}_{k}"] = float(torch.nanmean(torch.as_tensor(buf).float()))
        self.test_means = {m: engine.state.metrics.get(f"{m}_psnr", math.nan) for m in self.methods}
        timing = ", ".join(f"{m} {self.seconds.get(m, 0):.1f} s" for m in self.methods)
        self.logger.info(f"Classical baselines restored the test images ({timing}).")
        for m, n in self.cropped.items():
            if n:
                self.logger.info(
                    f"  {m}: {n} test images have sides that are not multiples of the scale; scored on the target's top-left "
                    "(scale x low-resolution) part."
                )

    def describe(self) -> dict:
        """What the summary records: each method's tuned parameter and where it came from, the best, skipped methods."""
        best_test = max(self.test_means, key=lambda m: self.test_means[m]) if self.test_means else None
        return {
            "tuned_on": "validation",
            "validation_images": self.validation_images,
            "validation_files": list(self.validation_files),
            "shared_with_test": list(self.shared_with_test),
            "methods": {
                m: {
                    "label": self.label(m),
                    "parameter": self.tuned[m]["parameter"],
                    "parameter_name": self.parameter_name(m),
                    "validation_psnr": self.tuned[m]["validation_psnr"],
                    "evaluations": self.tuned[m]["evaluations"],
                    "from_cache": self.tuned[m]["from_cache"],
                }
                for m in self.methods
                if m in self.tuned
            },
            "skipped": dict(self.skipped),
            "best": self.best,
            "best_chosen_on": "validation PSNR",
            "best_on_test": best_test,
            "cache": self.cache_path,
        }
