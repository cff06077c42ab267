"""SaveAsDICOM(d) / write_dicom_slice: round trip through pydicom and MONAI readers, tags, clipping, errors."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose, LoadImage

sys.path.insert(0, os.path.dirname(__file__))
from ct_dicom_helpers import write_ct_slice  # noqa: E402

from monai_rat.data import SaveAsDICOM, SaveAsDICOMd, ct_load_transforms, ct_to_hu_transform, write_dicom_slice  # noqa: E402


def _hu(path):
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture()
def source(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, (12, 10))
    path = write_ct_slice(tmp_path / "L067" / "quarter_1mm" / "s1.IMA", hu, patient="L067")
    return path, hu


@pytest.mark.parametrize("reader", ["PydicomReader", "ITKReader"])
def test_round_trip_through_monai(tmp_path, source, reader):
    path, hu = source
    data = Compose(ct_load_transforms(["image"], reader=reader))({"image": path})
    assert tuple(data["image"].shape) == (1, 10, 12)  # MONAI: (C, Columns, Rows)
    rng = np.random.default_rng(1)
    restored_hu = hu + rng.uniform(-30, 30, hu.shape)
    data["pred"] = torch.as_tensor((restored_hu.T[None] + 1024.0) / 4096.0, dtype=torch.float32)  # [0, 1] window
    data = ct_to_hu_transform("pred")(data)
    out = SaveAsDICOMd("pred", tmp_path / "out", source_key="image")(data)
    written = out["pred_dicom_path"]
    assert os.path.isfile(written)
    assert np.abs(_hu(written) - restored_hu).max() <= 1.0  # within 1 HU (stored integers, slope 1)
    back = LoadImage(image_only=True, reader=reader)(written)
    assert np.abs(np.squeeze(back.numpy()) - restored_hu.T).max() <= 1.0
    src, dst = pydicom.dcmread(path), pydicom.dcmread(written)
    assert dst.SeriesInstanceUID != src.SeriesInstanceUID
    assert int(dst.SeriesNumber) == int(src.SeriesNumber) + 1000  # a series number of its own, not the source's
    assert dst.SOPInstanceUID != src.SOPInstanceUID
    assert dst.file_meta.MediaStorageSOPInstanceUID == dst.SOPInstanceUID
    assert list(dst.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "RAT restoration" in dst.SeriesDescription
    assert dst.PatientID == src.PatientID and dst.StudyInstanceUID == src.StudyInstanceUID
    assert list(dst.ImagePositionPatient) == list(src.ImagePositionPatient)
    assert dst.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_series_uid_shared_within_a_series_and_new_per_series(tmp_path):
    series_uid = pydicom.uid.generate_uid()
    a = write_ct_slice(tmp_path / "s" / "a.dcm", np.zeros((8, 8)), series_uid=series_uid, instance=1)
    b = write_ct_slice(tmp_path / "s" / "b.dcm", np.zeros((8, 8)), series_uid=series_uid, instance=2, position_z=-1)
    c = write_ct_slice(tmp_path / "t" / "c.dcm", np.zeros((8, 8)))
    saver = SaveAsDICOM(tmp_path / "out", layout="pydicom")
    uids = [pydicom.dcmread(saver(np.full((1, 8, 8), 10.0), source=p)).SeriesInstanceUID for p in (a, b, c)]
    assert uids[0] == uids[1] != uids[2]
    sops = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "out").rglob("*.dcm")}
    assert len(sops) == 3


def test_slope_and_unsigned_source(tmp_path):
    hu = np.linspace(-1000, 2000, 64).reshape(8, 8)
    path = write_ct_slice(tmp_path / "u.dcm", hu, slope=0.5, intercept=-1024.0, signed=False)
    out = write_dicom_slice(hu + 0.3, path, tmp_path / "o.dcm")
    assert out["num_clipped"] == 0
    assert np.abs(_hu(out["path"]) - (hu + 0.3)).max() <= 0.5


def test_clipping_is_logged(tmp_path, caplog):
    hu = np.zeros((8, 8))
    path = write_ct_slice(tmp_path / "c.dcm", hu, intercept=-1024.0, signed=False)  # stored 0..65535: HU >= -1024
    img = hu.copy()
    img[0, :3] = -3000.0
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.dicom_writer"):
        out = write_dicom_slice(img, path, tmp_path / "o.dcm")
    assert out["num_clipped"] == 3
    assert "clipped" in caplog.text
    assert _hu(out["path"])[0, 0] == -1024.0


def test_errors(tmp_path, source):
    path, hu = source
    with pytest.raises(ValueError, match=r"\(9, 9\).*12x10"):
        write_dicom_slice(np.zeros((9, 9)), path, tmp_path / "o.dcm")
    bad = hu.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_dicom_slice(bad, path, tmp_path / "o.dcm")
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        write_dicom_slice(hu, tmp_path / "nope.dcm", tmp_path / "o.dcm")
    with pytest.raises(ValueError, match="source"):
        SaveAsDICOM(tmp_path)(np.zeros((1, 10, 12)))
    with pytest.raises(ValueError, match=r"\(2, 10, 12\)"):
        SaveAsDICOM(tmp_path)(np.zeros((2, 10, 12)), source=path)
    with pytest.raises(ValueError, match="layout"):
        SaveAsDICOM(tmp_path, layout="xy")


@pytest.mark.parametrize("reader", ["ITKReader", "PydicomReader"])
def test_series_volume_round_trip(tmp_path, reader):
    """A series folder read as one volume by MONAI is written back slice by slice, each with its own header."""
    uid = pydicom.uid.generate_uid()
    rng = np.random.default_rng(2)
    slices = {}
    for i in range(5):  # AAPM-like: instance 1 at the top, positions descending
        hu = rng.uniform(-1000, 1000, (6, 4))
        path = write_ct_slice(tmp_path / "L067" / "full_1mm" / f"s{i}.IMA", hu, position_z=50.0 - 0.8 * i,
                              instance=i + 1, series_uid=uid, patient="L067")
        slices[os.path.basename(path)] = hu
    vol = LoadImage(image_only=True, reader=reader, ensure_channel_first=True)(str(tmp_path / "L067" / "full_1mm"))
    assert tuple(vol.shape) == (1, 4, 6, 5)
    out = SaveAsDICOM(tmp_path / "out")(vol + 10.0)  # the "restoration": +10 HU
    assert len(out) == 5
    uids = set()
    for path in out:
        name = os.path.basename(path).replace(".dcm", ".IMA")
        assert np.abs(_hu(path) - (slices[name] + 10.0)).max() <= 1.0, name
        ds = pydicom.dcmread(path)
        uids.add(ds.SeriesInstanceUID)
        src = pydicom.dcmread(tmp_path / "L067" / "full_1mm" / name)
        assert ds.ImagePositionPatient == src.ImagePositionPatient
    assert len(uids) == 1 and uid not in uids


def test_volume_with_wrong_affine_is_an_error(tmp_path):
    from monai.data import MetaTensor

    for i in range(3):
        write_ct_slice(tmp_path / "s" / f"s{i}.dcm", np.zeros((4, 4)), position_z=float(i))
    vol = MetaTensor(torch.zeros(1, 4, 4, 3), affine=torch.diag(torch.tensor([1.0, 1.0, 5.0, 1.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="matches no"):
        SaveAsDICOM(tmp_path / "out")(vol, source=tmp_path / "s")


def test_non_dicom_source(tmp_path):
    import nibabel as nib

    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(path))
    with pytest.raises(ValueError, match="not a DICOM file"):
        SaveAsDICOM(tmp_path / "out")(np.zeros((1, 4, 4)), source=path)
    assert SaveAsDICOM(tmp_path / "out", on_non_dicom="skip")(np.zeros((1, 4, 4)), source=path) is None
    out = SaveAsDICOMd("pred", tmp_path / "out", on_non_dicom="skip")({"image": str(path), "pred": np.zeros((1, 4, 4))})
    assert out["pred_dicom_path"] is None


def test_series_number_is_new_and_shared_by_the_series(tmp_path, source):
    path, hu = source
    assert int(pydicom.dcmread(path).SeriesNumber) == 1
    saver = SaveAsDICOM(tmp_path / "out", layout="pydicom")
    a = pydicom.dcmread(saver(hu, source=path))
    assert int(a.SeriesNumber) == 1001
    res = write_dicom_slice(hu, path, tmp_path / "n.dcm", series_number=7)
    assert res["series_number"] == 7 and int(pydicom.dcmread(res["path"]).SeriesNumber) == 7
    with pytest.raises(ValueError, match="series_number 1 is the SeriesNumber of the source"):
        write_dicom_slice(hu, path, tmp_path / "same.dcm", series_number=1)
    ds = pydicom.dcmread(path)
    del ds.SeriesNumber
    ds.save_as(tmp_path / "nonumber.dcm")
    assert int(pydicom.dcmread(write_dicom_slice(hu, tmp_path / "nonumber.dcm", tmp_path / "x.dcm")["path"]).SeriesNumber) == 1000
