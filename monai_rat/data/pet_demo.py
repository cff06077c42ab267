"""Built-in paired low-count / full-count PET demo volumes, made from images that installed packages ship.

Nothing is downloaded. Activity maps (arbitrary units, about 1 = grey-matter-like uptake):

- pydicom's test file ``MR_small.dcm`` (a real 64 x 64 MR slice, patient "4MR1"): its intensities are
  split into four classes with multi-Otsu thresholds (``skimage.filters.threshold_multiotsu``) and
  mapped to FDG-like uptake ratios, darkest to brightest: 0.05 (CSF / fluid-like), 0.3
  (white-matter-like), 1.0 (grey-matter-like, about 3.3x white matter as in FDG brain PET) and 1.3
  (hot);
- pydicom's test file ``JPEG2000.dcm`` (a real planar whole-body bone scan, an emission image of
  patient "8NM1", 1024 x 256): rows 112-367 (neck, shoulders, chest, upper abdomen; the bladder is
  left out) resampled to the in-plane size, negative values set to 0 and scaled so that the 99th
  percentile of the body is 1.3 (a planar projection, used here as if it were a slice: a real
  emission pattern, not a real tomographic slice);
- scikit-image's Shepp-Logan phantom (``skimage.data.shepp_logan_phantom``), its values (0..1) used as
  activity;
- **textured activity phantoms** generated from a seed (:func:`textured_activity_phantom`): truly 3D
  body-like activity with organ-like regions of different uptake (large liver-like, hot gland-like,
  hot myocardium-like shells around a cold blood pool), smooth texture within the body and every
  organ, cold regions (lung- or cyst-like) and small hot lesions.

Each 2D map (the three above) becomes a 3D "patient" of ``num_slices`` slices: the map times an
ellipsoidal body mask whose cross-section shrinks towards both ends of the volume,
so the first and last slices are air-only (activity 0), as in a real scan's field of view; 1-3 hot
spheres ("lesions", uptake 2.0) are added per patient from the seed. The textured phantoms have the
same air-only end slices.

Each activity volume gives a pair through :class:`monai_rat.transforms.SimulateLowCountPET` (one
count draw per volume, slices as channels): the **label** is the full-count OSEM reconstruction and
the **image** the low-count one (counts thinned by ``dose_reduction_factor``, default 12, as in the
paper), both reconstructed the same way.

Splits (by anatomy: no map, real or generated, is in two splits):

- **training**: the Shepp-Logan phantom and ``num_train - 1`` textured activity phantoms;
- **validation** (checkpoint choice, tuning of classical filters): the real bone scan ``JPEG2000.dcm``
  and ``num_val`` further textured phantoms (other seeds);
- **test** (reported scores): the real MR slice ``MR_small.dcm`` (real anatomy seen in no other
  split) and ``num_test`` further textured phantoms.

Every item says where it came from: ``"source"`` is ``"real"`` (a pydicom image) or ``"phantom"``, and
``"anatomy"`` names the source (file and patient, or phantom and seed).
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

__all__ = [
    "make_pet_demo",
    "pet_activity_phantoms",
    "textured_activity_phantom",
    "PET_DEMO_VERSION",
    "PET_UPTAKE_RATIOS",
    "REAL_PET_SOURCES",
]

logger = logging.getLogger(__name__)

#: bump when the builder's output changes, so that older builds are not reused.
PET_DEMO_VERSION = 2
#: uptake per MR intensity class (darkest to brightest) for the MR_small-based activity maps.
PET_UPTAKE_RATIOS = (0.05, 0.3, 1.0, 1.3)
_LESION_UPTAKE = 2.0
#: the real images pydicom ships that the demo's activity maps come from: file -> (patient, what, split).
REAL_PET_SOURCES = {
    "JPEG2000.dcm": ("8NM1", "planar whole-body bone scan, neck to upper abdomen", "validation"),
    "MR_small.dcm": ("4MR1", "MR slice, tissue classes mapped to FDG-like uptake", "test"),
}
_SPLITS = ("training", "validation", "test")
_SHORT = {"training": "train", "validation": "val", "test": "test"}  # file name prefixes


def _pydicom_file(name: str) -> str:
    from monai_rat.data.ct_demo import _pydicom_test_file

    try:
        return _pydicom_test_file(name)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e).replace("make_ct_demo:", "make_pet_demo:")) from e


def _mr_small_activity(size: int) -> np.ndarray:
    import pydicom
    from skimage.filters import threshold_multiotsu
    from skimage.transform import resize

    mr = pydicom.dcmread(_pydicom_file("MR_small.dcm")).pixel_array.astype(np.float64)
    classes = np.digitize(mr, threshold_multiotsu(mr, classes=len(PET_UPTAKE_RATIOS)))
    act = np.asarray(PET_UPTAKE_RATIOS)[classes]
    if act.shape != (size, size):
        act = resize(act, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return act


def _bone_scan_activity(size: int) -> np.ndarray:
    """Rows 112-367 of pydicom's planar bone scan ``JPEG2000.dcm``, scaled (see the module docstring)."""
    import pydicom
    from skimage.transform import resize

    path = _pydicom_file("JPEG2000.dcm")
    try:  # pydicom decodes JPEG 2000 with Pillow's OpenJPEG (fast); ITK, a dependency too, gives the same values
        scan = pydicom.dcmread(path).pixel_array.astype(np.float64)
    except Exception:  # noqa: BLE001 - no JPEG 2000 plugin for pydicom in this install
        import itk

        scan = np.asarray(itk.array_from_image(itk.imread(path)), dtype=np.float64).squeeze()
    if scan.shape != (1024, 256):
        raise ValueError(f"make_pet_demo: {path} should be a 1024 x 256 whole-body scan, got shape {scan.shape}.")
    crop = np.clip(scan[112:368], 0.0, None)  # 256 x 256; the JPEG 2000 ringing goes slightly below 0
    act = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    body = act > 0.05 * act.max()
    return act * (1.3 / np.percentile(act[body], 99))


def _shepp_logan_activity(size: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return np.clip(resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True), 0.0, None)


def _field(shape: tuple[int, ...], rng: np.random.Generator, sigma) -> np.ndarray:
    """Gaussian random field with unit std, Gaussian correlation ``sigma`` voxels (per axis or one for all)."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / (f.std() + 1e-12)


def _body_envelope(size: int, depth: int):
    """In-plane coordinates (y, x, z broadcastable) and ``t(z)``: the squared cross-section scale of the ellipsoid.

    ``t <= 0`` on the two end slices, so they are air-only.
    """
    c = (np.arange(size) + 0.5) / size * 2 - 1
    zc = (np.arange(depth) + 0.5) / depth * 2 - 1
    z_half = 1.0 - 1.5 / depth
    t = 1.0 - (zc / z_half) ** 2
    return c[:, None, None], c[None, :, None], zc[None, None, :], t[None, None, :]


def textured_activity_phantom(image_size: int, num_slices: int, rng: np.random.Generator) -> np.ndarray:
    """A random 3D body-like activity volume with organs of different uptake, texture, hot lesions and cold regions.

    The body is an elliptic cylinder whose cross-section shrinks towards both ends like an ellipsoid
    (the first and last slices are air-only, as in :func:`pet_activity_phantoms`), with a background
    uptake of 0.15-0.35 that varies smoothly (+-25 %, correlation ``image_size / 8`` voxels) and has a
    fine texture (3-8 %). Inside it: 3-6 ellipsoidal organs, each with its own smooth texture (5-20 %,
    correlation 1.5-3 voxels): liver-like (large, 0.4-0.7), gland- or kidney-like (small, hot,
    0.9-1.6) or myocardium-like (a hot shell of 1.0-1.8 around a cold blood pool of 0.2-0.4); 1-3
    cold regions (lung- or cyst-like, 0.02-0.1); 1-4 hot spherical lesions (1.6-2.2, 1-3 voxels in
    radius). Blurred by 0.5-0.9 voxels (partial volume) inside the body, zero outside. The maximum stays
    at or below 2.2, about that of the other demo maps with their 2.0 lesions.

    Args:
        image_size: in-plane size (square), >= 16.
        num_slices: number of slices (the last axis), >= 4.
        rng: the random generator (``np.random.default_rng(seed)``).

    Returns:
        float64 array ``(image_size, image_size, num_slices)``, non-negative.

    Raises:
        ValueError: when a size is out of range.
    """
    from scipy.ndimage import gaussian_filter

    if int(image_size) < 16 or int(num_slices) < 4:
        raise ValueError(
            f"textured_activity_phantom: needs image_size >= 16 and num_slices >= 4, got {image_size} and {num_slices}."
        )
    size, depth = int(image_size), int(num_slices)
    shape = (size, size, depth)
    yy, xx, zz, t = _body_envelope(size, depth)
    zscale = size / depth  # one voxel in z, in units of one in-plane voxel: the voxels are isotropic

    def ellipsoid(cy, cx, cz, ay, ax, az, angle):
        ca, sa = np.cos(angle), np.sin(angle)
        y, x = yy - cy, xx - cx
        u, v = ca * x + sa * y, -sa * x + ca * y
        return (u / ax) ** 2 + (v / ay) ** 2 + ((zz - cz) / az) ** 2 <= 1.0

    ay, ax = rng.uniform(0.6, 0.8), rng.uniform(0.75, 0.95)
    angle = rng.uniform(-0.2, 0.2)
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * xx + sa * yy, -sa * xx + ca * yy
    body = ((u / ax) ** 2 + (v / ay) ** 2 <= t) & (t > 0)
    vol = rng.uniform(0.15, 0.35) * (1.0 + 0.25 * _field(shape, rng, size / 8)) * (
        1.0 + rng.uniform(0.03, 0.08) * _field(shape, rng, 1.0)
    )

    def place(max_r: float):
        r, phi = rng.uniform(0.0, max_r), rng.uniform(0, 2 * np.pi)
        return r * ay * np.sin(phi), r * ax * np.cos(phi), rng.uniform(-0.5, 0.5)

    def textured(value: float) -> np.ndarray:
        return value * (1.0 + rng.uniform(0.05, 0.2) * _field(shape, rng, rng.uniform(1.5, 3.0)))

    for _ in range(int(rng.integers(3, 7))):  # organs
        kind = ("liver", "gland", "myocardium")[int(rng.integers(3))]
        cy, cx, cz = place(0.55)
        rot = rng.uniform(0, np.pi)
        if kind == "liver":
            e = ellipsoid(cy, cx, cz, rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8), rot)
            vol = np.where(e, textured(rng.uniform(0.4, 0.7)), vol)
        elif kind == "gland":
            e = ellipsoid(cy, cx, cz, rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.15), rng.uniform(0.2, 0.5), rot)
            vol = np.where(e, textured(rng.uniform(0.9, 1.6)), vol)
        else:
            a = rng.uniform(0.12, 0.2, 2)
            az = rng.uniform(0.3, 0.6)
            wall = rng.uniform(0.03, 0.06)
            outer = ellipsoid(cy, cx, cz, a[0], a[1], az, rot)
            inner = ellipsoid(cy, cx, cz, a[0] - wall, a[1] - wall, az - wall * zscale, rot)
            vol = np.where(outer, textured(rng.uniform(1.0, 1.8)), vol)
            vol = np.where(inner, textured(rng.uniform(0.2, 0.4)), vol)
    for _ in range(int(rng.integers(1, 4))):  # cold regions
        cy, cx, cz = place(0.6)
        e = ellipsoid(cy, cx, cz, rng.uniform(0.06, 0.2), rng.uniform(0.06, 0.2), rng.uniform(0.2, 0.5), rng.uniform(0, np.pi))
        vol = np.where(e, rng.uniform(0.02, 0.1), vol)
    for _ in range(int(rng.integers(1, 5))):  # hot lesions
        cy, cx, cz = place(0.7)
        rad = rng.uniform(1.0, 3.0) * 2.0 / size  # 1-3 voxels, in the [-1, 1] coordinates
        e = ellipsoid(cy, cx, cz, rad, rad, rad * zscale, 0.0)
        vol = np.where(e, rng.uniform(1.6, 2.2), vol)
    vol = gaussian_filter(np.clip(vol, 0.0, None), rng.uniform(0.5, 0.9))
    return np.where(body, np.clip(vol, 0.0, 2.2), 0.0)


def _extrude(plane: np.ndarray, depth: int, rng: np.random.Generator) -> np.ndarray:
    """A 2D map inside a shrinking disc (air-only end slices), with 1-3 hot spheres of uptake 2.0."""
    size = plane.shape[0]
    yy, xx, _, t = _body_envelope(size, depth)
    r2 = 0.95**2 * t
    vol = np.where((yy**2 + xx**2 <= r2) & (t > 0), plane[..., None], 0.0)
    zz = np.arange(depth)
    yy, xx = yy[..., 0], xx[..., 0]
    for _ in range(int(rng.integers(1, 4))):  # hot lesions inside the body
        cy, cx = rng.uniform(-0.4, 0.4, 2)
        cz = rng.uniform(depth * 0.3, depth * 0.7)
        rad = rng.uniform(0.06, 0.12)
        sphere = ((yy - cy) ** 2 + (xx - cx) ** 2)[..., None] + ((zz - cz) * 2.0 / size)[None, None] ** 2 <= rad**2
        vol[sphere & (vol > 0)] = _LESION_UPTAKE
    return vol


def pet_activity_phantoms(
    num_train: int = 5, num_val: int = 1, num_test: int = 1, image_size: int = 64, num_slices: int = 12, seed: int = 0
) -> list[dict]:
    """The demo's full-dose activity volumes with their splits (see the module docstring), before any simulation.

    Every volume has its own generator, derived from ``(seed, split, index)``, so a phantom does not
    change when the number of phantoms in another split does.

    Args:
        num_train: training volumes, >= 1: the Shepp-Logan phantom, then textured phantoms.
        num_val: textured phantoms in validation, >= 0 (the bone scan ``JPEG2000.dcm`` is always there too).
        num_test: textured phantoms in test, >= 0 (``MR_small.dcm`` is always there too).
        image_size: in-plane size (square), >= 32.
        num_slices: slices per volume, >= 4 (the two end slices are always air-only).
        seed: seed of the textured phantoms and the lesions.

    Returns:
        a list of ``{"split", "name", "activity", "source", "anatomy"}`` with ``activity`` float64
        ``(image_size, image_size, num_slices)``, non-negative, ``split`` one of "training",
        "validation", "test", ``source`` "real" or "phantom".

    Raises:
        ValueError: when a size or count is out of range.
        FileNotFoundError: when pydicom's ``MR_small.dcm`` or ``JPEG2000.dcm`` is missing from the install.
    """
    limits = {"num_train": (num_train, 1), "num_val": (num_val, 0), "num_test": (num_test, 0),
              "image_size": (image_size, 32), "num_slices": (num_slices, 4)}  # fmt: skip
    for name, (value, low) in limits.items():
        if int(value) != value or int(value) < low:
            raise ValueError(f"pet_activity_phantoms: `{name}` must be an integer >= {low}, got {value!r}.")
    size, depth = int(image_size), int(num_slices)

    def rng(split: str, i: int) -> np.random.Generator:
        return np.random.default_rng((int(seed), _SPLITS.index(split), i))

    out = []
    out.append({"split": "training", "name": "train_00_shepplogan", "source": "phantom", "anatomy": "Shepp-Logan phantom",
                "activity": _extrude(_shepp_logan_activity(size), depth, rng("training", 0))})
    for file, (kind, plane) in {"JPEG2000.dcm": ("bonescan", _bone_scan_activity), "MR_small.dcm": ("mrsmall", _mr_small_activity)}.items():
        patient, what, split = REAL_PET_SOURCES[file]
        out.append({"split": split, "name": f"{_SHORT[split]}_00_{kind}", "source": "real",
                    "anatomy": f"pydicom {file} (patient {patient}, {what})", "activity": _extrude(plane(size), depth, rng(split, 0))})
    for split, count in (("training", int(num_train) - 1), ("validation", int(num_val)), ("test", int(num_test))):
        for i in range(1, 1 + count):
            out.append({"split": split, "name": f"{_SHORT[split]}_{i:02d}_textured", "source": "phantom",
                        "anatomy": f"textured activity phantom {_SHORT[split]} {i} (seed {int(seed)})",
                        "activity": textured_activity_phantom(size, depth, rng(split, i))})
    return sorted(out, key=lambda it: (_SPLITS.index(it["split"]), it["name"]))


def make_pet_demo(
    root_dir: str | os.PathLike | None = None,
    num_train: int = 5,
    num_val: int = 1,
    num_test: int = 1,
    image_size: int = 64,
    num_slices: int = 12,
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
    builders end with one copy; a reused folder with missing files is rebuilt (logged). About 15-30 s
    on a busy 2-core CPU with the defaults (7 volumes of 16 slices of 64 x 64, about 0.2-0.4 s per
    simulated slice; the air-only end slices are not simulated, their reconstructions are 0). See the module docstring for the sources and
    the splits.

    Args:
        root_dir: the parent folder; ``None`` uses :func:`monai_rat.data.default_cache_dir`.
        num_train: training volumes, >= 1 (default 5: the Shepp-Logan phantom and 4 textured phantoms).
        num_val: textured phantoms in validation, >= 0 (default 1; the real bone scan is always there too).
        num_test: textured phantoms in test, >= 0 (default 1; the real MR_small patient is always there too).
        image_size: in-plane size, >= 32 (default 64; a multiple of 16 suits RAT).
        num_slices: slices per volume, >= 4 (default 12; the two end slices are air-only).
        dose_reduction_factor: DRF of the low-count image (default 12).
        count_level: full-dose counts per bin per unit line-integral activity (default 10; see
            :class:`monai_rat.transforms.SimulateLowCountPET`).
        num_iterations: OSEM iterations (default 4).
        num_subsets: OSEM subsets (default 8).
        voxel_size_mm: isotropic voxel size written in the affine (default 4 mm).
        seed: seed of the phantoms, the lesions and the counts (default 0).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, items ``{"image": low_path,
        "label": full_path, "name": patient, "source": "real" | "phantom", "anatomy": str}`` with
        absolute paths.

    Raises:
        ValueError: when a size or count is out of range.
        FileNotFoundError: when pydicom's ``MR_small.dcm`` or ``JPEG2000.dcm`` is missing from the install.
    """
    from monai_rat.data.ct_demo import default_cache_dir

    if not (np.isfinite(voxel_size_mm) and voxel_size_mm > 0):
        raise ValueError(f"make_pet_demo: `voxel_size_mm` must be > 0, got {voxel_size_mm!r}.")
    limits = {"num_train": (num_train, 1), "num_val": (num_val, 0), "num_test": (num_test, 0),
              "image_size": (image_size, 32), "num_slices": (num_slices, 4)}  # fmt: skip
    for name, (value, low) in limits.items():
        if int(value) != value or int(value) < low:
            raise ValueError(f"make_pet_demo: `{name}` must be an integer >= {low}, got {value!r}.")
    settings = {
        "version": PET_DEMO_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
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
        items = out["training"] + out["validation"] + out["test"]
        missing = [it[k] for it in items for k in ("image", "label") if not os.path.isfile(it[k])]
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
    phantoms = pet_activity_phantoms(num_train, num_val, num_test, image_size, num_slices, seed)
    logger.info("PET demo data: building %d training / %d + 1 validation / %d + 1 test volumes (%d x %d x %d, DRF %g) in %s ...",
                num_train, num_val, num_test, image_size, image_size, num_slices, dose_reduction_factor, final)
    build_folder_atomically(final, "PET demo data", ".pet_demo_tmp_", lambda tmp: _build(tmp, settings, phantoms, sim))
    return load_demo_datalist(final)


def _build(folder: Path, s: dict, phantoms: list, sim) -> None:
    import nibabel as nib

    (folder / "low_dose").mkdir()
    (folder / "full_dose").mkdir()
    affine = np.diag([s["voxel_size_mm"]] * 3 + [1.0])
    datalist: dict = {split: [] for split in _SPLITS}
    for k, p in enumerate(phantoms):
        act = np.moveaxis(p["activity"], -1, 0)  # slices as channels
        high, low = np.zeros_like(act), np.zeros_like(act)
        busy = act.reshape(act.shape[0], -1).max(axis=1) > 0  # all-zero slices reconstruct to 0: not simulated
        sim.set_random_state(seed=(s["seed"] * 1000 + k) % (2**32))
        high[busy], low[busy] = (np.asarray(a) for a in sim.simulate_pair(act[busy]))
        name = p["name"]
        for sub, arr in (("low_dose", low), ("full_dose", high)):
            vol = np.moveaxis(arr, 0, -1).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, affine), str(folder / sub / f"{name}.nii.gz"))
        datalist[p["split"]].append({"image": f"low_dose/{name}.nii.gz", "label": f"full_dose/{name}.nii.gz", "name": name,
                                     "source": p["source"], "anatomy": p["anatomy"]})  # fmt: skip
    with open(folder / "README.txt", "w") as f:
        f.write(
            "monai-rat PET demo data (built by monai_rat.data.make_pet_demo; see its docstring).\n"
            "image = low-count OSEM reconstruction (low_dose/), label = full-count OSEM reconstruction of the same\n"
            "activity and counts (full_dose/), float32 3D NIfTI in activity units.\n"
            "Splits by anatomy: training, validation (checkpoint choice, tuning), test (reported scores). Settings:\n"
            + json.dumps(s, indent=2) + "\n"
        )
    with open(folder / DATALIST, "w") as f:
        json.dump({**datalist, "settings": s}, f, indent=1)
