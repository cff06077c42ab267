"""Write restored CT slices as DICOM, reusing the source slice's header.

The output keeps every tag of the source file (patient, study, geometry, window ...) except:
new ``SeriesInstanceUID`` (one per source series and writer) and ``SOPInstanceUID``
(``pydicom.uid.generate_uid``), a ``SeriesNumber`` of its own (the source's plus
:data:`SERIES_NUMBER_OFFSET`, so that viewers that list series by number show the restored series
beside the source, not as a second copy of it), ``ImageType`` = ``DERIVED\\SECONDARY`` followed by the source's
remaining values, a ``SeriesDescription`` ending in "RAT restoration", ``DerivationDescription``,
a ``SourceImageSequence`` pointing at the source slice, and uncompressed (explicit VR little endian)
pixel data: ``stored = round((HU - RescaleIntercept) / RescaleSlope)`` with the source's slope,
intercept, BitsStored and signedness. Values that do not fit the stored range are clipped to it and
the number of clipped pixels is logged as a warning (never silently).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy

__all__ = ["write_dicom_slice", "SaveAsDICOM", "SaveAsDICOMd", "SaveAsDICOMD", "SaveAsDICOMDict", "SERIES_NUMBER_OFFSET"]

logger = logging.getLogger(__name__)

_DESCRIPTION = "RAT restoration"

#: a derived series is numbered ``source SeriesNumber + SERIES_NUMBER_OFFSET`` (``SERIES_NUMBER_OFFSET``
#: when the source has none), the convention of scanners' derived series (e.g. 2 -> 1002).
SERIES_NUMBER_OFFSET = 1000


def write_dicom_slice(
    hu: np.ndarray,
    source: str | os.PathLike,
    output_path: str | os.PathLike,
    series_instance_uid: str | None = None,
    series_description: str = _DESCRIPTION,
    series_number: int | None = None,
) -> dict:
    """Write one slice in HU as DICOM, with the header of ``source``.

    Args:
        hu: 2D array ``(Rows, Columns)`` of the source (pydicom's ``pixel_array`` orientation), in HU.
        source: the source DICOM file (its tags, slope/intercept and pixel format are reused).
        output_path: the file to write (parent folders are created).
        series_instance_uid: the new series UID (default: a new ``generate_uid()``); pass the same
            UID for all slices of one series.
        series_description: appended to the source's SeriesDescription (the result is cut to the
            64 characters DICOM allows), default "RAT restoration".
        series_number: the new SeriesNumber (default: the source's plus :data:`SERIES_NUMBER_OFFSET`);
            it must differ from the source's.

    Returns:
        ``{"path", "sop_instance_uid", "series_instance_uid", "series_number", "num_clipped"}``.

    Raises:
        ValueError: when ``hu`` is not 2D, does not match the source's Rows x Columns (both shapes
            named), holds NaN or inf, the source is not an uncompressed-writable grayscale image, or
            ``series_number`` equals the source's SeriesNumber.
        FileNotFoundError: when ``source`` does not exist.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"write_dicom_slice: source DICOM {str(source)!r} does not exist.")
    hu = np.asarray(hu, dtype=np.float64)
    ds = pydicom.dcmread(source)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if hu.ndim != 2 or hu.shape != (rows, cols):
        raise ValueError(
            f"write_dicom_slice: the image has shape {hu.shape} but the source {str(source)!r} is "
            f"{rows}x{cols} (Rows x Columns); expected ({rows}, {cols})."
        )
    if not np.isfinite(hu).all():
        raise ValueError(f"write_dicom_slice: the image for {str(source)!r} holds {int((~np.isfinite(hu)).sum())} NaN/inf values.")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ValueError(f"write_dicom_slice: source {str(source)!r} is not a single-frame grayscale image.")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    bits_alloc = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_alloc))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits_alloc not in (8, 16, 32):
        raise ValueError(f"write_dicom_slice: source {str(source)!r} has BitsAllocated={bits_alloc}; expected 8, 16 or 32.")
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    stored = np.round((hu - intercept) / slope)
    clipped = int(((stored < lo) | (stored > hi)).sum())
    if clipped:
        logger.warning(
            "write_dicom_slice: %d of %d pixels of %s are outside the stored range [%d, %d] (HU [%g, %g] with slope %g, "
            "intercept %g) and were clipped to it.",
            clipped, stored.size, output_path, lo, hi, lo * slope + intercept, hi * slope + intercept, slope, intercept,
        )
        stored = np.clip(stored, lo, hi)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_alloc // 8}").newbyteorder("<")
    stored = stored.astype(dtype)

    src_sop_class = ds.get("SOPClassUID")
    src_sop = ds.get("SOPInstanceUID")
    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    src_number = _series_number(ds)
    if series_number is None:
        series_number = (src_number or 0) + SERIES_NUMBER_OFFSET
    elif src_number is not None and int(series_number) == src_number:
        raise ValueError(
            f"write_dicom_slice: series_number {series_number} is the SeriesNumber of the source {str(source)!r}; "
            "a derived series needs a number of its own."
        )
    ds.SeriesNumber = int(series_number)
    image_type = list(ds.get("ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY"] + [str(v) for v in image_type[2:]]
    old = str(ds.get("SeriesDescription", "") or "").strip()
    desc = f"{old} - {series_description}" if old else series_description
    if len(desc) > 64:
        desc = desc[-64:] if not old else (old[: max(0, 64 - len(series_description) - 3)] + " - " + series_description)[-64:]
    ds.SeriesDescription = desc
    ds.DerivationDescription = f"{series_description} (monai-rat, Region Attention Transformer) of {source.name}"[:1024]
    if src_sop_class and src_sop:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src_sop_class
        ref.ReferencedSOPInstanceUID = src_sop
        ds.SourceImageSequence = DicomSequence([ref])
    for tag in ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue"):
        if tag in ds:
            del ds[tag]
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if bits_alloc > 8 else "OB"
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if src_sop_class:
        ds.file_meta.MediaStorageSOPClassUID = src_sop_class
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _save_as(ds, tmp)
        os.replace(tmp, output_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(output_path), "sop_instance_uid": sop_uid, "series_instance_uid": str(ds.SeriesInstanceUID),
            "series_number": int(ds.SeriesNumber), "num_clipped": clipped}


def _series_number(ds) -> int | None:
    """The dataset's SeriesNumber as an int (None when absent or empty)."""
    value = ds.get("SeriesNumber", None)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _save_as(ds, path) -> None:
    """Write a DICOM Part-10 file with pydicom 3 (``enforce_file_format``) or 2.x (``write_like_original``)."""
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


class SaveAsDICOM(Transform):
    """Save a restored slice (or a restored series volume) as DICOM, reusing the source header(s).

    One slice: the source is its DICOM file. A volume ``(1, X, Y, Z)`` read by MONAI from a series
    folder: the source is the folder, and each slice ``k`` is matched to the file whose
    ImagePositionPatient equals the volume's position of voxel ``(0, 0, k)`` (from the MetaTensor's
    affine; within a quarter of the slice spacing), so the reader's slice order does not matter; a
    slice with no matching file is an error, never a guess. Output:
    ``<output_dir>/<PatientID>/<source series folder name>_<output_postfix>/<source file stem>.dcm``.
    All slices of one source series get the same new SeriesInstanceUID (derived from the source
    series UID and ``series_uid_seed``) and the same new SeriesNumber (the source's plus
    :data:`SERIES_NUMBER_OFFSET`), each slice a new SOPInstanceUID.

    Args:
        output_dir: the output folder.
        output_postfix: added to the series folder name (default "rat").
        layout: how the array's first two spatial axes map to the DICOM slice: "monai" (default) for
            arrays read by MONAI's ITKReader or PydicomReader, which are ``(Columns, Rows)``
            (transposed with respect to pydicom); "pydicom" for ``(Rows, Columns)`` (single slices only).
        intensity_window: None (default) when the array is in HU; ``(low, high)`` when it is
            normalised so that 0 -> low HU and 1 -> high HU (e.g. (-1024, 3072)).
        series_description: appended to the source's SeriesDescription (default "RAT restoration").
        series_uid_seed: seed of the new series UIDs (default: random per writer instance, so two
            runs give two series; pass a string for the same UIDs in every process, e.g. with DDP).
        on_non_dicom: "error" (default) raises when the source is not DICOM; "skip" logs it (info) and
            writes nothing (returns None), for pipelines that also restore NIfTI / PNG inputs.

    Raises:
        ValueError: when an argument is invalid.
    """

    backend = ["torch", "numpy"]

    def __init__(
        self,
        output_dir: str | os.PathLike,
        output_postfix: str = "rat",
        layout: str = "monai",
        intensity_window: Sequence[float] | None = None,
        series_description: str = _DESCRIPTION,
        series_uid_seed: str | None = None,
        on_non_dicom: str = "error",
    ) -> None:
        if layout not in ("monai", "pydicom"):
            raise ValueError(f"SaveAsDICOM: `layout` must be 'monai' or 'pydicom', got {layout!r}.")
        if on_non_dicom not in ("error", "skip"):
            raise ValueError(f"SaveAsDICOM: `on_non_dicom` must be 'error' or 'skip', got {on_non_dicom!r}.")
        if intensity_window is not None:
            lo, hi = (float(v) for v in intensity_window)
            if not hi > lo:
                raise ValueError(f"SaveAsDICOM: `intensity_window` must be (low, high) with high > low, got {intensity_window}.")
            intensity_window = (lo, hi)
        self.output_dir = Path(output_dir)
        self.output_postfix = str(output_postfix)
        self.layout = layout
        self.intensity_window = intensity_window
        self.series_description = series_description
        self.series_uid_seed = series_uid_seed or uuid.uuid4().hex
        self.on_non_dicom = on_non_dicom
        self._written: dict[str, str] = {}

    def _series_uid(self, source_series_uid: str) -> str:
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=[str(source_series_uid), self.series_uid_seed, self.output_postfix])

    def __call__(self, img, source: str | os.PathLike | None = None) -> str | list[str] | None:
        """Write ``img`` as DICOM.

        Args:
            img: one slice ``(1, X, Y)``, ``(X, Y)`` or ``(1, X, Y, 1)`` with a DICOM file as source, or a
                volume ``(1, X, Y, Z)`` MetaTensor (with its affine) with a series folder as source.
            source: the source DICOM file or series folder; default ``img.meta["filename_or_obj"]``.

        Returns:
            the path written (one slice), the list of paths (a volume), or None when the source is
            not DICOM and ``on_non_dicom="skip"``.

        Raises:
            ValueError: when the shape is not a slice or volume, no source is known, the source is not
                DICOM (with ``on_non_dicom="error"``), a volume slice matches no source file, or a slice
                does not match its source (see :func:`write_dicom_slice`).
        """
        meta = getattr(img, "meta", None) or {}
        if source is None:
            source = meta.get("filename_or_obj")
            if isinstance(source, (list, tuple)):
                source = source[0] if len(source) == 1 else None
        if not source:
            raise ValueError("SaveAsDICOM: no source DICOM file: pass `source` or a MetaTensor with meta['filename_or_obj'].")
        src = Path(source)
        arr = convert_to_numpy(img, dtype=np.float64)
        shape = arr.shape
        if self.intensity_window is not None:
            lo, hi = self.intensity_window
            arr = arr * (hi - lo) + lo
        if src.is_dir():
            if arr.ndim == 4 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 3 or self.layout != "monai":
                raise ValueError(
                    f"SaveAsDICOM: a series folder source ({str(src)!r}) needs a volume (1, X, Y, Z) read by MONAI "
                    f"(layout 'monai'), got shape {shape} with layout {self.layout!r}."
                )
            affine = getattr(img, "affine", None)
            if affine is None:
                raise ValueError(f"SaveAsDICOM: a volume from {str(src)!r} must be a MetaTensor with its affine.")
            files = self._match_volume(src, convert_to_numpy(affine, dtype=np.float64), str(meta.get("space", "RAS")), arr.shape[-1])
            return [self._write(arr[..., k].T, f) for k, f in enumerate(files)]
        if arr.ndim == 4 and arr.shape[0] == 1 and arr.shape[-1] == 1:
            arr = arr[0, ..., 0]
        elif arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise ValueError(f"SaveAsDICOM: expected one slice (1, X, Y), (X, Y) or (1, X, Y, 1) for {source}, got shape {shape}.")
        if not self._is_dicom(src):
            if self.on_non_dicom == "skip":
                logger.info("SaveAsDICOM: %s is not DICOM; no DICOM written for it.", src)
                return None
            raise ValueError(f"SaveAsDICOM: the source {str(src)!r} is not a DICOM file; write it with SaveImaged instead.")
        return self._write(arr.T if self.layout == "monai" else arr, src)

    @staticmethod
    def _is_dicom(path: Path) -> bool:
        import pydicom
        from pydicom.errors import InvalidDicomError

        if not path.is_file():
            raise ValueError(f"SaveAsDICOM: the source {str(path)!r} does not exist.")
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            return False
        return True

    def _match_volume(self, folder: Path, affine: np.ndarray, space: str, nz: int) -> list[Path]:
        import pydicom
        from pydicom.errors import InvalidDicomError

        positions, files = [], []
        for f in sorted(folder.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except InvalidDicomError:
                logger.debug("SaveAsDICOM: %s in %s is not DICOM; not a slice source.", f.name, folder)
                continue
            if "ImagePositionPatient" not in ds:
                raise ValueError(f"SaveAsDICOM: {str(f)!r} has no ImagePositionPatient; cannot match it to a volume slice.")
            positions.append([float(v) for v in ds.ImagePositionPatient])
            files.append(f)
        if not files:
            raise ValueError(f"SaveAsDICOM: the series folder {str(folder)!r} holds no DICOM files.")
        positions = np.asarray(positions)
        flip = np.array([-1.0, -1.0, 1.0]) if space.upper() == "RAS" else np.ones(3)
        spacing = float(np.linalg.norm(affine[:3, 2])) if affine.shape[0] >= 4 else 0.0
        tol = max(0.01, 0.25 * spacing)
        out, used = [], set()
        for k in range(nz):
            p = (affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3]) * flip
            dist = np.linalg.norm(positions - p, axis=1)
            j = int(np.argmin(dist))
            if dist[j] > tol or j in used:
                raise ValueError(
                    f"SaveAsDICOM: volume slice {k} of {nz} (position {np.round(p, 3).tolist()} mm, LPS) matches no "
                    f"unused file of {str(folder)!r} within {tol:.3g} mm (nearest: {files[j].name} at "
                    f"{positions[j].tolist()}); the reader's affine does not describe this series. Restore slice "
                    "by slice instead."
                )
            used.add(j)
            out.append(files[j])
        return out

    def _write(self, arr: np.ndarray, src: Path) -> str:
        import pydicom

        hdr = pydicom.dcmread(src, stop_before_pixels=True)
        patient = str(hdr.get("PatientID", "") or "unknown").replace(os.sep, "_") or "unknown"
        out = self.output_dir / patient / f"{src.parent.name}_{self.output_postfix}" / f"{src.stem}.dcm"
        prev = self._written.get(str(out))
        if prev is not None and prev != str(src.resolve()):
            raise ValueError(f"SaveAsDICOM: {str(out)!r} was already written for {prev!r}; {str(src)!r} would overwrite it.")
        res = write_dicom_slice(
            arr, src, out, series_instance_uid=self._series_uid(hdr.get("SeriesInstanceUID", src.parent)),
            series_description=self.series_description,
        )
        self._written[str(out)] = str(src.resolve())
        logger.debug("SaveAsDICOM: wrote %s (from %s)", out, src)
        return res["path"]


class SaveAsDICOMd(MapTransform):
    """Dictionary version of :class:`SaveAsDICOM`: save ``data[key]`` with the header of its source slice.

    The source file is ``data[source_key].meta["filename_or_obj"]`` (a MetaTensor, e.g. the loaded
    input), ``data[source_key]`` itself when it is a path, else the key's own MetaTensor metadata.
    The written path (a list for a volume, None for a skipped non-DICOM source) is stored in
    ``data[f"{key}_dicom_path"]``.

    Args:
        keys: keys of the restored slices (e.g. "pred").
        output_dir: see :class:`SaveAsDICOM`.
        source_key: key whose file is the source DICOM (default "image").
        output_postfix: see :class:`SaveAsDICOM`.
        layout: see :class:`SaveAsDICOM`.
        intensity_window: see :class:`SaveAsDICOM`.
        series_description: see :class:`SaveAsDICOM`.
        series_uid_seed: see :class:`SaveAsDICOM`.
        on_non_dicom: see :class:`SaveAsDICOM` ("error" or "skip").
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: as :class:`SaveAsDICOM`.
        KeyError: when a key is missing and ``allow_missing_keys`` is False.
    """

    backend = SaveAsDICOM.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        source_key: str = "image",
        output_postfix: str = "rat",
        layout: str = "monai",
        intensity_window: Sequence[float] | None = None,
        series_description: str = _DESCRIPTION,
        series_uid_seed: str | None = None,
        on_non_dicom: str = "error",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.saver = SaveAsDICOM(
            output_dir, output_postfix, layout, intensity_window, series_description, series_uid_seed, on_non_dicom
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Save each key.

        Args:
            data: the dictionary.

        Returns:
            a shallow copy with ``f"{key}_dicom_path"`` added per key.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            src = d.get(self.source_key)
            if isinstance(src, (str, os.PathLike)):
                source = src
            else:
                meta = getattr(src, "meta", None) or getattr(d[key], "meta", None) or {}
                source = meta.get("filename_or_obj")
            d[f"{key}_dicom_path"] = self.saver(d[key], source=source)
        return d


SaveAsDICOMD = SaveAsDICOMDict = SaveAsDICOMd
