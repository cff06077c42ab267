"""Built-in paired low-dose / full-dose CT demo data, made from images that installed packages ship.

Nothing is downloaded. Sources:

- pydicom's test file ``CT_small.dcm`` (a real 128 x 128 CT slice, 0.66 mm pixels), converted to HU with
  its RescaleSlope / RescaleIntercept;
- scikit-image's Shepp-Logan phantom (``skimage.data.shepp_logan_phantom``, the ``phantom.png`` file),
  mapped piecewise-linearly to plausible HU (0 -> -1000 air, 0.2 -> 40 soft tissue, 1.0 -> 1000 bone);
- random-ellipse body phantoms generated from a seed (air around a water-like body with fat, soft
  tissue, lung-like and bone-like ellipses).

Each source image ``x`` (in HU) gives a pair through :class:`monai_rat.transforms.SimulateLowDoseCT`:
the **label** (full dose) is ``x`` passed through the same radon -> FBP with no noise (``add_noise=False``),
and the **image** (low dose) is the same with Poisson + electronic noise at ``dose_fraction`` of the full
dose. Why the noise-free reconstruction and not ``x`` itself: in the paper (AAPM data), the full-dose
image is the scanner's own full-dose reconstruction and the quarter-dose image was made by inserting
noise into the same projections and reconstructing the same way, so a pair differs only by the
dose-dependent noise; using ``x`` itself as the label would also ask the network to undo our FBP's blur
and discretisation, which is not the paper's task.

Split: training = ``CT_small`` in 4 orientations (identity, left-right flip, up-down flip, 90-degree
rotation), the Shepp-Logan phantom in 2 orientations, and ``num_train - 6`` ellipse phantoms, each with
its own noise draw; validation = ``num_val`` further ellipse phantoms (different seeds): no anatomy
of the training set is in validation.
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

__all__ = ["make_ct_demo", "ellipse_phantom", "default_cache_dir", "CT_DEMO_VERSION"]

logger = logging.getLogger(__name__)

#: bump when the builder's output changes, so that older builds are not reused.
CT_DEMO_VERSION = 1


def default_cache_dir() -> Path:
    """The folder used when no ``root_dir`` / ``cache_dir`` is given.

    ``$MONAI_RAT_CACHE`` when set, else ``~/.cache/monai_rat``.

    Returns:
        the folder path (not created here).
    """
    env = os.environ.get("MONAI_RAT_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "monai_rat"


def ellipse_phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random body-like phantom in HU: air, a water-like body with a fat rim, and random inner ellipses.

    Args:
        size: the output is ``(size, size)``; must be >= 16.
        rng: the random generator (``np.random.default_rng(seed)``).

    Returns:
        float64 array ``(size, size)`` in HU.

    Raises:
        ValueError: when ``size`` < 16.
    """
    if size < 16:
        raise ValueError(f"ellipse_phantom: `size` must be >= 16, got {size}.")
    c = (np.arange(size) + 0.5) / size * 2 - 1  # [-1, 1] pixel centres
    yy, xx = np.meshgrid(c, c, indexing="ij")

    def ellipse(cy, cx, ay, ax, angle):
        ca, sa = np.cos(angle), np.sin(angle)
        y, x = yy - cy, xx - cx
        u, v = ca * x + sa * y, -sa * x + ca * y
        return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0

    img = np.full((size, size), -1000.0)
    ay, ax = rng.uniform(0.55, 0.75), rng.uniform(0.75, 0.92)
    angle = rng.uniform(-0.2, 0.2)
    img[ellipse(0, 0, ay, ax, angle)] = rng.uniform(-120, -80)  # fat rim
    img[ellipse(0, 0, ay - 0.05, ax - 0.05, angle)] = rng.uniform(20, 60)  # soft tissue
    kinds = [(-850, -700), (-100, -60), (0, 80), (30, 120), (300, 1200)]  # lung, fat, fluid, organ, bone
    for _ in range(int(rng.integers(4, 10))):
        lo, hi = kinds[int(rng.integers(len(kinds)))]
        r = rng.uniform(0.0, 0.6)
        phi = rng.uniform(0, 2 * np.pi)
        cy, cx = r * ay * np.sin(phi), r * ax * np.cos(phi)
        e = ellipse(cy, cx, rng.uniform(0.04, 0.22), rng.uniform(0.04, 0.22), rng.uniform(0, np.pi))
        img[e & (img > -1000)] = rng.uniform(lo, hi)
    return img


def _ct_small_hu() -> tuple[np.ndarray, float]:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        raise FileNotFoundError("make_ct_demo: pydicom's test file CT_small.dcm was not found in this pydicom install.")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    return hu, float(ds.PixelSpacing[0])


def _shepp_logan_hu(size: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    ph = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True)
    return np.interp(ph, [0.0, 0.2, 1.0], [-1000.0, 40.0, 1000.0])


def _settings_key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def make_ct_demo(
    root_dir: str | os.PathLike | None = None,
    image_size: int = 128,
    num_train: int = 16,
    num_val: int = 4,
    dose_fraction: float = 0.25,
    full_dose_photons: float = 1e5,
    electronic_noise_std: float = 10.0,
    field_of_view_mm: float = 320.0,
    seed: int = 0,
) -> dict:
    """Build (once) the paired CT demo set and return its MONAI-style datalist.

    The set is written under ``<root_dir>/ct_demo_<key>/`` where ``key`` is a hash of the settings,
    so different settings never mix: ``low_dose/<name>.nii.gz`` (the "image"), ``full_dose/<name>.nii.gz``
    (the "label"), both float32 NIfTI in HU, 2D ``(image_size, image_size)`` with the pixel size in the
    affine, plus ``datalist.json`` and ``README.txt``. When the folder already exists it is reused (no
    rebuild); a build goes to a temporary folder first and is renamed into place, so an interrupted
    build leaves nothing half-written and concurrent builders (e.g. DDP ranks) end with one copy.
    A reused folder with missing files is rebuilt (logged). Building takes about 4 s on a 2-core CPU
    at the default size (about 50 s at 256 x 256). See the module docstring for the
    sources, the degradation and the split.

    Args:
        root_dir: the parent folder; ``None`` uses :func:`default_cache_dir` (``$MONAI_RAT_CACHE`` or
            ``~/.cache/monai_rat``).
        image_size: side of the square images, >= 32 (default 128, ``CT_small.dcm``'s own size; other
            sizes resample it). Use a multiple of 16 for RAT (two 2x down-samplings, 4 x 4 windows).
        num_train: number of training pairs, >= 7 (default 16: 4 CT_small, 2 Shepp-Logan, the rest ellipses).
        num_val: number of validation pairs (ellipse phantoms), >= 1 (default 4).
        dose_fraction: the low dose as a fraction of the full dose (default 0.25, quarter dose).
        full_dose_photons: incident photons per detector bin at full dose (default 1e5).
        electronic_noise_std: electronic noise std in counts (default 10).
        field_of_view_mm: field of view of the Shepp-Logan and ellipse phantoms (pixel size =
            ``field_of_view_mm / image_size``; default 320 mm). CT_small keeps its own 85 mm field of view.
        seed: seed of the phantoms and the noise (default 0).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each item
        ``{"image": low_dose_path, "label": full_dose_path, "name": str}`` with absolute paths;
        "test" is the validation list (the demo has no separate test set).

    Raises:
        ValueError: when a size or count is out of range.
        FileNotFoundError: when pydicom's ``CT_small.dcm`` is missing from the install.
    """
    from monai_rat.transforms.simulate_ct import SimulateLowDoseCT

    if int(image_size) < 32:
        raise ValueError(f"make_ct_demo: `image_size` must be >= 32, got {image_size}.")
    if int(num_train) < 7:
        raise ValueError(f"make_ct_demo: `num_train` must be >= 7 (6 fixed real/phantom pairs + ellipses), got {num_train}.")
    if int(num_val) < 1:
        raise ValueError(f"make_ct_demo: `num_val` must be >= 1, got {num_val}.")
    settings = {
        "version": CT_DEMO_VERSION,
        "image_size": int(image_size),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "dose_fraction": float(dose_fraction),
        "full_dose_photons": float(full_dose_photons),
        "electronic_noise_std": float(electronic_noise_std),
        "field_of_view_mm": float(field_of_view_mm),
        "seed": int(seed),
    }
    root = Path(root_dir).expanduser() if root_dir not in (None, "") else default_cache_dir()
    final = root / f"ct_demo_{_settings_key(settings)}"
    if (final / DATALIST).is_file():
        out = load_demo_datalist(final)
        missing = [it[k] for it in out["training"] + out["validation"] for k in ("image", "label") if not os.path.isfile(it[k])]
        if not missing:
            logger.info("CT demo data: reusing %s", final)
            return out
        logger.warning("CT demo data: %d file(s) of %s are missing (first: %s); rebuilding it.", len(missing), final, missing[0])
        shutil.rmtree(final, ignore_errors=True)

    logger.info("CT demo data: building %d training + %d validation pairs (%d x %d, %g dose) in %s ...",
                num_train, num_val, image_size, image_size, dose_fraction, final)
    build_folder_atomically(final, "CT demo data", ".ct_demo_tmp_", lambda tmp: _build(tmp, settings, SimulateLowDoseCT))
    return load_demo_datalist(final)


def _build(folder: Path, s: dict, simulator_cls) -> dict:
    import nibabel as nib
    from skimage.transform import resize

    size = s["image_size"]
    rng = np.random.default_rng(s["seed"])
    sources: list[tuple[str, str, np.ndarray, float]] = []  # (split, name, hu, pixel size)
    ct, ct_px = _ct_small_hu()
    if ct.shape != (size, size):
        ct_px = ct_px * ct.shape[0] / size
        ct = resize(ct, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    for name, view in (("id", ct), ("fliplr", ct[:, ::-1]), ("flipud", ct[::-1]), ("rot90", np.rot90(ct))):
        sources.append(("training", f"ctsmall_{name}", np.ascontiguousarray(view), ct_px))
    px = s["field_of_view_mm"] / size
    sl = _shepp_logan_hu(size)
    sources.append(("training", "shepplogan_id", sl, px))
    sources.append(("training", "shepplogan_fliplr", np.ascontiguousarray(sl[:, ::-1]), px))
    for i in range(s["num_train"] - 6):
        sources.append(("training", f"ellipses_{i:03d}", ellipse_phantom(size, rng), px))
    for i in range(s["num_val"]):
        sources.append(("validation", f"ellipses_val_{i:03d}", ellipse_phantom(size, rng), px))

    (folder / "low_dose").mkdir()
    (folder / "full_dose").mkdir()
    datalist: dict = {"training": [], "validation": []}
    for k, (split, name, hu, pixel) in enumerate(sources):
        kw = dict(
            full_dose_photons=s["full_dose_photons"],
            dose_fraction=s["dose_fraction"],
            electronic_noise_std=s["electronic_noise_std"],
            pixel_size_mm=pixel,
        )
        full = simulator_cls(add_noise=False, **kw)(hu[None])[0]
        sim = simulator_cls(**kw)
        sim.set_random_state(seed=(s["seed"] * 1000 + k) % (2**32))
        low = sim(hu[None])[0]
        affine = np.diag([pixel, pixel, 1.0, 1.0])
        for sub, arr in (("low_dose", low), ("full_dose", full)):
            nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(folder / sub / f"{name}.nii.gz"))
        datalist[split].append(
            {"image": f"low_dose/{name}.nii.gz", "label": f"full_dose/{name}.nii.gz", "name": name}
        )
    with open(folder / "README.txt", "w") as f:
        f.write(
            "monai-rat CT demo data (built by monai_rat.data.make_ct_demo; see its docstring).\n"
            "image = simulated low dose (low_dose/), label = noise-free reconstruction of the same source (full_dose/),\n"
            "float32 NIfTI in HU. Settings:\n" + json.dumps(s, indent=2) + "\n"
        )
    with open(folder / DATALIST, "w") as f:
        json.dump({**datalist, "settings": s}, f, indent=1)
    return datalist
