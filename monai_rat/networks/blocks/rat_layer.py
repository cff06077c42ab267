"""The RAT layer (R-MSA then W-MSA, each followed by an MLP) and the latent group of RAT layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_rat.networks.blocks.layernorm import LayerNorm2d, contiguous_grad
from monai_rat.networks.blocks.region_attention import RegionAttention, RegionPlan
from monai_rat.networks.blocks.window_attention import WindowAttention

__all__ = ["MLP", "RATLayer", "RATGroup"]

ATTENTIONS = ("region", "global", "window")


class MLP(nn.Module):
    """Pointwise feed-forward: 1x1 conv to ``hidden`` channels, GELU, 1x1 conv back.

    Args:
        channels: input and output channels.
        hidden: hidden channels.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on token-major features ``(..., C)``: the 1x1 convolutions as matrix products."""
        x = self.act(F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias))
        return F.linear(x, self.fc2.weight.flatten(1), self.fc2.bias)


class RATLayer(nn.Module):
    """One RAT layer: ``x += s_r * R-MSA(LN x); x += MLP(LN x); x += s_w * W-MSA(LN x); x += MLP(LN x)``.

    The per-channel scales ``lambda_ra`` and ``lambda_wa`` start at zero. The W-MSA half connects
    neighbouring regions. ``attention`` chooses what fills the R-MSA slot (paper, Table 4):
    ``"region"`` (R-MSA), ``"global"`` (MSA over all pixels) or ``"window"`` (a second W-MSA).
    Parameter names match the reference implementation.

    Args:
        channels: number of channels C.
        num_heads: attention heads.
        window_size: W-MSA window side.
        mlp_ratio: MLP hidden channels = ``int(C * mlp_ratio)``.
        region_bias: R-MSA cross-region logit in the reference form.
        attention: ``"region"``, ``"global"`` or ``"window"``.
        attention_impl: R-MSA implementation (:class:`RegionAttention`): ``"fast"``, ``"regions"``, ``"flex"``,
            ``"masked"`` or ``"reference"``.

    Raises:
        ValueError: for an unknown ``attention``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        window_size: int = 4,
        mlp_ratio: float = 2.0,
        region_bias: float = -1000.0,
        attention: str = "region",
        attention_impl: str = "fast",
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
        self.attention = attention
        hidden = int(channels * mlp_ratio)
        self.norm_ra = LayerNorm2d(channels)
        if attention == "window":
            self.ra: nn.Module = WindowAttention(channels, num_heads, window_size)
        else:
            self.ra = RegionAttention(channels, num_heads, region_bias, attention_impl)
        self.lambda_ra = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.norm_ra_mlp = LayerNorm2d(channels)
        self.mlp_ra = MLP(channels, hidden)
        self.norm_wa = LayerNorm2d(channels)
        self.wa = WindowAttention(channels, num_heads, window_size)
        self.lambda_wa = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.norm_wa_mlp = LayerNorm2d(channels)
        self.mlp_wa = MLP(channels, hidden)

    def forward(self, x: torch.Tensor, plan: RegionPlan | None = None) -> torch.Tensor:
        """One RAT layer on ``x`` (B, C, h, w); returns (B, C, h, w), contiguous."""
        out = self.forward_tokens(x.permute(0, 2, 3, 1).contiguous(), plan)
        return contiguous_grad(out).permute(0, 3, 1, 2).contiguous()

    def forward_tokens(self, x: torch.Tensor, plan: RegionPlan | None = None) -> torch.Tensor:
        """:meth:`forward` on token-major features ``(B, h, w, C)`` (contiguous); returns ``(B, h, w, C)``.

        Every 1x1 convolution is a matrix product and every norm a ``layer_norm`` over the last,
        contiguous axis: no layout copies inside the layer (on a CPU the NCHW form spent about a
        third of the layer's time converting layouts and in the slow 1x1-convolution kernel).
        """
        y = self.norm_ra.forward_tokens(x)
        if self.attention == "window":
            y = self.ra.forward_tokens(y)
        else:
            y = self.ra.forward_tokens(y, plan if self.attention == "region" else None)
        x = x + self.lambda_ra.flatten() * y
        x = x + self.mlp_ra.forward_tokens(self.norm_ra_mlp.forward_tokens(x))
        x = x + self.lambda_wa.flatten() * self.wa.forward_tokens(self.norm_wa.forward_tokens(x))
        return x + self.mlp_wa.forward_tokens(self.norm_wa_mlp.forward_tokens(x))


class RATGroup(nn.Module):
    """``layers_per_group`` RAT layers then a 3x3 conv, with a residual around the group.

    Args:
        channels: number of channels C.
        layers_per_group: RAT layers in the group (3 in the paper).
        **layer_kwargs: passed to every :class:`RATLayer`.
    """

    def __init__(self, channels: int, layers_per_group: int = 3, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList([RATLayer(channels, **layer_kwargs) for _ in range(layers_per_group)])
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, plan: RegionPlan | None = None) -> torch.Tensor:
        """The group on ``x`` (B, C, h, w): its layers run token-major, one layout change in and one out."""
        y = x.permute(0, 2, 3, 1).contiguous()
        for layer in self.layers:
            y = layer.forward_tokens(y, plan)
        # back to standard NCHW strides before the convolution (its weight gradient then has the
        # parameter's strides: no DDP grad-stride warning)
        return self.conv(contiguous_grad(y).permute(0, 3, 1, 2).contiguous()) + x
