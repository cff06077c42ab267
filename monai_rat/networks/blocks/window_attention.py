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
        """Attend within windows of ``x`` (B, C, H, W); returns (B, C, H, W), contiguous."""
        return self.forward_tokens(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on token-major features ``(B, H, W, C)``; returns ``(B, H, W, C)``."""
        b, h, w, c = x.shape
        ws = self.window_size
        if h % ws or w % ws:
            raise ValueError(f"WindowAttention input {h}x{w} is not a multiple of the window size {ws}.")
        heads = self.num_heads
        # (B, H, W, C) -> (B * windows, ws * ws, C)
        win = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        n = ws * ws
        q, k, v = self.qkv(win).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj_out(out.transpose(1, 2).reshape(-1, n, c))
        return out.reshape(b, h // ws, w // ws, ws, ws, c).transpose(2, 3).reshape(b, h, w, c)
