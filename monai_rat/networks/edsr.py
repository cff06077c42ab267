"""EDSR (Lim et al. 2017), the baseline model: residual blocks without batch norm, residual scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_rat.networks.blocks.padding import plain_tensor

__all__ = ["EDSR", "EDSRResBlock"]


class EDSRResBlock(nn.Module):
    """EDSR's residual block: ``x + res_scale * Conv3x3(ReLU(Conv3x3(x)))``, no batch normalisation.

    Args:
        channels: feature channels.
        res_scale: the residual scaling (1.0 in the baseline, 0.1 in the large EDSR).
    """

    def __init__(self, channels: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.relu(self.conv1(x)))


class EDSR(nn.Module):
    """Enhanced Deep Super-Resolution network (EDSR), the single-scale baseline.

    Lim, Son, Kim, Nah and Lee, "Enhanced Deep Residual Networks for Single Image Super-Resolution",
    CVPR Workshops 2017. ``head`` Conv3x3(in, F) -> ``body``: ``num_res_blocks`` :class:`EDSRResBlock`
    (no batch norm, residual scaling ``res_scale``) then Conv3x3(F, F), plus the head's features
    (the long skip) -> ``tail``:

    - ``upscale`` 2, 4, 8 (or 3): the sub-pixel up-sampler, per factor 2 Conv3x3(F, 4F) + PixelShuffle(2)
      (for 3 one Conv3x3(F, 9F) + PixelShuffle(3)), then Conv3x3(F, out): super-resolution from the
      low-resolution image, output ``upscale`` times its size;
    - ``upscale`` 1: Conv3x3(F, out), plus the input (``global_residual``): same-size restoration of an
      image already up-sampled to the target size (bicubic), the contract of the pathology bundle.

    The baseline's sizes are the defaults: F = ``feature_size`` 64, 16 blocks, ``res_scale`` 1 (the large
    EDSR is 256, 32, 0.1). Parameters: 1,219,841 (1 channel, ``upscale`` 1), 1,222,147 (RGB, 1),
    1,517,571 (RGB, 4; the paper's "1.5M"). EDSR's mean shift (subtracting the DIV2K RGB mean from a
    0..255 input) is left out: inputs here are scaled to [0, 1] per data set, and at ``upscale`` 1 the
    global residual carries the mean.

    Args:
        spatial_dims: must be 2.
        in_channels: image channels in.
        out_channels: image channels out.
        upscale: output size over input size: 1 (same size) or 2, 3, 4, 8.
        feature_size: F, the body width (64).
        num_res_blocks: residual blocks (16).
        res_scale: residual scaling in each block (1.0).
        global_residual: add the input to the output; only for ``upscale`` 1. ``None``: on when
            ``upscale`` is 1 and ``in_channels == out_channels``.

    Raises:
        ValueError: for ``spatial_dims != 2``, non-positive sizes, an ``upscale`` that is neither 1, 3 nor a
            power of 2, or ``global_residual=True`` where it cannot apply.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        upscale: int = 1,
        feature_size: int = 64,
        num_res_blocks: int = 16,
        res_scale: float = 1.0,
        global_residual: bool | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"EDSR is a 2D network: spatial_dims must be 2, got {spatial_dims}. Run volumes slice by slice.")
        for name, value, least in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("upscale", upscale, 1),
            ("feature_size", feature_size, 1),
            ("num_res_blocks", num_res_blocks, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        if upscale != 3 and upscale & (upscale - 1):
            raise ValueError(f"upscale must be 1, 3 or a power of 2, got {upscale}.")
        can_add = upscale == 1 and in_channels == out_channels
        if global_residual is None:
            global_residual = can_add
        elif global_residual and not can_add:
            raise ValueError(
                f"global_residual needs upscale 1 and in_channels == out_channels, got upscale {upscale}, "
                f"in_channels {in_channels}, out_channels {out_channels}."
            )
        self.in_channels = in_channels
        self.upscale = upscale
        self.global_residual = global_residual
        f = feature_size
        self.head = nn.Conv2d(in_channels, f, 3, padding=1)
        self.body = nn.Sequential(*[EDSRResBlock(f, res_scale) for _ in range(num_res_blocks)], nn.Conv2d(f, f, 3, padding=1))
        steps: list[nn.Module] = []
        if upscale == 3:
            steps = [nn.Conv2d(f, 9 * f, 3, padding=1), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(upscale))):
                steps += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(*steps, nn.Conv2d(f, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore (``upscale`` 1) or super-resolve ``x``.

        Args:
            x: ``(B, in_channels, H, W)`` float image, any H, W.

        Returns:
            ``(B, out_channels, upscale * H, upscale * W)``.

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        x = plain_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"EDSR input must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        feat = self.head(x)
        y = self.tail(self.body(feat) + feat)
        return y + x if self.global_residual else y
