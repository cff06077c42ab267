"""Write small CT DICOM files with pydicom for the CT data tests."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_slice(
    path: str | os.PathLike,
    hu: np.ndarray,
    position_z: float | None = 0.0,
    instance: int | None = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    patient: str = "L000",
    series_uid: str | None = None,
    pixel_spacing: float = 0.7,
    signed: bool = True,
) -> str:
    """Write one CT slice (values in HU) as a DICOM Part-10 file with stored = (HU - intercept) / slope."""
    hu = np.asarray(hu, dtype=np.float64)
    stored = np.round((hu - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.PatientName = patient
    ds.SeriesDescription = "test series"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber = 1
    if instance is not None:
        ds.InstanceNumber = instance
    if position_z is not None:
        ds.ImagePositionPatient = [-10.0, -10.0, float(position_z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return str(path)


def write_series(folder, patient, dose, n, size=16, z0=0.0, dz=1.0, skip=(), rng=None, **kw) -> list[str]:
    """A series of ``n`` slices named like the AAPM files (``L067_FD_1_1.CT.0001.0001.IMA``)."""
    rng = rng or np.random.default_rng(0)
    tag = "FD" if dose == "full" else "QD"
    uid = generate_uid()
    paths = []
    for i in range(n):
        if i in skip:
            continue
        hu = rng.normal(0, 20 if dose == "full" else 40, (size, size))
        name = f"{patient}_{tag}_1_1.CT.{'0001' if dose == 'full' else '0003'}.{i + 1:04d}.2016.01.01.IMA"
        paths.append(
            write_ct_slice(
                os.path.join(folder, name), hu, position_z=z0 - i * dz, instance=i + 1, patient=patient,
                series_uid=uid, **kw,
            )
        )
    return paths
