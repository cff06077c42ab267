"""Check every pair of a datalist before training: readable, same grid, finite, large enough, right channels.

A random crop cuts an image and its label at the same place whatever their sizes, a NaN in a label
turns the loss into NaN at every iteration, and a slice smaller than the patch is cropped to its own
size: MONAI trains on all of these without a word. :func:`check_pairs` reads every listed file once
(MONAI's loader, the same one training uses: :class:`monai_rat.data.LoadImageChecked`) and checks,
for each item:

- every file is readable (header *and* voxel data; a truncated file is named);
- all keys have the same spatial shape (a trailing singleton axis, e.g. ITK's one-slice DICOM
  ``(W, H, 1)``, is ignored) and, where the format has a geometry (NIfTI, DICOM, MetaImage, NRRD;
  not PNG / JPEG / TIFF / BMP), the same grid: voxel axes and spacing within 0.1 %, origins within
  ``0.1`` voxel;
- every value of every key is finite (no NaN, no inf);
- optionally: ``channels`` channels, ``spatial_dims`` spatial dimensions, and a plane of at least
  ``min_size`` (the training patch).

A bad item is a ``ValueError`` naming its files and what is wrong, before anything trains; with
``skip_bad=True`` bad items are dropped instead, each logged (WARNING, logger
``monai_rat.data.pair_check``) with its files and reason, and counted. :func:`pair_problems` is the
same check on already loaded data (``monai_rat.data.PETSliceDataset`` uses it on the volumes it
loads anyway).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["check_inputs", "check_pairs", "pair_problems", "NO_GEOMETRY_SUFFIXES"]

logger = logging.getLogger(__name__)

#: file name endings whose format stores no position or spacing (their affine is MONAI's default).
NO_GEOMETRY_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def _filename(x: Any, fallback: Any = "") -> str:
    meta = getattr(x, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(name or fallback)


def _plane(shape: Sequence[int]) -> tuple[int, ...]:
    """A spatial shape without its trailing singleton axes (at least one axis is kept)."""
    s = [int(n) for n in shape]
    while len(s) > 1 and s[-1] == 1:
        s.pop()
    return tuple(s)


def _has_geometry(name: str) -> bool:
    return bool(name) and not name.lower().endswith(NO_GEOMETRY_SUFFIXES)


def _geometry_mismatch(a: Any, b: Any, tolerance: float) -> str | None:
    """How the grids of two MetaTensors differ (``None`` when they agree or cannot be compared).

    Every axis of the affines is compared, a singleton one too (e.g. the slice position of a DICOM
    slice, which is what pairs a low-dose slice with its full-dose one).
    """
    fa, fb = getattr(a, "affine", None), getattr(b, "affine", None)
    if fa is None or fb is None:
        return None
    fa, fb = np.asarray(fa, dtype=np.float64), np.asarray(fb, dtype=np.float64)
    if fa.shape != fb.shape or fa.ndim != 2 or fa.shape[0] < 2:
        return None
    r = fa.shape[0] - 1
    axes_a, axes_b = fa[:r, :r], fb[:r, :r]
    spacing = np.linalg.norm(axes_a, axis=0)
    if not np.allclose(axes_a, axes_b, rtol=1e-3, atol=1e-3 * max(float(spacing.max()), 1e-6)):
        sa, sb = np.linalg.norm(axes_a, axis=0), np.linalg.norm(axes_b, axis=0)
        if not np.allclose(sa, sb, rtol=1e-3):
            return f"different voxel spacing {_fmt(sa)} vs {_fmt(sb)}"
        return f"different voxel axis directions (affine rows {_fmt(axes_a.ravel())} vs {_fmt(axes_b.ravel())})"
    shift = fa[:r, -1] - fb[:r, -1]
    limit = tolerance * max(float(spacing.min()), 1e-6)
    if float(np.abs(shift).max()) > limit:
        return f"origins {_fmt(fa[:r, -1])} vs {_fmt(fb[:r, -1])} differ by {_fmt(shift)} (more than {tolerance:g} voxel)"
    return None


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def pair_problems(
    data: Mapping[str, Any],
    keys: Sequence[str] = ("image", "label"),
    min_size: Sequence[int] | int | None = None,
    channels: int | None = None,
    spatial_dims: int | None = None,
    geometry_tolerance: float = 0.1,
) -> list[str]:
    """What is wrong with one loaded item (channel-first arrays / MetaTensors under ``keys``).

    Args:
        data: the loaded item, e.g. the output of ``LoadImaged(keys, ensure_channel_first=True)``.
        keys: the keys to check together (the first is the reference for shapes and geometry).
        min_size: the smallest allowed plane (e.g. the training ``patch_size``; one int for all axes);
            compared with the first ``len(min_size)`` axes of the spatial shape without its trailing
            singleton axes. ``None``: no check.
        channels: the expected number of channels of every key (``None``: no check).
        spatial_dims: the expected number of spatial axes, trailing singleton axes not counted
            (``None``: no check).
        geometry_tolerance: the largest origin difference accepted, in voxels (default 0.1).

    Returns:
        one sentence per problem, each naming its file(s) (empty: the item is fine).

    Raises:
        KeyError: when a key is missing from ``data``.
    """
    import torch

    problems: list[str] = []
    ref_key = keys[0]
    ref = data[ref_key]
    names = {k: _filename(data[k], k) for k in keys}
    planes = {k: _plane(tuple(data[k].shape)[1:]) for k in keys}
    for k in keys:
        x = data[k]
        shape = tuple(int(n) for n in x.shape)
        if channels is not None and shape[0] != int(channels):
            problems.append(
                f"{names[k]!r} ({k}) has {shape[0]} channel(s) (spatial shape {shape[1:]}), expected {int(channels)}"
                f"{' (a grey-scale image)' if int(channels) == 1 else ' (RGB)' if int(channels) == 3 else ''}"
            )
        if spatial_dims is not None and len(planes[k]) != int(spatial_dims):
            problems.append(
                f"{names[k]!r} ({k}) has spatial shape {tuple(shape[1:])}, expected {int(spatial_dims)}D"
                f"{' (one slice)' if int(spatial_dims) == 2 else ''}"
            )
        t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
        if t.is_floating_point() or t.is_complex():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                nan = int(torch.isnan(t).sum())
                problems.append(
                    f"{names[k]!r} ({k}) holds {nan} NaN and {int((~finite).sum()) - nan} infinite value(s) of "
                    f"{t.numel()}; every value must be finite"
                )
    for k in keys[1:]:
        if planes[k] != planes[ref_key]:
            problems.append(
                f"{ref_key} {names[ref_key]!r} has spatial shape {planes[ref_key]} but {k} {names[k]!r} has "
                f"{planes[k]}; a pair must be on the same grid (nothing is resized or cropped to match)"
            )
        elif _has_geometry(names[ref_key]) and _has_geometry(names[k]):
            why = _geometry_mismatch(ref, data[k], geometry_tolerance)
            if why:
                problems.append(f"{ref_key} {names[ref_key]!r} and {k} {names[k]!r} are not on the same grid: {why}")
    if min_size is not None:
        want = [int(min_size)] * len(planes[ref_key]) if isinstance(min_size, (int, np.integer)) else [int(m) for m in min_size]
        have = planes[ref_key][: len(want)]
        if len(have) < len(want) or any(n < m for n, m in zip(have, want)):
            problems.append(
                f"{names[ref_key]!r} is {' x '.join(map(str, planes[ref_key]))}, smaller than the training patch "
                f"{' x '.join(map(str, want))} (patch_size): no patch of that size can be cropped from it (nothing is "
                "padded); use a smaller --patch_size or leave this pair out"
            )
    return problems


def _describe(index: int, item: Mapping, keys: Sequence[str]) -> str:
    files = " / ".join(repr(str(item[k])) for k in keys if k in item)
    name = f" ({item['name']})" if isinstance(item.get("name"), str) and item["name"] not in files else ""
    return f"item {index}{name}: {files}"


def _check_all(
    items: list[dict], keys: Sequence[str], min_size: Any, channels: int | None, spatial_dims: int | None,
    what: str, num_workers: int, progress: bool | None, geometry_tolerance: float,
) -> list[list[str]]:
    """The problems of every item (reading its files), in order, with a progress bar after two seconds."""
    from tqdm import tqdm

    from monai_rat.data.loading import LoadImageChecked

    loader = LoadImageChecked(image_only=True, ensure_channel_first=True)

    def check(item: dict) -> list[str]:
        present = [k for k in keys if k in item]
        if not present:
            return [f"has none of the keys {list(keys)}"]
        loaded = {}
        for k in present:
            try:
                loaded[k] = loader(item[k])
            except (ValueError, OSError) as e:  # LoadImageChecked's: they name the file
                return [(str(e).strip().splitlines() or [f"{type(e).__name__} reading {item[k]!r}"])[0].rstrip(".")]
        return pair_problems(loaded, present, min_size, channels, spatial_dims, geometry_tolerance)

    bar = tqdm(
        total=len(items), desc=f"checking {what}", unit="item", file=sys.stderr,
        disable=progress is False or not items, delay=0 if progress else 2,
    )  # fmt: skip
    results: list[list[str]] = []
    try:
        if int(num_workers) > 1 and len(items) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(int(num_workers)) as pool:
                for r in pool.map(check, items):
                    results.append(r)
                    bar.update(1)
        else:
            for item in items:
                results.append(check(item))
                bar.update(1)
    finally:
        bar.close()
    return results


def _size_text(min_size: Any) -> str:
    return " x ".join(map(str, [min_size] if isinstance(min_size, (int, np.integer)) else min_size))


def check_pairs(
    items: Sequence[Mapping],
    keys: Sequence[str] = ("image", "label"),
    min_size: Sequence[int] | int | None = None,
    channels: int | None = None,
    spatial_dims: int | None = None,
    skip_bad: bool = False,
    what: str = "training",
    num_workers: int = 0,
    progress: bool | None = None,
    geometry_tolerance: float = 0.1,
) -> list[dict]:
    """Read every item's files and check them (see the module docstring); return the items to use.

    Reading the voxel data is the cost: about 7 ms per pair of small NIfTI slices here, more for
    512 x 512 DICOM files. A progress bar (tqdm, on stderr) appears when the check takes more than two
    seconds. The bundles call it on their "training" and "validation" lists (and the evaluation's
    "test" list) before the trainer is built.

    Args:
        items: datalist items, ``{"image": path, "label": path, ...}``.
        keys: the keys holding the files to check together (default "image" and "label"); keys an
            item lacks are not checked.
        min_size: see :func:`pair_problems` (the training ``patch_size``; ``None`` for validation).
        channels: see :func:`pair_problems`.
        spatial_dims: see :func:`pair_problems`.
        skip_bad: drop bad items (each logged with its files and reason, and counted) instead of raising.
        what: what the items are, for the messages (e.g. "training", "validation", "test").
        num_workers: threads reading files (0 or 1: in this thread).
        progress: ``False`` hides the progress bar, ``True`` shows it at once; ``None`` (default):
            shown after two seconds.
        geometry_tolerance: see :func:`pair_problems`.

    Returns:
        the good items (all of them unless ``skip_bad``), as new dicts, in order.

    Raises:
        ValueError: when an item is bad (without ``skip_bad``; every bad item is listed, each with its
            files and reason), or when no item is left.
    """
    items = [dict(it) for it in items]
    t0 = time.perf_counter()
    results = _check_all(items, keys, min_size, channels, spatial_dims, f"{what} pairs", num_workers, progress,
                         geometry_tolerance)  # fmt: skip
    bad = [(i, p) for i, p in enumerate(results) if p]
    checks = ["readable", "same shape and grid", "finite values"]
    if channels is not None:
        checks.append(f"{channels} channel(s)")
    if min_size is not None:
        checks.append(f"at least {_size_text(min_size)}")
    if bad and not skip_bad:
        lines = [f"{_describe(i, items[i], keys)}: {'; '.join(p)}" for i, p in bad]
        if len(bad) == 1:
            raise ValueError(
                f"Bad {what} pair, found before training started: {lines[0]}. Fix or remove it, or pass "
                "--skip_bad_pairs true to leave bad pairs out."
            )
        raise ValueError(
            f"{len(bad)} of {len(items)} {what} pairs are bad, found before training started (fix or remove them, or "
            "pass --skip_bad_pairs true to leave bad pairs out):\n  " + "\n  ".join(lines)
        )
    for i, p in bad:
        logger.warning("Skipping bad %s pair %s: %s.", what, _describe(i, items[i], keys), "; ".join(p))
    good = [it for it, p in zip(items, results) if not p]
    if not good:
        raise ValueError(f"No {what} pair is left: all {len(items)} are bad (each is logged above).")
    logger.info(
        "Checked %d %s pairs in %.1f s (%s)%s.", len(items), what, time.perf_counter() - t0, ", ".join(checks),
        f"; skipped {len(bad)} bad pair(s) (skip_bad_pairs)" if bad else ": all good",
    )
    return good


def check_inputs(
    items: Sequence[Mapping],
    key: str = "image",
    channels: int | None = None,
    spatial_dims: int | None = None,
    num_workers: int = 0,
    progress: bool | None = None,
) -> list[dict]:
    """Read every inference input and check it before anything is restored or written.

    Each file must be readable (voxel data too), hold finite values only, and (optionally) have
    ``channels`` channels and ``spatial_dims`` spatial axes. A folder with one bad file fails as a
    whole, with every bad file listed, and no output is written: the bundles' folder inference
    either restores every file or none (remove or fix the bad ones and run again).

    Args:
        items: ``[{key: path, ...}, ...]`` (e.g. from :func:`monai_rat.engines.inference_datalist`).
        key: the key holding the file.
        channels: the expected number of channels (CT: 1; pathology: 3 (RGB)); ``None``: no check.
        spatial_dims: the expected spatial axes, a trailing singleton not counted (CT and pathology:
            2; PET: 3); ``None``: no check.
        num_workers: threads reading files (0 or 1: in this thread).
        progress: as :func:`check_pairs`.

    Returns:
        the items, as new dicts.

    Raises:
        ValueError: when a file is bad (each bad file named with its reason).
    """
    items = [dict(it) for it in items]
    results = _check_all(items, [key], None, channels, spatial_dims, "inputs", num_workers, progress, 0.1)
    bad = [(items[i][key], p) for i, p in enumerate(results) if p]
    if len(bad) == 1:
        raise ValueError(
            f"input_path: bad input {str(bad[0][0])!r}: {'; '.join(bad[0][1])}. Nothing was restored or written; fix "
            "or remove it and run again."
        )
    if bad:
        raise ValueError(
            f"input_path: {len(bad)} of {len(items)} inputs are bad; nothing was restored or written (fix or remove "
            "them and run again):\n  " + "\n  ".join(f"{str(f)!r}: {'; '.join(p)}" for f, p in bad)
        )
    return items
