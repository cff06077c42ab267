"""Building blocks of RAT: NAFBlock, LayerNorm2d, region attention (R-MSA), window attention (W-MSA)."""

from monai_rat.networks.blocks.layernorm import LayerNorm2d
from monai_rat.networks.blocks.nafblock import NAFBlock, SimpleGate
from monai_rat.networks.blocks.rat_layer import MLP, RATGroup, RATLayer
from monai_rat.networks.blocks.region_attention import RegionAttention, RegionPlan
from monai_rat.networks.blocks.window_attention import WindowAttention

__all__ = [
    "LayerNorm2d",
    "NAFBlock",
    "SimpleGate",
    "MLP",
    "RATGroup",
    "RATLayer",
    "RegionAttention",
    "RegionPlan",
    "WindowAttention",
]

# RDST and SRDA blocks
from monai_rat.networks.blocks.spatial_attention import SpatialAttention
from monai_rat.networks.blocks.swin import DSTB, RDSTB, ShiftedWindowAttention, SwinLayer, shifted_window_mask

__all__ += ["SpatialAttention", "DSTB", "RDSTB", "ShiftedWindowAttention", "SwinLayer", "shifted_window_mask"]
