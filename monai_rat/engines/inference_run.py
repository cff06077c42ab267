"""An inference run that explains itself: one progress line per image, and a manifest that makes a finished run say so."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monai_rat.utils import as_flag, atomic_write

__all__ = ["InferenceManifest", "InferenceProgress", "MANIFEST_NAME"]

#: the manifest's file name in the output folder
MANIFEST_NAME = "inference_manifest.json"


def _item_name(item: Any, key: str = "image") -> str:
    value = item.get(key) if isinstance(item, Mapping) else None
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj") or (value if isinstance(value, str) else None) or ""
    if isinstance(name, (list, tuple)):
        name = name[0] if name else ""
    return os.path.basename(str(name)) or "image"


class InferenceProgress:
    """Log ``restored 3/20 name.nii.gz in 1.2 s`` after every image, and the total at the end.

    Args:
        key: the batch key whose file name names the image (default ``"image"``).
        output_dir: said in the final line (where the outputs are).
    """

    def __init__(self, key: str = "image", output_dir: str | None = None) -> None:
        self.key = key
        self.output_dir = output_dir
        self.logger = logging.getLogger(__name__)
        self._t0 = self._t = 0.0
        self.count = 0

    def attach(self, engine: Any) -> None:
        """Listen to the inference evaluator's iterations.

        Args:
            engine: the evaluator.
        """
        from ignite.engine import Events

        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._tick)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.log)
        engine.add_event_handler(Events.COMPLETED, self._done)

    def _started(self, engine: Any) -> None:
        self._t0 = time.time()
        self.count = 0

    def _tick(self, engine: Any) -> None:
        self._t = time.time()

    def log(self, engine: Any) -> None:
        """The line for the images just restored.

        Args:
            engine: the evaluator.
        """
        batch = engine.state.batch
        items = [batch] if isinstance(batch, Mapping) else list(batch or [])
        total = engine.state.epoch_length or "?"
        dt = time.time() - self._t
        for it in items:
            self.count += 1
            self.logger.info(f"restored {self.count}/{total} {_item_name(it, self.key)} in {dt / max(len(items), 1):.1f} s")

    def _done(self, engine: Any) -> None:
        if self.count:
            where = f"; outputs in {self.output_dir}" if self.output_dir else ""
            self.logger.info(f"Restored {self.count} images in {time.time() - self._t0:.1f} s{where}.")


def _stat(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)]


def _files_under(folder: str) -> dict[str, int]:
    out = {}
    if not os.path.isdir(folder):
        return out
    for root, _, files in os.walk(folder):
        for f in files:
            if f == MANIFEST_NAME or f.endswith(".tmp") or (f.startswith(".") and ".tmp" in f):  # atomic writes in flight
                continue
            p = os.path.join(root, f)
            try:
                out[os.path.relpath(p, folder)] = os.stat(p).st_mtime_ns
            except OSError:
                continue
    return out


class InferenceManifest:
    """Make a finished inference run, restarted with the same output folder, say that it is complete.

    When a run restores every input, ``<output_dir>/inference_manifest.json`` records the inputs
    (path, size, modification time), the checkpoint (the same), the given ``settings`` and the files
    the run wrote. When the engine starts and that manifest matches the current inputs, checkpoint and
    settings, and every output it lists is still there and newer than every input, the run is not
    repeated: the log says that it is complete and how to start afresh (``--overwrite true`` or another
    ``--output_dir``), and the engine ends at once. Otherwise the run goes ahead (an old manifest is
    removed first, so an interrupted run is never taken for a complete one).

    Args:
        output_dir: the inference output folder.
        datalist: the inputs, ``[{"image": path, ...}, ...]`` (the bundles' ``datalist``).
        ckpt_path: the checkpoint used.
        overwrite: run even when complete (``--overwrite true``).
        settings: other settings that change the outputs (e.g. the region method), compared as JSON.
        key: the datalist key of the input file.
    """

    def __init__(
        self,
        output_dir: str,
        datalist: Sequence[Mapping],
        ckpt_path: str | None = None,
        overwrite: Any = False,
        settings: Mapping[str, Any] | None = None,
        key: str = "image",
    ) -> None:
        self.output_dir = str(output_dir)
        self.datalist = list(datalist or [])
        self.ckpt_path = ckpt_path
        self.overwrite = as_flag(overwrite, "overwrite")
        self.settings = json.loads(json.dumps(dict(settings or {}), default=str))
        self.key = key
        self.skipped = False
        self._before: dict[str, int] = {}
        self._t0 = 0.0
        self.logger = logging.getLogger(__name__)

    @property
    def path(self) -> str:
        """``<output_dir>/inference_manifest.json``."""
        return os.path.join(self.output_dir, MANIFEST_NAME)

    def attach(self, engine: Any) -> None:
        """Check at ``STARTED`` (attach this first), record at ``COMPLETED``.

        Args:
            engine: the inference evaluator.
        """
        from ignite.engine import Events

        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.check)
        engine.add_event_handler(Events.COMPLETED, self.record)

    def _current(self) -> dict:
        inputs = [_stat(str(d[self.key])) for d in self.datalist if isinstance(d.get(self.key), str) and os.path.isfile(d[self.key])]
        ckpt = _stat(self.ckpt_path) if self.ckpt_path and os.path.isfile(self.ckpt_path) else None
        return {"inputs": inputs, "checkpoint": ckpt, "settings": self.settings}

    def is_complete(self) -> tuple[bool, str]:
        """Whether the manifest in ``output_dir`` says this very run is done, and why not.

        Returns:
            ``(complete, reason)``.
        """
        if not os.path.isfile(self.path):
            return False, "no manifest"
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return False, "an unreadable manifest"
        now = self._current()
        for k, what in (("inputs", "the inputs"), ("checkpoint", "the checkpoint"), ("settings", "the settings")):
            if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now[k], sort_keys=True):
                return False, f"{what} changed since"
        newest = max((i[2] for i in now["inputs"]), default=0)
        for rel in saved.get("outputs", []):
            p = os.path.join(self.output_dir, rel)
            if not os.path.isfile(p):
                return False, f"output {rel} is missing"
            if os.stat(p).st_mtime_ns < newest:
                return False, f"output {rel} is older than an input"
        return bool(saved.get("outputs")), "complete"

    def check(self, engine: Any) -> None:
        """Stop the engine at once when the run is already complete; otherwise remove a stale manifest.

        Args:
            engine: the evaluator starting.
        """
        self._t0 = time.time()
        self._before = _files_under(self.output_dir)
        complete, reason = self.is_complete()
        if complete and not self.overwrite:
            with open(self.path) as f:
                n = len(json.load(f).get("outputs", []))
            self.logger.info(
                f"Inference already complete: the {len(self.datalist)} inputs were restored into {self.output_dir} "
                f"({n} output files, all present and newer than their inputs; manifest {self.path}). Nothing to do. "
                "To start afresh, pass --overwrite true, or another --output_dir."
            )
            self.skipped = True
            engine.terminate()
            return
        if os.path.isfile(self.path):
            if not self.overwrite:
                self.logger.info(f"An earlier run into {self.output_dir} is not complete for these inputs ({reason}): restoring all of them.")
            os.remove(self.path)

    def record(self, engine: Any) -> None:
        """Write the manifest when every input was restored.

        Args:
            engine: the evaluator completing.
        """
        if self.skipped:
            return
        done = engine.state.iteration
        if not engine.state.epoch_length or done < engine.state.epoch_length:
            return
        after = _files_under(self.output_dir)
        start_ns = int(self._t0 * 1e9) - 2 * 10**9  # a little slack for coarse file-system clocks
        outputs = sorted(k for k, t in after.items() if t >= start_ns or self._before.get(k) != t)
        manifest = {**self._current(), "outputs": outputs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        with atomic_write(self.path) as f:
            json.dump(manifest, f, indent=1)
