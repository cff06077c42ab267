"""SRDA's diagnosis-guided attention loss: L1(SR, HR) + lambda1 * CE(logits, label) + lambda2 * ||W_sr - W_diag||_F^2."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["DiagnosisGuidedAttentionLoss"]

OUTPUT_KEYS = ("sr", "logits", "sr_attention", "diagnosis_attention")


class DiagnosisGuidedAttentionLoss(_Loss):
    """``L = L1(SR, HR) + lambda1 * CE(logits, class_label) + lambda2 * ||W_sr - W_diag||_F^2``.

    Per image: the mean absolute error of the SR image, the cross-entropy of the diagnosis logits,
    and the squared Frobenius norm (sum of squares over all pixels, not a mean) of the difference
    between the SR network's and the diagnosis network's spatial attention maps. When the two maps
    differ in size (``upscale != 4``), the diagnosis map is resized to the SR map's size (bilinear,
    ``align_corners=False``); at ``upscale=4`` they are both on the LR grid and nothing is resized.

    ``input`` is :class:`~monai_rat.networks.SRDA`'s output dict (keys ``"sr"``, ``"logits"``,
    ``"sr_attention"``, ``"diagnosis_attention"``).

    **In MONAI engines.** ``SupervisedTrainer`` calls ``loss_function(pred, label)`` with the HR image as
    ``label``; the diagnosis label is another batch entry. List this loss in the trainer's
    ``train_handlers`` (the bundles' trainer attaches a loss that has ``attach`` itself,
    :func:`monai_rat.engines.with_loss_handler`): :py:meth:`attach` remembers the
    trainer, and a call without ``class_label`` reads ``engine.state.batch[label_key]``. With
    ``lambda1 == 0`` no diagnosis label is needed (data sets without diagnoses; the diagnosis network
    then learns only through the attention term).

    Args:
        lambda1: weight of the classification term (6e-4).
        lambda2: weight of the attention term (1e-4).
        label_key: batch key of the integer class labels when used in an engine.
        reduction: ``"mean"`` (over the batch), ``"sum"``, or ``"none"`` (one total per image, ``(B,)``).

    Raises:
        ValueError: for negative weights, an unknown reduction, or (in ``forward``) a malformed ``input``,
            mismatched shapes or labels out of range.
        KeyError: when the attached engine's batch has no ``label_key`` entry and ``lambda1 > 0``.
    """

    def __init__(
        self,
        lambda1: float = 6e-4,
        lambda2: float = 1e-4,
        label_key: str = "class_label",
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0, got {lambda1} and {lambda2}.")
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.label_key = label_key
        self._engine: Any = None

    def attach(self, engine: Any) -> None:
        """Remember ``engine`` so that calls without ``class_label`` read it from its current batch.

        Args:
            engine: the MONAI/ignite trainer whose ``loss_function`` is this loss.
        """
        self._engine = weakref.ref(engine)

    def _engine_labels(self) -> torch.Tensor:
        engine = self._engine() if self._engine is not None else None
        if engine is None:
            raise ValueError(
                "class_label is required when lambda1 > 0: pass it, or list this loss in the trainer's "
                "train_handlers so it reads each batch's labels (the bundles' trainer does: monai_rat.engines.with_loss_handler)."
            )
        batch = getattr(engine.state, "batch", None)
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Mapping):  # decollated batch
            if self.label_key not in batch[0]:
                raise KeyError(f"The training batch has no diagnosis label under {self.label_key!r}; keys: {list(batch[0])}.")
            return torch.stack([torch.as_tensor(b[self.label_key]) for b in batch])
        if not isinstance(batch, Mapping) or self.label_key not in batch:
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(
                f"The training batch has no diagnosis label under {self.label_key!r}; batch keys: {keys}. "
                "Add it to the datalist items, or set lambda1=0 for data without diagnoses."
            )
        return torch.as_tensor(batch[self.label_key])

    def forward(self, input: Mapping, target: torch.Tensor, class_label: torch.Tensor | None = None) -> torch.Tensor:  # noqa: A002
        """
        Args:
            input: SRDA's output dict (``"sr"``, ``"logits"``, ``"sr_attention"``, ``"diagnosis_attention"``).
            target: ``(B, C, sH, sW)`` HR image, the shape of ``input["sr"]``.
            class_label: ``(B,)`` or ``(B, 1)`` integer classes; read from the attached engine's batch
                when ``None`` and ``lambda1 > 0``.

        Raises:
            ValueError: see the class docstring.
            KeyError: see the class docstring.
        """
        if not isinstance(input, Mapping) or any(k not in input for k in OUTPUT_KEYS):
            found = sorted(input) if isinstance(input, Mapping) else type(input).__name__
            raise ValueError(
                f"input must be SRDA's output dict with keys {OUTPUT_KEYS} (build SRDA with output='all' or "
                f"'auto' in training mode), got {found}."
            )
        sr, logits = input["sr"], input["logits"]
        w_sr, w_diag = input["sr_attention"], input["diagnosis_attention"]
        if hasattr(target, "as_tensor"):
            target = target.as_tensor()
        if sr.shape != target.shape:
            raise ValueError(f"SR image and target must have the same shape, got {tuple(sr.shape)} and {tuple(target.shape)}.")
        b = sr.shape[0]
        loss = (sr - target).abs().reshape(b, -1).mean(1)

        if self.lambda1 > 0:
            if class_label is None:
                class_label = self._engine_labels()
            if hasattr(class_label, "as_tensor"):
                class_label = class_label.as_tensor()
            class_label = torch.as_tensor(class_label, device=logits.device)
            if class_label.ndim == 2 and class_label.shape[1] == 1:
                class_label = class_label[:, 0]
            if class_label.shape != (b,) or class_label.is_floating_point():
                raise ValueError(
                    f"class_label must hold {b} integer classes, shape ({b},) or ({b}, 1), "
                    f"got {tuple(class_label.shape)} {class_label.dtype}."
                )
            k = logits.shape[1]
            if ((class_label < 0) | (class_label >= k)).any():
                raise ValueError(f"class_label values must be in [0, {k}), got {class_label.tolist()}.")
            loss = loss + self.lambda1 * F.cross_entropy(logits, class_label.long(), reduction="none")

        if self.lambda2 > 0:
            if w_sr.ndim != 4 or w_diag.ndim != 4 or w_sr.shape[:2] != w_diag.shape[:2]:
                raise ValueError(
                    f"attention maps must be (B, 1, H, W), got {tuple(w_sr.shape)} and {tuple(w_diag.shape)}."
                )
            if w_diag.shape != w_sr.shape:
                w_diag = F.interpolate(w_diag, size=w_sr.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + self.lambda2 * (w_sr - w_diag).pow(2).reshape(b, -1).sum(1)

        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
