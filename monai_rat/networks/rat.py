"""RAT: the Region Attention Transformer for medical image restoration (Yang et al., MICCAI 2024)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from monai_rat.networks.blocks.rat_layer import ATTENTIONS, RATGroup
from monai_rat.networks.blocks.region_attention import IMPLEMENTATIONS, RegionAttention, RegionPlan
from monai_rat.networks.blocks.ushape import NAFUShape
from monai_rat.utils import as_region_labels

__all__ = ["RAT", "convert_reference_state_dict", "set_attention_impl"]

REGION_MAP_HELP = (
    "Make one with monai_rat.transforms (SAM or superpixel partition of the low-quality input), "
    "or pass torch.ones_like(x[:, :1], dtype=torch.long) for a single region (global attention)."
)


class RAT(NAFUShape):
    """Region Attention Transformer: a NAFNet U-shape whose latent features are refined by RAT layers.

    ``intro`` 3x3 conv -> encoder levels (NAFBlocks, 2x down-sampling conv doubling channels) ->
    ``num_groups`` groups of ``layers_per_group`` RAT layers at 1/2**levels resolution -> decoder levels
    (1x1 conv + pixel shuffle halving channels, add the encoder skip, NAFBlocks) -> ``ending`` 3x3 conv ->
    add the input. At the defaults this is exactly the paper's model (15,945,025 parameters for one
    channel in and out), with the reference implementation's parameter names, so its checkpoints load.

    The region map is given at input resolution and down-sampled to the latent grid by taking the
    top-left pixel of each cell (nearest neighbour, as Eq. 2 and the reference code). Inputs of any
    size are padded (image: reflect, or replicate where the image is smaller than the padding; region
    map: replicate) to a multiple of ``2**levels * window_size`` and the output is cropped back.

    Args:
        spatial_dims: must be 2 (RAT is a 2D network; volumes go slice by slice).
        in_channels: image channels in.
        out_channels: image channels out; must equal ``in_channels`` (global residual).
        feature_size: channels after ``intro`` (64); doubled at each encoder level.
        enc_blocks: NAFBlocks per encoder level; its length is the number of levels.
        dec_blocks: NAFBlocks per decoder level; same length as ``enc_blocks``.
        num_groups: latent groups (4).
        layers_per_group: RAT layers per group (3).
        num_heads: attention heads (8).
        window_size: W-MSA window side (4).
        mlp_ratio: MLP expansion (2.0).
        region_bias: cross-region logit of the reference R-MSA form (-1000).
        attention: ``"region"`` (R-MSA, the paper), ``"global"`` (MSA) or ``"window"`` (W-MSA): Table 4's ablation.
        attention_impl: R-MSA implementation: ``"fast"`` (default, exact; masked while traced or exported,
            else one flex attention call per layer on CUDA and per region elsewhere; the environment
            variable ``MONAI_RAT_RMSA`` overrides its eager choice), ``"regions"``, ``"flex"``,
            ``"masked"`` or ``"reference"`` (dense mask); see :func:`set_attention_impl`.
        use_checkpoint: recompute each latent RAT group in the backward pass instead of keeping its
            activations (``torch.utils.checkpoint``, as MONAI's SwinUNETR offers): same gradients, about
            half the training memory at 256^2, some 15-30% more time per step. The latent groups hold most
            of the activations; the NAFBlocks are not checkpointed (cheap to keep, costly to recompute
            relative to what they save). Has no effect without autograd.
        identity_init: zero-initialise the ``ending`` convolution so the untrained network is the
            identity (default False, the paper's initialisation; True learns faster in short trainings).

    Raises:
        ValueError: for unsupported dimensions, channel counts, block lists or attention names.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 64,
        enc_blocks: Sequence[int] = (2, 2),
        dec_blocks: Sequence[int] = (2, 2),
        num_groups: int = 4,
        layers_per_group: int = 3,
        num_heads: int = 8,
        window_size: int = 4,
        mlp_ratio: float = 2.0,
        region_bias: float = -1000.0,
        attention: str = "region",
        attention_impl: str = "fast",
        use_checkpoint: bool = False,
        identity_init: bool = False,
    ) -> None:
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
        latent = feature_size * 2 ** len(enc_blocks)
        if latent % num_heads:
            raise ValueError(f"latent channels ({latent}) must be a multiple of num_heads ({num_heads}).")

        def rat_groups(channels: int) -> nn.ModuleList:
            return nn.ModuleList(
                [
                    RATGroup(
                        channels,
                        layers_per_group,
                        num_heads=num_heads,
                        window_size=window_size,
                        mlp_ratio=mlp_ratio,
                        region_bias=region_bias,
                        attention=attention,
                        attention_impl=attention_impl,
                    )
                    for _ in range(num_groups)
                ]
            )

        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            feature_size,
            enc_blocks,
            dec_blocks,
            middle=rat_groups,
            pad_multiple=2 ** len(enc_blocks) * window_size,
            identity_init=identity_init,
        )
        self.attention = attention
        self.use_checkpoint = use_checkpoint

    def set_attention_impl(self, implementation: str) -> "RAT":
        """Switch every R-MSA to ``implementation`` (same weights, same outputs); see :func:`set_attention_impl`."""
        return set_attention_impl(self, implementation)

    def forward(self, x: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """Restore ``x``.

        Args:
            x: (B, C, H, W) float image, any H and W; a MONAI ``MetaTensor`` gives a ``MetaTensor`` output
                with the same metadata (affine, file name), a plain tensor a plain tensor.
            regions: (B, 1, H, W) or (B, H, W) integer region labels at input resolution (any values,
                any number per image). Required for ``attention="region"``; ignored otherwise.

        Raises:
            ValueError: when ``x`` has the wrong shape or channels, or ``regions`` is missing or malformed.
        """
        b, _, h, w = self.check_input(x).shape
        plan = None
        if self.attention == "region":
            if regions is None:
                raise ValueError(f"RAT with attention='region' needs a region map `regions` of shape (B, 1, H, W). {REGION_MAP_HELP}")
            labels = as_region_labels(regions, b, (h, w)).to(x.device)
            plan = RegionPlan.from_labels(self._latent_labels(labels))

        def latent(y: torch.Tensor) -> torch.Tensor:
            z = y
            for group in self.middle_blks:
                z = self._run(group, z, plan)
            return z + y

        return self.restore(x, latent)

    def _run(self, module: nn.Module, *args):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _latent_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Replicate-pad to the padded size and take the top-left pixel of each ``scale`` x ``scale`` cell."""
        h, w = labels.shape[-2:]
        hp, wp = h + (-h) % self.pad_multiple, w + (-w) % self.pad_multiple
        rows = torch.arange(0, hp, self.scale, device=labels.device).clamp_(max=h - 1)
        cols = torch.arange(0, wp, self.scale, device=labels.device).clamp_(max=w - 1)
        return labels[:, rows][:, :, cols]


def set_attention_impl(network: nn.Module, implementation: str) -> nn.Module:
    """Switch every R-MSA inside ``network`` to ``implementation``; return ``network``.

    Works on any module (a wrapper around RAT, or a network without region attention, which is
    returned unchanged). The implementations (:data:`~monai_rat.networks.blocks.region_attention.IMPLEMENTATIONS`)
    give the same outputs: ``"fast"`` (default: the masked form while traced or exported, else ``"flex"``
    on CUDA and ``"regions"`` elsewhere; see
    :func:`~monai_rat.networks.blocks.region_attention.select_implementation`), ``"regions"`` (per-region
    calls, fastest on a CPU), ``"flex"`` (one flex attention call per layer, for CUDA), ``"masked"`` and
    ``"reference"`` (the paper's dense additive mask).

    Args:
        network: any module.
        implementation: ``"fast"``, ``"regions"``, ``"flex"``, ``"masked"`` or ``"reference"``.

    Raises:
        ValueError: for another ``implementation``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
    for m in network.modules():
        if isinstance(m, RegionAttention):
            m.implementation = implementation
    return network


def convert_reference_state_dict(state_dict: Mapping) -> "OrderedDict[str, torch.Tensor]":
    """Turn a checkpoint saved by the paper's reference code into a state dict for :class:`RAT`.

    RAT uses the reference parameter names, so a bare reference state dict already loads with
    ``RAT.load_state_dict``. This also unwraps the usual containers (``{"params": ...}``,
    ``{"state_dict": ...}``, ``{"model": ...}``, ``{"params_ema": ...}``), strips the ``module.`` prefix
    that ``DataParallel`` / ``DistributedDataParallel`` add, and drops ``loss_fun.*`` entries (the reference
    model may hold its loss as a sub-module).

    Args:
        state_dict: the loaded checkpoint (``torch.load(path, map_location="cpu")``).

    Raises:
        TypeError: when ``state_dict`` is not a mapping of tensors.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}.")
    for key in ("params_ema", "params", "state_dict", "model", "network"):
        inner = state_dict.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state_dict = inner
            break
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor.")
        while name.startswith("module."):
            name = name[len("module.") :]
        if name.startswith("loss_fun."):
            continue
        out[name] = value
    return out
