"""Pathology super-resolution data: built-in demo tiles, the datalist, and the load/degrade transforms.

The paper's pathology task pairs a high-quality RGB image with its 4x bicubic down-then-up version
(the LQ input), made on the fly. So a pathology datalist lists **only the high-quality images**,
under "image" (MONAI's datalist key); :func:`pathology_load_transforms` reads each one, scales it to
[0, 1], copies it to "label" (the target) and degrades "image" with
:class:`monai_rat.transforms.BicubicDegraded` (factor 4): after it, "image" is LQ and "label" HQ,
the same convention as the CT and PET bundles.

Demo tiles (nothing downloaded): scikit-image's ``ihc.png`` (``skimage.data.immunohistochemistry()``,
a 512 x 512 RGB immunohistochemistry image of colon tissue), split into three **spatial blocks** of
full height, so that no pixel is in two splits (:data:`PATHOLOGY_DEMO_BLOCKS`):

- **training**: columns 0-255 (the left half), cut into ``tile_size`` tiles with a stride of
  ``train_stride`` (default half a tile: overlapping tiles, so random crops also straddle the tile
  borders; the tiles never reach outside the block);
- **validation** (checkpoint choice, tuning): columns 256-383, non-overlapping tiles;
- **test** (reported scores): columns 384-511, non-overlapping tiles.

Neighbouring blocks touch along one edge (training | validation at column 256, validation | test at
column 384; training and test do not touch), so tissue structures that cross an edge appear on both
sides of it. With the default ``tile_size`` 128: 21 training, 4 validation and 4 test tiles. No other
histology image ships with the installed packages (scikit-image's ``skin.jpg`` needs a download).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np

from monai_rat.data.demo_folder import DATALIST, build_folder_atomically, load_demo_datalist

__all__ = [
    "PATHOLOGY_DATA_HINT",
    "make_pathology_demo",
    "pathology_datalist",
    "pathology_image_files",
    "pathology_inference_datalist",
    "pathology_load_transforms",
    "PATHOLOGY_DEMO_BLOCKS",
    "PATHOLOGY_DEMO_VERSION",
    "PATHOLOGY_EXTENSIONS",
]

logger = logging.getLogger(__name__)

#: bump when the builder's output changes, so that older builds are not reused.
PATHOLOGY_DEMO_VERSION = 2
#: the demo's spatial blocks of ihc.png: split -> (first column, last column + 1), all rows.
PATHOLOGY_DEMO_BLOCKS = {"training": (0, 256), "validation": (256, 384), "test": (384, 512)}
#: the image files a pathology folder may hold.
PATHOLOGY_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: what the pathology bundle's ``--dataset_dir`` accepts, for the advice in the log (demo data, schedule).
PATHOLOGY_DATA_HINT = (
    f"a folder of high-quality RGB images ({', '.join(PATHOLOGY_EXTENSIONS)}; in train/ and test/ sub-folders, or in "
    'one folder, split at random), or a MONAI datalist .json listing them as {"image": ...}'
)
_MEMO: dict = {}
_SPLITS = ("training", "validation", "test")
_SHORT = {"training": "train", "validation": "val", "test": "test"}
_FOLDER_LAYOUT = f"""a folder of high-quality RGB images ({', '.join(PATHOLOGY_EXTENSIONS)}), either
  <dataset_dir>/train/*.png and <dataset_dir>/test/*.png   (validation: val/ when present, else a seeded
                                                           `val_fraction` of train/), or
  <dataset_dir>/*.png                                      (split at random by `test_fraction` and `val_fraction`),
or a MONAI datalist JSON {{"training": [{{"image": "a.png"}}, ...], "validation": [...], "test": [...]}}
(the low-quality input is made on the fly: 4x bicubic down then up)"""


def make_pathology_demo(root_dir: str | os.PathLike | None = None, tile_size: int = 128, train_stride: int | None = None) -> dict:
    """Build (once) the demo tiles from scikit-image's ``ihc.png`` and return their datalist.

    Written under ``<root_dir>/pathology_demo_<key>/images/ihc_<split>_y<row>_x<col>.png`` (RGB uint8;
    ``row``, ``col``: the tile's top-left pixel in ``ihc.png``) with ``datalist.json`` and
    ``README.txt``; reused when complete; built in a temporary folder and renamed into place (atomic).
    Takes well under a second. Splits: the spatial blocks of :data:`PATHOLOGY_DEMO_BLOCKS` (see the
    module docstring).

    Args:
        root_dir: the parent folder; ``None`` uses :func:`monai_rat.data.default_cache_dir`.
        tile_size: side of the square tiles: 32, 64 or 128 (dividing the 128-pixel width of the
            validation and test blocks; default 128).
        train_stride: step between training tiles, dividing ``tile_size`` (default ``tile_size // 2``;
            ``tile_size``: no overlap).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, items ``{"image": hq_path, "name": str,
        "source": "real", "anatomy": str (the block), "box": [row0, col0, row1, col1]}`` (``box``: the
        tile's pixels in ``ihc.png``, end exclusive).

    Raises:
        ValueError: when ``tile_size`` or ``train_stride`` is out of range.
    """
    from monai_rat.data.ct_demo import default_cache_dir

    if int(tile_size) != tile_size or int(tile_size) not in (32, 64, 128):
        raise ValueError(
            f"make_pathology_demo: `tile_size` must be 32, 64 or 128 (dividing the 128-pixel validation and test blocks), "
            f"got {tile_size!r}."
        )
    stride = int(tile_size) // 2 if train_stride is None else train_stride
    if int(stride) != stride or not 1 <= int(stride) <= int(tile_size) or int(tile_size) % int(stride):
        raise ValueError(f"make_pathology_demo: `train_stride` must divide tile_size={int(tile_size)}, got {train_stride!r}.")
    settings = {"version": PATHOLOGY_DEMO_VERSION, "tile_size": int(tile_size), "train_stride": int(stride)}
    root = Path(root_dir).expanduser() if root_dir not in (None, "") else default_cache_dir()
    final = root / f"pathology_demo_{hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]}"
    if (final / DATALIST).is_file():
        out = load_demo_datalist(final, path_keys=("image",))
        missing = [it["image"] for split in _SPLITS for it in out[split] if not os.path.isfile(it["image"])]
        if not missing:
            logger.info("Pathology demo data: reusing %s", final)
            return out
        logger.warning("Pathology demo data: %d file(s) of %s are missing (first: %s); rebuilding it.", len(missing), final, missing[0])
        shutil.rmtree(final, ignore_errors=True)
    build_folder_atomically(final, "Pathology demo data", ".pathology_demo_tmp_", lambda tmp: _build(tmp, settings))
    return load_demo_datalist(final, path_keys=("image",))


def _build(folder: Path, s: dict) -> None:
    from PIL import Image
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry()  # (512, 512, 3) uint8
    if ihc.shape[:2] != (512, 512):
        raise ValueError(f"make_pathology_demo: scikit-image's ihc.png should be 512 x 512, got {ihc.shape}.")
    t = s["tile_size"]
    (folder / "images").mkdir()
    datalist: dict = {split: [] for split in _SPLITS}
    for split, (c0, c1) in PATHOLOGY_DEMO_BLOCKS.items():
        step = s["train_stride"] if split == "training" else t
        anatomy = f"scikit-image ihc.png (colon, immunohistochemistry), {split} block: columns {c0}-{c1 - 1}, all rows"
        for y in range(0, ihc.shape[0] - t + 1, step):
            for x in range(c0, c1 - t + 1, step):
                name = f"ihc_{_SHORT[split]}_y{y:03d}_x{x:03d}"
                Image.fromarray(np.ascontiguousarray(ihc[y : y + t, x : x + t])).save(folder / "images" / f"{name}.png")
                datalist[split].append({"image": f"images/{name}.png", "name": name, "source": "real", "anatomy": anatomy,
                                        "box": [y, x, y + t, x + t]})  # fmt: skip
    with open(folder / "README.txt", "w") as f:
        f.write(
            "monai-rat pathology demo tiles (built by monai_rat.data.make_pathology_demo; see its docstring).\n"
            "High-quality RGB tiles of scikit-image's ihc.png; the low-quality input is made on the fly (4x bicubic).\n"
            "Splits by spatial block of ihc.png (columns, all rows): training 0-255 (overlapping tiles), validation\n"
            "256-383, test 384-511. Settings:\n" + json.dumps(s, indent=2) + "\n"
        )
    with open(folder / DATALIST, "w") as f:
        json.dump({**datalist, "settings": s}, f, indent=1)


def _image_size(path: Path, where: str = "pathology_datalist") -> tuple[int, int]:
    from monai_rat.data.loading import read_image_header

    try:
        return read_image_header(path)[:2]  # (H, W)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{where}: {e}") from e


def pathology_image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (extensions :data:`PATHOLOGY_EXTENSIONS`), sorted.

    Args:
        folder: the folder.

    Returns:
        the sorted paths.

    Raises:
        FileNotFoundError: when the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"pathology_datalist: {str(folder)!r} is not a folder; expected {_FOLDER_LAYOUT}.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PATHOLOGY_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"pathology_datalist: no image file in {str(folder)!r}; expected {_FOLDER_LAYOUT}.")
    return files


def pathology_inference_datalist(input_path: str | os.PathLike) -> list[dict]:
    """The pathology bundle's inference inputs: one image file, or the image files directly in a folder.

    Every file's header is read (:func:`monai_rat.data.read_image_header`), so that a file that is not
    a readable image fails here, named, before the model is loaded.

    Args:
        input_path: an image file (any name PIL reads; folders list :data:`PATHOLOGY_EXTENSIONS`) or a
            folder.

    Returns:
        ``[{"image": path}, ...]`` sorted by path.

    Raises:
        ValueError: when ``input_path`` is empty or a file's header cannot be read (it is named).
        FileNotFoundError: when ``input_path`` does not exist, or a folder holds no image file.
    """
    if input_path is None or str(input_path).strip() == "":
        raise ValueError(
            f"No input given: pass --input_path /path/to/image_or_folder (RGB {', '.join(PATHOLOGY_EXTENSIONS)})."
        )
    path = Path(input_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input_path {str(path)!r} does not exist.")
    files = pathology_image_files(path) if path.is_dir() else [path]
    for f in files:
        _image_size(f, where="input_path")
    return [{"image": str(f)} for f in files]


def pathology_datalist(
    dataset_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    min_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 113 / 573,
    **kwargs,
) -> dict:
    """The pathology datalist: demo tiles, a folder of RGB images, or a MONAI datalist JSON.

    - ``dataset_dir`` None or "": :func:`make_pathology_demo` under ``cache_dir`` (``kwargs`` go to it;
      three spatial blocks of ``ihc.png``); logged as a WARNING.
    - a folder with ``train/`` and ``test/`` sub-folders: "training" from ``train/``, "test" = ``test/``,
      "validation" = ``val/`` (or ``validation/``) when there is one, else a seeded random ``val_fraction``
      of ``train/`` (at least one image, and one left for training), so that ``test/`` is never used
      for checkpoint choice. A ``train/`` of a single image and no ``val/`` leaves no image for
      validation: then "validation" = ``test/``, with a WARNING that test scores are not held out.
    - a folder of images: three-way seeded random split: "test" = ``test_fraction`` of the images
      (default 113 / 573, the paper's 460 / 113 train / test split; 0: no test split), "validation" =
      ``val_fraction`` of the rest (default 0.1), "training" the others; at least one image in each.
    - a ``.json``: a MONAI datalist with "training", "validation" and optionally "test" items holding
      "image" (the high-quality image; an item with a "label" raises ``ValueError``: the pair is made
      on the fly).

    Without a test split (a JSON without "test", a flat folder with ``test_fraction=0``), "test" is
    the validation list and a WARNING says that scores on it are not held out from checkpoint choice.

    Every listed file is opened (header only) to check it is a readable image; with ``min_size``,
    images with a side smaller than it (e.g. the training patch size) raise ``ValueError`` naming
    them, instead of failing later inside a random crop (nothing is padded). Voxel data that is
    truncated or corrupt passes the header check; :func:`pathology_load_transforms` names the file
    when it is read (the bundle's ``CacheDataset`` reads every file before training starts).

    Args:
        dataset_dir: None / "" (demo), a folder, or a ``.json``.
        cache_dir: where the demo is built.
        min_size: the smallest allowed image side (``None``: no check).
        val_fraction: validation share of the training images (``train/``, or a flat folder's images
            not in test), in (0, 1).
        seed: seed of the random splits.
        test_fraction: test share of a flat folder's images, in [0, 1).
        kwargs: passed to :func:`make_pathology_demo` (demo only).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image": hq_path, "name": str}``
        (the demo's also carry "source", "anatomy" and "box").

    Raises:
        FileNotFoundError: when ``dataset_dir`` or a listed file does not exist, or a folder has no image.
        ValueError: for an unreadable image, an image smaller than ``min_size``, a malformed JSON or an
            item with a "label", a fraction out of range, a split that leaves a side empty, or ``kwargs``
            given for real data.
    """
    key = (str(dataset_dir), str(cache_dir), repr(min_size), float(val_fraction), int(seed), float(test_fraction),
           tuple(sorted((k, repr(v)) for k, v in kwargs.items())))  # fmt: skip
    if key not in _MEMO:
        _MEMO[key] = _pathology_datalist(dataset_dir, cache_dir, min_size, val_fraction, seed, test_fraction, **kwargs)
    return copy.deepcopy(_MEMO[key])


def _warn_no_test(where: str, why: str) -> None:
    logger.warning(
        "Pathology data: %s: %s, so \"test\" = \"validation\": scores on \"test\" are NOT held out from checkpoint "
        "choice (the best checkpoint is picked on the same images).", where, why,
    )


def _items(files) -> list[dict]:
    return [{"image": str(p), "name": p.stem} for p in files]


def _take(files: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random ``fraction`` of ``files`` (at least one) and the rest, both in the files' order."""
    order = list(files)
    random.Random(seed).shuffle(order)
    chosen = set(order[: max(1, int(round(fraction * len(order))))])
    return [p for p in files if p in chosen], [p for p in files if p not in chosen]


def _pathology_datalist(dataset_dir, cache_dir, min_size, val_fraction, seed, test_fraction, **kwargs) -> dict:
    if dataset_dir is None or str(dataset_dir).strip() == "":
        out = make_pathology_demo(cache_dir, **kwargs)
        logger.warning(
            "No dataset_dir given: using the built-in PATHOLOGY DEMO tiles (%d training / %d validation / %d test tiles "
            "of scikit-image's ihc.png, split into spatial blocks: columns 0-255 / 256-383 / 384-511; see "
            "monai_rat.data.make_pathology_demo). To train on real data pass --dataset_dir with %s.",
            len(out["training"]), len(out["validation"]), len(out["test"]), PATHOLOGY_DATA_HINT,
        )
    else:
        if kwargs:
            raise ValueError(f"pathology_datalist: options {sorted(kwargs)} apply to the demo data only, not {str(dataset_dir)!r}.")
        if not 0 < float(val_fraction) < 1:
            raise ValueError(f"pathology_datalist: `val_fraction` must be in (0, 1), got {val_fraction!r}.")
        if not 0 <= float(test_fraction) < 1:
            raise ValueError(f"pathology_datalist: `test_fraction` must be in [0, 1), got {test_fraction!r}.")
        path = Path(dataset_dir).expanduser()
        if path.suffix.lower() == ".json":
            out = _from_json(path)
        elif (path / "train").is_dir() and (path / "test").is_dir():
            train, test = pathology_image_files(path / "train"), pathology_image_files(path / "test")
            val_dir = next((path / d for d in ("val", "validation") if (path / d).is_dir()), None)
            if val_dir is not None:
                val = pathology_image_files(val_dir)
            elif len(train) >= 2:
                val, train = _take(train, val_fraction, seed)
            else:
                val = test
                _warn_no_test(str(path), f"train/ holds {len(train)} image and there is no val/ folder: validation = test/")
            out = {"training": _items(train), "validation": _items(val), "test": _items(test)}
        else:
            files = pathology_image_files(path)
            test, rest = _take(files, test_fraction, seed) if test_fraction > 0 else ([], files)
            val, train = _take(rest, val_fraction, seed + 1) if rest else ([], [])
            if not train:
                raise ValueError(
                    f"pathology_datalist: {len(files)} image(s) in {str(path)!r} cannot be split into training, validation "
                    f"and test (test_fraction={test_fraction:g}, val_fraction={val_fraction:g}: {len(test)} test, {len(val)} "
                    f"validation, {len(train)} training); add images or use test_fraction=0 (no test split)."
                )
            out = {"training": _items(train), "validation": _items(val), "test": _items(test)}
            if not test:
                _warn_no_test(str(path), "test_fraction=0 (no test split)")
                out["test"] = copy.deepcopy(out["validation"])
        logger.info("Pathology data: %s: %d training / %d validation / %d test images.",
                    path, len(out["training"]), len(out["validation"]), len(out["test"]))
    too_small = []
    for split in _SPLITS:
        for it in out[split]:
            h, w = _image_size(Path(it["image"]))
            if min_size is not None and min(h, w) < int(min_size):
                too_small.append(f"{it['image']} ({h} x {w})")
    too_small = list(dict.fromkeys(too_small))  # "test" may repeat "validation"
    if too_small:
        raise ValueError(
            f"pathology_datalist: {len(too_small)} image(s) (H x W) have a side smaller than min_size={min_size} (the "
            f"training patch_size): {too_small[:5]}{' ...' if len(too_small) > 5 else ''}. No patch of that size can be "
            "cropped from them; use a smaller --patch_size or remove them (nothing is padded)."
        )
    return out


def _from_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"pathology_datalist: datalist {str(path)!r} does not exist; expected {_FOLDER_LAYOUT}.")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"pathology_datalist: {str(path)!r} is not readable JSON ({e}).") from e
    if not isinstance(raw, dict) or not {"training", "validation"} <= set(raw):
        raise ValueError(f"pathology_datalist: {str(path)!r} needs 'training' and 'validation' lists; expected {_FOLDER_LAYOUT}.")
    out = {}
    for split in [s for s in _SPLITS if s in raw]:
        items = []
        for i, it in enumerate(raw[split]):
            if not isinstance(it, dict) or "image" not in it:
                raise ValueError(f"pathology_datalist: {str(path)!r}: item {i} of {split!r} needs an 'image', got {it!r}.")
            if "label" in it:
                raise ValueError(
                    f"pathology_datalist: {str(path)!r}: item {i} of {split!r} pairs image={it['image']!r} with "
                    f"label={it['label']!r}, but a pathology datalist lists only the high-quality image, under "
                    "'image': the low-quality input is made from it on the fly (4x bicubic down, then up to the same "
                    "size), so the pair always matches and a given 'label' would be overwritten. List the high-quality "
                    "file as 'image' and drop 'label' (training on given low/high-quality file pairs is not supported)."
                )
            p = Path(it["image"])
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise FileNotFoundError(f"pathology_datalist: {str(path)!r}: item {i} of {split!r} names {str(p)!r}, which does not exist.")
            items.append({**it, "image": str(p), "name": it.get("name", p.stem)})
        out[split] = items
    if not out["training"] or not out["validation"]:
        raise ValueError(f"pathology_datalist: {str(path)!r} has an empty 'training' or 'validation' list.")
    if "test" not in out or not out["test"]:
        _warn_no_test(f"datalist {str(path)!r}", "it has no (or an empty) 'test' list")
        out["test"] = copy.deepcopy(out["validation"])
    return out


def _check_rgb(img):
    if img.shape[0] != 3:
        name = getattr(img, "meta", {}).get("filename_or_obj", "") if hasattr(img, "meta") else ""
        raise ValueError(f"pathology data: expected an RGB image (3 channels), got {img.shape[0]} channels, shape {tuple(img.shape)} ({name}).")
    return img


def pathology_load_transforms(
    factor: int = 4, keys: tuple[str, str] = ("image", "label"), low_res_key: str | None = None
) -> list:
    """MONAI transforms: read an RGB image, scale to [0, 1], copy to the target key, degrade the input key.

    :class:`monai_rat.data.LoadImageCheckedd` (MONAI's ``LoadImaged(image, ensure_channel_first=True)``,
    naming a file it cannot read) -> ``EnsureTyped(float32)`` -> a check that the
    image has 3 channels (RGB; grey or RGBA files raise ``ValueError`` naming the file) ->
    ``ScaleIntensityRanged(0..255 -> 0..1, clip=False)`` -> ``CopyItemsd(image -> label)`` ->
    :class:`monai_rat.transforms.BicubicDegraded` on "image" (``factor``, no clipping). MONAI's PIL
    reader returns ``(C, W, H)`` (transposed) for PNG; both keys share that order, so the pair stays
    aligned and the saved prediction is transposed back by the same reader convention.

    Args:
        factor: the degradation factor (default 4).
        keys: (input key, target key) (default ("image", "label")).
        low_res_key: also keep the low-resolution image (the degradation's own down-sampling step) under
            this key, e.g. ``"image_lr"`` for the evaluation's Lanczos baseline; ``None`` (default): not kept.

    Returns:
        the list of transforms.

    Raises:
        ValueError: when ``factor`` is invalid; at run time when an image is not RGB or cannot be read
            (the file is named; MONAI's ``Compose`` wraps it in a ``RuntimeError``).
    """
    import torch
    from monai.transforms import CopyItemsd, EnsureTyped, Lambdad, ScaleIntensityRanged

    from monai_rat.data.loading import LoadImageCheckedd
    from monai_rat.transforms.degrade import BicubicDegraded

    src, dst = keys
    return [
        LoadImageCheckedd(src, image_only=True, ensure_channel_first=True),
        EnsureTyped(src, dtype=torch.float32),
        Lambdad(src, _check_rgb),
        ScaleIntensityRanged(src, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=False),
        CopyItemsd(src, names=dst),
        BicubicDegraded(src, factor=factor, low_res_keys=low_res_key),
    ]
