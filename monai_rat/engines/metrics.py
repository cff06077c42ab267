"""Metric logs a person can read after a run: the validation history of training, and an evaluation summary."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from monai_rat.utils import atomic_write

__all__ = ["MetricsHistory", "MetricsSummary"]


def _scalar(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        v = v.detach().float().mean().item()
    return float(v)


def _is_rank0() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


class MetricsHistory:
    """Append one row per validation to ``<output_dir>/<name>.csv`` and rewrite ``<name>.json``.

    Attach to the trainer; each time ``evaluator`` completes, a row records the trainer iteration, the
    learning rate, the last training loss, every evaluator metric, the elapsed time and an estimate of
    the time left. A resumed run appends to the existing files (rows from before the resume are kept).

    Both files are rewritten atomically (:func:`monai_rat.utils.atomic_write`): a kill leaves the old
    or the new version. A ``<name>.json`` that is not valid JSON (torn by a kill during a write of an
    older version, or edited by hand) does not stop training: when the trainer starts, it is renamed
    aside to ``<name>.json.torn-<time>`` with a warning naming both files, and the history is
    recovered from ``<name>.csv`` (its complete rows) or, when that is unusable too, started afresh.

    Args:
        evaluator: the validation engine (the one run by ``ValidationHandler``).
        output_dir: folder of the files (created).
        name: file stem (``metrics`` gives ``metrics.csv`` and ``metrics.json``).
        optimizer: optional; its first group's ``lr`` is logged.
        total_iterations: optional; used for the progress and time-left estimate.
    """

    def __init__(
        self,
        evaluator: Any,
        output_dir: str,
        name: str = "metrics",
        optimizer: Any = None,
        total_iterations: int | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.output_dir = str(output_dir)
        self.name = name
        self.optimizer = optimizer
        self.total_iterations = total_iterations
        self.trainer: Any = None
        self._t0 = time.time()
        self._it0 = 0
        self.logger = logging.getLogger(__name__)

    @property
    def csv_path(self) -> str:
        """``<output_dir>/<name>.csv``."""
        return os.path.join(self.output_dir, f"{self.name}.csv")

    @property
    def json_path(self) -> str:
        """``<output_dir>/<name>.json``."""
        return os.path.join(self.output_dir, f"{self.name}.json")

    def attach(self, engine: Any) -> None:
        """Attach to the trainer ``engine`` and listen for the evaluator's completion.

        Args:
            engine: the trainer.
        """
        from ignite.engine import Events

        self.trainer = engine
        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._started)
        self.evaluator.add_event_handler(Events.COMPLETED, self.record)

    def _started(self, engine: Any) -> None:
        self._t0 = time.time()
        self._it0 = engine.state.iteration
        if _is_rank0():
            self._rows()  # a torn log is dealt with (and reported) now, not after a round of training

    def _rows(self) -> list[dict]:
        """The rows written so far: from ``<name>.json``, or recovered when it is torn (see the class docstring)."""
        if not os.path.isfile(self.json_path):
            return []
        try:
            with open(self.json_path, encoding="utf-8") as f:
                content = json.load(f)
            rows = content.get("history") if isinstance(content, dict) else None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"expected {{'history': [rows]}}, found {type(content).__name__}")
            return list(rows)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            reason = f"{type(e).__name__}: {e}"
        aside = f"{self.json_path}.torn-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.json_path, aside)
        rows = _csv_rows(self.csv_path)
        found = f"recovered {len(rows)} row(s) from {self.csv_path}" if rows else "starting a new history"
        with atomic_write(self.json_path) as f:
            json.dump({"history": rows}, f, indent=1)
        self.logger.warning(
            f"Metric log {self.json_path} is not readable ({reason}); it was probably cut short by a kill during a "
            f"write. Renamed it to {aside} and {found}."
        )
        return rows

    def record(self, evaluator: Any = None) -> dict:
        """Write the row for the validation that just completed (rank 0 only) and log a progress line.

        Args:
            evaluator: the evaluator (unused; ignite handler signature).
        """
        state = self.trainer.state
        elapsed = time.time() - self._t0
        row: dict[str, Any] = {"iteration": int(state.iteration), "epoch": int(state.epoch)}
        if self.optimizer is not None:
            row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        out = state.output
        if isinstance(out, Sequence) and out and isinstance(out[0], Mapping):
            out = out[0]
        if isinstance(out, Mapping) and "loss" in out:
            row["train_loss"] = _scalar(out["loss"])
        for k, v in self.evaluator.state.metrics.items():
            try:
                row[k] = _scalar(v)
            except (TypeError, ValueError):
                continue
        row["elapsed_s"] = round(elapsed, 1)
        done = state.iteration - self._it0
        msg = f"iteration {state.iteration}"
        if self.total_iterations:
            left = max(self.total_iterations - state.iteration, 0)
            eta = elapsed / done * left if done > 0 else math.nan
            row["eta_s"] = round(eta, 1)
            percent = 100.0 * state.iteration / self.total_iterations
            msg += f"/{self.total_iterations} ({percent:.0f}%), ~{eta:.0f} s left"
        skip = ("iteration", "epoch", "elapsed_s", "eta_s")
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in skip)
        self.logger.info(f"Validation at {msg}: {metrics}.")
        if not _is_rank0():
            return row
        os.makedirs(self.output_dir, exist_ok=True)
        rows = [r for r in self._rows() if r.get("iteration", -1) < row["iteration"]] + [row]
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        with atomic_write(self.csv_path, newline="") as f:  # the CSV first: the JSON is what a resume reads
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        with atomic_write(self.json_path) as f:
            json.dump({"history": rows}, f, indent=1)
        return row


def _csv_rows(path: str) -> list[dict]:
    """The complete rows of a metrics CSV (numbers as numbers); ``[]`` when it is missing or unreadable.

    A row cut short (fewer fields than the header) or holding a value that is not a number is dropped,
    and so is every row after it (a torn file ends there).
    """
    if not os.path.isfile(path):
        return []
    rows: list[dict] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for raw in csv.DictReader(f):
                if None in raw or any(v is None for v in raw.values()):
                    break
                row: dict[str, Any] = {}
                for k, v in raw.items():
                    if v == "":
                        continue
                    row[k] = int(v) if k in ("iteration", "epoch") else float(v)
                if "iteration" not in row:
                    break
                rows.append(row)
    except (ValueError, UnicodeDecodeError, csv.Error, OSError):
        pass
    return rows


class MetricsSummary:
    """Write the evaluation summary to ``summary.json`` and ``summary.csv`` and log it as a table.

    Attach to an evaluator whose metric handlers keep per-image values (MONAI ``IgniteMetricHandler``
    with ``save_details=True``, the default): they are read from ``engine.state.metric_details``.
    Each quantity of ``pairs`` (e.g. PSNR, SSIM) gets one row per method, on the same test images:
    the low-quality input, each classical baseline of ``baselines`` (tuned on validation; the best one
    named) and the model; each row says what is compared with what. With ``subset_key``, the means are
    also given per value of that item field (the CT demo's ``"source"``: ``"real"`` and ``"phantom"``).

    Args:
        output_dir: folder of the files (created).
        metric_names: the metrics to summarise, in order (default: all in ``metric_details``); the
            baselines' metrics are added.
        pairs: ``{label: (restored metric, input metric)}``, e.g. ``{"PSNR (dB)": ("psnr", "input_psnr")}``;
            the baselines' metric for a label is ``<method>_<kind>``, ``kind`` being the restored
            metric's last ``_`` part (``val_psnr`` -> ``psnr``).
        notes: free-form facts written into the JSON (e.g. the data range); ``notes["metric_names"]``
            (``{metric: "restored vs full dose"}``) also gives the CSV's "compares" column.
        name: file stem.
        input_label: what the network's input is called (e.g. "low-dose input", "bicubic input").
        baselines: an optional :class:`monai_rat.engines.ClassicalBaselines` attached to the same engine.
        model_label: the model's row label (e.g. "restored (rat)").
        target_label: what everything is compared with (e.g. "full dose").
        subset_key: an item field to also report per-subset means for (its values in ``engine.state.batch``);
            items without it count in "all" only.

    Raises:
        KeyError: at completion, when a requested metric has no per-image values.
    """

    def __init__(
        self,
        output_dir: str,
        metric_names: Sequence[str] | None = None,
        pairs: Mapping[str, Sequence[str]] | None = None,
        notes: Mapping[str, Any] | None = None,
        name: str = "summary",
        input_label: str = "input",
        baselines: Any = None,
        model_label: str = "restored",
        target_label: str = "target",
        subset_key: str | None = None,
    ) -> None:
        self.output_dir = str(output_dir)
        self.input_label = str(input_label)
        self.metric_names = list(metric_names) if metric_names else None
        self.pairs = dict(pairs or {})
        self.notes = dict(notes or {})
        self.name = name
        self.baselines = baselines
        self.model_label = str(model_label)
        self.target_label = str(target_label)
        self.subset_key = subset_key
        self.logger = logging.getLogger(__name__)
        self.summary: dict = {}
        self._subsets: list[Any] = []

    def attach(self, engine: Any) -> None:
        """Collect each image's subset as the engine runs; write the summary when it completes.

        Args:
            engine: the evaluator.
        """
        from ignite.engine import Events

        self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _reset(self, engine: Any = None) -> None:
        self._subsets = []

    def _collect(self, engine: Any) -> None:
        batch = engine.state.batch
        items = [batch] if isinstance(batch, Mapping) else list(batch or [])
        for b in items:
            v = b.get(self.subset_key) if (self.subset_key and isinstance(b, Mapping)) else None
            if isinstance(v, (list, tuple)):  # a collated batch that was not decollated
                self._subsets.extend(str(x) for x in v)
            else:
                self._subsets.append(None if v is None else str(v))

    @staticmethod
    def _stats(v: torch.Tensor) -> dict:
        v = v[~torch.isnan(v)]
        return {
            "mean": v.mean().item() if v.numel() else math.nan,
            "std": v.std(unbiased=False).item() if v.numel() else math.nan,
            "n": int(v.numel()),
        }

    def _rows(self) -> list[tuple[str, str, str, str]]:
        """``(quantity, method label, metric name, role)`` rows, input first, model last."""
        rows = []
        b = self.baselines
        for label, (restored, given) in self.pairs.items():
            kind = str(restored).rsplit("_", 1)[-1]
            rows.append((label, self.input_label, given, "input"))
            for m in getattr(b, "methods", []) if b is not None else []:
                rows.append((label, b.label(m), f"{m}_{kind}", "baseline"))
            rows.append((label, self.model_label, restored, "model"))
        return rows

    def _compares(self, metric: str) -> str:
        described = dict(self.notes.get("metric_names", {}) or {})
        if metric in described:
            return str(described[metric])
        b = self.baselines
        for m in getattr(b, "methods", []) if b is not None else []:
            if metric.startswith(f"{m}_"):
                source = "low-resolution image" if m in ("bicubic", "lanczos") else self.input_label
                return f"{b.label(m)} of the {source} vs {self.target_label}"
        for restored, given in self.pairs.values():
            if metric == given:
                return f"{self.input_label} vs {self.target_label}"
            if metric == restored:
                return f"{self.model_label} vs {self.target_label}"
        return ""

    def _log_table(self, title: str, stats: Mapping[str, dict]) -> None:
        rows = [r for r in self._rows() if r[2] in stats]
        if not rows:
            return
        labels = list(dict.fromkeys(r[0] for r in rows))
        methods = list(dict.fromkeys((r[1], r[3]) for r in rows))
        n = next(iter(stats.values()))["n"]
        width = max(len(m) for m, _ in methods) + 2
        lines = [f"{title} ({n} images):", "  " + "method".ljust(width) + "".join(f"{lab:>22}" for lab in labels)]
        for m, role in methods:
            cells = []
            for lab in labels:
                metric = next((r[2] for r in rows if r[0] == lab and r[1] == m), None)
                s = stats.get(metric) if metric else None
                cells.append(f"{s['mean']:.4f} ± {s['std']:.4f}".rjust(22) if s else " " * 22)
            best = self.baselines is not None and role == "baseline" and m == self.baselines.label(self.baselines.best)
            lines.append("  " + m.ljust(width) + "".join(cells) + ("   <- best classical (chosen on validation)" if best else ""))
        self.logger.info("\n".join(lines))

    def __call__(self, engine: Any) -> dict:
        """Compute, log and write the summary.

        Args:
            engine: the evaluator that completed.

        Raises:
            KeyError: when a requested metric has no per-image values.
        """
        details = getattr(engine.state, "metric_details", None) or {}
        names = list(self.metric_names or list(details))
        b = self.baselines
        for kind_names in ([b.metric_names(k) for k in ("psnr", "ssim")] if b is not None else []):
            names += [n for n in kind_names if n not in names and n in details]
        summary: dict[str, Any] = {}
        values: dict[str, torch.Tensor] = {}
        for n in names:
            if n not in details:
                raise KeyError(f"No per-image values for metric {n!r}; available: {list(details)}.")
            values[n] = torch.as_tensor(details[n]).float().reshape(-1)
            summary[n] = self._stats(values[n])
        self.summary = summary
        subsets: dict[str, dict] = {}
        labels = [s for s in dict.fromkeys(self._subsets) if s is not None]
        if labels:
            for n, v in values.items():
                if v.numel() != len(self._subsets):
                    self.logger.warning(f"{n}: {v.numel()} values for {len(self._subsets)} images: no per-subset means.")
                    continue
                for lab in labels:
                    idx = torch.tensor([s == lab for s in self._subsets])
                    subsets.setdefault(lab, {})[n] = self._stats(v[idx])
        self._log_table("Test split", summary)
        for lab, stats in subsets.items():
            self._log_table(f"Test split, {self.subset_key} = {lab!r}", stats)
        comparison = {}
        for label, method, metric, role in self._rows():
            if metric in summary:
                comparison.setdefault(label, []).append(
                    {"method": method, "role": role, "metric": metric, "compares": self._compares(metric), **summary[metric]}
                )
        extra: dict[str, Any] = {"comparison": comparison}
        if b is not None and getattr(b, "methods", None):
            described = b.describe()
            extra["baselines"] = described
            best = described["best"]
            extra["best_baseline"] = {
                "method": best,
                "label": b.label(best),
                "chosen_on": "validation PSNR",
                **{k: summary[f"{best}_{k}"] for k in ("psnr", "ssim") if f"{best}_{k}" in summary},
            }
            restored = next((str(p[0]) for p in self.pairs.values() if str(p[0]).endswith("psnr")), None)
            if restored in summary and f"{best}_psnr" in summary:
                gain = summary[restored]["mean"] - summary[f"{best}_psnr"]["mean"]
                extra["best_baseline"]["model_minus_best_psnr_db"] = gain
                self.logger.info(
                    f"{self.model_label} vs the best classical baseline {b.label(best)}: {gain:+.4f} dB PSNR on the test split"
                    + (f" (on test alone, {described['best_on_test']} would be best)" if described["best_on_test"] not in (None, best) else "")
                    + "."
                )
        elif b is not None and getattr(b, "skipped", None):
            extra["baselines"] = b.describe()
        if subsets:
            extra["subsets"] = {"key": self.subset_key, **subsets}
        notes = dict(self.notes)
        metric_desc = dict(notes.get("metric_names", {}) or {})
        for n in summary:
            metric_desc.setdefault(n, self._compares(n))
        if metric_desc:
            notes["metric_names"] = metric_desc
        if _is_rank0():
            os.makedirs(self.output_dir, exist_ok=True)
            with atomic_write(os.path.join(self.output_dir, f"{self.name}.json")) as f:
                json.dump({"metrics": summary, **extra, **notes}, f, indent=1)
            with atomic_write(os.path.join(self.output_dir, f"{self.name}.csv"), newline="") as f:
                w = csv.writer(f)
                w.writerow(["metric", "subset", "mean", "std", "n", "compares"])
                for group, stats in [("all", summary), *subsets.items()]:
                    for n, st in stats.items():
                        w.writerow([n, group, st["mean"], st["std"], st["n"], metric_desc.get(n, "")])
            self.logger.info(f"Wrote {self.name}.json and {self.name}.csv to {self.output_dir}.")
        return summary
