"""R-MSA: multi-head self-attention restricted to the pixels of each region (RAT, Eq. 3-4).

Five implementations give the same numbers (to fp32 round-off):

* ``"reference"`` follows the paper literally: a dense (N x N) additive mask, 0 within a region and
  ``region_bias`` (-1000) across regions, added to the full attention logits. O(N^2) memory; for tests.
* ``"regions"`` sorts the tokens by (image, region) and runs fused attention on each region alone:
  regions of similar size share one call, padded to the largest with the padding masked out (so
  hundreds of small superpixel regions cost a few calls, not hundreds), then puts the tokens back.
  Nothing of size N x N over all token pairs is built; the cost is about the sum of squared region
  sizes instead of N^2. Its region sizes are Python numbers taken from the data, so it cannot be
  traced or exported (it raises if asked to). The fastest form on a CPU.
* ``"flex"`` sorts the tokens by (image, region) and runs one ``flex_attention`` call per layer for
  the whole batch (batch as flex's ``B``, heads as ``H``), with a block mask whose ``mask_mod``
  compares the region ids of the sorted tokens. Sorted, each region is a contiguous run, so most
  128 x 128 tiles hold no same-region pair and are skipped; tiles inside one region skip the mask.
  The block mask is built once per forward by :meth:`RegionPlan.flex_block_mask` and shared by all
  layers. No data-dependent sizes and no host synchronisation, so it suits ``torch.compile`` and
  CUDA graphs. On CUDA it runs compiled (``torch.compile(flex_attention)``); on a CPU it runs
  PyTorch's eager reference of flex attention, which materialises the N x N scores and has no
  backward: there it is for tests only.
* ``"masked"`` runs one fused attention call over all tokens of each image with a boolean
  same-region mask (B x N x N bools, built from the labels inside the graph). No data-dependent
  sizes: the form that ``torch.jit.trace``, ``torch.export`` and ONNX export exactly, for any region
  map. O(N^2) time and mask memory, so it suits exported models of moderate size.
* ``"fast"`` (default) chooses (:func:`select_implementation`): ``"masked"`` while the model is being
  traced or exported, so an exported model is exact on every region map, not only the example's;
  otherwise ``"flex"`` on CUDA tensors (when ``flex_attention`` is importable and the head dimension is
  at least 16, the smallest its CUDA kernel takes) and ``"regions"`` elsewhere. The environment
  variable ``MONAI_RAT_RMSA`` (e.g. ``MONAI_RAT_RMSA=regions``) overrides the eager choice of ``"fast"``.

``"regions"``, ``"flex"`` and ``"masked"`` treat cross-region pairs as exactly zero weights,
``"reference"`` as ``exp(region_bias)``, which underflows next to the in-region weights for logit gaps
far below 1000 (the paper's intent).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from monai_rat.utils import region_groups

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    create_block_mask = flex_attention = None

__all__ = ["RegionPlan", "RegionAttention", "is_exporting", "select_implementation"]

IMPLEMENTATIONS = ("fast", "regions", "flex", "masked", "reference")
#: environment variable that overrides what ``"fast"`` runs eagerly (any implementation but ``"fast"``)
RMSA_ENV = "MONAI_RAT_RMSA"
#: whether ``torch.nn.attention.flex_attention`` is importable (torch >= 2.5)
HAVE_FLEX = flex_attention is not None
#: flex attention's CUDA (Triton) kernel needs a head dimension of at least 16 (``tl.dot``); below it "fast" keeps "regions"
FLEX_MIN_HEAD_DIM = 16
#: the block mask's tile size (flex attention's default sparse block size)
FLEX_BLOCK_SIZE = 128
# Padding one region into another's attention call may cost this many extra query-key pairs: about what
# one more call costs on a CPU (measured with 8 heads of 8 and of 32 channels; see _RegionBatches).
PAD_BUDGET = 1024


def is_exporting() -> bool:
    """True while ``torch.jit.trace``/``script``, ``torch.onnx.export`` or ``torch.export`` records the model."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
    )


def select_implementation(implementation: str, device: torch.device | str, head_dim: int | None = None) -> str:
    """What :class:`RegionAttention` with ``implementation`` runs on tensors of ``device``.

    Any implementation but ``"fast"`` is returned as it is. ``"fast"`` gives ``"masked"`` while a trace
    or export records the model; otherwise the value of the environment variable ``MONAI_RAT_RMSA``
    when it is set; otherwise ``"flex"`` for CUDA tensors when ``flex_attention`` is importable and
    ``head_dim`` (if given) is at least ``FLEX_MIN_HEAD_DIM``, and ``"regions"`` everywhere else.

    Args:
        implementation: one of ``IMPLEMENTATIONS``.
        device: the device of the features.
        head_dim: channels per head, when known.

    Raises:
        ValueError: when ``MONAI_RAT_RMSA`` names no implementation, or ``"flex"`` is asked for without flex attention.
    """
    if implementation == "fast":
        if is_exporting():
            return "masked"
        env = os.environ.get(RMSA_ENV, "").strip().lower()
        if env:
            if env not in IMPLEMENTATIONS or env == "fast":
                raise ValueError(f"{RMSA_ENV} must be one of {IMPLEMENTATIONS[1:]} (or unset), got {env!r}.")
            implementation = env
        else:
            flex_ok = HAVE_FLEX and (head_dim is None or head_dim >= FLEX_MIN_HEAD_DIM)
            return "flex" if torch.device(device).type == "cuda" and flex_ok else "regions"
    if implementation == "flex" and not HAVE_FLEX:
        raise ValueError(f"R-MSA 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5); this is torch {torch.__version__}.")
    return implementation


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    """``torch.compile(fn)``, made once (flex attention and its block mask are only fused when compiled)."""
    return torch.compile(fn)


def _use_compiled(device: torch.device, compile: bool | None) -> bool:
    """Compile flex attention / block mask creation: by default on accelerators, never inside a compiled graph."""
    if torch.compiler.is_compiling():  # the enclosing torch.compile traces flex attention itself
        return False
    return device.type != "cpu" if compile is None else compile


class RegionPlan:
    """The latent tokens' regions, built once per forward and shared by all RAT layers.

    Holds the latent labels. What the per-region path needs (the sort by region and the region
    sizes, which cost one host synchronisation) is computed on first use and kept, so the masked
    and exported forms never compute it and every layer of one forward reuses it. The flex path
    needs the sort (no host synchronisation) and a block mask, also built once
    (:meth:`flex_block_mask`).

    Args:
        labels: latent-resolution labels ``(B, h, w)`` or ``(B, N)`` (any integer values; labels are
            compared only within an image).

    Attributes:
        labels: (B, N) int64 labels.
        order: (B*N,) token indices sorted by (image, label), stable, so each region is a contiguous slice.
        inverse: (B*N,) the permutation that undoes ``order``.
        sorted_labels: (B, N) each image's labels in sorted order.
        sizes: tokens per region, in sorted order (a Python list).
        group: (B, N) int64, the (image, region) number of each token, ``0..G-1``.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels.reshape(labels.shape[0], -1).long()
        self._perm: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._sizes: list[int] | None = None
        self._batches: dict[int, _RegionBatches] = {}
        self._block_masks: dict[tuple, object] = {}

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> "RegionPlan":
        """The plan of latent-resolution labels ``(B, h, w)`` (any integer values)."""
        return cls(labels)

    @property
    def order(self) -> torch.Tensor:
        return self._permutation()[0]

    @property
    def inverse(self) -> torch.Tensor:
        return self._permutation()[1]

    @property
    def sorted_labels(self) -> torch.Tensor:
        """(B, N) each image's labels in sorted order (the labels of the tokens ``order`` picks)."""
        return self._permutation()[2]

    @property
    def sizes(self) -> list[int]:
        return self._sort()[2]

    @property
    def group(self) -> torch.Tensor:
        return region_groups(self.labels)[0]

    def batches(self, pad_budget: int) -> "_RegionBatches":
        """How the per-region path groups regions into padded attention calls (see :class:`_RegionBatches`)."""
        if pad_budget not in self._batches:
            self._batches[pad_budget] = _RegionBatches.build(self.order, self.sizes, pad_budget)
        return self._batches[pad_budget]

    def flex_block_mask(self, block_size: int = FLEX_BLOCK_SIZE, compile: bool | None = None):
        """The ``flex_attention`` block mask over the region-sorted tokens; built once, then reused.

        ``mask_mod(b, h, q, k)`` is ``sorted_labels[b, q] == sorted_labels[b, k]``: batch is flex's ``B``,
        the mask is the same for every head (``H`` = 1, broadcast). Sorted by region, every region is a
        contiguous run of tokens, so a ``block_size`` x ``block_size`` tile is empty (skipped) unless a
        region spans both its rows and its columns, and full (no mask evaluated) when one region covers
        it. Cached by (device, N, block size): every layer of one forward shares one mask.

        Args:
            block_size: the tile side (flex attention's default, 128).
            compile: build it with ``torch.compile(create_block_mask)`` (no N x N mask is materialised);
                ``None``: on accelerators, not on the CPU (where the eager form is quicker to start).
        """
        labels = self.sorted_labels
        b, n = labels.shape
        key = (labels.device, n, block_size)
        if key not in self._block_masks:

            def same_region(batch, head, q_idx, kv_idx):
                return labels[batch, q_idx] == labels[batch, kv_idx]

            make = _compiled(create_block_mask) if _use_compiled(labels.device, compile) else create_block_mask
            self._block_masks[key] = make(same_region, b, None, n, n, device=labels.device, BLOCK_SIZE=block_size)
        return self._block_masks[key]

    def sort_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) token-major features -> the same in region-sorted order within each image."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.order).view(x.shape)

    def unsort_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`sort_tokens`."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.inverse).view(x.shape)

    def same_region(self) -> torch.Tensor:
        """(B, N, N) bool: token i and token j of an image share a region. Built in the graph, no host sync."""
        return self.labels.unsqueeze(2) == self.labels.unsqueeze(1)

    def _permutation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stable sort by (image, label): ``order``, ``inverse``, ``sorted_labels``. No host synchronisation."""
        if self._perm is None:
            b, n = self.labels.shape
            sorted_labels, idx = torch.sort(self.labels, dim=1, stable=True)
            order = (idx + torch.arange(b, device=idx.device).unsqueeze(1) * n).reshape(-1)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            self._perm = (order, inverse, sorted_labels)
        return self._perm

    def _sort(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The sort and the region sizes (one device-to-host copy), for the per-region path."""
        if self._sizes is None:
            if is_exporting():
                raise RuntimeError(
                    "RegionPlan: the per-region sort has data-dependent sizes, which a trace or export would bake in "
                    "(the exported model would be wrong on other region maps). Use RegionAttention(implementation="
                    "'masked' or 'fast') for export."
                )
            b, n = self.labels.shape
            sorted_labels = self.sorted_labels
            starts = torch.ones_like(sorted_labels, dtype=torch.bool)
            starts[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
            first = starts.reshape(-1).cpu().nonzero().squeeze(1)  # the forward's one device-to-host copy
            self._sizes = torch.diff(first, append=torch.tensor([b * n])).tolist()
        return self.order, self.inverse, self._sizes


class _RegionBatches:
    """Regions grouped into attention calls: each call holds regions of similar size, padded to the largest.

    One attention call per region is exact but costs a fixed overhead per call (about 0.1 ms on a
    CPU, more on a GPU relative to its speed), which dominates when there are hundreds of small
    regions (superpixel maps, small crops). Regions sorted by size, largest first, join the current
    call while padding each costs at most ``pad_budget`` extra query-key pairs (``P^2 - L^2`` for a
    region of L tokens padded to P); padded keys are masked out, so the result is exact: padded
    positions get zero weight and zero gradient.

    Attributes:
        tokens: (T,) the token (row of the ``(B*N, ...)`` features) at each padded position (pads: token 0).
        rows: (B*N,) for each token, its padded position.
        shapes: ``(regions, P)`` of each call.
        masks: per call, ``None`` (no padding) or a (regions, 1, 1, P) bool key mask.
    """

    def __init__(self, tokens, rows, shapes, masks) -> None:
        self.tokens, self.rows, self.shapes, self.masks = tokens, rows, shapes, masks

    @classmethod
    def build(cls, order: torch.Tensor, sizes: list[int], pad_budget: int) -> "_RegionBatches":
        by_size = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        calls: list[tuple[list[int], int]] = []
        for i in by_size:
            if calls and calls[-1][1] ** 2 - sizes[i] ** 2 <= pad_budget:
                calls[-1][0].append(i)
            else:
                calls.append(([i], sizes[i]))
        # On the host: each padded position's place in the region-sorted order, -1 for padding.
        size_t = torch.tensor(sizes)
        start_t = torch.cumsum(size_t, 0) - size_t
        positions, shapes, padded = [], [], []
        for ids, p in calls:
            r = torch.tensor(ids)
            ar = torch.arange(p)
            positions.append(torch.where(ar < size_t[r].unsqueeze(1), start_t[r].unsqueeze(1) + ar, -1).reshape(-1))
            shapes.append((len(ids), p))
            padded.append(bool((size_t[r] < p).any()))
        position = torch.cat(positions).to(order.device)  # one host-to-device copy
        valid = position >= 0
        tokens = order[position.clamp(min=0)]  # padded position -> token (pads: the first region's token)
        # token -> its padded position; pads write into one extra slot, which is dropped (no boolean
        # indexing: on a GPU that would be another host synchronisation)
        slot = torch.where(valid, tokens, order.numel())
        rows = torch.empty(order.numel() + 1, dtype=order.dtype, device=order.device)
        rows = rows.scatter_(0, slot, torch.arange(position.numel(), device=order.device))[:-1]
        masks, offset = [], 0
        for (m, p), pad in zip(shapes, padded):
            masks.append(valid[offset : offset + m * p].view(m, 1, 1, p) if pad else None)
            offset += m * p
        return cls(tokens, rows, shapes, masks)


class RegionAttention(nn.Module):
    """Region-restricted multi-head self-attention over all pixels of a feature map (R-MSA).

    With ``plan=None`` it is plain global MSA (the paper's "MSA" ablation). Logits are scaled by
    ``num_heads ** -0.5`` as in the paper and its code. Parameter names (``qkv``, ``project_out``,
    1x1 convolutions) match the reference implementation; they are applied as matrix products on
    token-major features (:meth:`forward_tokens`), which is what the RAT layer uses.

    Args:
        channels: number of channels C (a multiple of ``num_heads``).
        num_heads: number of attention heads.
        region_bias: the additive logit for cross-region pairs in the reference form (lambda, -1000).
        implementation: ``"fast"`` (default), ``"regions"``, ``"flex"``, ``"masked"`` or ``"reference"``;
            see the module docstring and :func:`select_implementation`.

    Attributes:
        pad_budget: for ``"regions"``: how many extra query-key pairs padding a region into a shared
            call may cost (``None``: ``PAD_BUDGET``, 1024; negative: one call per region).
        flex_compile: for ``"flex"``: run ``torch.compile(flex_attention)`` and build the block mask
            compiled (``None``, the default: on accelerators, not on the CPU; never inside a graph
            that ``torch.compile`` is already tracing, which compiles flex attention itself).

    Raises:
        ValueError: when C is not a multiple of ``num_heads`` or ``implementation`` is unknown, or
            ``"flex"`` is asked for and this torch has no flex attention.
        RuntimeError: (in ``forward``) when ``"regions"`` is traced or exported.
        NotImplementedError: (from torch, in ``forward``) for ``"flex"`` on a CPU with autograd: flex
            attention has no CPU backward in torch 2.14.
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
        self.pad_budget: int | None = None  # None: PAD_BUDGET
        self.flex_compile: bool | None = None  # None: compiled on accelerators
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.project_out = nn.Conv2d(channels, channels, 1)

    @property
    def implementation(self) -> str:
        """``"fast"``, ``"regions"``, ``"flex"``, ``"masked"`` or ``"reference"``."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}.")
        if value == "flex" and not HAVE_FLEX:
            raise ValueError(f"implementation 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5); this is torch {torch.__version__}.")
        self._implementation = value

    def forward(self, x: torch.Tensor, plan: RegionPlan | None = None) -> torch.Tensor:
        """Attend within regions.

        Args:
            x: (B, C, h, w) features.
            plan: the latent tokens' regions (``RegionPlan.from_labels``), or ``None`` for global MSA.

        Returns:
            (B, C, h, w), contiguous.
        """
        return self.forward_tokens(x.permute(0, 2, 3, 1), plan).permute(0, 3, 1, 2).contiguous()

    def forward_tokens(self, x: torch.Tensor, plan: RegionPlan | None = None) -> torch.Tensor:
        """:meth:`forward` on token-major features ``(B, h, w, C)``; returns ``(B, h, w, C)``."""
        b, h, w, c = x.shape
        n, heads = h * w, self.num_heads
        impl = select_implementation(self.implementation, x.device, c // heads)
        flex = plan is not None and impl == "flex"
        if flex:  # sort the C-channel input rather than the 3C-channel q/k/v: the projections act per token
            x = plan.sort_tokens(x.reshape(b, n, c))
        # (B, N, 3C) -> (B, N, 3, heads, d); channels are split q|k|v, then head-major, as in the reference.
        qkv = F.linear(x, self.qkv.weight.flatten(1), self.qkv.bias).reshape(b, n, 3, heads, c // heads)
        if plan is None:
            out = self._dense(qkv, None)
        elif impl == "regions":
            out = self._regions(qkv, plan)
        elif impl == "flex":
            out = self._flex(qkv, plan)
        elif impl == "masked":
            out = self._dense(qkv, plan.same_region().unsqueeze(1))
        else:
            out = self._reference(qkv, plan)
        out = F.linear(out, self.project_out.weight.flatten(1), self.project_out.bias)
        if flex:
            out = plan.unsort_tokens(out)
        return out.reshape(b, h, w, c)

    def _dense(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One attention call over all tokens of each image: global MSA, or masked to same-region pairs."""
        b, n, _, heads, d = qkv.shape
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d), last dimension contiguous
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return out.transpose(1, 2).reshape(b, n, heads * d)

    def _flex(self, qkv: torch.Tensor, plan: RegionPlan) -> torch.Tensor:
        """One flex attention call for the whole batch on region-sorted tokens (``qkv`` is already sorted)."""
        b, n, _, heads, d = qkv.shape
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d), last dimension contiguous
        compiled = _use_compiled(q.device, self.flex_compile)
        attend = _compiled(flex_attention) if compiled else flex_attention
        out = attend(q, k, v, block_mask=plan.flex_block_mask(compile=self.flex_compile), scale=self.scale)
        return out.transpose(1, 2).reshape(b, n, heads * d)

    def _reference(self, qkv: torch.Tensor, plan: RegionPlan) -> torch.Tensor:
        b, n, _, heads, d = qkv.shape
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = (~plan.same_region()).to(q.dtype) * self.region_bias  # (B, N, N)
        attn = (q @ k.transpose(-2, -1)) * self.scale + mask.unsqueeze(1)
        return (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, heads * d)

    # Data-dependent sizes: under torch.compile this runs eagerly between compiled graphs (one graph
    # break before and after), so a new region map never triggers a recompile.
    @torch.compiler.disable
    def _regions(self, qkv: torch.Tensor, plan: RegionPlan) -> torch.Tensor:
        b, n, _, heads, d = qkv.shape
        batches = plan.batches(self.pad_budget if self.pad_budget is not None else PAD_BUDGET)
        # token-major rows (B*N, 3, heads, d), gathered so that each call's regions are contiguous
        rows = qkv.reshape(b * n, 3, heads, d).index_select(0, batches.tokens)
        outs = []
        for chunk, (m, p), mask in zip(rows.split([m * p for m, p in batches.shapes]), batches.shapes, batches.masks):
            # (m*P, 3, heads, d) -> three (m, heads, P, d): 4-D with a contiguous last dimension, which the
            # fused kernels need; unbind (not indexing) so the backward writes one stacked gradient.
            q, k, v = chunk.reshape(m, p, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            outs.append(out.transpose(1, 2).reshape(m * p, heads, d))
        return torch.cat(outs).index_select(0, batches.rows).reshape(b, n, heads * d)
