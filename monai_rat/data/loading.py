"""Read image files so that a bad file is named in the error: a header check and MONAI's loader, checked.

MONAI's readers often fail without saying which file they were reading: a truncated ``.nii.gz``
raises ``EOFError: Compressed file ended before the end-of-stream marker was reached`` and a truncated
PNG ``OSError: image file is truncated``, deep inside ``LoadImage``. Here:

- :func:`read_image_header` opens a NIfTI or PIL image file's header only (cheap; no voxel data) and
  returns its shape, or raises naming the file: for checking a datalist before anything is loaded;
- :class:`LoadImageChecked` / :class:`LoadImageCheckedd` are MONAI's ``LoadImage`` / ``LoadImaged``
  whose read errors are re-raised naming the file (truncated or corrupt voxel data passes a header
  check and is only found when the data is read).

The class names start with ``LoadImage`` on purpose: code that recognises a pipeline's loader by
name (``monai_rat.apps.monailabel.bundles``) treats them as MONAI's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.transforms import LoadImage, LoadImaged

__all__ = [
    "LoadImageChecked",
    "LoadImageCheckedd",
    "LoadImageCheckedD",
    "LoadImageCheckedDict",
    "read_image_header",
    "NIFTI_SUFFIXES",
]

#: the NIfTI file name endings :func:`read_image_header` reads with nibabel (others with PIL).
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_image_header(path: str | os.PathLike) -> tuple[int, ...]:
    """Open a NIfTI or PIL image file's header (no voxel data) and return its shape.

    NIfTI (``.nii``, ``.nii.gz``): nibabel's shape, e.g. ``(X, Y, Z)``. Any other file is opened with
    PIL (PNG, TIFF, JPEG, BMP ...): ``(H, W)`` for one band, ``(H, W, C)`` for ``C`` bands (RGB: 3).
    DICOM is not handled here. Only the header is read,
    so a file whose voxel data is truncated passes; :class:`LoadImageChecked` names it when it is read.

    Args:
        path: the file.

    Returns:
        the image shape.

    Raises:
        FileNotFoundError: when the file does not exist (it is named).
        ValueError: when its header cannot be read as NIfTI (by name) or by PIL (the file and the
            reader's reason are named).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{str(p)!r} does not exist{' (it is a folder)' if p.is_dir() else ''}.")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            return tuple(int(s) for s in nib.load(str(p)).shape)
        except Exception as e:  # nibabel raises ImageFileError, EOFError, OSError ... for a corrupt header
            raise ValueError(f"{str(p)!r} is not a readable NIfTI file ({type(e).__name__}: {e}).") from e
    from PIL import Image

    try:
        with Image.open(p) as im:
            bands = len(im.getbands())
            return (im.size[1], im.size[0]) + ((bands,) if bands > 1 else ())
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
        raise ValueError(f"{str(p)!r} is not a readable image ({type(e).__name__}: {e}).") from e


def _read_error(filename: Any, err: Exception) -> Exception:
    names = [str(f) for f in filename] if isinstance(filename, (list, tuple)) else [str(filename)]
    shown = repr(names[0]) if len(names) == 1 else repr(names)
    reason = (str(err).strip().splitlines() or [""])[0]  # MONAI's "no suitable reader" goes on for lines
    if isinstance(err, FileNotFoundError) or not all(os.path.exists(n) for n in names):
        return FileNotFoundError(f"Cannot read {shown}: it does not exist ({type(err).__name__}: {reason}).")
    return ValueError(
        f"Cannot read {shown} ({type(err).__name__}: {reason}): the file is truncated, corrupt, or not an image "
        "MONAI's readers support."
    )


class LoadImageChecked(LoadImage):
    """MONAI's ``LoadImage``; an error while reading a file is re-raised naming the file.

    Args:
        args: as ``monai.transforms.LoadImage``.
        kwargs: as ``monai.transforms.LoadImage``.

    Raises:
        FileNotFoundError: at call time, when the file does not exist (it is named).
        ValueError: at call time, when the file is empty (0 bytes; no reader is tried) or cannot be read
            (it is named, with the reader's error chained as the cause).
    """

    def __call__(self, filename: Sequence[Any] | Any, reader: Any = None):
        """Load ``filename`` as ``LoadImage`` does.

        Args:
            filename: as ``LoadImage``.
            reader: as ``LoadImage``.

        Raises:
            FileNotFoundError: when the file does not exist.
            ValueError: when it cannot be read.
        """
        return _load_naming_file(super().__call__, filename, reader)


def _load_naming_file(load: Any, filename: Any, reader: Any):
    names = [str(f) for f in filename] if isinstance(filename, (list, tuple)) else [str(filename)]
    empty = [n for n in names if os.path.isfile(n) and os.path.getsize(n) == 0]
    if empty:  # every reader would fail on it, some slowly (ITK, then pydicom ...)
        raise ValueError(
            f"Cannot read {empty[0]!r}: the file is empty (0 bytes; an interrupted copy or download?). Replace it, or "
            "leave it out."
        )
    try:
        return load(filename, reader)
    except Exception as e:
        raise _read_error(filename, e) from e


class _CheckedLoader:
    """Wraps ``LoadImaged``'s array loader so that its read errors name the file.

    Attribute reads *and writes* go to the wrapped ``LoadImage``: ``LoadImaged`` reads
    ``self._loader.image_only`` to decide whether the loader returned ``(image, meta)``, and MONAI
    Label's ``BundleInferTask`` sets ``t._loader.image_only = False`` to get the metadata; a write kept
    on the wrapper would leave the loader returning the image alone (``LoadImaged`` then raises).
    """

    def __init__(self, loader: LoadImage) -> None:
        object.__setattr__(self, "loader", loader)

    def __call__(self, filename: Any, reader: Any = None):
        return _load_naming_file(self.loader, filename, reader)

    def __getattr__(self, name: str) -> Any:  # register(), readers ...: the wrapped loader's
        if "loader" not in self.__dict__:  # while unpickling (DataLoader workers)
            raise AttributeError(name)
        return getattr(self.__dict__["loader"], name)

    def __setattr__(self, name: str, value: Any) -> None:  # image_only, readers ...: the wrapped loader's
        if name == "loader":
            object.__setattr__(self, name, value)
        else:
            setattr(self.loader, name, value)


class LoadImageCheckedd(LoadImaged):
    """MONAI's ``LoadImaged``; an error while reading a key's file is re-raised naming the file.

    Args:
        keys: as ``monai.transforms.LoadImaged``.
        args: as ``monai.transforms.LoadImaged``.
        kwargs: as ``monai.transforms.LoadImaged``.

    Raises:
        FileNotFoundError: at call time, when a file does not exist (it is named).
        ValueError: at call time, when a file cannot be read (it is named, with the reader's error
            chained as the cause).
    """

    def __init__(self, keys: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(keys, *args, **kwargs)
        self._loader = _CheckedLoader(self._loader)


LoadImageCheckedD = LoadImageCheckedDict = LoadImageCheckedd
