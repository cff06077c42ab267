"""R-MSA: multi-head self-attention restricted to the pixels of each region (RAT, Eq. 3-4).

Two implementations give the same numbers (to fp32 round-off):

* ``"reference"`` follows the paper literally: a dense (N x N) additive mask, 0 within a region and
  ``region_bias`` (-1000) across regions, added to the full attention logits. O(N^2) memory; for tests.
* ``"fast"`` (default) sorts the tokens by region and runs one fused attention call per region on
  contiguous slices, then puts the tokens back. Nothing of size N x N over all token pairs is built;
  the cost is the sum of squared region sizes instead of N^2.

Both treat cross-region pairs the same way as long as ``exp(region_bias)`` underflows next to the
in-region weights (logit gaps far below 1000), which is the paper's intent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from monai_rat.utils import region_groups

__all__ = ["RegionPlan", "RegionAttention"]

IMPLEMENTATIONS = ("fast", "reference")


@dataclass
class RegionPlan:
    """Where each latent token goes for region attention; built once per forward, shared by all layers.

    Attributes:
        group: (B, N) int64, the (image, region) group of each token, ``0..G-1``.
        order: (B*N,) token indices sorted by group (stable), so each group is a contiguous slice.
        inverse: (B*N,) the permutation that undoes ``order``.
        sizes: tokens per group, in group order.
    """

    group: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor
    sizes: list[int]

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> "RegionPlan":
        """Build the plan from latent-resolution labels ``(B, h, w)`` (any integer values)."""
        group, _, num = region_groups(labels)
        flat = group.reshape(-1)
        order = torch.argsort(flat, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        sizes = torch.bincount(flat, minlength=num).tolist()
        return cls(group=group.reshape(labels.shape[0], -1), order=order, inverse=inverse, sizes=sizes)


class RegionAttention(nn.Module):
    """Region-restricted multi-head self-attention over all pixels of a feature map (R-MSA).

    With ``plan=None`` it is plain global MSA (the paper's "MSA" ablation). Logits are scaled by
    ``num_heads ** -0.5`` as in the paper and its code. Parameter names (``qkv``, ``project_out``,
    1x1 convolutions) match the reference implementation.

    Args:
        channels: number of channels C (a multiple of ``num_heads``).
        num_heads: number of attention heads.
        region_bias: the additive logit for cross-region pairs in the reference form (lambda, -1000).
        implementation: ``"fast"`` (default) or ``"reference"``; see the module docstring.

    Raises:
        ValueError: when C is not a multiple of ``num_heads`` or ``implementation`` is unknown.
    """

    def __init__(
        self, channels: int, num_heads: int = 8, region_bias: float = -1000.0, implementation: str = "fast"
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be a multiple of num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.scale = num_heads**-0.5
        self.region_bias = region_bias
        self.implementation = implementation
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.project_out = nn.Conv2d(channels, channels, 1)

    @property
    def implementation(self) -> str:
        """``"fast"`` or ``"reference"``."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}.")
        self._implementation = value

    def forward(self, x: torch.Tensor, plan: RegionPlan | None = None) -> torch.Tensor:
        """Attend within regions.

        Args:
            x: (B, C, h, w) features.
            plan: the latent tokens' regions (``RegionPlan.from_labels``), or ``None`` for global MSA.
        """
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        # (B, 3C, h, w) -> (3, B, heads, N, d); channels are split q|k|v, then head-major, as in the reference.
        qkv = self.qkv(x).reshape(b, 3, heads, d, h * w).permute(1, 0, 2, 4, 3)
        if plan is None:
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        elif self.implementation == "reference":
            out = self._reference(qkv, plan.group)
        else:
            out = self._fast(qkv, plan)
        return self.project_out(out.transpose(-1, -2).reshape(b, c, h, w))

    def _reference(self, qkv: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv[0], qkv[1], qkv[2]
        mask = (group.unsqueeze(2) != group.unsqueeze(1)).to(q.dtype) * self.region_bias  # (B, N, N)
        attn = (q @ k.transpose(-2, -1)) * self.scale + mask.unsqueeze(1)
        return attn.softmax(dim=-1) @ v

    def _fast(self, qkv: torch.Tensor, plan: RegionPlan) -> torch.Tensor:
        _, b, heads, n, d = qkv.shape
        # token-major rows (B*N, 3, heads, d), gathered so that each region is a contiguous slice
        rows = qkv.permute(1, 3, 0, 2, 4).reshape(b * n, 3, heads, d).index_select(0, plan.order)
        outs = []
        for chunk in rows.split(plan.sizes, dim=0):
            t = chunk.permute(1, 2, 0, 3)  # (3, heads, L, d)
            outs.append(F.scaled_dot_product_attention(t[0], t[1], t[2], scale=self.scale))
        out = torch.cat(outs, dim=1).transpose(0, 1).index_select(0, plan.inverse)  # (B*N, heads, d)
        return out.reshape(b, n, heads, d).permute(0, 2, 1, 3)
