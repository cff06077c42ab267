"""Demo data sets built from images that installed packages ship, and real-data list builders."""
from .aapm import AAPM_LAYOUTS, AAPM_PATIENTS, aapm_datalist, read_series_headers
from .ct_demo import PHANTOM_KINDS, REAL_CT_SLICES, default_cache_dir, ellipse_phantom, make_ct_demo, pydicom_ct_slice, textured_phantom
from .datalist import ct_datalist, load_paired_datalist
from .ct_transforms import (
    CT_DISPLAY_WINDOW,
    CT_HU_WINDOW,
    EnsureSlice2D,
    EnsureSlice2DD,
    EnsureSlice2Dd,
    EnsureSlice2DDict,
    ct_load_transforms,
    ct_to_hu_transform,
)
from .dicom_writer import SaveAsDICOM, SaveAsDICOMD, SaveAsDICOMd, SaveAsDICOMDict, write_dicom_slice
from .pet_demo import (
    PET_DEMO_VERSION,
    PET_UPTAKE_RATIOS,
    REAL_PET_SOURCES,
    make_pet_demo,
    pet_activity_phantoms,
    textured_activity_phantom,
)
from .loading import (
    NIFTI_SUFFIXES,
    LoadImageChecked,
    LoadImageCheckedD,
    LoadImageCheckedd,
    LoadImageCheckedDict,
    read_image_header,
)
from .pet_data import (
    PET_DATA_HINT,
    PETSliceDataset,
    VolumeToSlicesD,
    VolumeToSlicesDict,
    VolumeToSlicesd,
    pet_datalist,
    pet_volume_pairs,
)
from .pathology_demo import (
    PATHOLOGY_DATA_HINT,
    PATHOLOGY_DEMO_BLOCKS,
    PATHOLOGY_DEMO_VERSION,
    PATHOLOGY_EXTENSIONS,
    make_pathology_demo,
    pathology_datalist,
    pathology_image_files,
    pathology_inference_datalist,
    pathology_load_transforms,
)
from .pair_check import NO_GEOMETRY_SUFFIXES, check_inputs, check_pairs, pair_problems
from .writers import AtomicITKWriter, AtomicNibabelWriter, AtomicPILWriter
