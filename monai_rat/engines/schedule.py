"""Pick and announce a bundle's training schedule (the paper's on real data, a short demo otherwise)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["CT_DATA_HINT", "default_amp_dtype", "select_schedule", "validation_rounds"]

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
