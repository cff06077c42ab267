"""Region maps for region attention: SAM (as the paper), superpixels (offline), post-processing and cache."""

from .base import RegionPartitioner, RegionPartitionerd
from .cache import CACHE_FORMAT, RegionCache, file_identity
from .factory import CHECKPOINT_ENV, PARTITION_METHODS, RegionPartition, RegionPartitiond
from .intensity import check_image, scale_intensity, to_uint8_rgb
from .postprocess import masks_to_regions, relabel_regions
from .sam import SAM_GENERATOR_DEFAULTS, SAMPartition, SAMPartitiond, load_sam, register_sam_model
from .single import SingleRegionPartition
from .superpixel import SUPERPIXEL_METHODS, SuperpixelPartition, SuperpixelPartitiond
