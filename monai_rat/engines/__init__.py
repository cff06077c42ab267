"""Engine-side helpers for the monai-rat bundles: region-aware loss adapter, atomic resumable checkpoints,
metric logs, schedule selection and a one-input network view for MONAI's bundle tools."""

from monai_rat.engines.checkpoint import AtomicCheckpointSaver, CheckedCheckpointLoader, atomic_torch_save
from monai_rat.engines.guards import NonFiniteLossGuard, batch_files
from monai_rat.engines.inference import ApplyToKindsd, CopyMetad, file_kind, inference_datalist
from monai_rat.engines.metrics import MetricsHistory, MetricsSummary
from monai_rat.engines.networks import RegionMapNetwork
from monai_rat.engines.region_loss import RegionLossAdapter
from monai_rat.engines.schedule import WarmupCosine, select_schedule, validation_rounds, warmup_cosine_schedule

__all__ = [
    "ApplyToKindsd",
    "CopyMetad",
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "NonFiniteLossGuard",
    "MetricsHistory",
    "MetricsSummary",
    "RegionLossAdapter",
    "RegionMapNetwork",
    "atomic_torch_save",
    "batch_files",
    "file_kind",
    "inference_datalist",
    "select_schedule",
    "validation_rounds",
    "WarmupCosine",
    "warmup_cosine_schedule",
]
