"""RDST: residual dense Swin transformer for medical image super-resolution (and same-size restoration)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monai_rat.networks.blocks.swin import RDSTB

__all__ = ["RDST", "PixelShuffleUpsampler"]


class PixelShuffleUpsampler(nn.Sequential):
    """Sub-pixel up-sampler as in SwinIR's classical SR head.

    ``Conv3x3(C, F) -> LeakyReLU`` then, per factor 2 of ``upscale``, ``Conv3x3(F, 4F) -> PixelShuffle(2)``
    (or once ``Conv3x3(F, 9F) -> PixelShuffle(3)`` for ``upscale=3``), then ``Conv3x3(F, out_channels)``.

    Args:
        in_channels: feature channels C.
        out_channels: image channels out.
        upscale: 2, 3, 4, 8, ... (a power of 2, or 3).
        features: width F inside the up-sampler (64 in SwinIR).

    Raises:
        ValueError: when ``upscale`` is neither a power of 2 nor 3.
    """

    def __init__(self, in_channels: int, out_channels: int, upscale: int, features: int = 64) -> None:
        if upscale == 3:
            steps = [nn.Conv2d(features, 9 * features, 3, padding=1), nn.PixelShuffle(3)]
        elif upscale >= 2 and upscale & (upscale - 1) == 0:
            steps = []
            for _ in range(int(math.log2(upscale))):
                steps += [nn.Conv2d(features, 4 * features, 3, padding=1), nn.PixelShuffle(2)]
        else:
            raise ValueError(f"upscale must be a power of 2 or 3 for the pixel-shuffle up-sampler, got {upscale}.")
        super().__init__(
            nn.Conv2d(in_channels, features, 3, padding=1),
            nn.LeakyReLU(inplace=True),
            *steps,
            nn.Conv2d(features, out_channels, 3, padding=1),
        )


class RDST(nn.Module):
    """Residual Dense Swin Transformer (RDST; ``num_blocks=4`` is the efficient RDST-E).

    ``head`` 3x3 conv (``in_channels -> feature_size``) -> ``num_blocks`` :class:`RDSTB` (each: 3 dense
    Swin blocks, every one two Swin layers (regular, then windows shifted by ``window_size // 2``) and a
    bottleneck to ``growth_rate`` channels concatenated to its input; 3x3 local fusion from
    ``feature_size + 3 * growth_rate`` back to ``feature_size``; residual) -> ``conv_after_body`` 3x3 ->
    add the head's features (global residual) -> :class:`PixelShuffleUpsampler` to ``upscale`` times the
    input size. With ``upscale=1`` the tail is one 3x3 conv to ``out_channels`` and, when
    ``in_channels == out_channels``, the input image is added (same-size restoration, as SwinIR's
    denoising head).

    Any input size: the input is padded (reflect, or replicate where the image is smaller than the
    padding) on the bottom and right to a multiple of ``window_size`` and the output cropped back to
    ``upscale`` times the input size.

    Args:
        spatial_dims: must be 2 (slices; volumes go slice by slice).
        in_channels: image channels in.
        out_channels: image channels out.
        upscale: output size over input size (1 for restoration, 2, 3, 4, 8 for super-resolution).
        feature_size: body width d (60).
        num_blocks: RDSTBs (8 for RDST, 4 for RDST-E).
        window_size: Swin window side (8).
        num_heads: attention heads; must divide ``feature_size + i * growth_rate`` for i = 0, 1, 2.
        growth_rate: channels each dense Swin block adds (g = 30).
        mlp_ratio: Swin MLP hidden width over its input width (2.0).
        upsample_features: width of the pixel-shuffle up-sampler (64, as SwinIR).

    Raises:
        ValueError: for ``spatial_dims != 2``, non-positive sizes, an unsupported ``upscale``, or widths
            not divisible by ``num_heads``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        upscale: int = 4,
        feature_size: int = 60,
        num_blocks: int = 8,
        window_size: int = 8,
        num_heads: int = 6,
        growth_rate: int = 30,
        mlp_ratio: float = 2.0,
        upsample_features: int = 64,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"RDST is a 2D network: spatial_dims must be 2, got {spatial_dims}. Run volumes slice by slice.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("upscale", upscale),
            ("feature_size", feature_size),
            ("num_blocks", num_blocks),
            ("window_size", window_size),
            ("num_heads", num_heads),
            ("growth_rate", growth_rate),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2 (shifted windows move by window_size // 2), got {window_size}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.upscale = upscale
        self.window_size = window_size

        self.head = nn.Conv2d(in_channels, feature_size, 3, padding=1)
        self.body = nn.Sequential(
            *[RDSTB(feature_size, growth_rate, num_heads, window_size, mlp_ratio) for _ in range(num_blocks)]
        )
        self.conv_after_body = nn.Conv2d(feature_size, feature_size, 3, padding=1)
        if upscale == 1:
            self.tail: nn.Module = nn.Conv2d(feature_size, out_channels, 3, padding=1)
        else:
            self.tail = PixelShuffleUpsampler(feature_size, out_channels, upscale, upsample_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve (or restore) ``x``.

        Args:
            x: ``(B, in_channels, H, W)`` float image, any H and W.

        Returns:
            ``(B, out_channels, upscale * H, upscale * W)``.

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        if hasattr(x, "as_tensor"):  # MONAI MetaTensor: metadata tracking through every layer only costs time
            x = x.as_tensor()
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"RDST input must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        xp = x
        if ph or pw:
            xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        feat = self.head(xp)
        y = self.conv_after_body(self.body(feat)) + feat
        y = self.tail(y)
        if self.upscale == 1 and self.in_channels == self.out_channels:
            y = y + xp
        return y[..., : h * self.upscale, : w * self.upscale]
