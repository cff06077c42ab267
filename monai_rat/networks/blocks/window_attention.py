"""W-MSA: multi-head self-attention inside non-overlapping square windows (RAT's cross-region half)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WindowAttention"]


class WindowAttention(nn.Module):
    """Self-attention within ``window_size`` x ``window_size`` windows; no shift, no position bias.

    Logits are scaled by ``num_heads ** -0.5`` as in the paper and its code. Parameter names
    (``qkv``, ``proj_out``, both ``nn.Linear``) match the reference implementation.

    Args:
        channels: number of channels C (a multiple of ``num_heads``).
        num_heads: number of attention heads.
        window_size: window side in pixels; H and W of the input must be multiples of it.

    Raises:
        ValueError: when C is not a multiple of ``num_heads``, or (in ``forward``) the input is not
            a multiple of the window size.
    """

    def __init__(self, channels: int, num_heads: int = 8, window_size: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be a multiple of num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = num_heads**-0.5
        self.qkv = nn.Linear(channels, channels * 3)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window_size
        if h % ws or w % ws:
            raise ValueError(f"WindowAttention input {h}x{w} is not a multiple of the window size {ws}.")
        # (B, C, H, W) -> (B * windows, ws * ws, C)
        win = x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)
        n = ws * ws
        qkv = self.qkv(win).reshape(-1, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        out = self.proj_out(out.transpose(1, 2).reshape(-1, n, c))
        return out.view(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
