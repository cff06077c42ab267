"""A one-input view of a region-aware network, for MONAI tools that call ``network(image)`` only."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from monai_rat.networks.wrappers import BareStateDictWrapper

__all__ = ["RegionMapNetwork", "WrappedRegionNetwork"]


class WrappedRegionNetwork(BareStateDictWrapper):
    """Base of the wrappers around ``network(x, regions)``: the bare network's weights, maps made per image.

    ``state_dict`` / ``load_state_dict`` are the wrapped network's own (no ``network.`` prefix;
    :class:`monai_rat.networks.wrappers.BareStateDictWrapper`), so a wrapper loads and saves the same
    ``model.pt`` as the bare network.

    Args:
        network: a module ``network(x, regions)`` (RAT, or a baseline wrapped by
            :class:`monai_rat.networks.ImageOnly`, which ignores ``regions``).
    """

    @staticmethod
    def partition_each(partition: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` region maps of each image ``x[i]``, made on the CPU by ``partition``, on ``x``'s device."""
        maps = [torch.as_tensor(partition(x[i].detach().cpu())) for i in range(x.shape[0])]
        return torch.stack([m.as_tensor() if hasattr(m, "as_tensor") else m for m in maps]).to(x.device)


class RegionMapNetwork(WrappedRegionNetwork):
    """Call ``network(x, regions)`` where a tool calls ``network(x)``.

    MONAI's ``verify_net_in_out`` and ``ckpt_export`` and MONAI Label's ``BundleInferTask`` feed a
    network one tensor. RAT also needs a region map. This wrapper makes one when none is passed:

    - ``partition`` callable: applied to each image ``x[i]`` (``(C, H, W)``, on the CPU), returning its
      ``(1, H, W)`` integer map, e.g. ``monai_rat.transforms.RegionPartition`` (superpixels, or SAM with a
      checkpoint; its ``window`` in the network input's units);
    - ``partition="single"``: every pixel in one region, which makes RAT's region attention global
      attention (the network then is RAT with ``attention="global"``, Table 4's MSA row);
    - ``partition="channel"``: the input's last channel holds the region labels (as floats, cast to
      int64) and the others the image, i.e. ``network(x[:, :-1], x[:, -1:].long())``: MONAI's answer for
      two inputs (one multi-channel input), used by the bundle's ``network_export`` id so that
      ``ckpt_export --use_trace True`` can trace a network that takes the image *and* its region map.

    A region map passed explicitly (``forward(x, regions)``) is always used as given.

    ``state_dict`` / ``load_state_dict`` are the wrapped network's own (no ``network.`` prefix), so the
    wrapper loads and saves the same ``model.pt`` as the bare network.

    Args:
        network: a module ``network(x, regions)``.
        partition: ``"single"`` or a callable ``x -> regions``.

    Raises:
        ValueError: when ``partition`` is not ``"single"``, ``"channel"`` or a callable.
    """

    def __init__(self, network: nn.Module, partition: str | Callable[[torch.Tensor], Any] = "single") -> None:
        if partition not in ("single", "channel") and not callable(partition):
            raise ValueError(
                f"`partition` must be 'single', 'channel' or a callable image -> regions, got {partition!r}."
            )
        super().__init__(network)
        self.partition = partition

    def forward(self, x: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """Restore ``x`` with ``regions`` (made by ``partition`` when ``None``).

        Args:
            x: ``(B, C, H, W)`` image (``partition="channel"``: ``(B, C + 1, H, W)``, region labels last).
            regions: optional ``(B, 1, H, W)`` integer region map.
        """
        if self.partition == "channel" and regions is None:
            return self.network(x[:, :-1], x[:, -1:].round().long())
        if regions is None:
            if self.partition == "single":
                regions = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.long, device=x.device)
            else:
                regions = self.partition_each(self.partition, x)
        return self.network(x, regions)
