"""Pick and announce a bundle's training schedule (the paper's on real data, a short demo otherwise)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "CT_DATA_HINT",
    "WarmupCosine",
    "default_amp_dtype",
    "select_schedule",
    "validation_rounds",
    "warmup_cosine_schedule",
]

logger = logging.getLogger("monai_rat.bundle")

#: what the CT bundle's ``--dataset_dir`` accepts (select_schedule's default ``data_hint``).
CT_DATA_HINT = "the AAPM Low-Dose CT Grand Challenge folder or a MONAI datalist .json"


def default_amp_dtype() -> str:
    """The bundles' mixed-precision dtype (``amp_dtype``): ``"bfloat16"`` where the GPU supports it, else ``"float16"``.

    bfloat16 has float32's exponent range, so activations and losses cannot overflow as they can in
    float16 (whose largest value is 65504); float16 is the fallback on GPUs without bfloat16 (before
    NVIDIA Ampere). Mixed precision is used only on CUDA (``amp``); the paper's reference code trains
    in float32 (``--amp False`` reproduces that).
    """
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"


def select_schedule(
    schedules: Mapping[str, Mapping[str, Any]],
    dataset_dir: Any = None,
    name: str | None = None,
    real: str = "paper",
    demo: str = "demo",
    bundle: str = "bundles/ct",
    data_hint: str = CT_DATA_HINT,
) -> dict:
    """Return ``schedules[name]``, choosing ``demo`` when no ``dataset_dir`` is given, and log the choice.

    In demo mode the log also says how to train on real data instead: the command, what
    ``--dataset_dir`` must point at (``data_hint``) and the bundle's README.

    Args:
        schedules: ``{name: {"num_iterations": ..., "patch_size": ..., ...}}``.
        dataset_dir: the bundle's ``dataset_dir`` ("" or None: built-in demo data).
        name: force a schedule by name (``None``: automatic).
        real: the schedule used with a ``dataset_dir``.
        demo: the schedule used without one.
        bundle: the bundle folder, for the printed command.
        data_hint: what ``--dataset_dir`` accepts, for the printed advice (default the CT bundle's;
            the PET and pathology bundles pass ``monai_rat.data.PET_DATA_HINT`` /
            ``monai_rat.data.PATHOLOGY_DATA_HINT``).

    Raises:
        KeyError: when the chosen name is not in ``schedules``.
    """
    chosen = name or (real if dataset_dir else demo)
    if chosen not in schedules:
        raise KeyError(f"Unknown schedule {chosen!r}; the bundle defines {sorted(schedules)}.")
    sched = dict(schedules[chosen])
    how = "given with --schedule_name" if name else ("a dataset_dir is set" if dataset_dir else "no dataset_dir is set")
    logger.info(f"Training schedule {chosen!r} ({how}): " + ", ".join(f"{k}={v}" for k, v in sched.items()))
    if not dataset_dir:
        logger.info(
            "Training on the built-in demo data (downloads nothing). To train on real data: "
            f"python -m monai.bundle run training --config_file {bundle}/train.json --dataset_dir /path/to/data "
            f"({data_hint}; see {bundle}/docs/README.md)."
        )
    return sched


def validation_rounds(num_iterations: int, val_interval: int) -> int:
    """The trainer's ``max_epochs`` when one "epoch" is ``val_interval`` iterations (one validation each).

    Args:
        num_iterations: total training iterations (also the cosine schedule's length).
        val_interval: iterations between validations.

    Raises:
        ValueError: when either is not a positive integer, or ``num_iterations`` is not a multiple of
            ``val_interval`` (the run would go past the end of the cosine schedule, where it rises again).
    """
    n, v = int(num_iterations), int(val_interval)
    if n <= 0 or v <= 0 or n != num_iterations or v != val_interval:
        raise ValueError(
            f"num_iterations ({num_iterations}) and val_interval ({val_interval}) must be positive integers."
        )
    if n % v:
        raise ValueError(
            f"num_iterations ({n}) must be a multiple of val_interval ({v}): training runs in rounds of val_interval "
            f"iterations, each ending with a validation; e.g. --num_iterations {n - n % v or v} or --val_interval "
            f"{next(d for d in range(v, 0, -1) if n % d == 0)}."
        )
    return n // v


class WarmupCosine:
    """The learning-rate factor of :func:`warmup_cosine_schedule` at an iteration (a picklable callable).

    Args:
        base_lr: the optimizer's learning rate (the peak).
        warmup: linear warm-up iterations (0: none).
        total: total iterations (the end of the cosine).
        min_lr: the learning rate the cosine ends at.
    """

    def __init__(self, base_lr: float, warmup: int, total: int, min_lr: float) -> None:
        self.base_lr, self.warmup, self.total, self.min_lr = float(base_lr), int(warmup), int(total), float(min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return (self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))) / self.base_lr


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_iterations: int, num_iterations: int, min_learning_rate: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_iterations``, then cosine annealing to ``min_learning_rate``.

    With no warm-up this is exactly ``torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=
    num_iterations, eta_min=min_learning_rate)`` stepped once per iteration (the paper's schedule).
    Why not MONAI's ``WarmupCosineSchedule``: it anneals to zero and clips at its ``end_lr`` instead of
    annealing to it, which is not the paper's curve. Stepped once per iteration (``LrScheduleHandler``
    with ``epoch_level=False``); the state (``last_epoch``) is saved and resumed with the checkpoint.

    Args:
        optimizer: the optimizer (one learning rate for all its parameter groups).
        warmup_iterations: linear warm-up length (from ``lr / warmup`` up to ``lr``), >= 0.
        num_iterations: total iterations, > ``warmup_iterations``.
        min_learning_rate: the final learning rate, >= 0 and below the optimizer's.

    Raises:
        ValueError: when the lengths or rates are out of range.
    """
    base = optimizer.param_groups[0]["lr"]
    if int(warmup_iterations) < 0 or int(num_iterations) <= int(warmup_iterations):
        raise ValueError(
            f"warmup_cosine_schedule: need 0 <= warmup_iterations < num_iterations, got warmup_iterations="
            f"{warmup_iterations} and num_iterations={num_iterations}."
        )
    if not 0 <= float(min_learning_rate) < base:
        raise ValueError(
            f"warmup_cosine_schedule: min_learning_rate ({min_learning_rate}) must be >= 0 and below the learning rate ({base})."
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(base, int(warmup_iterations), int(num_iterations), float(min_learning_rate))
    )
