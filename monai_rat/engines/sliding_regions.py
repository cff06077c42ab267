"""Sliding-window inference with a whole-image region map: the map is cropped with each window.

MONAI's ``sliding_window_inference`` crops a keyword argument named ``condition`` window by window,
with the same slices (and the same padding) as the input, and passes it to the network. So the
region map of a large image can be computed **once** for the whole image (through the region cache)
and reach RAT cropped consistently with every window: :class:`ConditionRegionsNetwork` turns
``network(x, condition=regions)`` into ``network(x, regions)`` (the map repeated over the input's
channels, as ``sliding_window_inference`` requires ``condition`` to match the input's shape). With
``PrepareBatchExtraInput({"condition": "regions"})`` and a ``SlidingWindowInferer`` (overlapping
windows blended, e.g. ``mode="gaussian"``), the pathology bundle restores images of any size with
memory bounded by the window for the network (the full-size image, region map and output
accumulators are kept).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_rat.engines.networks import WrappedRegionNetwork

__all__ = ["ConditionRegionsNetwork", "FittedSlidingWindowInferer"]


class FittedSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` with the window clipped to the image: ``roi_size`` becomes ``min(roi, size)``.

    MONAI pads an image smaller than the window with zeros up to ``roi_size``. RAT's NAFBlocks pool
    each channel over the whole window (simplified channel attention), so those zeros change every
    pixel's output, not just the border: a 128 x 128 demo tile in a 256 x 256 window lost 0.8 dB
    against the same tile restored whole. Clipped, an image smaller than the window is one window of
    its own size (the same as a whole-image pass), and larger images are unchanged. Takes the same
    arguments as ``SlidingWindowInferer``.
    """

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the sliding window with ``roi_size`` clipped to ``inputs``' spatial size (see the class docstring)."""
        spatial = tuple(inputs.shape[2:])
        roi = tuple(ensure_tuple_rep(self.roi_size, len(spatial)))
        fitted = tuple(s if r <= 0 else min(r, s) for r, s in zip(roi, spatial))
        if fitted == roi:
            return super().__call__(inputs, network, *args, **kwargs)
        inferer = copy.copy(self)  # per call: the shared inferer keeps its own window
        inferer.roi_size = fitted
        inferer.roi_weight_map = None
        return SlidingWindowInferer.__call__(inferer, inputs, network, *args, **kwargs)


class ConditionRegionsNetwork(WrappedRegionNetwork):
    """Call ``network(x, regions)`` where MONAI's sliding window calls ``network(x, condition=regions_window)``.

    ``state_dict`` / ``load_state_dict`` are the wrapped network's own (no prefix), so it loads the same
    ``model.pt`` as the bare network. Called with the image only (MONAI's ``verify_net_in_out``, or
    tools that feed one tensor), it makes the map with ``partition`` when one is given.

    Args:
        network: a module ``network(x, regions)``.
        partition: optional callable ``image (C, H, W) -> regions (1, H, W)`` (e.g.
            ``monai_rat.transforms.RegionPartition``) used when no ``condition`` is passed.

    Raises:
        ValueError: when ``partition`` is given but not callable.
    """

    def __init__(self, network: nn.Module, partition: Any = None) -> None:
        if partition is not None and not callable(partition):
            raise ValueError(f"ConditionRegionsNetwork: `partition` must be a callable image -> regions, got {partition!r}.")
        super().__init__(network)
        self.partition = partition

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Restore ``x`` with the region labels in ``condition``.

        Args:
            x: ``(B, C, H, W)`` window batch.
            condition: ``(B, K, H, W)`` region labels of the same windows (any numeric dtype; rounded); MONAI's
                sliding window requires ``condition`` to have the input's channel count, so the map is
                repeated over channels (``RepeatChanneld``) and only its first channel is used here.

        Raises:
            ValueError: when ``condition`` is missing and there is no ``partition``, or its spatial shape
                differs from ``x``'s.
        """
        if condition is None and self.partition is not None:
            condition = self.partition_each(self.partition, x)
        if condition is None:
            raise ValueError(
                "ConditionRegionsNetwork needs the region map as `condition` (PrepareBatchExtraInput({'condition': 'regions'}))."
            )
        if condition.shape[0] != x.shape[0] or condition.shape[2:] != x.shape[2:]:
            raise ValueError(f"ConditionRegionsNetwork: condition shape {tuple(condition.shape)} does not match input {tuple(x.shape)}.")
        regions = condition[:, :1]
        regions = regions if not torch.is_floating_point(regions) else regions.round()
        return self.network(x, regions.long())
