"""Built-in paired low-dose / full-dose CT demo data, made from images that installed packages ship.

Nothing is downloaded. Sources:

- three **real CT slices** that pydicom ships as test files, from three different patients:
  ``CT_small.dcm`` (128 x 128, 0.66 mm pixels, patient "1CT1", a thoracic vertebra),
  ``693_J2KI.dcm`` (512 x 512 head, patient "CQ500-CT-310", lossy JPEG 2000, so smooth) and
  ``J2K_pixelrep_mismatch.dcm`` (512 x 512 head, another patient, lossless). Read with ITK (as MONAI's
  ``ITKReader``), in HU; values below -1000 HU (the scanners' padding outside the field of view) are
  set to air (-1000 HU); the two heads are resampled to ``real_size`` (default 256 x 256, about
  0.9 mm pixels) with anti-aliasing;
- scikit-image's Shepp-Logan phantom (``skimage.data.shepp_logan_phantom``), mapped piecewise-linearly
  to plausible HU (0 -> -1000 air, 0.2 -> 40 soft tissue, 1.0 -> 1000 bone);
- **textured body and head phantoms** generated from a seed (:func:`textured_phantom`, alternating
  kinds): flat ellipses alone favour total-variation denoising, which real anatomy does not (it has
  texture), so every tissue here carries smooth organ-scale variation and fine texture, bone has a
  trabecular pattern, lung has vessels, small bright dots stand for vessels and calcifications, and
  the head phantoms have a dense skull ring, a grey / white matter pattern and sinuses.

Each source image ``x`` (in HU) gives a pair through :class:`monai_rat.transforms.SimulateLowDoseCT`:
the **label** (full dose) is ``x`` passed through the same radon -> FBP with no noise (``add_noise=False``),
and the **image** (low dose) is the same with Poisson + electronic noise at ``dose_fraction`` of the full
dose. Why the noise-free reconstruction and not ``x`` itself: in the paper (AAPM data), the full-dose
image is the scanner's own full-dose reconstruction and the quarter-dose image was made by inserting
noise into the same projections and reconstructing the same way, so a pair differs only by the
dose-dependent noise; using ``x`` itself as the label would also ask the network to undo our FBP's blur
and discretisation, which is not the paper's task.

Splits (by anatomy: no patient or phantom is in two splits):

- **training**: ``CT_small`` in 4 orientations (identity, left-right flip, up-down flip, 90-degree
  rotation), the Shepp-Logan phantom in 2 orientations and ``num_train - 6`` textured phantoms, each
  with ``noise_draws`` independent low-dose draws at doses spread around the nominal one
  (``dose_spread``; so ``num_train * noise_draws`` pairs);
- **validation** (checkpoint choice, tuning of classical filters): the real head ``693_J2KI`` and
  ``num_val`` further textured phantoms;
- **test** (reported scores): the real head ``J2K_pixelrep_mismatch`` and ``num_test`` further textured
  phantoms.

Every item also says where it came from: ``"source"`` is ``"real"`` (a pydicom CT slice) or
``"phantom"``, and ``"anatomy"`` names the source (file and patient, or phantom and seed), so
evaluations can report the real slices apart from the phantoms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from monai_rat.data.demo_folder import DATALIST, build_folder_atomically, load_demo_datalist

__all__ = [
    "make_ct_demo",
    "ellipse_phantom",
    "textured_phantom",
    "PHANTOM_KINDS",
    "pydicom_ct_slice",
    "default_cache_dir",
    "CT_DEMO_VERSION",
    "REAL_CT_SLICES",
]

logger = logging.getLogger(__name__)

#: bump when the builder's output changes, so that older builds are not reused.
CT_DEMO_VERSION = 3

#: the real CT slices pydicom ships (file name -> (patient, what)), and the split each one serves.
REAL_CT_SLICES = {
    "CT_small.dcm": ("1CT1", "thoracic vertebra, 128 x 128", "training"),
    "693_J2KI.dcm": ("CQ500-CT-310", "head, 512 x 512, lossy JPEG 2000", "validation"),
    "J2K_pixelrep_mismatch.dcm": ("JXD191021006", "head, 512 x 512, lossless JPEG 2000", "test"),
}


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


def _random_field(shape: tuple[int, int], rng: np.random.Generator, correlation: float) -> np.ndarray:
    """Gaussian random field with unit std and a Gaussian correlation of ``correlation`` pixels."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), correlation, mode="wrap")
    return field / (field.std() + 1e-12)


PHANTOM_KINDS = ("body", "head")


def textured_phantom(size: int, rng: np.random.Generator, kind: str = "body") -> np.ndarray:
    """A random body-like or head-like phantom in HU with texture in every tissue.

    ``"body"``: air around a body ellipse with a fat rim; soft tissue of 20-60 HU with organ-scale
    variation (+-15 HU, correlation ``size / 12`` pixels) and fine texture (4-12 HU, 0.8-2 pixels);
    5-11 inner ellipses of lung (with vessels), fat, fluid, organ (with its own texture) or bone
    (trabecular pattern); 5-24 small bright dots (vessels, calcifications); a Gaussian blur of 0.4-0.8
    pixels (partial-volume edges).

    ``"head"``: skin, a skull ring of dense cortical bone (1100-1900 HU, 4-9 mm thick at the default
    320 mm field of view, with a lower-density diploe), brain with a grey / white matter pattern (22-42 HU) and fine texture,
    ventricles, calcifications, air cavities (sinuses) at the front, skull-base bone islands, sometimes
    a head-holder arc; a Gaussian blur of 0.3-0.6 pixels. Dense, sharp bone next to soft tissue is
    what a body phantom lacks and head CT has.

    Why textures: flat ellipses are exactly what total-variation denoising assumes, so a phantom set of
    flat ellipses rates TV unfairly high; real anatomy has texture.

    Args:
        size: the output is ``(size, size)``; must be >= 16.
        rng: the random generator (``np.random.default_rng(seed)``).
        kind: ``"body"`` or ``"head"``.

    Returns:
        float64 array ``(size, size)`` in HU.

    Raises:
        ValueError: when ``size`` < 16 or ``kind`` is unknown.
    """
    from scipy.ndimage import gaussian_filter

    if size < 16:
        raise ValueError(f"textured_phantom: `size` must be >= 16, got {size}.")
    if kind not in PHANTOM_KINDS:
        raise ValueError(f"textured_phantom: `kind` must be one of {PHANTOM_KINDS}, got {kind!r}.")
    shape = (size, size)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(c, c, indexing="ij")

    def ellipse(cy, cx, ay, ax, angle):
        ca, sa = np.cos(angle), np.sin(angle)
        y, x = yy - cy, xx - cx
        u, v = ca * x + sa * y, -sa * x + ca * y
        return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0

    if kind == "head":
        return gaussian_filter(_head(shape, rng, yy, ellipse), rng.uniform(0.3, 0.6))
    img = np.full(shape, -1000.0)
    ay, ax = rng.uniform(0.55, 0.8), rng.uniform(0.7, 0.92)
    angle = rng.uniform(-0.2, 0.2)
    rim = rng.uniform(0.03, 0.08)
    img[ellipse(0, 0, ay, ax, angle)] = rng.uniform(-120, -80)  # fat rim
    inner = ellipse(0, 0, ay - rim, ax - rim, angle)
    soft = (
        rng.uniform(20, 60)
        + 15.0 * _random_field(shape, rng, size / 12)
        + rng.uniform(4, 12) * _random_field(shape, rng, rng.uniform(0.8, 2.0))
    )
    img[inner] = soft[inner]
    kinds = [("lung", -850, -700), ("fat", -110, -60), ("fluid", 0, 20), ("organ", 30, 120), ("bone", 250, 1000)]
    for _ in range(int(rng.integers(5, 12))):
        kind, lo, hi = kinds[int(rng.integers(len(kinds)))]
        r, phi = rng.uniform(0.0, 0.6), rng.uniform(0, 2 * np.pi)
        cy, cx = r * ay * np.sin(phi), r * ax * np.cos(phi)
        top = 0.12 if kind == "bone" else 0.25  # bones of a plausible size (larger ones starve the detector)
        e = ellipse(cy, cx, rng.uniform(0.04, top), rng.uniform(0.04, top), rng.uniform(0, np.pi)) & inner
        base = rng.uniform(lo, hi)
        if kind == "lung":  # vessels: the top tail of a fine random field
            vessels = _random_field(shape, rng, rng.uniform(0.7, 1.5)) > 1.6
            val = base + vessels * rng.uniform(700, 850) + 15.0 * _random_field(shape, rng, 1.0)
        elif kind == "bone":  # trabecular pattern: a thresholded random field
            trabeculae = _random_field(shape, rng, rng.uniform(0.8, 1.6)) > 0
            val = base * (0.55 + 0.45 * trabeculae) + 20.0 * _random_field(shape, rng, 1.0)
        elif kind == "organ":
            val = base + rng.uniform(5, 15) * _random_field(shape, rng, rng.uniform(1, 3))
        else:
            val = base + rng.uniform(2, 6) * _random_field(shape, rng, 1.5)
        img[e] = val[e]
    for _ in range(int(rng.integers(5, 25))):  # small vessels and calcifications
        r, phi = rng.uniform(0.0, 0.85), rng.uniform(0, 2 * np.pi)
        cy, cx = r * (ay - rim) * np.sin(phi), r * (ax - rim) * np.cos(phi)
        dot = ellipse(cy, cx, rng.uniform(0.008, 0.03), rng.uniform(0.008, 0.03), 0.0) & inner
        img[dot] += rng.uniform(60, 300)
    return gaussian_filter(img, rng.uniform(0.4, 0.8))


def _head(shape, rng, yy, ellipse) -> np.ndarray:
    """The unblurred head of :func:`textured_phantom` (``kind="head"``)."""
    img = np.full(shape, -1000.0)
    # semi-axes 0.55-0.7 / 0.45-0.6 of the half field of view: a 180-220 x 145-190 mm head at the default
    # 320 mm; skin 3-8 mm and skull 4-9 mm thick at any image size (a real skull is 4-10 mm)
    ay, ax = rng.uniform(0.55, 0.7), rng.uniform(0.45, 0.6)
    angle = rng.uniform(-0.3, 0.3)
    mm = 2.0 / 320.0  # one millimetre in the [-1, 1] coordinates of the default field of view
    skin, skull = rng.uniform(3, 8) * mm, rng.uniform(4, 9) * mm
    head = ellipse(0, 0, ay, ax, angle)
    img[head] = (rng.uniform(20, 60) + 5.0 * _random_field(shape, rng, 1.5))[head]
    outer = ellipse(0, 0, ay - skin, ax - skin, angle)
    inner = ellipse(0, 0, ay - skin - skull, ax - skin - skull, angle)
    ring = outer & ~inner
    cortex = rng.uniform(1100, 1900)
    diploe = ellipse(0, 0, ay - skin - 0.35 * skull, ax - skin - 0.35 * skull, angle) & ~ellipse(
        0, 0, ay - skin - 0.65 * skull, ax - skin - 0.65 * skull, angle
    )
    bone = np.where(diploe, rng.uniform(300, 700) + 80.0 * _random_field(shape, rng, 1.0),
                    cortex + 60.0 * _random_field(shape, rng, 1.0))
    img[ring] = bone[ring]
    grey = _random_field(shape, rng, rng.uniform(2, 5)) > rng.uniform(-0.3, 0.3)
    brain = np.where(grey, rng.uniform(32, 42), rng.uniform(22, 30)) + rng.uniform(2, 6) * _random_field(
        shape, rng, rng.uniform(0.8, 1.6)
    )
    img[inner] = brain[inner]
    for _ in range(int(rng.integers(1, 4))):  # ventricles
        e = ellipse(rng.uniform(-0.2, 0.2) * ay, rng.uniform(-0.25, 0.25) * ax, rng.uniform(0.04, 0.18),
                    rng.uniform(0.02, 0.08), rng.uniform(0, np.pi)) & inner
        img[e] = rng.uniform(0, 12)
    for _ in range(int(rng.integers(0, 4))):  # calcifications
        e = ellipse(rng.uniform(-0.5, 0.5) * ay, rng.uniform(-0.5, 0.5) * ax, rng.uniform(0.01, 0.03),
                    rng.uniform(0.01, 0.03), 0.0) & inner
        img[e] = rng.uniform(150, 900)
    for _ in range(int(rng.integers(0, 3))):  # sinuses: air cavities at the front
        cy = -(ay - skin - skull) * rng.uniform(0.6, 0.95)
        e = ellipse(cy, rng.uniform(-0.4, 0.4) * ax, rng.uniform(0.04, 0.12), rng.uniform(0.05, 0.2),
                    rng.uniform(-0.3, 0.3)) & outer
        img[e] = -1000.0 + 20.0 * _random_field(shape, rng, 1.0)[e]
    for _ in range(int(rng.integers(0, 4))):  # skull-base bone islands
        e = ellipse(rng.uniform(-0.1, 0.6) * ay, rng.uniform(-0.6, 0.6) * ax, rng.uniform(0.03, 0.12),
                    rng.uniform(0.02, 0.1), rng.uniform(0, np.pi)) & inner
        img[e] = (cortex * rng.uniform(0.5, 1.0) + 60.0 * _random_field(shape, rng, 1.0))[e]
    if rng.uniform() < 0.5:  # a head-holder arc below the head
        arc = ellipse(0.05, 0, ay + 0.06, ax + 0.12, angle) & ~ellipse(0.05, 0, ay + 0.045, ax + 0.105, angle) & (yy > 0.3)
        img[arc] = rng.uniform(100, 400)
    return img


#: scikit-image's own grey (or greyed) photographs used as texture sources (none needs a download)
NATURAL_IMAGES = ("camera", "moon", "brick", "gravel", "grass", "coins", "astronaut", "coffee", "chelsea", "rocket",
                  "clock", "cell")


def natural_texture_slice(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A CT-like slice in HU whose body is textured by one of scikit-image's photographs.

    A random square crop of the photograph (grey; at least half its shorter side) is resampled to
    ``size`` x ``size`` and mapped linearly into a soft-tissue-like HU range (low end -150..-50 HU,
    high end 150..400 HU) inside an elliptical body (air outside). Why: the demo's phantoms are
    smooth shapes, while real slices are full of fine structure at every scale; photographs carry such
    structure, so a network trained with them learns to keep detail while removing CT noise (they are
    not anatomy, so no test anatomy leaks in).

    Args:
        name: one of :data:`NATURAL_IMAGES`.
        size: output side, >= 16.
        rng: the random generator (crop, HU range, body shape).

    Returns:
        float64 ``(size, size)`` array in HU.

    Raises:
        ValueError: for an unknown ``name`` or ``size`` < 16.
    """
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    if name not in NATURAL_IMAGES:
        raise ValueError(f"natural_texture_slice: `name` must be one of {NATURAL_IMAGES}, got {name!r}.")
    if size < 16:
        raise ValueError(f"natural_texture_slice: `size` must be >= 16, got {size}.")
    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if img.ndim == 3:
        img = rgb2gray(img[..., :3] / 255.0)
    else:
        img = img / 255.0
    h, w = img.shape
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    tex = resize(img[top : top + side, left : left + side], (size, size), order=1, anti_aliasing=True)
    if rng.uniform() < 0.5:
        tex = tex[:, ::-1]
    lo, hi = rng.uniform(-150, -50), rng.uniform(150, 400)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(c, c, indexing="ij")
    ay, ax = rng.uniform(0.75, 0.95), rng.uniform(0.75, 0.95)
    body = (yy / ay) ** 2 + (xx / ax) ** 2 <= 1.0
    return np.where(body, lo + (hi - lo) * tex, -1000.0)


def _pydicom_test_file(name: str) -> str:
    import pydicom

    path = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", name)
    if not os.path.isfile(path):  # pydicom's own lookup (it may also know external data folders)
        try:
            from pydicom.data import get_testdata_file

            path = get_testdata_file(name) or path
        except Exception:  # noqa: BLE001 - pydicom's external-source lookup can fail on a missing pkg_resources
            pass
    if not os.path.isfile(path):
        raise FileNotFoundError(f"make_ct_demo: pydicom's test file {name} was not found in this pydicom install ({path}).")
    return path


def pydicom_ct_slice(name: str, size: int | None = None) -> tuple[np.ndarray, float]:
    """One of the real CT slices pydicom ships (:data:`REAL_CT_SLICES`), in HU, rows x columns.

    Read with ITK (which decodes the JPEG 2000 files without extra packages), HU from the file's
    rescale slope and intercept; values below -1000 HU (padding outside the scanner's field of view)
    become air (-1000 HU); with ``size`` the slice is resampled to ``(size, size)`` (linear, with
    anti-aliasing) and the pixel size scaled to match.

    Args:
        name: the file name, e.g. ``"J2K_pixelrep_mismatch.dcm"``.
        size: the output side (``None``: the file's own size).

    Returns:
        ``(hu, pixel_size_mm)``: float64 ``(H, W)`` array and the (square) pixel size.

    Raises:
        FileNotFoundError: when pydicom's test file is missing.
        ValueError: when the slice is not 2D or its pixels are not square.
    """
    import itk

    path = _pydicom_test_file(name)
    image = itk.imread(path)
    hu = np.asarray(itk.array_from_image(image), dtype=np.float64).squeeze()
    if hu.ndim != 2:
        raise ValueError(f"pydicom_ct_slice: {path} is not a 2D slice (array shape {hu.shape}).")
    sx, sy = (float(v) for v in tuple(image.GetSpacing())[:2])
    if abs(sx - sy) > 0.01 * sx:
        raise ValueError(f"pydicom_ct_slice: {path} has non-square pixels {sx} x {sy} mm.")
    hu = np.maximum(hu, -1000.0)
    if size is not None and hu.shape != (size, size):
        from skimage.transform import resize

        sx = sx * hu.shape[0] / size
        hu = resize(hu, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return hu, sx


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
    num_train: int = 24,
    num_val: int = 8,
    num_test: int = 8,
    noise_draws: int = 4,
    num_natural: int = 0,
    dose_spread: float = 2.0,
    real_size: int = 256,
    dose_fraction: float = 0.25,
    full_dose_photons: float = 1e5,
    electronic_noise_std: float = 10.0,
    field_of_view_mm: float = 320.0,
    seed: int = 0,
) -> dict:
    """Build (once) the paired CT demo set and return its MONAI-style datalist.

    The set is written under ``<root_dir>/ct_demo_<key>/`` where ``key`` is a hash of the settings,
    so different settings never mix: ``low_dose/<name>.nii.gz`` (the "image"), ``full_dose/<name>.nii.gz``
    (the "label"), both float32 NIfTI in HU, 2D with the pixel size in the affine, plus
    ``datalist.json`` and ``README.txt``. When the folder already exists it is reused (no rebuild); a
    build goes to a temporary folder first and is renamed into place, so an interrupted build leaves
    nothing half-written and concurrent builders (e.g. DDP ranks) end with one copy. A reused folder
    with missing files is rebuilt (logged). Building takes about 20 s on a 2-core CPU at the
    defaults (most of it the two 256 x 256 real slices). See the module docstring for the sources,
    the degradation and the splits.

    Args:
        root_dir: the parent folder; ``None`` uses :func:`default_cache_dir` (``$MONAI_RAT_CACHE`` or
            ``~/.cache/monai_rat``).
        image_size: side of the square phantoms and of ``CT_small`` (default 128, ``CT_small.dcm``'s own
            size; other sizes resample it), >= 32. Use a multiple of 16 for RAT.
        num_train: number of training *sources*, >= 7 (default 24: 4 CT_small views, 2 Shepp-Logan, the
            rest textured phantoms).
        num_val: textured phantoms in the validation split, >= 0 (default 8, half body, half head; the
            real head 693_J2KI is always there too).
        num_test: textured phantoms in the test split, >= 0 (default 8, half body, half head; the real
            head J2K_pixelrep_mismatch is always there too). Eight rather than four, so that the
            validation and test splits have about the same spread of noise levels (a CT slice's noise
            depends on the object's size), which the one tuned parameter of a classical filter
            relies on.
        noise_draws: independent low-dose draws per training source, >= 1 (default 4): more noise
            realisations of the same anatomy, so a network cannot learn the noise by heart.
        dose_spread: the training draws of a source are made at doses spread evenly on a log scale
            from ``dose_fraction / dose_spread`` to ``dose_fraction * dose_spread`` (default 2.0: from
            1/8 to 1/2 of the full dose around quarter dose), so that every anatomy is seen at several
            noise levels and a network cannot tie a noise level to a kind of image (small phantoms are
            less noisy than large ones at one dose); 1.0 makes every draw at ``dose_fraction``.
            Validation and test are always at ``dose_fraction``.
        real_size: side the two 512 x 512 real heads are resampled to (default 256), >= 32.
        dose_fraction: the low dose as a fraction of the full dose (default 0.25, quarter dose).
        full_dose_photons: incident photons per detector bin at full dose (default 1e5).
        electronic_noise_std: electronic noise std in counts (default 10).
        field_of_view_mm: field of view of the Shepp-Logan and textured phantoms (pixel size =
            ``field_of_view_mm / image_size``; default 320 mm). The real slices keep their own.
        seed: seed of the phantoms and the noise (default 0).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each item
        ``{"image": low_dose_path, "label": full_dose_path, "name": str, "source": "real" | "phantom",
        "anatomy": str}`` with absolute paths.

    Raises:
        ValueError: when a size or count is out of range.
        FileNotFoundError: when one of pydicom's CT test files is missing from the install.
    """
    from monai_rat.transforms.simulate_ct import SimulateLowDoseCT

    limits = {"image_size": (image_size, 32), "num_train": (num_train, 7), "num_val": (num_val, 0),
              "num_test": (num_test, 0), "noise_draws": (noise_draws, 1), "real_size": (real_size, 32),
              "num_natural": (num_natural, 0)}
    for name, (value, low) in limits.items():
        if int(value) != value or int(value) < low:
            raise ValueError(f"make_ct_demo: `{name}` must be an integer >= {low}, got {value!r}.")
    if not (np.isfinite(dose_spread) and dose_spread >= 1.0):
        raise ValueError(f"make_ct_demo: `dose_spread` must be a number >= 1, got {dose_spread!r}.")
    settings = {
        "version": CT_DEMO_VERSION,
        "image_size": int(image_size),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
        "noise_draws": int(noise_draws),
        "num_natural": int(num_natural),
        "dose_spread": float(dose_spread),
        "real_size": int(real_size),
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
        items = out["training"] + out["validation"] + out["test"]
        missing = [it[k] for it in items for k in ("image", "label") if not os.path.isfile(it[k])]
        if not missing:
            logger.info("CT demo data: reusing %s", final)
            return out
        logger.warning("CT demo data: %d file(s) of %s are missing (first: %s); rebuilding it.", len(missing), final, missing[0])
        shutil.rmtree(final, ignore_errors=True)

    logger.info(
        "CT demo data: building %d training sources x %d noise draws, %d + 1 validation and %d + 1 test pairs "
        "(%g dose) in %s ...", num_train, noise_draws, num_val, num_test, dose_fraction, final,
    )
    build_folder_atomically(final, "CT demo data", ".ct_demo_tmp_", lambda tmp: _build(tmp, settings, SimulateLowDoseCT))
    return load_demo_datalist(final)


def _sources(s: dict) -> list[tuple[str, str, np.ndarray, float, str, str]]:
    """(split, name, HU image, pixel size, source, anatomy) of every demo image, in build order."""
    from skimage.transform import resize

    size = s["image_size"]
    rng = np.random.default_rng(s["seed"])
    out = []

    def real(name: str, side: int | None) -> tuple[np.ndarray, float, str]:
        patient, what, _ = REAL_CT_SLICES[name]
        hu, px = pydicom_ct_slice(name, side)
        return hu, px, f"pydicom {name} (patient {patient}, {what})"

    ct, ct_px, ct_what = real("CT_small.dcm", None)
    if ct.shape != (size, size):
        ct_px = ct_px * ct.shape[0] / size
        ct = resize(ct, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    for view, arr in (("id", ct), ("fliplr", ct[:, ::-1]), ("flipud", ct[::-1]), ("rot90", np.rot90(ct))):
        out.append(("training", f"ctsmall_{view}", np.ascontiguousarray(arr), ct_px, "real", ct_what))
    px = s["field_of_view_mm"] / size
    sl = _shepp_logan_hu(size)
    out.append(("training", "shepplogan_id", sl, px, "phantom", "Shepp-Logan phantom"))
    out.append(("training", "shepplogan_fliplr", np.ascontiguousarray(sl[:, ::-1]), px, "phantom", "Shepp-Logan phantom"))
    for split, count in (("training", s["num_train"] - 6), ("validation", s["num_val"]), ("test", s["num_test"])):
        for i in range(count):
            kind = PHANTOM_KINDS[i % 2]  # body and head phantoms, alternating
            out.append((split, f"phantom_{split[:4]}_{i:03d}", textured_phantom(size, rng, kind), px, "phantom",
                        f"textured {kind} phantom {split} {i} (seed {s['seed']})"))
    for i in range(s["num_natural"]):
        name = NATURAL_IMAGES[i % len(NATURAL_IMAGES)]
        out.append(("training", f"natural_{i:03d}_{name}", natural_texture_slice(name, size, rng), px, "phantom",
                    f"scikit-image photograph {name!r} as CT texture {i} (seed {s['seed']})"))
    for name, (_, _, split) in REAL_CT_SLICES.items():
        if split != "training":
            hu, rpx, what = real(name, s["real_size"])
            out.append((split, f"real_{split[:4]}_{Path(name).stem}", hu, rpx, "real", what))
    return out


def _build(folder: Path, s: dict, simulator_cls) -> dict:
    import nibabel as nib

    (folder / "low_dose").mkdir()
    (folder / "full_dose").mkdir()
    datalist: dict = {"training": [], "validation": [], "test": []}
    for split, name, hu, pixel, source, anatomy in _sources(s):
        kw = dict(
            full_dose_photons=s["full_dose_photons"],
            dose_fraction=s["dose_fraction"],
            electronic_noise_std=s["electronic_noise_std"],
            pixel_size_mm=pixel,
        )
        affine = np.diag([pixel, pixel, 1.0, 1.0])
        full = simulator_cls(add_noise=False, **kw)(hu[None])[0]
        nib.save(nib.Nifti1Image(full.astype(np.float32), affine), str(folder / "full_dose" / f"{name}.nii.gz"))
        draws = s["noise_draws"] if split == "training" else 1
        for d in range(draws):
            # training draws spread evenly (on a log scale) over dose_fraction / spread .. dose_fraction * spread
            factor = s["dose_spread"] ** (2 * d / (draws - 1) - 1) if draws > 1 else 1.0
            sim = simulator_cls(**{**kw, "dose_fraction": s["dose_fraction"] * factor})
            # seeded by the image's name, not its position: the validation and test draws stay the same
            # whatever the training set holds (so figures from different training options compare)
            sim.set_random_state(seed=zlib.crc32(f"{s['seed']}/{name}/{d}".encode()))
            low = sim(hu[None])[0]
            low_name = f"{name}_d{d}" if draws > 1 else name
            nib.save(nib.Nifti1Image(low.astype(np.float32), affine), str(folder / "low_dose" / f"{low_name}.nii.gz"))
            datalist[split].append(
                {"image": f"low_dose/{low_name}.nii.gz", "label": f"full_dose/{name}.nii.gz", "name": low_name,
                 "source": source, "anatomy": anatomy, "dose_fraction": round(s["dose_fraction"] * factor, 6)}
            )
    with open(folder / "README.txt", "w") as f:
        f.write(
            "monai-rat CT demo data (built by monai_rat.data.make_ct_demo; see its docstring).\n"
            "image = simulated low dose (low_dose/), label = noise-free reconstruction of the same source (full_dose/),\n"
            "float32 NIfTI in HU. Splits by anatomy: training, validation (checkpoint choice, tuning), test (reported).\n"
            "Settings:\n" + json.dumps(s, indent=2) + "\n"
        )
    with open(folder / DATALIST, "w") as f:
        json.dump({**datalist, "settings": s}, f, indent=1)
    return datalist
