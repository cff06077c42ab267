"""Restore an image file, or make its region map, with a bundle's own transforms, slice by slice.

RAT is a 2D network. A viewer sends whatever it shows: a 2D slice (``(H, W)`` NIfTI, PNG, one DICOM
file) or a whole volume (``(H, W, D)`` NIfTI). Each 2D slice along the last axis goes through the
bundle's ``preprocessing`` (after loading: e.g. HU window to [0, 1] and the cached region map),
the network with its region map, and the bundle's ``postprocessing`` (back to HU); the slices are
stacked back, so the result has the input's shape and geometry.

Only MONAI is needed here (no ``monailabel``).
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundles import RATBundle

__all__ = ["InputError", "SlicePipeline", "load_input", "write_result", "input_kind"]

_KINDS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".dcm": "dicom",
    ".ima": "dicom",
    ".dicom": "dicom",
    ".nrrd": "nrrd",
    ".mha": "nrrd",
}
_EXPECTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .mha), PNG (.png), TIFF (.tif, .tiff) or DICOM (.dcm, .IMA)"


class InputError(ValueError):
    """The request's image cannot be used (unreadable, unsupported type or shape); the message says why.

    Args:
        message: the explanation.
        status: the HTTP status the app answers with (400 bad content, 415 unsupported type).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def input_kind(path: str | os.PathLike) -> str:
    """``"nifti"``, ``"nrrd"``, ``"png"``, ``"tiff"`` or ``"dicom"`` from the file name (a folder is a DICOM series).

    Args:
        path: the image file (or DICOM folder).

    Raises:
        InputError: (status 415) when the suffix is none of the supported ones.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    for suffix in sorted(_KINDS, key=len, reverse=True):
        if name.endswith(suffix):
            return _KINDS[suffix]
    from monai_rat.engines import file_kind  # DICOM without a suffix (by its DICM marker)

    if file_kind(p) == "dicom":
        return "dicom"
    raise InputError(f"Unsupported image type {''.join(p.suffixes) or '(no suffix)'!r} for {p.name!r}: send {_EXPECTED}.", 415)


def load_input(path: str | os.PathLike) -> tuple[Any, str]:
    """Read an image as a channel-first ``MetaTensor`` ``(C, H, W)`` or ``(C, H, W, D)`` and its kind.

    Args:
        path: the image file or DICOM folder.

    Raises:
        InputError: when the type is unsupported (415) or the file cannot be read as its type, or has a
            shape RAT cannot restore (400); the message names the file and the reader's complaint.
    """
    from monai.transforms import LoadImage

    kind = input_kind(path)
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as e:  # noqa: BLE001 - every reader failure means the same to the client
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(f"Cannot read the uploaded image {Path(path).name!r} as {kind.upper()}: {first}") from e
    if img.ndim not in (3, 4) or min(img.shape[1:]) < 1:
        raise InputError(
            f"The image {Path(path).name!r} has shape {tuple(img.shape[1:])} (channels {img.shape[0]}); expected a 2D slice "
            "(H, W) or a volume (H, W, D) of 2D slices."
        )
    if not torch.isfinite(img.as_tensor().float()).all():
        raise InputError(f"The image {Path(path).name!r} holds NaN or infinite values.")
    return img, kind


class SlicePipeline:
    """Run a bundle's preprocessing, network and postprocessing on every 2D slice of an image.

    The transforms and (lazily, on first use) the network are built once and shared by all requests;
    the network is built under a lock, so concurrent first requests load it once.

    Args:
        bundle: the bundle.
        device: torch device for the network.

    Raises:
        ValueError: as :class:`~monai_rat.apps.monailabel.bundles.RATBundle` for a broken config.
    """

    def __init__(self, bundle: RATBundle, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.pre = bundle.preprocessing()
        self.post = bundle.postprocessing()
        self.inferer = bundle.app_inferer()
        self._network = None
        self._network_mtime: float | None = None
        self._lock = threading.Lock()

    def network(self) -> Any:
        """The loaded network (reloaded when the checkpoint file changes).

        Raises:
            CheckpointError: when the checkpoint is missing or does not fit.
        """
        with self._lock:
            path = self.bundle.ckpt_path
            mtime = path.stat().st_mtime if path.is_file() else None
            if self._network is None or mtime != self._network_mtime:
                self._network = self.bundle.load_network(self.device)
                self._network_mtime = mtime
            return self._network

    def _slices(self, img: Any) -> list[Any]:
        from monai.data import MetaTensor

        t = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
        meta = dict(getattr(img, "meta", {}))
        if t.ndim == 3:
            return [MetaTensor(t.float(), meta=copy.deepcopy(meta))]
        return [MetaTensor(t[..., k].float(), meta=copy.deepcopy(meta)) for k in range(t.shape[-1])]

    def _stack(self, img: Any, parts: list[torch.Tensor], dtype: torch.dtype) -> Any:
        from monai.data import MetaTensor

        out = parts[0] if img.ndim == 3 else torch.stack(parts, dim=-1)
        return MetaTensor(out.to(dtype), meta=copy.deepcopy(dict(img.meta)))

    def _preprocess(self, sl: Any, kind: str, name: str) -> dict:
        d: dict = {"image": sl, "kind": kind}
        for t in self.pre:
            try:
                d = t(d)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise InputError(f"Model {self.bundle.name!r}: {type(t).__name__} rejected the image {name!r}: {e}") from e
        if self.bundle.regions_key not in d:
            raise RuntimeError(
                f"Bundle {self.bundle.name!r}: its preprocessing made no {self.bundle.regions_key!r} entry (a region map); "
                "add monai_rat.transforms.RegionPartitiond to configs/inference.json."
            )
        return d

    def regions(self, img: Any, kind: str, name: str = "image") -> Any:
        """The region map of every slice, stacked: ``(1, H, W[, D])`` int32, labels 1..L per slice.

        Args:
            img: channel-first image from :func:`load_input`.
            kind: its kind.
            name: its name, for messages.

        Raises:
            InputError: when the bundle's preprocessing rejects a slice.
        """
        parts = []
        for sl in self._slices(img):
            r = self._preprocess(sl, kind, name)[self.bundle.regions_key]
            parts.append(torch.as_tensor(r.as_tensor() if hasattr(r, "as_tensor") else r).reshape(1, *sl.shape[1:]))
        return self._stack(img, parts, torch.int32)

    def restore(self, img: Any, kind: str, name: str = "image") -> Any:
        """The restored image, slice by slice, in the input's intensity units: same shape as ``img``, float32.

        Args:
            img: channel-first image from :func:`load_input`.
            kind: its kind.
            name: its name, for messages.

        Raises:
            CheckpointError: when the model has no usable checkpoint.
            InputError: when the bundle's preprocessing rejects a slice.
        """
        from monai.data import MetaTensor

        net = self.network()
        parts = []
        for sl in self._slices(img):
            d = self._preprocess(sl, kind, name)
            x = d["image"]
            x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x))[None].to(self.device)
            r = d[self.bundle.regions_key]
            r = (r.as_tensor() if hasattr(r, "as_tensor") else torch.as_tensor(r))[None].to(self.device).long()
            with torch.inference_mode():
                if self.inferer is None:  # RegionMapNetwork(x, regions) and ConditionRegionsNetwork(x, condition) alike
                    y = net(x, r)
                else:  # e.g. sliding windows over a large pathology image, the map cropped with each window
                    y = self.inferer(x, net, condition=r.expand(-1, x.shape[1], -1, -1))
            d["pred"] = MetaTensor(y[0].detach().cpu())  # a MetaTensor, as MONAI engines give, so Invertd can follow "image"
            for t in self.post:
                d = t(d)
            p = d["pred"]
            parts.append(torch.as_tensor(p.as_tensor() if hasattr(p, "as_tensor") else p).reshape(sl.shape).float())
        return self._stack(img, parts, torch.float32)


def _label_dtype(requested: str | None, max_label: int) -> np.dtype:
    order = [np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32)]
    want = np.dtype(requested) if requested else np.dtype(np.uint16)
    if np.issubdtype(want, np.integer) and np.iinfo(want).max >= max_label:
        return want
    return next(d for d in order if np.iinfo(d).max >= max_label)


def write_result(
    result: Any,
    source: str | os.PathLike,
    kind: str,
    out_dir: str | os.PathLike,
    stem: str,
    radiology: bool = True,
    label: bool = False,
    requested_dtype: str | None = None,
) -> tuple[str, dict]:
    """Write ``result`` with the geometry of the input file; return the path and what was written.

    - NIfTI input, radiology model: NIfTI with the input's affine and header (only the data type changes).
    - other radiology inputs (DICOM, NRRD, PNG): NIfTI with the affine MONAI's reader gave (RAS), same array order.
    - pathology models (``radiology=False``) with PNG / TIFF input: the same format, the input's data type
      for restored images (values rounded and clipped to its range; the number of clipped values is
      returned), ``uint8``/``uint16`` labels for region maps.

    Region maps (``label=True``) use ``requested_dtype`` (e.g. ``"uint8"``, what 3D Slicer asks for)
    when every label fits, else the smallest of uint8 / uint16 / int32 that holds them (never wrapped).

    Args:
        result: ``(C, H, W[, D])`` MetaTensor from :class:`SlicePipeline`.
        source: the input file.
        kind: the input's kind.
        out_dir: the folder to write in.
        stem: the output name without extension.
        radiology: NIfTI output (True) or the input's 2D format for PNG / TIFF input (False).
        label: whether ``result`` is a label map.
        requested_dtype: the client's ``result_dtype`` (label maps only; restored images stay float32).

    Raises:
        ValueError: when the result's shape does not match the input file's (a bug, never a silent reshape).
    """
    import nibabel as nib

    arr = result.detach().cpu().numpy() if hasattr(result, "detach") else np.asarray(result)
    info: dict[str, Any] = {}
    if label:
        dtype = _label_dtype(requested_dtype, int(arr.max()) if arr.size else 0)
        if requested_dtype and np.dtype(requested_dtype) != dtype:
            info["dtype_note"] = f"requested {requested_dtype} cannot hold label {int(arr.max())}; wrote {dtype.name}"
    else:
        dtype = np.dtype(np.float32)
    os.makedirs(out_dir, exist_ok=True)
    if not radiology and kind in ("png", "tiff"):
        from PIL import Image

        ext = ".png" if kind == "png" else ".tif"
        src = np.asarray(Image.open(source))
        img = np.moveaxis(arr, 0, -1)  # (W, H, C): MONAI's PILReader reverses the axes
        img = np.swapaxes(img, 0, 1)
        if img.shape[-1] == 1:
            img = img[..., 0]
        if img.shape != src.shape:
            raise ValueError(f"result shape {img.shape} differs from the input's {src.shape} for {source}.")
        out_dtype = dtype if label else src.dtype
        if np.issubdtype(out_dtype, np.integer):
            lo, hi = np.iinfo(out_dtype).min, np.iinfo(out_dtype).max
            rounded = np.rint(img)
            info["clipped_values"] = int(((rounded < lo) | (rounded > hi)).sum())
            img = np.clip(rounded, lo, hi)
        path = os.path.join(out_dir, stem + ext)
        Image.fromarray(img.astype(out_dtype)).save(path)
        info.update({"format": ext.lstrip("."), "dtype": np.dtype(out_dtype).name})
        return path, info
    path = os.path.join(out_dir, stem + ".nii.gz")
    data = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if kind == "nifti":
        src = nib.load(str(source))
        if tuple(src.shape) != data.shape:
            data = data.reshape(src.shape) if data.size == int(np.prod(src.shape)) else data
        if tuple(src.shape) != data.shape:
            raise ValueError(f"result shape {data.shape} differs from the input's {tuple(src.shape)} for {source}.")
        header = src.header.copy()
        header.set_data_dtype(dtype)
        out = nib.Nifti1Image(data.astype(dtype), src.affine, header=header)
        out.header.set_slope_inter(1.0, 0.0)
        nib.save(out, path)
    else:  # DICOM / PNG: MONAI's readers give the affine in RAS, NIfTI's convention, in the array's index order
        affine = np.asarray(result.meta.get("affine", np.eye(4)), dtype=np.float64)
        if affine.shape != (4, 4):
            full = np.eye(4)
            n = affine.shape[0] - 1
            full[:n, :n], full[:n, 3] = affine[:n, :n], affine[:n, n]
            affine = full
        nib.save(nib.Nifti1Image(data.astype(dtype), affine), path)
    info.update({"format": "nifti", "dtype": dtype.name})
    return path, info
