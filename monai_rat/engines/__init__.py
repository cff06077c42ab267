"""Engine-side helpers for the monai-rat bundles: region-aware loss adapter, atomic resumable checkpoints,
metric logs, evaluation baselines and panels, schedule selection, a one-input network view for MONAI's bundle tools,
the sliding-window route (``ConditionRegionsNetwork``: RAT inside MONAI's ``SlidingWindowInferer`` through its ``condition``),
an EMA of the weights for validation (``ModelEMA``) and the test-time x8 self-ensemble (``SelfEnsembleInferer``)."""

import monai_rat.metrics  # noqa: F401  (the bundles' config expressions use monai_rat.metrics)
from monai_rat.engines.baselines import ClassicalBaselines
from monai_rat.engines.checkpoint import AtomicCheckpointSaver, CheckedCheckpointLoader, atomic_torch_save
from monai_rat.engines.ema import ModelEMA, model_ema
from monai_rat.engines.guards import EngineFlags, NonFiniteLossGuard, batch_files
from monai_rat.engines.inference import ApplyToKindsd, CopyMetad, file_kind, inference_datalist
from monai_rat.engines.inference_run import InferenceManifest, InferenceProgress
from monai_rat.engines.metrics import MetricsHistory, MetricsSummary
from monai_rat.engines.networks import RegionMapNetwork
from monai_rat.engines.panels import RestorationPanels
from monai_rat.engines.region_loss import RegionLossAdapter, with_loss_handler
from monai_rat.engines.self_ensemble import SelfEnsembleInferer
from monai_rat.engines.schedule import (
    WarmupCosine,
    default_amp_dtype,
    select_schedule,
    validation_rounds,
    warmup_cosine_schedule,
)
from monai_rat.engines.sliding_regions import ConditionRegionsNetwork, FittedSlidingWindowInferer
from monai_rat.engines.tensorboard import TensorBoardValidationImages
from monai_rat.engines.texture import FlatRegionTexture

__all__ = [
    "FlatRegionTexture",
    "ApplyToKindsd",
    "CopyMetad",
    "InferenceManifest",
    "InferenceProgress",
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "ClassicalBaselines",
    "ConditionRegionsNetwork",
    "FittedSlidingWindowInferer",
    "EngineFlags",
    "NonFiniteLossGuard",
    "MetricsHistory",
    "MetricsSummary",
    "ModelEMA",
    "RegionLossAdapter",
    "RegionMapNetwork",
    "RestorationPanels",
    "SelfEnsembleInferer",
    "TensorBoardValidationImages",
    "atomic_torch_save",
    "batch_files",
    "default_amp_dtype",
    "file_kind",
    "inference_datalist",
    "model_ema",
    "select_schedule",
    "validation_rounds",
    "WarmupCosine",
    "warmup_cosine_schedule",
    "with_loss_handler",
]
