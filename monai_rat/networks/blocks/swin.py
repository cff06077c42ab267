"""Swin transformer layers and RDST's dense blocks: SwinLayer, DSTB (dense Swin block), RDSTB (residual dense Swin block)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShiftedWindowAttention", "SwinLayer", "DSTB", "RDSTB", "shifted_window_mask"]


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int, device=None) -> torch.Tensor:
    """Swin's attention mask for cyclically shifted windows: ``(num_windows, N, N)``, 0 or -100.

    After ``torch.roll`` by ``-shift_size``, a window at the bottom or right edge holds pixels from
    opposite sides of the image; tokens from different original areas must not attend to each
    other. As in Swin (Liu et al., 2021), the grid is cut into 3 x 3 areas and pairs from different
    areas get -100 added to their logit.

    Args:
        height: padded feature height (a multiple of ``window_size``).
        width: padded feature width (a multiple of ``window_size``).
        window_size: window side.
        shift_size: the cyclic shift (``window_size // 2`` in Swin).
        device: device of the returned mask.

    Raises:
        ValueError: when the size is not a multiple of the window or the shift is not in ``[0, window_size)``.
    """
    if height % window_size or width % window_size:
        raise ValueError(f"feature size {height}x{width} is not a multiple of the window size {window_size}.")
    if not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be in [0, {window_size}), got {shift_size}.")
    area = torch.zeros(height, width, device=device)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size or None), slice(-shift_size or height + width, None))
    count = 0
    for hs in cuts:
        for ws in cuts:
            area[hs, ws] = count
            count += 1
    if shift_size == 0:
        area.zero_()
    win = area.view(height // window_size, window_size, width // window_size, window_size).transpose(1, 2)
    win = win.reshape(-1, window_size * window_size)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill_(diff != 0, -100.0)


class ShiftedWindowAttention(nn.Module):
    """Swin's window multi-head self-attention with a learned relative position bias.

    Logits are ``q k^T * head_dim ** -0.5 + B`` where ``B`` is looked up in a
    ``(2 * window_size - 1) ** 2 x num_heads`` table (truncated-normal initialised, std 0.02, as in
    Swin) by the relative offset of the two tokens, plus the shifted-window mask when one
    is given. Computed with ``scaled_dot_product_attention`` over all windows at once.

    Args:
        channels: token channels C (a multiple of ``num_heads``).
        num_heads: attention heads.
        window_size: window side in tokens.
        qkv_bias: whether the q, k, v projection has a bias (Swin: True).

    Raises:
        ValueError: when ``channels`` is not a multiple of ``num_heads``.
    """

    def __init__(self, channels: int, num_heads: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be a multiple of num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window_size - 1) + rel[..., 1], persistent=False)

    def position_bias(self) -> torch.Tensor:
        """The ``(num_heads, N, N)`` relative position bias, ``N = window_size ** 2``."""
        n = self.window_size**2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            windows: ``(B, num_windows, N, C)`` tokens grouped by window.
            mask: optional ``(num_windows, N, N)`` additive mask (see :func:`shifted_window_mask`).
        """
        b, nw, n, c = windows.shape
        # 4D (B * nW, heads, N, hd) so that SDPA takes its fused CPU/GPU kernels rather than the math fallback
        qkv = self.qkv(windows).view(b * nw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias().to(windows.dtype).unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            bias = (bias + mask.to(windows.dtype).unsqueeze(1)).expand(b, -1, -1, -1, -1).reshape(b * nw, self.num_heads, n, n)
        else:  # a 4D mask keeps SDPA on its fused kernel (a 3D one falls back to the math path on the CPU)
            bias = bias.expand(b * nw, -1, -1, -1)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)  # (B * nW, heads, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, nw, n, c))


class SwinLayer(nn.Module):
    """One Swin transformer layer on ``(B, H, W, C)`` tokens: ``x + WMSA(LN(x))``, then ``x + MLP(LN(x))``.

    With ``shift_size > 0`` the tokens are rolled by ``-shift_size`` before windowing and rolled back
    after, and the shifted-window mask keeps wrapped-around tokens apart. The MLP is
    ``Linear(C, mlp_ratio * C) -> GELU -> Linear(mlp_ratio * C, C)``.

    Args:
        channels: token channels C.
        num_heads: attention heads.
        window_size: window side.
        shift_size: cyclic shift (0: regular windows; ``window_size // 2``: shifted windows).
        mlp_ratio: MLP hidden width over C.

    Raises:
        ValueError: for a bad head count or shift, or (in ``forward``) H, W not multiples of the window.
    """

    def __init__(self, channels: int, num_heads: int, window_size: int, shift_size: int = 0, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}.")
        self.window_size = window_size
        self.shift_size = shift_size
        hidden = int(channels * mlp_ratio)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = ShiftedWindowAttention(channels, num_heads, window_size)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self._mask_cache: dict = {}

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        if self.shift_size == 0:
            return None
        key = (h, w, str(device))
        if key not in self._mask_cache:
            if len(self._mask_cache) > 8:
                self._mask_cache.clear()
            self._mask_cache[key] = shifted_window_mask(h, w, self.window_size, self.shift_size, device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, H, W, C)`` tokens, H and W multiples of ``window_size``.

        Raises:
            ValueError: when H or W is not a multiple of ``window_size``.
        """
        b, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        if h % ws or w % ws:
            raise ValueError(f"SwinLayer input {h}x{w} is not a multiple of the window size {ws}; pad it first.")
        y = self.norm1(x)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = y.view(b, h // ws, ws, w // ws, ws, c).transpose(2, 3).reshape(b, -1, ws * ws, c)
        y = self.attn(y, self._mask(h, w, x.device))
        y = y.view(b, h // ws, w // ws, ws, ws, c).transpose(2, 3).reshape(b, h, w, c)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class DSTB(nn.Module):
    """Dense Swin transformer block: two Swin layers (regular, then shifted by half a window), a
    bottleneck ``Linear(C, growth_rate) -> GELU``, and the result concatenated to the block's input.

    Input ``(B, H, W, C)``, output ``(B, H, W, C + growth_rate)``. In an :class:`RDSTB` the i-th DSTB
    (i = 0, 1, 2) sees ``C = feature_size + i * growth_rate`` channels (dense connectivity).

    Args:
        channels: input channels C (a multiple of ``num_heads``).
        growth_rate: channels added by this block (g).
        num_heads: attention heads of both Swin layers.
        window_size: window side.
        mlp_ratio: MLP hidden width over C in the Swin layers.

    Raises:
        ValueError: when ``channels`` is not a multiple of ``num_heads``.
    """

    def __init__(self, channels: int, growth_rate: int, num_heads: int, window_size: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            SwinLayer(channels, num_heads, window_size, 0, mlp_ratio),
            SwinLayer(channels, num_heads, window_size, window_size // 2, mlp_ratio),
        )
        self.bottleneck = nn.Sequential(nn.Linear(channels, growth_rate), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, H, W, C)`` tokens.
        """
        return torch.cat([x, self.bottleneck(self.layers(x))], dim=-1)


class RDSTB(nn.Module):
    """Residual dense Swin transformer block: ``num_layers`` DSTBs densely connected, 3x3 local
    feature fusion from ``C + num_layers * growth_rate`` to ``C`` channels, plus the block's input.

    Args:
        channels: feature channels C (``feature_size`` of RDST).
        growth_rate: channels each DSTB adds (g).
        num_heads: attention heads; must divide ``C + i * g`` for every DSTB i.
        window_size: window side.
        mlp_ratio: MLP hidden width over C in the Swin layers.
        num_layers: DSTBs per block (3 in RDST).

    Raises:
        ValueError: when some DSTB width ``C + i * g`` is not a multiple of ``num_heads``.
    """

    def __init__(
        self,
        channels: int,
        growth_rate: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 2.0,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        widths = [channels + i * growth_rate for i in range(num_layers)]
        bad = [c for c in widths if c % num_heads]
        if bad:
            raise ValueError(
                f"every DSTB width feature_size + i * growth_rate = {widths} must be a multiple of num_heads "
                f"({num_heads}); {bad} are not."
            )
        self.dense = nn.Sequential(*[DSTB(c, growth_rate, num_heads, window_size, mlp_ratio) for c in widths])
        self.fusion = nn.Conv2d(channels + num_layers * growth_rate, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)`` features, H and W multiples of ``window_size``.
        """
        y = self.dense(x.permute(0, 2, 3, 1))
        return x + self.fusion(y.permute(0, 3, 1, 2))
