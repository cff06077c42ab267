"""Wrappers that change how a network is called but not what it stores: the bare network's state dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_rat.networks.blocks.padding import plain_tensor, with_meta_of
from monai_rat.networks.record import NETWORK_RECORD_KEY

__all__ = ["BareStateDictWrapper", "ImageOnly"]

_CHILD = "network."


def _strip_child_prefix(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any, child: str = _CHILD) -> None:
    """state_dict post-hook: ``<prefix>network.<key>`` -> ``<prefix><key>`` (the bare network's keys).

    ``child`` is the wrapped module's attribute name with a trailing dot (``"network."``; ``"module."`` for
    :class:`monai_rat.engines.ModelEMA`, a ``torch.optim.swa_utils.AveragedModel``).
    """
    inner = prefix + child
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)  # per-module versions, keyed by module path
    if metadata is not None:
        child = metadata.pop(inner[:-1], None)  # the network's root entry would collide with the wrapper's own
        record = child.get(NETWORK_RECORD_KEY) if isinstance(child, dict) else None
        if record is not None and isinstance(local_metadata, dict):  # the network's record moves up to the wrapper
            local_metadata.setdefault(NETWORK_RECORD_KEY, record)
        for key in [k for k in metadata if k.startswith(inner)]:
            metadata[prefix + key[len(inner) :]] = metadata.pop(key)


def _add_child_prefix(module: nn.Module, state_dict: Any, prefix: str, *args: Any, child: str = _CHILD) -> None:
    """load_state_dict pre-hook: ``<prefix><key>`` -> ``<prefix>network.<key>`` (what the wrapper holds)."""
    module._loading_prefix = prefix  # for _bare_key_names, which torch does not tell the prefix
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + child + key[len(prefix) :]] = state_dict.pop(key)


def _bare_key_names(module: nn.Module, incompatible_keys: Any, child: str = _CHILD) -> None:
    """load_state_dict post-hook: report missing / unexpected keys by the names the checkpoint uses (no ``network.``)."""
    prefix = getattr(module, "_loading_prefix", "")
    inner = prefix + child
    for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
        keys[:] = [prefix + k[len(inner) :] if k.startswith(inner) else k for k in keys]


class BareStateDictWrapper(nn.Module):
    """A module around ``network`` whose state dict is ``network``'s own: same keys, no ``network.`` prefix.

    So a wrapper saves and loads the same ``model.pt`` as the bare network. The keys are renamed by
    state-dict hooks (not by overriding ``state_dict``), so this holds wherever the wrapper sits: at
    the top, inside another wrapper, or inside a plain container (``nn.Sequential``, DDP's ``module.``).
    Subclasses define ``forward``; the region wrappers of :mod:`monai_rat.engines` and :class:`ImageOnly`
    are built on it.

    Args:
        network: the wrapped module, stored as ``self.network``.

    Raises:
        TypeError: when ``network`` is not a ``torch.nn.Module``.
    """

    def __init__(self, network: nn.Module) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"{type(self).__name__} wraps a torch.nn.Module, got {type(network).__name__}.")
        super().__init__()
        self.network = network
        self.register_state_dict_post_hook(_strip_child_prefix)
        self.register_load_state_dict_pre_hook(_add_child_prefix)
        self.register_load_state_dict_post_hook(_bare_key_names)


class ImageOnly(BareStateDictWrapper):
    """Give an image-only network the region-aware call ``forward(x, regions=None)``; ``regions`` is ignored.

    The bundles' engines call ``network(image, regions=batch["regions"])`` (MONAI's
    ``PrepareBatchExtraInput``) and their inference wrappers call ``network(x, regions)``, whatever the
    network; the learned baselines (RED-CNN, NAFNet, Restormer, SRCNN, EDSR, RDST) take the image only.
    A MONAI ``MetaTensor`` input is passed on as a plain tensor and its metadata put back on the output
    (when the output has the input's spatial size: the restored input, with its geometry). The state dict is the bare network's
    (:class:`BareStateDictWrapper`).

    Args:
        network: a module ``network(x)``.

    Raises:
        TypeError: when ``network`` is not a ``torch.nn.Module``.
    """

    def forward(self, x: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """``network(x)`` with ``x``'s MONAI metadata on the output; ``regions`` (any value, or ``None``) is not used."""
        return with_meta_of(self.network(plain_tensor(x)), x)
