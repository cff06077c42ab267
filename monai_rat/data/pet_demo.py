"""Built-in paired low-count / full-count PET demo volumes, made from images that installed packages ship.

Nothing is downloaded. Activity maps (arbitrary units, about 1 = grey-matter-like uptake):

- pydicom's test file ``MR_small.dcm`` (a real 64 x 64 MR slice): its intensities are split into four
  classes with multi-Otsu thresholds (``skimage.filters.threshold_multiotsu``) and mapped to FDG-like
  uptake ratios, darkest to brightest: 0.05 (CSF / fluid-like), 0.3 (white-matter-like), 1.0
  (grey-matter-like, about 3.3x white matter as in FDG brain PET) and 1.3 (hot);
- scikit-image's Shepp-Logan phantom (``skimage.data.shepp_logan_phantom``), its values (0..1) used as
  activity.

Each 2D map becomes a 3D "patient" of ``num_slices`` slices: the map (flipped / rotated per patient)
times an ellipsoidal body mask whose cross-section shrinks towards both ends of the volume, so the
first and last slices are air-only (activity 0), as in a real scan's field of view; a few random
hot spheres ("lesions", uptake 2.0) are added per patient from the seed.

Each activity volume gives a pair through :class:`monai_rat.transforms.SimulateLowCountPET` (one
count draw per volume, slices as channels): the **label** is the full-count OSEM reconstruction and
the **image** the low-count one (counts thinned by ``dose_reduction_factor``, default 12, as in the
paper), both reconstructed the same way. Split by patient: the last ``num_val_patients`` patients are
validation; no slice of a validation patient is in training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from monai_rat.data.demo_folder import DATALIST, build_folder_atomically, load_demo_datalist

__all__ = ["make_pet_demo", "pet_activity_phantoms", "PET_DEMO_VERSION", "PET_UPTAKE_RATIOS"]

logger = logging.getLogger(__name__)

#: bump when the builder's output changes, so that older builds are not reused.
PET_DEMO_VERSION = 1
#: uptake per MR intensity class (darkest to brightest) for the MR_small-based activity maps.
PET_UPTAKE_RATIOS = (0.05, 0.3, 1.0, 1.3)
_LESION_UPTAKE = 2.0


def _mr_small_activity(size: int) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file
    from skimage.filters import threshold_multiotsu
    from skimage.transform import resize

    path = get_testdata_file("MR_small.dcm")
    if path is None:
        raise FileNotFoundError("make_pet_demo: pydicom's test file MR_small.dcm was not found in this pydicom install.")
    mr = pydicom.dcmread(path).pixel_array.astype(np.float64)
    classes = np.digitize(mr, threshold_multiotsu(mr, classes=len(PET_UPTAKE_RATIOS)))
    act = np.asarray(PET_UPTAKE_RATIOS)[classes]
    if act.shape != (size, size):
        act = resize(act, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return act


def _shepp_logan_activity(size: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return np.clip(resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True), 0.0, None)


def pet_activity_phantoms(num_patients: int = 4, image_size: int = 64, num_slices: int = 16, seed: int = 0) -> list:
    """The demo's full-dose activity volumes (see the module docstring), before any simulation.

    Patients alternate between the MR_small-based map and the Shepp-Logan map; patient ``k`` uses
    orientation ``k // 2`` of (identity, left-right flip, up-down flip, 90-degree rotation), so the
    first 8 patients are all different images.

    Args:
        num_patients: number of volumes, >= 2.
        image_size: in-plane size (square), >= 32.
        num_slices: slices per volume, >= 4 (the two end slices are always air-only).
        seed: seed of the lesion positions and sizes.

    Returns:
        a list of ``(name, activity)`` with ``activity`` float64 ``(image_size, image_size, num_slices)``,
        non-negative.

    Raises:
        ValueError: when a size or count is out of range.
        FileNotFoundError: when pydicom's ``MR_small.dcm`` is missing from the install.
    """
    if int(num_patients) < 2:
        raise ValueError(f"pet_activity_phantoms: `num_patients` must be >= 2, got {num_patients}.")
    if int(image_size) < 32:
        raise ValueError(f"pet_activity_phantoms: `image_size` must be >= 32, got {image_size}.")
    if int(num_slices) < 4:
        raise ValueError(f"pet_activity_phantoms: `num_slices` must be >= 4, got {num_slices}.")
    size, depth = int(image_size), int(num_slices)
    rng = np.random.default_rng(seed)
    bases = {"mrsmall": _mr_small_activity(size), "shepplogan": _shepp_logan_activity(size)}
    views = (("id", lambda a: a), ("fliplr", lambda a: a[:, ::-1]), ("flipud", lambda a: a[::-1]), ("rot90", np.rot90))
    c = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(c, c, indexing="ij")
    zc = (np.arange(depth) + 0.5) / depth * 2 - 1  # slice centres in [-1, 1]
    out = []
    for k in range(int(num_patients)):
        base_name = ("mrsmall", "shepplogan")[k % 2]
        view_name, view = views[(k // 2) % len(views)]
        plane = np.ascontiguousarray(view(bases[base_name]))
        vol = np.zeros((size, size, depth))
        z_half = 1.0 - 1.5 / depth  # the end slices fall outside the ellipsoid: air-only
        for z in range(depth):
            t = 1.0 - (zc[z] / z_half) ** 2
            if t <= 0:
                continue
            r = 0.95 * np.sqrt(t)
            vol[..., z] = plane * ((yy / r) ** 2 + (xx / r) ** 2 <= 1.0)
        zz = np.arange(depth)
        for _ in range(int(rng.integers(1, 4))):  # hot lesions inside the body
            cy, cx = rng.uniform(-0.4, 0.4, 2)
            cz = rng.uniform(depth * 0.3, depth * 0.7)
            rad = rng.uniform(0.06, 0.12)
            sphere = ((yy - cy) ** 2 + (xx - cx) ** 2)[..., None] + ((zz - cz) * 2.0 / size)[None, None] ** 2 <= rad**2
            vol[sphere & (vol > 0)] = _LESION_UPTAKE
        out.append((f"patient_{k:03d}_{base_name}_{view_name}", vol))
    return out


def make_pet_demo(
    root_dir: str | os.PathLike | None = None,
    num_patients: int = 4,
    num_val_patients: int = 1,
    image_size: int = 64,
    num_slices: int = 16,
    dose_reduction_factor: float = 12.0,
    count_level: float = 10.0,
    num_iterations: int = 4,
    num_subsets: int = 8,
    voxel_size_mm: float = 4.0,
    seed: int = 0,
) -> dict:
    """Build (once) the paired PET demo volumes and return their MONAI-style datalist.

    Written under ``<root_dir>/pet_demo_<key>/`` (``key`` hashes the settings, so different settings
    never mix): ``low_dose/<name>.nii.gz`` ("image"), ``full_dose/<name>.nii.gz`` ("label"), float32
    3D NIfTI ``(image_size, image_size, num_slices)`` in activity units with ``voxel_size_mm`` in the
    affine, plus ``datalist.json`` and ``README.txt``. Reused when present; built in a temporary folder
    and renamed into place, so an interrupted build leaves nothing half-written and concurrent
    builders end with one copy; a reused folder with missing files is rebuilt (logged). About 10-20 s
    on a 2-core CPU with the defaults (4 x 16 slices of 64 x 64).

    Args:
        root_dir: the parent folder; ``None`` uses :func:`monai_rat.data.default_cache_dir`.
        num_patients: number of patients, >= 2 (default 4).
        num_val_patients: how many of them (the last ones) are validation, 1 <= n < num_patients (default 1).
        image_size: in-plane size, >= 32 (default 64; a multiple of 16 suits RAT).
        num_slices: slices per volume, >= 4 (default 16; the two end slices are air-only).
        dose_reduction_factor: DRF of the low-count image (default 12).
        count_level: full-dose counts per bin per unit line-integral activity (default 10; see
            :class:`monai_rat.transforms.SimulateLowCountPET`).
        num_iterations: OSEM iterations (default 4).
        num_subsets: OSEM subsets (default 8).
        voxel_size_mm: isotropic voxel size written in the affine (default 4 mm).
        seed: seed of the lesions and the counts (default 0).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, items ``{"image": low_path,
        "label": full_path, "name": patient}`` with absolute paths; "test" is the validation list.

    Raises:
        ValueError: when a size or count is out of range.
        FileNotFoundError: when pydicom's ``MR_small.dcm`` is missing from the install.
    """
    from monai_rat.data.ct_demo import default_cache_dir

    if not 1 <= int(num_val_patients) < int(num_patients):
        raise ValueError(
            f"make_pet_demo: `num_val_patients` must be in [1, num_patients - 1] = [1, {int(num_patients) - 1}], "
            f"got {num_val_patients}."
        )
    if not (np.isfinite(voxel_size_mm) and voxel_size_mm > 0):
        raise ValueError(f"make_pet_demo: `voxel_size_mm` must be > 0, got {voxel_size_mm!r}.")
    settings = {
        "version": PET_DEMO_VERSION,
        "num_patients": int(num_patients),
        "num_val_patients": int(num_val_patients),
        "image_size": int(image_size),
        "num_slices": int(num_slices),
        "dose_reduction_factor": float(dose_reduction_factor),
        "count_level": float(count_level),
        "num_iterations": int(num_iterations),
        "num_subsets": int(num_subsets),
        "voxel_size_mm": float(voxel_size_mm),
        "seed": int(seed),
    }
    root = Path(root_dir).expanduser() if root_dir not in (None, "") else default_cache_dir()
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    final = root / f"pet_demo_{key}"
    if (final / DATALIST).is_file():
        out = load_demo_datalist(final)
        missing = [it[k] for it in out["training"] + out["validation"] for k in ("image", "label") if not os.path.isfile(it[k])]
        if not missing:
            logger.info("PET demo data: reusing %s", final)
            return out
        logger.warning("PET demo data: %d file(s) of %s are missing (first: %s); rebuilding it.", len(missing), final, missing[0])
        shutil.rmtree(final, ignore_errors=True)
    # validate the remaining settings before creating anything
    from monai_rat.transforms.simulate_pet import SimulateLowCountPET

    sim = SimulateLowCountPET(
        count_level=count_level,
        dose_reduction_factor=dose_reduction_factor,
        num_iterations=num_iterations,
        num_subsets=num_subsets,
        output="both",
    )
    phantoms = pet_activity_phantoms(num_patients, image_size, num_slices, seed)
    logger.info("PET demo data: building %d patients (%d x %d x %d, DRF %g) in %s ...",
                num_patients, image_size, image_size, num_slices, dose_reduction_factor, final)
    build_folder_atomically(final, "PET demo data", ".pet_demo_tmp_", lambda tmp: _build(tmp, settings, phantoms, sim))
    return load_demo_datalist(final)


def _build(folder: Path, s: dict, phantoms: list, sim) -> None:
    import nibabel as nib

    (folder / "low_dose").mkdir()
    (folder / "full_dose").mkdir()
    affine = np.diag([s["voxel_size_mm"]] * 3 + [1.0])
    n_train = s["num_patients"] - s["num_val_patients"]
    datalist: dict = {"training": [], "validation": []}
    for k, (name, act) in enumerate(phantoms):
        sim.set_random_state(seed=(s["seed"] * 1000 + k) % (2**32))
        high, low = sim.simulate_pair(np.moveaxis(act, -1, 0))  # slices as channels
        for sub, arr in (("low_dose", low), ("full_dose", high)):
            vol = np.moveaxis(arr, 0, -1).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, affine), str(folder / sub / f"{name}.nii.gz"))
        split = "training" if k < n_train else "validation"
        datalist[split].append({"image": f"low_dose/{name}.nii.gz", "label": f"full_dose/{name}.nii.gz", "name": name})
    with open(folder / "README.txt", "w") as f:
        f.write(
            "monai-rat PET demo data (built by monai_rat.data.make_pet_demo; see its docstring).\n"
            "image = low-count OSEM reconstruction (low_dose/), label = full-count OSEM reconstruction of the same\n"
            "activity and counts (full_dose/), float32 3D NIfTI in activity units. Settings:\n"
            + json.dumps(s, indent=2) + "\n"
        )
    with open(folder / DATALIST, "w") as f:
        json.dump({**datalist, "settings": s}, f, indent=1)
