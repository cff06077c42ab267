"""Spatial attention (CBAM's spatial half): channel mean and max -> 7x7 conv -> sigmoid, a map per pixel."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatialAttention"]


class SpatialAttention(nn.Module):
    """Compute a ``(B, 1, H, W)`` attention map in ``(0, 1)`` from ``(B, C, H, W)`` features.

    ``W = sigmoid(Conv_kxk([mean_c(x), max_c(x)]))``. The module returns the map only; the caller
    multiplies (``x * W``), so that the map can also be compared between networks (SRDA's attention
    loss).

    Args:
        kernel_size: odd convolution size (7, as CBAM and SRDA).

    Raises:
        ValueError: when ``kernel_size`` is not a positive odd integer.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)`` features.
        """
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))
