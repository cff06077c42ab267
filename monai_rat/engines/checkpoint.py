"""Atomic checkpoints with a fixed file name, for resuming training and keeping the best model."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from monai.handlers import CheckpointLoader

__all__ = ["AtomicCheckpointSaver", "CheckedCheckpointLoader", "atomic_torch_save", "checkpoint_fit_problems"]

#: LR-scheduler state entries that record progress; every other entry (T_max, eta_min, base_lrs ...) is
#: configuration, which a resumed run takes from its current config.
_SCHEDULER_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial"}


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, flush it to disk, then rename it over ``path``.

    A process killed at any moment leaves either the previous file or the new one, never a partial file
    under ``path`` (``os.replace`` is atomic on POSIX and Windows within one file system).

    Args:
        obj: what to save.
        path: the destination file.

    Raises:
        OSError: when the folder cannot be created or written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _non_finite_details(engine: Any, name: str) -> tuple[int, int] | None:
    """(non-finite count, total) of the per-image values of metric ``name``, when any is non-finite."""
    details = (getattr(engine.state, "metric_details", None) or {}).get(name)
    if details is None:
        return None
    try:
        values = torch.as_tensor(details).float().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return None
    bad = int((~torch.isfinite(values)).sum())
    return (bad, int(values.numel())) if bad else None


class AtomicCheckpointSaver:
    """Save ``{name: obj.state_dict()}`` to one fixed file, atomically; optionally resume from it.

    MONAI's ``CheckpointSaver`` writes with ``atomic=False`` and, with a fixed file name, removes the old
    file before writing the new one, so a kill during a save can leave no usable checkpoint. This handler
    writes to a temporary file and renames it over the old one (see :py:func:`atomic_torch_save`).

    Two uses, both in the bundles:

    - **last** (attach to the trainer): saves every ``save_interval`` epochs and when training completes;
      with ``resume=True`` it loads the file, if it exists, when the trainer starts, so rerunning with the
      same output folder continues (network, optimizer, scheduler, trainer iteration, best-metric state).
      A run that had completed ends at once; raise the iteration count to train on. A learning-rate
      scheduler keeps its progress from the file but its settings (e.g. ``T_max``) from the current
      config, so a longer schedule continues on its new cosine curve (closed form at the resumed iteration)
      instead of restarting it.
    - **best** (attach to the evaluator, ``key_metric_name`` set): saves when the metric improves on the
      best seen so far, never when it is NaN or infinite or when any image's value is (MONAI's mean leaves
      non-finite values out, so an all-NaN validation reads 0.0); its own best value is kept in
      ``state_dict()`` so it survives a resume when this
      saver is listed in the last-checkpoint's ``save_dict``.

    Only rank 0 writes; every rank loads.

    Args:
        save_dir: folder of the checkpoint file.
        save_dict: ``{name: object with state_dict()/load_state_dict()}``; a single network may be given
            as ``{"model": net}`` to write a plain weights file readable by ``CheckpointLoader``. Entries
            whose object is ``None`` are left out: an optional object that is switched off (e.g.
            ``"ema": "@ema"``, which is ``None`` when ``ema_decay`` is null; see :class:`monai_rat.engines.ModelEMA`).
        filename: the file name inside ``save_dir``.
        save_interval: save every N epochs of the attached engine (0: only at completion); ignored when
            ``key_metric_name`` is set.
        save_final: also save when the engine completes.
        key_metric_name: save on the engine's COMPLETED event when ``engine.state.metrics[key_metric_name]``
            beats the best so far (higher is better unless ``key_metric_negative_sign``).
        key_metric_negative_sign: lower is better.
        resume: load ``save_dir/filename`` when the engine starts, if the file exists.
        map_location: ``torch.load`` map location for resuming.
        weights_only_state: when ``save_dict`` has one entry, save its state dict alone (not nested under
            its name), the layout MONAI bundles use for ``models/model.pt``.
        save_engine: when set, also save (and resume) the attached engine's state (iteration, epoch) under
            this key; the engine cannot be listed in ``save_dict`` of a handler of its own.

    Raises:
        ValueError: when ``save_dict`` is empty (once its ``None`` entries are left out) or an entry has no ``state_dict``.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str = "last.pt",
        save_interval: int = 1,
        save_final: bool = True,
        key_metric_name: str | None = None,
        key_metric_negative_sign: bool = False,
        resume: bool = False,
        map_location: Any = "cpu",
        weights_only_state: bool = False,
        save_engine: str | None = None,
    ) -> None:
        save_dict = {k: v for k, v in dict(save_dict).items() if v is not None}  # optional objects that are off
        if not save_dict:
            raise ValueError("`save_dict` must name at least one object to save, got an empty mapping.")
        for k, v in save_dict.items():
            if not hasattr(v, "state_dict"):
                raise ValueError(f"`save_dict[{k!r}]` ({type(v).__name__}) has no state_dict() to save.")
        if weights_only_state and len(save_dict) != 1:
            raise ValueError(
                f"`weights_only_state=True` needs exactly one entry in `save_dict`, got {list(save_dict)}."
            )
        self.save_dir = str(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.save_interval = int(save_interval)
        self.save_final = save_final
        self.key_metric_name = key_metric_name
        self.sign = -1.0 if key_metric_negative_sign else 1.0
        self.resume = resume
        self.map_location = map_location
        self.weights_only_state = weights_only_state
        self.save_engine = save_engine
        if save_engine is not None and (weights_only_state or save_engine in self.save_dict):
            raise ValueError(
                f"`save_engine={save_engine!r}` needs weights_only_state=False and a key not already in save_dict."
            )
        self._engine: Any = None
        self._saved_at: tuple | None = None
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.logger = logging.getLogger(__name__)

    @property
    def path(self) -> str:
        """The checkpoint file: ``save_dir/filename``."""
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Any) -> None:
        """Register the save (and resume) callbacks on ``engine``.

        Args:
            engine: an ignite/MONAI engine (trainer for the last checkpoint, evaluator for the best).
        """
        from ignite.engine import Events

        self.logger = engine.logger
        self._engine = engine
        self.remove_stale_temporaries()
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.key_metric_name is not None:
            engine.add_event_handler(Events.COMPLETED, self.save_if_best)
            return
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.save)

    def remove_stale_temporaries(self) -> list[str]:
        """Delete ``<filename>.*.tmp`` files that a process killed during a save left (rank 0 only).

        Returns:
            the removed paths.
        """
        import glob

        if _rank() != 0 or not os.path.isdir(self.save_dir):
            return []
        stale = glob.glob(os.path.join(glob.escape(self.save_dir), glob.escape(self.filename) + ".*.tmp"))
        for f in stale:
            os.remove(f)
            self.logger.info(f"Removed {f}, left by a save that was interrupted.")
        return stale

    def state_dict(self) -> dict:
        """The best metric seen so far (for a best-model saver), so a resumed run keeps comparing to it."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore :py:meth:`state_dict`.

        Args:
            state_dict: a mapping with ``best_metric`` and ``best_epoch``.
        """
        self.best_metric = float(state_dict.get("best_metric", -math.inf))
        self.best_epoch = int(state_dict.get("best_epoch", -1))

    def _objects(self) -> dict:
        objects = dict(self.save_dict)
        if self.save_engine is not None and self._engine is not None:
            objects[self.save_engine] = self._engine
        return objects

    def _content(self) -> dict:
        if self.weights_only_state:
            return next(iter(self.save_dict.values())).state_dict()
        return {k: v.state_dict() for k, v in self._objects().items()}

    def save(self, engine: Any = None) -> None:
        """Write the checkpoint (rank 0 only).

        Args:
            engine: the engine firing the event (unused; for the ignite handler signature).
        """
        if _rank() != 0:
            return
        if self.key_metric_name is None and engine is not None:
            at = (id(engine), engine.state.iteration)
            if at == self._saved_at:  # e.g. COMPLETED right after the last EPOCH_COMPLETED save
                return
            self._saved_at = at
        atomic_torch_save(self._content(), self.path)
        where = ""
        if engine is not None:
            if self.key_metric_name:
                where = f" after round {engine.state.epoch}"
            else:
                where = f" at iteration {engine.state.iteration}"
        self.logger.info(f"Saved checkpoint {self.path}{where}.")

    def save_if_best(self, engine: Any) -> None:
        """Save when ``engine.state.metrics[key_metric_name]`` beats the best so far.

        Args:
            engine: the evaluator that just completed.

        Raises:
            KeyError: when the engine computed no metric named ``key_metric_name``.
        """
        metrics = engine.state.metrics
        if self.key_metric_name not in metrics:
            raise KeyError(f"Key metric {self.key_metric_name!r} not among the evaluator's metrics {list(metrics)}.")
        value = self.sign * float(metrics[self.key_metric_name])
        bad = _non_finite_details(engine, self.key_metric_name)
        if not math.isfinite(value) or bad:
            why = f"{self.key_metric_name} = {value * self.sign}" if not math.isfinite(value) else (
                f"{bad[0]} of {bad[1]} validation images gave a non-finite {self.key_metric_name} (left out of its mean)"
            )
            self.logger.warning(
                f"Round {engine.state.epoch}: {why}; a non-finite metric is never a best, {self.path} is not updated."
            )
            return
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, int(engine.state.epoch)
            self.save(engine)
            self.logger.info(f"New best {self.key_metric_name} = {self.sign * value:.4f} (round {self.best_epoch}).")

    def load(self, engine: Any) -> None:
        """Load the checkpoint into ``save_dict`` when the file exists (the trainer's STARTED event).

        Args:
            engine: the engine starting; its ``max_epochs`` from the current config is kept.

        Raises:
            RuntimeError: when the file exists but cannot be read or does not match ``save_dict``.
        """
        from ignite.handlers import Checkpoint

        if not os.path.isfile(self.path):
            self.logger.info(f"No checkpoint at {self.path}: starting from scratch.")
            return
        try:
            checkpoint = torch.load(self.path, map_location=self.map_location, weights_only=True)
            if self.weights_only_state:
                checkpoint = {next(iter(self.save_dict)): checkpoint}
            objects = self._objects()
            missing = [k for k in objects if k not in checkpoint]
            if missing:
                raise KeyError(f"entries {missing} are missing (found {list(checkpoint)})")
            max_epochs = engine.state.max_epochs
            configured = {
                k: v.state_dict() for k, v in objects.items() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)
            }
            Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
            for k, conf in configured.items():
                loaded = objects[k].state_dict()
                changed = {
                    n: (loaded[n], v) for n, v in conf.items() if n not in _SCHEDULER_PROGRESS and loaded.get(n) != v
                }
                if changed:
                    self.logger.info(
                        f"Resuming {k} with the current config's settings {changed} (checkpoint -> config)."
                    )
                    sched = objects[k]
                    sched.load_state_dict({**loaded, **{n: conf[n] for n in changed}})
                    lrs = None
                    if hasattr(sched, "_get_closed_form_lr"):  # put the lr on the new curve (e.g. cosine)
                        lrs = sched._get_closed_form_lr()
                    elif isinstance(sched, torch.optim.lr_scheduler.LambdaLR):  # warmup_cosine_schedule
                        lrs = [base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas)]
                    if lrs is not None:
                        for group, lr in zip(sched.optimizer.param_groups, lrs):
                            group["lr"] = lr
                        sched._last_lr = list(lrs)
        except Exception as e:
            raise RuntimeError(
                f"Cannot resume from {self.path}: {e}. Delete the file (or use another output_dir) to start afresh."
            ) from e
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                self.logger.warning(
                    f"Checkpoint {self.path} is at round {engine.state.epoch}, past the configured {max_epochs}: "
                    "nothing left to train."
                )
            engine.state.max_epochs = max(max_epochs, engine.state.epoch)
        self.logger.info(
            f"Resumed from {self.path} at iteration {engine.state.iteration} (round {engine.state.epoch} of "
            f"{engine.state.max_epochs})."
        )


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def checkpoint_fit_problems(state: Mapping[str, Any], module: torch.nn.Module) -> str | None:
    """How a state dict does not fit ``module`` (``None`` when it fits): shape mismatches, missing and unexpected keys.

    Args:
        state: a state dict (name -> tensor).
        module: the module it should load into.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = [  # PyTorch's words, so that a search for its error finds this one
        f"size mismatch for {len(wrong)} tensor(s), e.g. {wrong[0]}" if wrong else "",
        f"Missing key(s): {len(missing)} of the network's tensors are not in the checkpoint, e.g. {missing[0]!r}"
        if missing else "",
        f"Unexpected key(s): {len(unexpected)} tensor(s) the network does not have, e.g. {unexpected[0]!r}"
        if unexpected else "",
    ]  # fmt: skip
    parts = [p for p in parts if p]
    return "; ".join(parts) if parts else None


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose failures name the checkpoint file and say what is wrong with it.

    MONAI's handler raises ``torch.load``'s ``PytorchStreamReader failed reading zip archive`` for a
    truncated file and a page of ``size mismatch for ...`` lines for a checkpoint of another network
    size, neither naming the file. This one loads the same way (same arguments) and, when that
    fails, raises one of:

    - ``FileNotFoundError``: no file at ``load_path`` (named, with what to pass instead);
    - ``ValueError``: the file is not a complete PyTorch checkpoint (truncated, empty or another kind
      of file; its size is given), or its tensors do not fit the network (how many, one example with
      both shapes, and the settings to pass: ``network_name``, ``feature_size``, ``network_kwargs``);
    - ``monai_rat.networks.CheckpointMismatchError`` (a ``ValueError``), before loading: the file records
      another network (:mod:`monai_rat.networks.record`) than the one the config builds; the record's
      ``--network_name`` / ``--feature_size`` / ``--network_kwargs`` are given.

    When the engine is already told to stop (an inference that is complete), nothing is loaded.

    Args:
        load_path: the checkpoint file.
        load_dict: ``{name: object}`` to load into.
        kwargs: more ``monai.handlers.CheckpointLoader`` arguments (``map_location``, ``strict`` ...).

    Raises:
        FileNotFoundError: at load time, when ``load_path`` does not exist.
        ValueError: at load time, when the file is unreadable or does not fit the network.
    """

    def __init__(self, load_path: str, load_dict: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(load_path=load_path, load_dict=dict(load_dict), **kwargs)

    def __call__(self, engine: Any) -> None:
        """Load the checkpoint as ``CheckpointLoader`` does; on failure, raise naming the file.

        Args:
            engine: the engine starting.

        Raises:
            FileNotFoundError: when the file does not exist.
            ValueError: when it is unreadable or does not fit the network.
        """
        if engine is not None and getattr(engine, "should_terminate", False):
            return  # the run ends before it starts (e.g. an inference that is already complete)
        problem = _precheck(self.load_path, self.load_dict)
        if problem is not None:  # raised here, not from a failed load: no page of PyTorch's lines above it
            raise problem
        try:
            super().__call__(engine)
        except Exception as e:
            raise _checkpoint_error(self.load_path, self.load_dict, e) from e


def _record_of(module: Any) -> dict | None:
    """The network record of ``module`` or of the network it wraps (``.network``, ``.module``), if any."""
    for _ in range(8):
        if module is None:
            return None
        record = getattr(module, "network_record", None)
        if record is not None:
            return dict(record)
        module = getattr(module, "network", None) or getattr(module, "module", None)
    return None


def _first_width(state: Mapping[str, Any]) -> int | None:
    for v in state.values():
        if hasattr(v, "ndim") and v.ndim == 4:
            return int(v.shape[0])
    return None


def _precheck(path: Any, load_dict: Mapping[str, Any]) -> Exception | None:
    """The error for a readable checkpoint that does not fit, found before loading it (``None`` when it fits).

    A ``CheckpointMismatchError`` when the file records another network than the one it is loaded into;
    else :func:`_checkpoint_error`'s ``ValueError`` when its tensors do not fit. Missing and unreadable
    files are left to the load (and :func:`_checkpoint_error`).
    """
    from monai_rat.networks.record import CheckpointMismatchError, _plain, describe_record, read_network_record

    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - reported by the load itself
        return None
    if not isinstance(checkpoint, Mapping):
        return None
    k = next(iter(load_dict))
    if len(load_dict) == 1 and k not in checkpoint:
        checkpoint = {k: checkpoint}
    fields = ("name", "feature_size", "network_kwargs", "in_channels", "out_channels")
    flags = {"name": "--network_name", "feature_size": "--feature_size", "network_kwargs": "--network_kwargs"}
    for name, obj in load_dict.items():
        if not isinstance(obj, torch.nn.Module) or not isinstance(checkpoint.get(name), Mapping):
            continue
        saved, mine = read_network_record(checkpoint[name]), _record_of(obj)
        if saved and mine and any(_plain(saved.get(f)) != _plain(mine.get(f)) for f in fields):
            fix = " ".join(f"{flags[f]} {saved.get(f)!r}" for f in flags if _plain(saved.get(f)) != _plain(mine.get(f)))
            return CheckpointMismatchError(
                f"ckpt_path: {path!r} holds {describe_record(saved)} and does not fit the network the config builds, "
                f"{describe_record(mine)}: " + (f"pass {fix}" if fix else "it is for images of other channels")
                + ", or another --ckpt_path."
            )
        if checkpoint_fit_problems(checkpoint[name], obj):
            return _checkpoint_error(path, load_dict, RuntimeError("the checkpoint does not fit the network"))
    return None


def _checkpoint_error(path: Any, load_dict: Mapping[str, Any], err: BaseException) -> Exception:
    path = os.fspath(path)
    hint = (
        "pass the network_name, feature_size and network_kwargs of the run that trained it (e.g. --feature_size 16 "
        "for a demo checkpoint), or another --ckpt_path"
    )
    if not os.path.isfile(path):
        return FileNotFoundError(
            f"ckpt_path: there is no checkpoint file {path!r}{' (it is a folder)' if os.path.isdir(path) else ''}; train "
            "a model first or pass --ckpt_path /path/to/model.pt."
        )
    size = os.path.getsize(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, empty file, not a torch file
        return ValueError(
            f"ckpt_path: {path!r} is not a complete PyTorch checkpoint ({size} bytes; {type(e).__name__}: "
            f"{_first_line(e)}); it may be truncated by an interrupted copy or save. Pass a complete file with --ckpt_path."
        )
    if isinstance(checkpoint, Mapping):
        k = next(iter(load_dict))
        if len(load_dict) == 1 and k not in checkpoint:
            checkpoint = {k: checkpoint}
        for name, obj in load_dict.items():
            if isinstance(obj, torch.nn.Module) and isinstance(checkpoint.get(name), Mapping):
                why = checkpoint_fit_problems(checkpoint[name], obj)
                if why:
                    from monai_rat.networks.record import read_network_record

                    width = _first_width(checkpoint[name])
                    unrecorded = "" if read_network_record(checkpoint[name]) else (
                        " It records no network (saved by older code)"
                        + (f"; its first convolution has {width} output channels (--feature_size {width}?)" if width else "")
                        + "."
                    )
                    return ValueError(
                        f"ckpt_path: {path!r} does not fit the network ({type(obj).__name__}): {why}.{unrecorded} It was "
                        f"saved from a network built with other settings: {hint}."
                    )
    return RuntimeError(f"ckpt_path: cannot load {path!r} ({type(err).__name__}: {_first_line(err)}).")
