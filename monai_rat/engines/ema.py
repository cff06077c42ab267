"""An exponential moving average (EMA) of a network's weights, updated by the trainer and used for validation.

BasicSR's ``ema_decay`` (e.g. 0.999) and KAIR's ``E_decay``: besides the network the optimiser trains,
keep a copy whose weights follow them slowly, ``ema = decay * ema + (1 - decay) * weights`` after every
iteration, and validate, keep and ship that copy. It is usually a little better than the raw weights,
and steadier from one validation round to the next.

:class:`ModelEMA` is PyTorch's own ``torch.optim.swa_utils.AveragedModel`` with
``get_ema_multi_avg_fn`` (so the update is PyTorch's ``torch._foreach_lerp_``), plus what the bundles
need: it is an ignite handler (attach it to the trainer), a module called as the network is
(``ema(image, regions=...)``: it can be a ``SupervisedEvaluator``'s ``network``), and its state dict
is the bare network's (same keys, the network's record), so the best-model saver writes a
``model.pt`` that evaluation, inference and MONAI's tools load as before.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from monai_rat.networks.wrappers import _add_child_prefix, _bare_key_names, _strip_child_prefix

__all__ = ["EMA_RECORD_KEY", "ModelEMA", "bare_network", "model_ema"]

#: the state-dict metadata entry that holds the EMA's update count (``n_averaged``) and settings
EMA_RECORD_KEY = "monai_rat_ema"
_CHILD = "module."


def bare_network(network: nn.Module) -> nn.Module:
    """``network`` without its data-parallel and compile wrappers (``DistributedDataParallel``,
    ``DataParallel``: ``.module``; ``torch.compile``: ``._orig_mod``): the module that holds the weights.

    Args:
        network: a module, possibly wrapped.
    """
    for _ in range(8):
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif isinstance(getattr(network, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            network = network._orig_mod
        else:
            break
    return network


def _warmup_ema_multi_avg_fn(decay: float):
    """``get_ema_multi_avg_fn`` with the decay warmed up: ``min(decay, (1 + n) / (10 + n))``, ``n`` updates so far."""

    def ema_update(ema_params: Any, current_params: Any, num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(ema_params, current_params, num_averaged)

    return ema_update


def _ema_count_to_metadata(module: "ModelEMA", state_dict: Any, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: move ``n_averaged`` out of the tensors into the EMA's metadata entry."""
    count = state_dict.pop(prefix + "n_averaged", None)
    if isinstance(local_metadata, dict):
        local_metadata[EMA_RECORD_KEY] = {
            "n_averaged": int(count) if count is not None else int(module.n_averaged),
            "decay": module.decay,
            "warmup": module.warmup,
        }


def _ema_count_from_metadata(module: "ModelEMA", state_dict: Any, prefix: str, local_metadata: Any, *args: Any) -> None:
    """load_state_dict pre-hook: put the metadata's ``n_averaged`` back (1 for weights that have none)."""
    record = local_metadata.get(EMA_RECORD_KEY) if isinstance(local_metadata, dict) else None
    n = int(record["n_averaged"]) if isinstance(record, dict) and "n_averaged" in record else 1
    state_dict[prefix + "n_averaged"] = torch.tensor(n, dtype=torch.long)


class ModelEMA(AveragedModel):
    """An exponential moving average of ``network``'s weights, updated after every training iteration.

    Built on ``torch.optim.swa_utils.AveragedModel`` (``use_buffers=False``) with PyTorch's
    ``get_ema_multi_avg_fn``:

    - the first update (the first iteration) copies the weights; every later one does
      ``ema = decay * ema + (1 - decay) * weights`` for every parameter; buffers are copied from the
      network at every update (as ``AveragedModel`` does), not averaged. (BasicSR starts the average
      from the initial weights instead of the first iteration's; after a few hundred iterations at
      0.999 the two differ by less than ``0.999 ** n``.)
    - ``warmup=True``: the decay of an update is ``min(decay, (1 + n) / (10 + n))``, ``n`` the number of
      updates so far (TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` rule), so that early on
      the average follows the fast-changing weights; ``False`` (default, BasicSR's and KAIR's): ``decay``
      from the start.

    Uses:

    - **handler**: ``attach(trainer)`` updates the copy at ``Events.ITERATION_COMPLETED``;
    - **network**: ``ema(*args, **kwargs)`` calls the averaged copy as the network is called (e.g.
      ``ema(image, regions=regions)``), so a MONAI ``SupervisedEvaluator`` given ``network=ema``
      validates the EMA weights, and its metrics, the best-model saver and the metric history are those
      of the EMA;
    - **checkpoint**: ``state_dict()`` is the bare network's (its keys, no ``module.`` prefix, and its
      :mod:`record <monai_rat.networks.record>`), so ``{"model": ema}`` in the best-model saver writes a
      ``model.pt`` of the EMA weights that loads into the plain network (evaluation, inference, MONAI's
      ``CheckpointLoader``). The update count travels in the state dict's metadata (``monai_rat_ema``), so
      ``{"ema": ema}`` in the last checkpoint's ``save_dict`` resumes the average where it was; weights
      without a count (a plain ``model.pt``) load as an average of one update. ``decay`` and ``warmup``
      come from the current config on resume.

    A data-parallel or compiled network (``DistributedDataParallel``, ``DataParallel``, ``torch.compile``)
    is averaged through the module it wraps (:func:`bare_network`); under DDP every rank keeps the same
    average (the weights are the same on every rank). The copy's parameters do not require gradients
    and are not the optimiser's.

    Cost: one copy of the weights (memory) and one fused lerp over them per iteration (time), negligible
    next to a training step.

    Args:
        network: the network the trainer optimises (or its DDP / compile wrapper).
        decay: the EMA decay, in ``[0, 1]`` (0.999 as BasicSR); 0 keeps the current weights, 1 the first.
        warmup: warm the decay up as ``min(decay, (1 + n) / (10 + n))``.
        device: where the copy lives; ``None``: where ``network`` is.

    Raises:
        TypeError: when ``network`` is not a ``torch.nn.Module``.
        ValueError: when ``decay`` is not a number in ``[0, 1]``.
    """

    def __init__(
        self, network: nn.Module, decay: float = 0.999, warmup: bool = False, device: Any = None
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"ModelEMA averages a torch.nn.Module, got {type(network).__name__}.")
        try:
            decay = float(decay)
        except (TypeError, ValueError):
            raise ValueError(
                f"ModelEMA: `decay` (--ema_decay) must be a number in [0, 1] (e.g. 0.999; None: no EMA), got {decay!r}."
            ) from None
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ModelEMA: `decay` (ema_decay) must be in [0, 1] (e.g. 0.999), got {decay}.")
        from monai_rat.utils import as_flag

        source = bare_network(network)
        warmup = as_flag(warmup, "ema_warmup")
        avg = _warmup_ema_multi_avg_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
        super().__init__(source, device=device, multi_avg_fn=avg, use_buffers=False)
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.__dict__["_source"] = source  # a plain attribute: not a submodule (not in state_dict / .to())
        # the bare network's keys (``module.`` stripped), as BareStateDictWrapper does for ``network.``
        self.register_state_dict_post_hook(functools.partial(_strip_child_prefix, child=_CHILD))
        self.register_state_dict_post_hook(_ema_count_to_metadata)
        self.register_load_state_dict_pre_hook(functools.partial(_add_child_prefix, child=_CHILD))
        self.register_load_state_dict_pre_hook(_ema_count_from_metadata)  # after the renaming above
        self.register_load_state_dict_post_hook(functools.partial(_bare_key_names, child=_CHILD))

    @property
    def source(self) -> nn.Module:
        """The network whose weights are averaged (the trainer's, unwrapped)."""
        return self.__dict__["_source"]

    @property
    def current_decay(self) -> float:
        """The decay the next update uses (``decay``, or its warmed-up value; the first update copies)."""
        n = int(self.n_averaged)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def attach(self, engine: Any) -> None:
        """Update the average after every iteration of ``engine`` (``Events.ITERATION_COMPLETED``).

        Args:
            engine: the trainer (an ignite / MONAI engine) that optimises :py:attr:`source`.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        logger = getattr(engine, "logger", None)
        if logger is not None:
            logger.info(
                f"EMA of the weights: decay {self.decay}{' (warmed up: min(decay, (1 + n) / (10 + n)))' if self.warmup else ''}, "
                "updated every iteration; validation and the best model.pt use the EMA weights."
            )

    def update(self, engine: Any = None) -> None:
        """Average the source network's current weights into the copy (``AveragedModel.update_parameters``).

        Args:
            engine: the engine firing the event (unused; for the ignite handler signature).
        """
        self.update_parameters(self.source)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup}"


def model_ema(network: nn.Module, decay: Any = None, warmup: Any = False) -> ModelEMA | None:
    """A :class:`ModelEMA` of ``network``, or ``None`` when ``decay`` is ``None`` (the bundles' ``ema_decay``: off).

    The bundle id ``"ema": "$monai_rat.engines.model_ema(@network, @ema_decay, @ema_warmup)"``: the
    strings ``"none"`` / ``"null"`` / ``""`` count as ``None`` too (``--ema_decay null`` on the command line
    reaches the config as a string).

    Args:
        network: the trained network (or its DDP / compile wrapper).
        decay: the EMA decay in ``[0, 1]``, or ``None`` for no EMA.
        warmup: see :class:`ModelEMA`; a bool or a true/false string.

    Raises:
        ValueError: as :class:`ModelEMA`.
    """
    if decay is None or (isinstance(decay, str) and decay.strip().lower() in ("", "none", "null")):
        return None
    return ModelEMA(network, decay=decay, warmup=warmup)
