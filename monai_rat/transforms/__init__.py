"""Transforms: region partitions, degradation simulators and classical restoration baselines."""
from .partition import (
    RegionCache,
    RegionPartition,
    RegionPartitiond,
    SAMPartition,
    SAMPartitiond,
    SingleRegionPartition,
    SuperpixelPartition,
    SuperpixelPartitiond,
    load_sam,
    masks_to_regions,
    register_sam_model,
    relabel_regions,
)
from .simulate_ct import SimulateLowDoseCT, SimulateLowDoseCTd, SimulateLowDoseCTD, SimulateLowDoseCTDict
from .simulate_pet import SimulateLowCountPET, SimulateLowCountPETd, SimulateLowCountPETD, SimulateLowCountPETDict, osem_reconstruct
from .degrade import BicubicDegrade, BicubicDegradeD, BicubicDegradeDict, BicubicDegraded
from .pet_intensity import PETIntensityd, PETIntensityD, PETIntensityDict, pet_intensity_factor, suv_info_from_sidecar
from .classical import (
    CLASSICAL_METHODS,
    ClassicalRestore,
    ClassicalRestored,
    ClassicalRestoreD,
    ClassicalRestoreDict,
    TuneResult,
    default_grid,
    estimate_noise_psd,
    estimated_noise_std,
    tune_classical,
)
