"""Stop training on a non-finite loss, naming the batch's files, before the optimiser step and any checkpoint;
read engine on/off flags given as strings on the command line."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["EngineFlags", "NonFiniteLossGuard", "batch_files"]


def _names(meta: Any) -> list[str]:
    if not isinstance(meta, Mapping):
        return []
    names = meta.get("filename_or_obj")
    if names is None:
        return []
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else [str(names)]


def batch_files(batch: Any, keys: Sequence[str] = ("image", "label")) -> list[str]:
    """One description per sample of a (collated or decollated) batch: its files, and its slice when it has one.

    Args:
        batch: a collated dict of MetaTensors (``{"image": (B, ...), ...}``) or a list of per-sample dicts.
        keys: the keys whose file names are listed.

    Returns:
        e.g. ``["'low/1.nii.gz' / 'full/1.nii.gz'", ...]`` (``[]`` when the batch holds no file names).
    """
    samples: list[list[str]] = []
    slices: list[Any] = []
    if isinstance(batch, Mapping):
        per_key = [_names(getattr(batch.get(k), "meta", None)) for k in keys if k in batch]
        n = max((len(p) for p in per_key), default=0)
        samples = [[p[i] for p in per_key if i < len(p)] for i in range(n)]
        s = batch.get("slice_index")
        slices = [int(v) for v in s.reshape(-1).tolist()] if isinstance(s, torch.Tensor) else list(s or [])
    elif isinstance(batch, Sequence):
        for item in batch:
            if isinstance(item, Mapping):
                samples.append([n for k in keys if k in item for n in _names(getattr(item[k], "meta", None))])
                slices.append(item.get("slice_index"))
    out = []
    for i, files in enumerate(samples):
        unique = list(dict.fromkeys(files))  # pathology: the label is a copy of the image
        where = f" (slice {slices[i]})" if i < len(slices) and slices[i] is not None else ""
        out.append(" / ".join(repr(f) for f in unique) + where)
    return out


class EngineFlags:
    """Make an engine's on/off attributes (``amp``) bools when an override gave them as strings.

    ``python -m monai.bundle run ... --validate#evaluator#amp false`` replaces the engine's argument
    with the *string* ``"false"`` (Python's ``fire`` turns only ``False`` into a bool), which is truthy:
    the engine would run with mixed precision. Attached when the engine is built (before it runs or
    makes its gradient scaler), this reads each named attribute with :func:`monai_rat.utils.as_flag`.

    Args:
        names: the engine attributes to read as flags.

    Raises:
        ValueError: at attach time, for a value that is not true/false (``as_flag``'s spellings).
    """

    def __init__(self, names: Sequence[str] = ("amp",)) -> None:
        self.names = list(names)

    def attach(self, engine: Any) -> None:
        """Replace each named attribute of ``engine`` by its bool.

        Args:
            engine: a MONAI workflow (trainer or evaluator).
        """
        from monai_rat.utils import as_flag

        for name in self.names:
            setattr(engine, name, as_flag(getattr(engine, name), f"{type(engine).__name__}.{name}"))


class NonFiniteLossGuard:
    """Raise ``FloatingPointError`` when the training loss is NaN or infinite, naming the batch's files.

    Attached to a MONAI trainer, it checks the loss when it has been computed
    (``IterationEvents.LOSS_COMPLETED``), i.e. before the backward pass and the optimiser step: the
    weights are still those of the last good iteration, and nothing is saved from the bad one (the
    checkpoints are written at the end of a round). Under ``torch.distributed`` the ranks agree (one
    all-reduce of a flag per iteration), so every rank stops together instead of waiting for the one
    that stopped.

    A non-finite loss from finite data (the bundles check every training pair before training) means
    training diverged; the message says so.

    Args:
        keys: the batch keys whose file names are listed in the error (default "image" and "label").

    Raises:
        FloatingPointError: during training, on a non-finite loss.
    """

    def __init__(self, keys: Sequence[str] = ("image", "label")) -> None:
        self.keys = list(keys)
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Any) -> None:
        """Check the loss of every iteration of ``engine`` (a MONAI ``SupervisedTrainer``).

        Args:
            engine: the trainer.
        """
        from monai.engines.utils import IterationEvents

        self.logger = engine.logger
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        """Check ``engine.state.output["loss"]``.

        Args:
            engine: the trainer whose loss was just computed.

        Raises:
            FloatingPointError: when the loss (on any rank) is not finite.
        """
        out = engine.state.output
        loss = out.get("loss") if isinstance(out, Mapping) else None
        if loss is None:
            return
        loss_t = torch.as_tensor(loss).detach()
        finite = torch.isfinite(loss_t).all()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = finite.to(dtype=torch.int32, device=loss_t.device).reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite_everywhere, finite_here = bool(flag.item()), bool(finite)
        else:
            finite_everywhere = finite_here = bool(finite)
        if finite_everywhere:
            return
        state = engine.state
        value = loss_t.float().mean().item() if loss_t.numel() else math.nan
        if not finite_here:
            files = batch_files(state.batch, self.keys)
            where = "; ".join(files) if files else "(no file names in the batch)"
            what = f"training loss is {value} at iteration {state.iteration} (round {state.epoch}). The batch: {where}"
        else:
            what = f"training loss is not finite on another rank at iteration {state.iteration} (that rank names its batch)"
        raise FloatingPointError(
            f"Stopped: the {what}. Stopped before the optimiser step, so no checkpoint holds weights from this "
            "iteration. Look for NaN or infinite values in these files; if they are finite, training diverged: "
            "lower --learning_rate."
        )
