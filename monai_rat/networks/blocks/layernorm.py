"""Layer normalisation over the channels of a (B, C, H, W) feature map."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LayerNorm2d"]


class LayerNorm2d(nn.Module):
    """Normalise each pixel's channel vector to zero mean and unit variance, then scale and shift.

    This is the LayerNorm of NAFNet and RAT: statistics over channels only, per pixel.
    Parameter names (``weight``, ``bias``) match the reference implementation.

    Args:
        channels: number of channels C.
        eps: added to the variance, 1e-6 as in the reference.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) * torch.rsqrt(var + self.eps)
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)
