"""Engine-side helpers for the monai-rat bundles: region-aware loss adapter, atomic resumable checkpoints,
metric logs, schedule selection and a one-input network view for MONAI's bundle tools."""

from monai_rat.engines.checkpoint import AtomicCheckpointSaver, atomic_torch_save
from monai_rat.engines.inference import ApplyToKindsd, CopyMetad, file_kind, inference_datalist
from monai_rat.engines.metrics import MetricsHistory, MetricsSummary
from monai_rat.engines.networks import RegionMapNetwork
from monai_rat.engines.region_loss import RegionLossAdapter
from monai_rat.engines.schedule import default_amp_dtype, select_schedule, validation_rounds

__all__ = [
    "ApplyToKindsd",
    "CopyMetad",
    "AtomicCheckpointSaver",
    "MetricsHistory",
    "MetricsSummary",
    "RegionLossAdapter",
    "RegionMapNetwork",
    "atomic_torch_save",
    "default_amp_dtype",
    "file_kind",
    "inference_datalist",
    "select_schedule",
    "validation_rounds",
]
