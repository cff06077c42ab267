"""Small helpers: checking region maps and numbering regions (network, loss), writing files atomically, reading on/off flags."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import torch

__all__ = ["as_flag", "as_region_labels", "atomic_write", "region_groups"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success, flush it to disk and rename it over ``path``.

    A process killed at any moment leaves either the previous ``path`` or the complete new one, never a
    partial file (``os.replace`` is atomic within one file system). When the ``with`` block raises, the
    temporary file is removed and ``path`` is left as it was. The parent folder is created. Use it for
    every file a bundle writes (metric logs, summaries, CSV and JSON files, images)::

        with atomic_write(os.path.join(out, "summary.json")) as f:
            json.dump(summary, f)

    For writers that want a file name rather than a file object (``PIL.Image.save``, ``nibabel.save``),
    the temporary file's name is ``f.name``; it keeps ``path``'s suffix (e.g. ``.png``, ``.nii.gz``),
    so writers that choose the format from the suffix work::

        with atomic_write(png_path, "wb") as f:
            image.save(f.name)

    Args:
        path: the destination file.
        mode: a write mode of ``open`` (``"w"``, ``"wb"``; default ``"w"``, text).
        open_kwargs: more ``open`` arguments (``newline=""`` for ``csv``, ``encoding``).

    Raises:
        ValueError: when ``mode`` is not a write mode (``"w"`` or ``"x"``, optionally ``"b"`` / ``"t"``).
        OSError: when the folder cannot be created or written.
    """
    if not mode or mode[0] not in "wx" or "+" in mode or "a" in mode:
        raise ValueError(f"atomic_write: `mode` must be a write mode such as 'w' or 'wb', got {mode!r}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    suffix = "".join(s for s in (".nii.gz",) if name.lower().endswith(s)) or os.path.splitext(name)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)  # reopened by name, so that ``f.name`` is the temporary file's path
    try:
        with open(tmp, mode.replace("x", "w"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "null", "")


def as_flag(value, name: str = "flag") -> bool:
    """A bundle on/off setting as a bool: ``True``/``False``, and also the strings ``"true"``/``"false"``.

    ``python -m monai.bundle run ... --amp false`` passes the *string* ``"false"`` (Python's ``fire`` only
    turns ``False`` into a bool), which is truthy; the bundles read their flags through this so that
    both spellings work.

    Args:
        value: a bool, an int 0/1, ``None`` (False) or one of the strings true/false, yes/no, on/off, 1/0
            (any case).
        name: the setting's name, for the error message.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"--{name} must be true or false, got {value!r}.")


def as_region_labels(regions, batch: int, spatial: tuple[int, ...], name: str = "regions") -> torch.Tensor:
    """Check a region map and return it as int64 labels of shape ``(B, *spatial)``.

    A region map holds one integer label per pixel; any values are allowed (not necessarily
    contiguous) and each image may have its own number of regions.

    Args:
        regions: tensor (or array) of shape ``(B, 1, *spatial)`` or ``(B, *spatial)``, integer dtype or
            float with integral values.
        batch: the expected batch size (the image's).
        spatial: the expected spatial shape (the image's).
        name: the argument name used in error messages.

    Raises:
        TypeError: when ``regions`` is not a tensor or array.
        ValueError: when the shape, the batch size or the values (non-integral, NaN, inf) are wrong.
    """
    if not isinstance(regions, torch.Tensor):
        try:
            regions = torch.as_tensor(regions)
        except Exception as e:  # noqa: BLE001 - re-raised with the argument name
            raise TypeError(f"`{name}` must be a tensor of integer region labels, got {type(regions).__name__}.") from e
    if hasattr(regions, "as_tensor"):  # MONAI MetaTensor: metadata is not needed here
        regions = regions.as_tensor()
    got = tuple(regions.shape)
    expected = f"({batch}, 1, {', '.join(map(str, spatial))}) or ({batch}, {', '.join(map(str, spatial))})"
    if regions.ndim == len(spatial) + 2:
        if regions.shape[1] != 1:
            raise ValueError(f"`{name}` must have one channel: expected shape {expected}, got {got}.")
        regions = regions[:, 0]
    if regions.ndim != len(spatial) + 1 or tuple(regions.shape[1:]) != tuple(spatial):
        raise ValueError(f"`{name}` must match the image: expected shape {expected}, got {got}.")
    if regions.shape[0] != batch:
        raise ValueError(
            f"`{name}` batch size {regions.shape[0]} does not match the image batch size {batch}: "
            f"expected shape {expected}, got {got}."
        )
    if regions.dtype == torch.bool:
        regions = regions.long()
    elif regions.is_floating_point():
        if not torch.isfinite(regions).all():
            raise ValueError(f"`{name}` contains NaN or inf; region labels must be finite integers.")
        if not torch.equal(regions, torch.round(regions)):
            bad = regions[regions != torch.round(regions)].flatten()[0].item()
            raise ValueError(f"`{name}` must hold integral labels; found the non-integral value {bad}.")
        regions = regions.long()
    elif regions.is_complex():
        raise ValueError(f"`{name}` must hold integer labels, got dtype {regions.dtype}.")
    else:
        regions = regions.long()
    return regions


def region_groups(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Number the (image, region) pairs of a batch of label maps.

    Args:
        labels: integer tensor ``(B, ...)``; labels are compared only within an image.

    Returns:
        ``group`` (B, M) int64 with values ``0..G-1``, one per distinct (image, label) pair, numbered in
        image order then label order; ``group_batch`` (G,) the image each group belongs to; ``G``.
    """
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    _, dense = torch.unique(flat, return_inverse=True)  # 0..U-1, shared across the batch
    num_labels = int(dense.max().item()) + 1 if dense.numel() else 1
    key = dense + torch.arange(batch, device=labels.device).unsqueeze(1) * num_labels
    uniq, group = torch.unique(key, return_inverse=True)
    return group, torch.div(uniq, num_labels, rounding_mode="floor"), int(uniq.numel())
