"""NAFBlock (Chen et al., "Simple Baselines for Image Restoration"): RAT's encoder and decoder block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_rat.networks.blocks.layernorm import LayerNorm2d, contiguous_grad
from monai_rat.networks.blocks.region_attention import is_exporting

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
        """The block on ``inp`` (B, C, H, W); returns (B, C, H, W) with standard (contiguous) strides.

        Computed token-major: the input is copied once to channels-last order, each 1x1 convolution
        is a matrix product over it, each norm a ``layer_norm`` over its last axis, the depthwise 3x3
        convolution runs on the channels-last tensor directly, and the result is copied back once.
        On a CPU this is faster than the NCHW form (no slow 1x1-convolution kernel, no layout
        conversions or mixed-layout additions inside; docs/performance.md, run C); the numbers are
        the same to fp32 round-off. The output's standard strides keep every convolution after the block, and so
        every weight gradient, in the parameters' own layout (DDP reports mismatches).
        """
        c = inp.shape[1]
        t = inp.permute(0, 2, 3, 1)  # (B, H, W, C): a view, contiguous when ``inp`` is channels-last
        if not t.is_contiguous():
            # one copy here, instead of layer_norm's internal copy and slow mixed-layout residual adds
            # (forward and backward) further down
            t = t.contiguous()
        x = _pointwise(self.conv1, self.norm1.forward_tokens(t))
        x = F.conv2d(
            x.permute(0, 3, 1, 2), _standard_grad(self.conv2.weight), self.conv2.bias, padding=1, groups=self.conv2.groups
        ).permute(0, 2, 3, 1)
        a, b = x.chunk(2, dim=-1)  # SimpleGate on the channel axis
        x = a * b
        x = _pointwise(self.conv3, x * _pointwise(self.sca[1], x.mean((1, 2), keepdim=True)))
        y = t + x * self.beta.reshape(c)
        a, b = _pointwise(self.conv4, self.norm2.forward_tokens(y)).chunk(2, dim=-1)
        out = y + _pointwise(self.conv5, a * b) * self.gamma.reshape(c)
        return contiguous_grad(out).permute(0, 3, 1, 2).contiguous()


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on channels-last features ``(..., C)`` as a matrix product."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class _StandardGrad(torch.autograd.Function):
    """Identity whose backward gives the gradient standard (contiguous) strides.

    A convolution on a channels-last input returns its weight gradient in channels-last strides;
    for a depthwise (C, 1, 3, 3) weight those differ from the parameter's only in the size-1 axis,
    which autograd accepts but DDP reports ("Grad strides do not match bucket view strides") and
    copies on every step.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clone(memory_format=torch.contiguous_format)


def _standard_grad(weight: torch.Tensor) -> torch.Tensor:
    # not while traced or exported: a TorchScript trace cannot save a Python autograd function
    if torch.is_grad_enabled() and weight.requires_grad and not is_exporting():
        return _StandardGrad.apply(weight)
    return weight
