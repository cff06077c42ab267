"""MONAI's Restormer, padded so that any H, W work, with the paper's configuration and global residual."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.restormer import Restormer

from monai_rat.networks.blocks.padding import pad_to_multiple, plain_tensor

__all__ = ["PaddedRestormer"]


class PaddedRestormer(Restormer):
    """``monai.networks.nets.restormer.Restormer`` for images of any size, as the Restormer paper configures it.

    Zamir, Arora, Khan, Hayat, Khan and Yang, "Restormer: Efficient Transformer for High-Resolution Image
    Restoration", CVPR 2022. The modules and parameter names are MONAI's class, unchanged (a state dict of
    ``monai.networks.nets.restormer.Restormer`` with the same arguments loads). What this adds:

    - **Any H, W.** MONAI's Restormer down-samples ``len(num_blocks) - 1`` times by pixel-unshuffle and
      asserts sides larger than ``2 ** (len(num_blocks) - 1)``; the input is padded at the bottom and
      right (reflect, or replicate where the image is smaller than the padding: RAT's rule) to a multiple
      of that, larger than it, and the output cropped back.
    - **The paper's configuration as defaults**: width 48, blocks (4, 6, 6, 8), heads (1, 2, 4, 8),
      4 refinement blocks, FFN expansion 2.66, no conv bias, LayerNorm with bias. (MONAI's class defaults to
      one block and one head per level.) 26,126,644 parameters for RGB (the paper's 26.13 M),
      26,124,052 for one channel.
    - **Global residual** (``global_residual``): the paper's Restormer adds the input image to its output
      (``output(x) + inp_img``); MONAI's forward does not. On by default when ``in_channels == out_channels``,
      as every other restoration network in monai-rat has one; ``False`` gives MONAI's forward exactly.

    Args:
        spatial_dims: must be 2 (the padding is 2D; volumes go slice by slice).
        in_channels: image channels in.
        out_channels: image channels out.
        dim: base width (48); called ``feature_size`` by :func:`~monai_rat.networks.restoration_network`.
        num_blocks: transformer blocks per level, the last one the latent level ((4, 6, 6, 8)).
        heads: attention heads per level ((1, 2, 4, 8)).
        num_refinement_blocks: refinement blocks at full resolution (4).
        ffn_expansion_factor: gated-dconv feed-forward expansion (2.66).
        bias: conv bias (False).
        layer_norm_use_bias: LayerNorm with bias (True; the paper's "WithBias").
        flash_attention: MONAI's option, passed on.
        global_residual: add the input to the output; ``None``: when ``in_channels == out_channels``.

    Raises:
        ValueError: for ``spatial_dims != 2``, ``global_residual=True`` with different channel counts, or
            (MONAI's ``AssertionError``) inconsistent ``num_blocks`` / ``heads``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        heads: Sequence[int] = (1, 2, 4, 8),
        num_refinement_blocks: int = 4,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layer_norm_use_bias: bool = True,
        flash_attention: bool = False,
        global_residual: bool | None = None,
    ) -> None:
        if spatial_dims != 2:
            raise ValueError(f"PaddedRestormer is 2D: spatial_dims must be 2, got {spatial_dims}. Run volumes slice by slice.")
        if global_residual is None:
            global_residual = in_channels == out_channels
        elif global_residual and in_channels != out_channels:
            raise ValueError(
                f"global_residual adds the input to the output: in_channels ({in_channels}) must equal out_channels ({out_channels})."
            )
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=tuple(num_blocks),
            heads=tuple(heads),
            num_refinement_blocks=num_refinement_blocks,
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            layer_norm_use_bias=layer_norm_use_bias,
            dual_pixel_task=False,
            flash_attention=flash_attention,
        )
        self.in_channels = in_channels
        self.global_residual = global_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore ``x``.

        Args:
            x: ``(B, in_channels, H, W)`` float image, any H, W.

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        x = plain_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PaddedRestormer input must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        factor = 2**self.num_steps
        xp = pad_to_multiple(x, factor, min_size=factor)
        y = super().forward(xp)
        if self.global_residual:
            y = y + xp
        return y[..., :h, :w]
