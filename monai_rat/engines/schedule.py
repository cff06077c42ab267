"""Pick and announce a bundle's training schedule (the paper's on real data, a short demo otherwise)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["select_schedule"]

logger = logging.getLogger("monai_rat.bundle")


def select_schedule(
    schedules: Mapping[str, Mapping[str, Any]],
    dataset_dir: Any = None,
    name: str | None = None,
    real: str = "paper",
    demo: str = "demo",
    bundle: str = "bundles/ct",
) -> dict:
    """Return ``schedules[name]``, choosing ``demo`` when no ``dataset_dir`` is given, and log the choice.

    In demo mode the log also says how to train on real data instead.

    Args:
        schedules: ``{name: {"num_iterations": ..., "patch_size": ..., ...}}``.
        dataset_dir: the bundle's ``dataset_dir`` ("" or None: built-in demo data).
        name: force a schedule by name (``None``: automatic).
        real: the schedule used with a ``dataset_dir``.
        demo: the schedule used without one.
        bundle: the bundle folder, for the printed command.

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
            "(the AAPM Low-Dose CT Grand Challenge folder or a MONAI datalist .json; see "
            f"{bundle}/docs/README.md)."
        )
    return sched
