"""RED-CNN (Chen et al. 2017): the residual encoder-decoder CNN for low-dose CT, the RAT paper's CT baseline."""

from __future__ import annotations

import torch
from torch import nn

from monai_rat.networks.blocks.padding import plain_tensor

__all__ = ["REDCNN"]


class REDCNN(nn.Module):
    """Residual encoder-decoder convolutional neural network (RED-CNN).

    Chen, Zhang, Kalra, Lin, Chen, Liao, Zhou and Wang, "Low-Dose CT With a Residual Encoder-Decoder
    Convolutional Neural Network", IEEE Transactions on Medical Imaging 36(12), 2017. Ten layers, all
    with ``kernel_size`` x ``kernel_size`` kernels (5), stride 1, **no padding** and ``feature_size``
    filters (96): five convolutions ``conv1..conv5`` (each shrinks the image by ``kernel_size - 1``),
    then five transposed convolutions ``deconv1..deconv5`` (each grows it back by as much), the last one
    to ``out_channels``; so the output has the input's size. Every layer is followed by a ReLU. Three
    shortcuts ("residual compensation") add an earlier map to the later map of the same size, before
    that map's ReLU:

    - the output of ``conv4`` (H - 16) to the output of ``deconv1`` (the mirror of ``conv5``),
    - the output of ``conv2`` (H - 8) to the output of ``deconv3`` (the mirror of ``conv3``),
    - the input (H) to the output of ``deconv5`` (the mirror of ``conv1``), then the final ReLU.

    At the defaults (1 channel in and out) that is 1,848,865 parameters: ``conv1`` 2,496, eight 96 -> 96
    layers of 230,496 each and ``deconv5`` 2,401. The final ReLU (``output_relu``, the paper's) makes the
    output non-negative: right for CT scaled from -1024 HU up to [0, 1], wrong for data whose targets go
    below 0 (set ``output_relu=False`` there).

    Args:
        spatial_dims: must be 2 (slices; volumes go slice by slice).
        in_channels: image channels in.
        out_channels: image channels out; must equal ``in_channels`` (the input is added to the output).
        feature_size: filters of every hidden layer (96).
        kernel_size: side of every kernel (5); odd or even, at least 2.
        output_relu: apply the paper's ReLU after the last shortcut (True).

    Raises:
        ValueError: for ``spatial_dims != 2``, ``in_channels != out_channels``, or non-positive sizes.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 96,
        kernel_size: int = 5,
        output_relu: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"REDCNN is a 2D network: spatial_dims must be 2, got {spatial_dims}. Run volumes slice by slice.")
        if in_channels != out_channels:
            raise ValueError(
                f"REDCNN adds its input to its output, so in_channels ({in_channels}) must equal out_channels ({out_channels})."
            )
        for name, value, least in (("in_channels", in_channels, 1), ("feature_size", feature_size, 1), ("kernel_size", kernel_size, 2)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.output_relu = output_relu
        f, k = feature_size, kernel_size
        self.conv1 = nn.Conv2d(in_channels, f, k)
        self.conv2 = nn.Conv2d(f, f, k)
        self.conv3 = nn.Conv2d(f, f, k)
        self.conv4 = nn.Conv2d(f, f, k)
        self.conv5 = nn.Conv2d(f, f, k)
        self.deconv1 = nn.ConvTranspose2d(f, f, k)
        self.deconv2 = nn.ConvTranspose2d(f, f, k)
        self.deconv3 = nn.ConvTranspose2d(f, f, k)
        self.deconv4 = nn.ConvTranspose2d(f, f, k)
        self.deconv5 = nn.ConvTranspose2d(f, out_channels, k)
        self.relu = nn.ReLU()

    @property
    def min_size(self) -> int:
        """The smallest side the five unpadded convolutions accept: ``5 * (kernel_size - 1) + 1`` (21)."""
        return 5 * (self.kernel_size - 1) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x``.

        Args:
            x: ``(B, in_channels, H, W)`` float image, H and W at least :attr:`min_size` (21 at the defaults).

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)`` or smaller than :attr:`min_size`.
        """
        x = plain_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"REDCNN input must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"REDCNN's unpadded {self.kernel_size}x{self.kernel_size} convolutions need H and W >= {self.min_size}, "
                f"got {tuple(x.shape[-2:])}."
            )
        relu = self.relu
        out = relu(self.conv1(x))
        skip2 = out = relu(self.conv2(out))
        out = relu(self.conv3(out))
        skip4 = out = relu(self.conv4(out))
        out = relu(self.conv5(out))
        out = relu(self.deconv1(out) + skip4)
        out = relu(self.deconv2(out))
        out = relu(self.deconv3(out) + skip2)
        out = relu(self.deconv4(out))
        out = self.deconv5(out) + x
        return relu(out) if self.output_relu else out
