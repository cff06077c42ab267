"""Give a region-aware loss the batch's region map inside MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["RegionLossAdapter", "with_loss_handler"]


def with_loss_handler(handlers: Sequence[Any], loss: Any) -> list:
    """``handlers`` plus ``loss`` when the loss is itself a handler (has ``attach``) and is not listed yet.

    A loss that reads the current batch (:class:`RegionLossAdapter`,
    :class:`monai_rat.losses.DiagnosisGuidedAttentionLoss`) has to be attached to the trainer like a
    handler. The bundles' trainer adds it here (``"train_handlers": "$[...] +
    monai_rat.engines.with_loss_handler(@train#common_handlers + @train#handlers, @loss)"``) rather than
    listing ``"@loss"`` in ``train#handlers``: MONAI's ``check_properties`` reads every entry of
    ``train#handlers`` as a handler dict (``h["_target_"]``), and a plain loss (``--loss`` of one without
    ``attach``, e.g. ``SegmentationPerceptualLoss``) then needs no change of the handler list.

    Args:
        handlers: the trainer's other handlers.
        loss: the trainer's loss function.
    """
    out = list(handlers)
    if callable(getattr(loss, "attach", None)) and not any(h is loss for h in out):
        out.append(loss)
    return out


class RegionLossAdapter(nn.Module):
    """Call ``loss(pred, label, regions)`` where MONAI's trainer calls ``loss_function(pred, label)``.

    ``SupervisedTrainer`` computes ``loss_function(pred, label)``; the focal region loss also needs the
    region map. The map reaches the *network* through MONAI's ``PrepareBatchExtraInput``; this adapter
    gives the same map to the *loss*: attached to the trainer like any MONAI handler (list it in the
    trainer's ``train_handlers``), it reads ``engine.state.batch[regions_key]`` of the current iteration
    (the same batch that ``prepare_batch`` handed to the network) and moves it to the prediction's device.
    Nothing else of the training loop changes.

    Example (bundle config)::

        "loss": {"_target_": "monai_rat.engines.RegionLossAdapter",
                 "loss": {"_target_": "monai_rat.losses.FocalRegionLoss", "gamma": 0.001, "delta": 1.0}},
        "train_handlers": "$monai_rat.engines.with_loss_handler(@train#handlers, @loss)"

    Args:
        loss: a callable ``loss(input, target, regions)``, e.g. ``monai_rat.losses.FocalRegionLoss``.
        regions_key: the batch key that holds the ``(B, 1, H, W)`` region map.

    Raises:
        TypeError: when ``loss`` is not callable.
    """

    def __init__(self, loss: Any, regions_key: str = "regions") -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"`loss` must be callable as loss(input, target, regions), got {type(loss).__name__}.")
        self.loss = loss
        self.regions_key = regions_key
        self._engine: Any = None

    def attach(self, engine: Any) -> None:
        """Remember ``engine`` so that each call reads the region map of its current batch.

        Args:
            engine: the MONAI/ignite trainer whose ``loss_function`` is this adapter.
        """
        try:
            self._engine = weakref.ref(engine)  # no reference cycle trainer -> loss -> trainer
        except TypeError:  # an object without weak-reference support
            self._engine = lambda: engine

    def current_regions(self) -> torch.Tensor:
        """The region map of the attached engine's current batch.

        Raises:
            RuntimeError: when the adapter was not attached to an engine, or the engine has no batch yet.
            KeyError: when the batch has no ``regions_key`` entry.
        """
        engine = self._engine() if self._engine is not None else None
        if engine is None:
            raise RuntimeError(
                "RegionLossAdapter is not attached to a trainer: list it in the trainer's `train_handlers` (the "
                "bundles do: monai_rat.engines.with_loss_handler(..., @loss)) so it can read each batch's region map."
            )
        batch = getattr(engine.state, "batch", None)
        if batch is None:
            raise RuntimeError("RegionLossAdapter was called before the trainer fetched a batch.")
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):  # decollated batch
            return torch.stack([torch.as_tensor(b[self.regions_key]) for b in batch])
        if not isinstance(batch, dict) or self.regions_key not in batch:
            keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
            raise KeyError(f"The training batch has no region map under {self.regions_key!r}; batch keys: {keys}.")
        return batch[self.regions_key]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - MONAI naming
        """Compute ``loss(input, target, regions)`` with the current batch's region map.

        Args:
            input: the network prediction, ``(B, C, H, W)``.
            target: the reference image, ``(B, C, H, W)``.

        Raises:
            RuntimeError: see :py:meth:`current_regions`.
        """
        regions = self.current_regions()
        if hasattr(regions, "as_tensor"):
            regions = regions.as_tensor()
        return self.loss(input, target, regions.to(input.device))
