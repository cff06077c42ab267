"""Engine-side helpers for the monai-rat bundles: region-aware loss adapter, atomic resumable checkpoints,
metric logs, schedule selection and a one-input network view for MONAI's bundle tools."""

from monai_rat.engines.checkpoint import AtomicCheckpointSaver, atomic_torch_save
from monai_rat.engines.metrics import MetricsHistory, MetricsSummary
from monai_rat.engines.networks import RegionMapNetwork
from monai_rat.engines.region_loss import RegionLossAdapter
from monai_rat.engines.schedule import select_schedule

__all__ = [
    "AtomicCheckpointSaver",
    "MetricsHistory",
    "MetricsSummary",
    "RegionLossAdapter",
    "RegionMapNetwork",
    "atomic_torch_save",
    "select_schedule",
]
