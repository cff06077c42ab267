"""NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022) in RAT's U-shape: RAT without its transformer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_rat.networks.blocks.nafblock import NAFBlock
from monai_rat.networks.blocks.ushape import NAFUShape

__all__ = ["NAFNet"]


class NAFNet(NAFUShape):
    """NAFNet with RAT's encoder and decoder: the latent RAT groups replaced by NAFNet's middle NAFBlocks.

    Chen, Chu, Zhang and Sun, "Simple Baselines for Image Restoration", ECCV 2022. The U-shape is
    :class:`~monai_rat.networks.RAT`'s (shared code, :class:`~monai_rat.networks.blocks.ushape.NAFUShape`):
    ``intro`` Conv3x3(in, 64) -> 2 levels of 2 NAFBlocks, each followed by a stride-2 Conv2x2 doubling
    the channels -> ``middle_blks``: ``middle_blocks`` NAFBlocks at 1/4 resolution (256 channels) ->
    2 levels of Conv1x1 + PixelShuffle(2), skip added, 2 NAFBlocks -> ``ending`` Conv3x3(64, out) ->
    add the input. So the only difference from RAT is the latent stage, which makes this the ablation
    "RAT's U-shape without the latent transformer". Parameter names are NAFNet's reference names
    (``intro``, ``encoders``, ``downs``, ``middle_blks``, ``ups``, ``decoders``, ``ending``), and
    ``encoders``/``downs``/``ups``/``decoders``/``intro``/``ending`` hold the same tensors as RAT's.

    As in NAFNet there is no residual around the middle blocks (each NAFBlock is residual itself);
    RAT adds one around its latent groups. ``middle_blocks=12`` is NAFNet's denoising (SIDD) model's
    middle; its paper widths (32) and 4 levels differ: here width and levels follow RAT. At the
    defaults: 6,534,465 parameters for one channel in and out (RAT: 15,945,025; each middle NAFBlock
    at 256 channels holds 467,200).

    Any H, W: the input is padded as RAT pads it (reflect, or replicate where the image is smaller than
    the padding) at the bottom and right to a multiple of ``pad_multiple`` and the output is cropped back.

    Args:
        spatial_dims: must be 2 (volumes go slice by slice).
        in_channels: image channels in.
        out_channels: image channels out; must equal ``in_channels`` (global residual).
        feature_size: channels after ``intro`` (64, RAT's); doubled at each encoder level.
        enc_blocks: NAFBlocks per encoder level (RAT's ``(2, 2)``); its length is the number of levels.
        dec_blocks: NAFBlocks per decoder level; same length as ``enc_blocks``.
        middle_blocks: NAFBlocks in the latent stage (12); 0 leaves the latent features unchanged.
        pad_multiple: padded sides are multiples of this; ``None``: ``2 ** levels`` (the least that works;
            RAT also needs its window and pads to ``2 ** levels * window_size``).
        identity_init: zero-initialise the ``ending`` convolution so the untrained network is the
            identity (default False, the paper's initialisation; True learns faster in short trainings).

    Raises:
        ValueError: for ``spatial_dims != 2``, ``in_channels != out_channels``, block lists of different
            lengths, a negative ``middle_blocks`` or a ``pad_multiple`` that is not a multiple of ``2 ** levels``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 64,
        enc_blocks: Sequence[int] = (2, 2),
        dec_blocks: Sequence[int] = (2, 2),
        middle_blocks: int = 12,
        pad_multiple: int | None = None,
        identity_init: bool = False,
    ) -> None:
        if not isinstance(middle_blocks, int) or middle_blocks < 0:
            raise ValueError(f"middle_blocks must be a non-negative integer, got {middle_blocks!r}.")
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            feature_size,
            enc_blocks,
            dec_blocks,
            middle=lambda c: nn.Sequential(*[NAFBlock(c) for _ in range(middle_blocks)]),
            pad_multiple=pad_multiple,
            identity_init=identity_init,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore ``x``.

        Args:
            x: ``(B, in_channels, H, W)`` float image any H, W (a MONAI ``MetaTensor`` gives a ``MetaTensor`` output with its metadata).

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        self.check_input(x)
        return self.restore(x, self.middle_blks)
