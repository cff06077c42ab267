"""SRCNN (Dong et al. 2014): three convolutions on the bicubic-upsampled image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_rat.networks.blocks.padding import plain_tensor

__all__ = ["SRCNN"]


class SRCNN(nn.Module):
    """Super-Resolution Convolutional Neural Network, the 9-1-5 model.

    Dong, Loy, He and Tang, "Learning a Deep Convolutional Network for Image Super-Resolution", ECCV
    2014. It works on the image already up-sampled to the target size (bicubic; the pathology bundle's
    input is that image): patch extraction Conv9x9(in, n1) -> ReLU -> non-linear mapping Conv1x1(n1, n2)
    -> ReLU -> reconstruction Conv5x5(n2, out), with n1 = ``feature_size`` (64) and n2 = ``feature_size // 2`` (32).

    Choices where this differs from the paper (state them when you compare):

    - **Same-size output.** The paper's convolutions are unpadded, so its output is 12 pixels smaller than
      its input on each side (9 + 1 + 5 - 3). Here each convolution is zero-padded by ``kernel // 2``
      (4, 0, 2), so the output has the input's size, as every other network in the bundles.
    - **Global residual** (``global_residual``, off by default = the paper): when on, the network predicts
      the correction to its input (``output = input + SRCNN(input)``, as VDSR later did); needs
      ``in_channels == out_channels``.

    At the defaults: 8,129 parameters for one channel (the paper's Y channel), 20,099 for RGB.

    Args:
        spatial_dims: must be 2.
        in_channels: image channels in.
        out_channels: image channels out.
        feature_size: n1, the filters of the first layer (64); the second has ``feature_size // 2``.
        kernel_sizes: the three kernel sides (9, 1, 5); odd, so that the padding keeps the size.
        global_residual: add the input to the output (False).

    Raises:
        ValueError: for ``spatial_dims != 2``, non-positive sizes, even kernels, ``feature_size < 2``, or
            ``global_residual`` with ``in_channels != out_channels``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 64,
        kernel_sizes: Sequence[int] = (9, 1, 5),
        global_residual: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"SRCNN is a 2D network: spatial_dims must be 2, got {spatial_dims}. Run volumes slice by slice.")
        for name, value, least in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1), ("feature_size", feature_size, 2)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        kernel_sizes = tuple(kernel_sizes)
        if len(kernel_sizes) != 3 or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be three odd positive integers (e.g. (9, 1, 5)), got {kernel_sizes!r}.")
        if global_residual and in_channels != out_channels:
            raise ValueError(
                f"global_residual adds the input to the output: in_channels ({in_channels}) must equal out_channels ({out_channels})."
            )
        self.in_channels = in_channels
        self.global_residual = global_residual
        n1, n2 = feature_size, feature_size // 2
        k1, k2, k3 = kernel_sizes
        self.patch_extraction = nn.Conv2d(in_channels, n1, k1, padding=k1 // 2)
        self.mapping = nn.Conv2d(n1, n2, k2, padding=k2 // 2)
        self.reconstruction = nn.Conv2d(n2, out_channels, k3, padding=k3 // 2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore ``x`` (already at the target size).

        Args:
            x: ``(B, in_channels, H, W)`` float image, any H, W.

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        x = plain_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SRCNN input must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        y = self.reconstruction(self.relu(self.mapping(self.relu(self.patch_extraction(x)))))
        return y + x if self.global_residual else y
