"""NAFBlock (Chen et al., "Simple Baselines for Image Restoration"): RAT's encoder and decoder block."""

from __future__ import annotations

import torch
from torch import nn

from monai_rat.networks.blocks.layernorm import LayerNorm2d

__all__ = ["SimpleGate", "NAFBlock"]


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them: a non-linearity without activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block: a gated depthwise-conv branch and a gated feed-forward branch.

    ``y = x + beta * conv3(SCA(SG(dwconv(conv1(LN(x))))))``; ``out = y + gamma * conv5(SG(conv4(LN(y))))``,
    with SCA the simplified channel attention (global average pool, 1x1 conv, multiply). ``beta`` and
    ``gamma`` start at zero, so a new block is the identity. Parameter names match the reference code.

    Args:
        channels: number of channels C.
        dw_expand: expansion of the depthwise branch (2: conv1 gives 2C channels).
        ffn_expand: expansion of the feed-forward branch (2: conv4 gives 2C channels).
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = channels * dw_expand
        ffn = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sg = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma
