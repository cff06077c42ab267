"""The data code behind the bundles' bad-input errors, in process (the bundle commands: test_bundle_bad_inputs.py)."""

from __future__ import annotations

import copy
import json
import pickle

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_rat.data import (
    LoadImageChecked,
    LoadImageCheckedd,
    PETSliceDataset,
    pathology_datalist,
    pathology_inference_datalist,
    pet_datalist,
    read_image_header,
)
from monai_rat.engines import inference_datalist


def _nii(path, shape, value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4)), str(path))
    return path


def _png(path, hw=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (hw[1], hw[0]), color=(10, 20, 30)).save(path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_header_and_checked_loaders_name_the_file(tmp_path):
    vol = _nii(tmp_path / "v.nii.gz", (30, 20, 4), np.random.default_rng(0).random((30, 20, 4)))
    assert read_image_header(vol) == (30, 20, 4)
    assert read_image_header(_png(tmp_path / "a.png")) == (40, 48, 3)
    bad = _truncate(_nii(tmp_path / "t.nii.gz", (30, 20, 4), np.random.default_rng(0).random((30, 20, 4))))
    assert read_image_header(bad) == (30, 20, 4)  # the header is intact: only reading the data finds it
    with pytest.raises(ValueError, match=r"Cannot read '.*t\.nii\.gz' \(EOFError"):
        LoadImageChecked()(str(bad))
    with pytest.raises(FileNotFoundError, match=r"Cannot read '.*nope\.png': it does not exist"):
        LoadImageChecked()(str(tmp_path / "nope.png"))
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"'.*x\.png' is not a readable image"):
        read_image_header(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_image_header(tmp_path / "nope.nii.gz")
    load = pickle.loads(pickle.dumps(LoadImageCheckedd(["image", "label"], ensure_channel_first=True)))  # workers
    assert load({"image": str(vol), "label": str(vol)})["label"].shape == (1, 30, 20, 4)
    with pytest.raises(ValueError, match=r"t\.nii\.gz"):
        load({"image": str(vol), "label": str(bad)})


def test_checked_loader_takes_attribute_writes_as_monai_label_makes_them(tmp_path):
    """MONAI Label's BundleInferTask sets ``t._loader.image_only = False`` on the bundle's loader to get the
    image's metadata (affine, shape); the write must reach the wrapped ``LoadImage``, or ``LoadImaged`` reads
    the wrapper's False while the loader still returns the image alone (a ValueError, the stock app's HTTP 500)."""
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((30, 20)).astype(np.float32), affine), str(vol))
    load = LoadImageCheckedd("image", image_only=True, ensure_channel_first=True)
    load._loader.image_only = False  # what monailabel.tasks.infer.bundle.BundleInferTask.pre_transforms does
    assert load._loader.loader.image_only is False
    d = load({"image": str(vol)})
    assert d["image"].shape == (1, 30, 20) and "image_meta_dict" in d
    np.testing.assert_allclose(d["image_meta_dict"]["affine"], affine)
    for copied in (pickle.loads(pickle.dumps(load)), copy.deepcopy(load)):  # workers, MONAI Label's deep copies
        assert copied._loader.image_only is False and "image_meta_dict" in copied({"image": str(vol)})
    with pytest.raises(ValueError, match=r"t\.nii\.gz"):  # still names a bad file
        load({"image": str(_truncate(_nii(tmp_path / "t.nii.gz", (30, 20, 4), np.random.default_rng(1).random((30, 20, 4)))))})


def test_pet_slice_dataset_min_size(tmp_path):
    items = [{"image": str(_nii(tmp_path / "low.nii.gz", (40, 24, 3))), "label": str(_nii(tmp_path / "full.nii.gz", (40, 24, 3)))}]
    assert len(PETSliceDataset(items, min_size=[40, 24])) == 3
    assert len(PETSliceDataset(items, axis=1, min_size=3)) == 24  # slices along axis 1 are 40 x 3
    with pytest.raises(ValueError, match=r"low\.nii\.gz.*full\.nii\.gz.*axis 2 are 40 x 24.*smaller than min_size 32 x 32"):
        PETSliceDataset(items, min_size=32)
    with pytest.raises(ValueError, match="positive int"):
        PETSliceDataset(items, min_size=[32, 32, 32])
    _nii(tmp_path / "full2.nii.gz", (40, 20, 3))
    with pytest.raises(ValueError, match=r"'image' has spatial shape \(40, 24, 3\) .*low\.nii\.gz.*full2\.nii\.gz"):
        PETSliceDataset([{"image": items[0]["image"], "label": str(tmp_path / "full2.nii.gz")}])


def test_pet_json_datalist_checks_nifti_pairs(tmp_path):
    _nii(tmp_path / "a_low.nii.gz", (8, 8, 4))
    _nii(tmp_path / "a_full.nii.gz", (8, 8, 5))
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"training": [{"image": "a_low.nii.gz", "label": "a_low.nii.gz"}],
                              "validation": [{"image": "a_low.nii.gz", "label": "a_full.nii.gz"}]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"item 0 of 'validation'.*\(8, 8, 4\) != full_dose shape \(8, 8, 5\).*a_full\.nii\.gz"):
        pet_datalist(js)


def test_pathology_json_label_is_rejected_and_inference_inputs_are_checked(tmp_path):
    _png(tmp_path / "hq.png")
    _png(tmp_path / "lq.png", (10, 12))
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"training": [{"image": "lq.png", "label": "hq.png"}], "validation": [{"image": "hq.png"}]}))
    with pytest.raises(ValueError, match=r"item 0 of 'training' pairs image='lq.png' with label='hq.png'"):
        pathology_datalist(js)
    assert pathology_inference_datalist(tmp_path / "hq.png") == [{"image": str(tmp_path / "hq.png")}]
    assert [d["image"] for d in pathology_inference_datalist(tmp_path)] == [str(tmp_path / "hq.png"), str(tmp_path / "lq.png")]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"input_path: '.*bad\.png' is not a readable image"):
        pathology_inference_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pathology_inference_datalist(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="--input_path"):
        pathology_inference_datalist("")


def test_inference_datalist_kinds_and_headers(tmp_path):
    png = _png(tmp_path / "a.png")
    with pytest.raises(TypeError, match=r"a\.png' is not a NIfTI"):
        inference_datalist(png, kinds=["nifti"])
    with pytest.raises(ValueError, match=r"holds no NIfTI \(\.nii, \.nii\.gz\) file \(1 other files"):
        inference_datalist(tmp_path, kinds=["nifti"])
    _nii(tmp_path / "v.nii.gz", (8, 8, 4))
    assert [d["kind"] for d in inference_datalist(tmp_path, kinds=["nifti"], check_headers=True)] == ["nifti"]
    (tmp_path / "w.nii.gz").write_bytes(b"garbage")
    assert len(inference_datalist(tmp_path, kinds="nifti")) == 2  # headers are not read unless asked
    with pytest.raises(ValueError, match=r"input_path: '.*w\.nii\.gz' is not a readable NIfTI"):
        inference_datalist(tmp_path, kinds=["nifti"], check_headers=True)
    with pytest.raises(ValueError, match="`kinds`"):
        inference_datalist(tmp_path, kinds=["jpeg"])
