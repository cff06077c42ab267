"""The NAFNet U-shape that RAT and NAFNet share: intro, NAFBlock encoders and decoders, ending, global residual."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from monai_rat.networks.blocks.nafblock import NAFBlock
from monai_rat.networks.blocks.padding import pad_to_multiple, plain_tensor, with_meta_of

__all__ = ["NAFUShape"]


class NAFUShape(nn.Module):
    """NAFNet's U-shaped restoration branch (Chen et al., ECCV 2022) with a pluggable latent stage.

    ``intro`` Conv3x3(in, C) -> per encoder level: NAFBlocks (``encoders``), then ``downs`` Conv2x2
    stride 2 doubling the channels -> ``middle_blks`` at 1/2**levels resolution (built by ``middle``)
    -> per decoder level: ``ups`` Conv1x1(c, 2c, no bias) + PixelShuffle(2) halving the channels, add
    the encoder skip, NAFBlocks (``decoders``) -> ``ending`` Conv3x3(C, out) -> add the input.

    The parameter names are the reference codes' (NAFNet's and RAT's are the same), and modules are
    registered in the order ``intro, encoders, downs, middle_blks, ups, decoders, ending``. Inputs of
    any size are padded by :func:`~monai_rat.networks.blocks.padding.pad_to_multiple` to a multiple
    of ``pad_multiple`` and the output is cropped back. :class:`~monai_rat.networks.RAT` fills the
    latent stage with RAT groups, :class:`~monai_rat.networks.NAFNet` with NAFBlocks.

    Args:
        spatial_dims: must be 2.
        in_channels: image channels in.
        out_channels: image channels out; must equal ``in_channels`` (global residual).
        feature_size: channels after ``intro``; doubled at each encoder level.
        enc_blocks: NAFBlocks per encoder level; its length is the number of levels.
        dec_blocks: NAFBlocks per decoder level; same length as ``enc_blocks``.
        middle: ``latent channels -> module``: the latent stage, stored as ``middle_blks``.
        pad_multiple: padded sides are multiples of this (at least, and a multiple of, ``2**levels``).
        identity_init: zero-initialise ``ending`` (weights and bias), so that the untrained network is
            the identity (output = input, through the global residual). Not the papers' initialisation
            (default False); short trainings learn much faster from the identity than from a random
            residual, which shifts every pixel before the first update (see the CT demo schedule).

    Raises:
        ValueError: for ``spatial_dims != 2``, ``in_channels != out_channels``, block lists of different
            lengths, or a ``pad_multiple`` that is not a multiple of ``2**levels``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        feature_size: int,
        enc_blocks: Sequence[int],
        dec_blocks: Sequence[int],
        middle: Callable[[int], nn.Module],
        pad_multiple: int | None = None,
        identity_init: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims != 2:
            raise ValueError(f"{name} is a 2D network: spatial_dims must be 2, got {spatial_dims}. Run volumes slice by slice.")
        if in_channels != out_channels:
            raise ValueError(
                f"{name} adds its input to its output, so in_channels ({in_channels}) must equal out_channels ({out_channels})."
            )
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"enc_blocks {tuple(enc_blocks)} and dec_blocks {tuple(dec_blocks)} must have the same length.")
        self.in_channels = in_channels
        self.scale = 2 ** len(enc_blocks)
        self.pad_multiple = self.scale if pad_multiple is None else pad_multiple
        if self.pad_multiple % self.scale:
            raise ValueError(f"pad_multiple ({self.pad_multiple}) must be a multiple of 2**levels ({self.scale}).")

        self.intro = nn.Conv2d(in_channels, feature_size, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = feature_size
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle_blks = middle(c)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.ending = nn.Conv2d(feature_size, out_channels, 3, padding=1)
        if identity_init:
            nn.init.zeros_(self.ending.weight)
            nn.init.zeros_(self.ending.bias)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a plain ``(B, in_channels, H, W)`` tensor.

        Raises:
            ValueError: when ``x`` has another shape.
        """
        x = plain_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        return x

    def restore(self, x: torch.Tensor, latent: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Run the U-shape on a checked ``x`` (see :meth:`check_input`) with ``latent`` as its latent stage.

        The computation runs on a plain tensor; a ``MetaTensor`` ``x`` gives a ``MetaTensor`` output with
        ``x``'s metadata (affine, file name), so MONAI's writers and ``Invertd`` still know the geometry.

        Args:
            x: ``(B, in_channels, H, W)`` tensor or ``MetaTensor``, any H and W.
            latent: ``features -> features`` at 1/2**levels of the padded size (e.g. ``self.middle_blks``).
        """
        source, x = x, plain_tensor(x)
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        y = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            y = encoder(y)
            skips.append(y)
            y = down(y)
        y = latent(y)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            y = decoder(up(y) + skip)
        y = self.ending(y) + x
        return with_meta_of(y[..., :h, :w], source)
