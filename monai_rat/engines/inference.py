"""Inputs for the bundles' inference: list NIfTI / PNG / DICOM files and apply a transform to some kinds only."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from monai.transforms import MapTransform

__all__ = ["ApplyToKindsd", "CopyMetad", "file_kind", "inference_datalist"]

_NIFTI = (".nii", ".nii.gz")
_PNG = (".png",)
_DICOM = (".dcm", ".ima", ".dicom")


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def file_kind(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"png"`` or ``"dicom"`` for a file the bundles can restore, else ``None``.

    DICOM is recognised by suffix (``.dcm``, ``.IMA``, ``.dicom``) or, without one, by the ``DICM``
    preamble marker.

    Args:
        path: the file.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(_NIFTI):
        return "nifti"
    if name.endswith(_PNG):
        return "png"
    if name.endswith(_DICOM) or ("." not in name and _is_dicom_file(p)):
        return "dicom"
    return None


_KIND_NAMES = {"nifti": "NIfTI (.nii, .nii.gz)", "png": "PNG (.png)", "dicom": "DICOM (.dcm, .IMA)"}


def _kinds_text(kinds: Sequence[str]) -> str:
    return " or ".join(_KIND_NAMES[k] for k in kinds)


def inference_datalist(
    input_path: str | os.PathLike,
    recursive: bool = True,
    kinds: Sequence[str] = ("nifti", "png", "dicom"),
    check_headers: bool = False,
) -> list[dict]:
    """List the images to restore: ``[{"image": path, "kind": "nifti" | "png" | "dicom"}, ...]``.

    ``input_path`` may be one file, or a folder (searched recursively by default) holding NIfTI, PNG
    and DICOM files, e.g. DICOM series folders (each slice is restored and written back as a slice of
    a new series). Other files in a folder, and files of a kind not in ``kinds``, are ignored and
    counted in the error when nothing is found. With ``check_headers``, the header of every listed
    NIfTI and PNG file is read (:func:`monai_rat.data.read_image_header`), so that a file that is not a
    readable image fails here, named, before the model is loaded; DICOM files are left to the reader.

    Args:
        input_path: a file or folder.
        recursive: search sub-folders.
        kinds: the kinds the bundle restores (default all three; the PET bundle: ``["nifti"]``).
        check_headers: read each NIfTI / PNG file's header (cheap, no voxel data); default False.

    Raises:
        ValueError: when ``input_path`` is empty, a folder holds no file of ``kinds``, two inputs in one
            folder share a name stem (``a.png`` and ``a.nii.gz``: their outputs would collide), with
            ``check_headers`` a NIfTI or PNG file's header cannot be read (it is named), or ``kinds``
            holds an unknown kind.
        FileNotFoundError: when ``input_path`` does not exist.
        TypeError: when a single file is not of ``kinds``.
    """
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = sorted(set(kinds) - set(_KIND_NAMES))
    if unknown or not kinds:
        raise ValueError(f"inference_datalist: `kinds` must be some of {sorted(_KIND_NAMES)}, got {kinds!r}.")
    if input_path is None or str(input_path).strip() == "":
        raise ValueError(
            f"No input given: pass --input_path /path/to/image_or_folder ({_kinds_text(kinds)} files"
            f"{', e.g. a DICOM series folder' if 'dicom' in kinds else ''})."
        )
    p = Path(input_path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"input_path {str(p)!r} does not exist.")
    if p.is_file():
        kind = file_kind(p)
        if kind not in kinds:
            raise TypeError(f"input_path {str(p)!r} is not a {_kinds_text(kinds)} file.")
        if check_headers:
            _check_header(p, kind)
        return [{"image": str(p), "kind": kind}]
    files = sorted(f for f in (p.rglob("*") if recursive else p.glob("*")) if f.is_file())
    items = [{"image": str(f), "kind": k} for f in files if (k := file_kind(f)) in kinds]
    outputs: dict[tuple[str, str], str] = {}
    for it in items:
        f = Path(it["image"])
        stem = f.name[: -len(".nii.gz")] if f.name.lower().endswith(".nii.gz") else f.stem
        key = (str(f.parent), stem)
        if key in outputs:
            raise ValueError(
                f"{outputs[key]!r} and {str(f)!r} would both be written as {stem}_rat.nii.gz; rename one of them or "
                "restore them separately."
            )
        outputs[key] = str(f)
    if not items:
        raise ValueError(
            f"input_path {str(p)!r} holds no {_kinds_text(kinds)} file "
            f"({len(files)} other files{' searched recursively' if recursive else ''})."
        )
    for it in items if check_headers else ():
        _check_header(Path(it["image"]), it["kind"])
    return items


def _check_header(path: Path, kind: str) -> None:
    from monai_rat.data.loading import read_image_header

    if kind in ("nifti", "png"):
        try:
            read_image_header(path)
        except ValueError as e:
            raise ValueError(f"input_path: {e}") from e


class ApplyToKindsd(MapTransform):
    """Apply ``transform`` to a data dictionary only when the item is of one of ``kinds``.

    Used by the inference config to convert PNG intensities to HU and to write DICOM output only for
    DICOM inputs; other items pass through unchanged. The kind is ``data[kind_key]`` (set by
    :func:`inference_datalist`) or, when absent (e.g. MONAI Label's data dictionaries), found from the
    file name of ``data[source_key]`` (a path, or a MetaTensor's ``filename_or_obj``) by :func:`file_kind`.

    Args:
        transform: a callable on the data dictionary (e.g. a MONAI dictionary transform).
        kinds: the kinds it applies to, e.g. ``["dicom"]``.
        kind_key: the dictionary key holding the kind.
        source_key: the key whose file name tells the kind when ``kind_key`` is absent.

    Raises:
        TypeError: when ``transform`` is not callable.
        KeyError: at call time, when neither ``kind_key`` nor a file name under ``source_key`` is found.
    """

    def __init__(
        self, transform: Callable, kinds: Sequence[str], kind_key: str = "kind", source_key: str = "image"
    ) -> None:
        super().__init__(keys=[kind_key], allow_missing_keys=True)
        if not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}.")
        self.transform = transform
        self.kinds = {str(kinds)} if isinstance(kinds, str) else {str(k) for k in kinds}
        self.kind_key = kind_key
        self.source_key = source_key

    def kind_of(self, data: Mapping[Hashable, Any]) -> str | None:
        """The item's kind: ``data[kind_key]``, else from the source file's name.

        Args:
            data: the dictionary.

        Raises:
            KeyError: when neither is available.
        """
        if self.kind_key in data:
            kind = data[self.kind_key]
            if isinstance(kind, (list, tuple)):  # a collated batch of one
                kind = kind[0] if len(kind) == 1 else None
            return kind
        src = data.get(self.source_key)
        name = src if isinstance(src, (str, os.PathLike)) else (getattr(src, "meta", None) or {}).get("filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = name[0] if len(name) == 1 else None
        if not name:
            raise KeyError(
                f"ApplyToKindsd: no {self.kind_key!r} entry and no file name under {self.source_key!r} "
                f"(keys: {list(data)})."
            )
        return file_kind(name)

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        """Apply the transform when the item's kind matches.

        Args:
            data: the dictionary.

        Raises:
            KeyError: see :py:meth:`kind_of`.
        """
        return self.transform(data) if self.kind_of(data) in self.kinds else data


class CopyMetad(MapTransform):
    """Give ``data[key]`` the metadata (affine, file name) of ``data[source_key]``.

    The networks keep a ``MetaTensor`` input's metadata on their output, but a prediction that went
    through plain-tensor steps (post-processing, a custom inferer) may not; writers such as ``SaveImaged``
    need the input's affine and file name to place and name the output, and the spatial shape of what is written.

    Args:
        keys: keys of the tensors to receive the metadata (e.g. "pred").
        source_key: key of the MetaTensor to copy from (e.g. "image").
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        KeyError: at call time, when ``source_key`` is missing.
        TypeError: at call time, when ``data[source_key]`` carries no metadata.
    """

    def __init__(self, keys: Any, source_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        """Wrap each key as a MetaTensor with a copy of the source's metadata.

        Args:
            data: the dictionary.

        Raises:
            KeyError: when ``source_key`` is missing.
            TypeError: when the source has no metadata.
        """
        import copy

        from monai.data import MetaTensor

        d = dict(data)
        if self.source_key not in d:
            raise KeyError(f"CopyMetad: no {self.source_key!r} in the data (keys: {list(d)}).")
        meta = getattr(d[self.source_key], "meta", None)
        if meta is None:
            found = type(d[self.source_key]).__name__
            raise TypeError(f"CopyMetad: data[{self.source_key!r}] ({found}) has no metadata.")
        for key in self.key_iterator(d):
            t = d[key].as_tensor() if hasattr(d[key], "as_tensor") else d[key]
            m = copy.deepcopy(dict(meta))
            m["spatial_shape"] = tuple(t.shape[1:])  # e.g. ITKReader's (X, Y, 1) for one DICOM slice
            m["original_channel_dim"] = "no_channel"  # one grey channel: written without a channel axis
            d[key] = MetaTensor(t, meta=m)
        return d
