"""The MONAI Label app's bundle handling and slice pipeline, without a server and without ``monailabel``.

``monai_rat.apps.monailabel.bundles`` and ``.pipeline`` need only MONAI, so these run in the plain test
environment too; ``tests/test_monailabel.py`` covers the same code behind a real server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_rat.apps.monailabel.bundles import (
    CheckpointError,
    RATBundle,
    available_models,
    default_bundles_dir,
    parse_overrides,
    select_models,
)
from monai_rat.apps.monailabel.pipeline import InputError, SlicePipeline, load_input, write_result
from monai_rat.networks import RAT
from monai_rat.transforms import RegionPartition

REPO = Path(__file__).resolve().parents[1]
TINY = {"feature_size": 16, "network_def#network#num_groups": 1}


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    """The bundles' region cache defaults to the user cache: keep the tests' maps in their own folder."""
    monkeypatch.setenv("MONAI_RAT_CACHE", str(tmp_path / "user_cache"))


def copy_bundle(root: Path, name: str) -> Path:
    shutil.copytree(REPO / "bundles" / "ct" / "configs", root / name / "configs")
    return root / name


def tiny_checkpoint(path: Path) -> RAT:
    torch.manual_seed(0)
    model = RAT(feature_size=16, num_groups=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda" in name or name.endswith("beta") or name.endswith("gamma"):
                p.normal_(0, 0.1)  # the zero-initialised scales: make every branch count
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def test_models_are_the_bundle_folders(tmp_path):
    assert "ct" in available_models(default_bundles_dir())
    copy_bundle(tmp_path, "ct")
    (tmp_path / "common").mkdir()  # a folder without configs/inference.json and metadata.json: not a model
    assert available_models(tmp_path) == ["ct"]
    assert select_models(None, tmp_path) == ["ct"] and select_models("all", tmp_path) == ["ct"]
    with pytest.raises(ValueError, match=r"no bundle for 'pet'.*Available models: ct"):
        select_models("ct,pet", tmp_path)
    copy_bundle(tmp_path, "pet")  # a later bundle is served as soon as its folder exists
    assert select_models("ct,pet", tmp_path) == ["ct", "pet"] and select_models("ct pet ct", tmp_path) == ["ct", "pet"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        available_models(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="No bundle found"):
        select_models("ct", tmp_path / "common")


def test_overrides_are_typed_and_checked():
    got = parse_overrides(
        {"models": "ct", "bundles": "/b", "ct.feature_size": "16", "ct.ckpt_path": "/m/model.pt", "ct.region_window": "[-100, 200]"},
        ["ct"],
    )
    assert got == {"ct": {"feature_size": 16, "ckpt_path": "/m/model.pt", "region_window": [-100, 200]}}
    with pytest.raises(ValueError, match="'pet' is not a served model"):
        parse_overrides({"pet.feature_size": "16"}, ["ct"])
    with pytest.raises(ValueError, match="unknown setting"):
        parse_overrides({"feature_size": "16"}, ["ct"])


def test_bundle_paths_transforms_and_checkpoint_errors(tmp_path):
    b = RATBundle("ct", copy_bundle(tmp_path, "ct"), TINY)
    assert b.ckpt_path == tmp_path / "ct" / "models" / "model.pt" and b.is_radiology and b.regions_key == "regions"
    assert not any(type(t).__name__.startswith("LoadImage") for t in b.preprocessing())
    assert "RegionPartitiond" in [type(t).__name__ for t in b.preprocessing()]
    post = [type(t).__name__ for t in b.postprocessing()]
    assert "SaveImaged" not in post and "ScaleIntensityRanged" in post
    with pytest.raises(CheckpointError, match=r"models/model.pt does not exist.*monai.bundle run training"):
        b.load_network()
    tiny_checkpoint(b.ckpt_path)
    assert b.load_network() is not None
    paper = RATBundle("ct", tmp_path / "ct")  # the paper's feature_size 64 against a feature_size 16 checkpoint
    with pytest.raises(CheckpointError, match=r"does not fit the network.*feature_size 16"):
        paper.load_network()
    with pytest.raises(ValueError, match="cannot set config id"):
        RATBundle("ct", tmp_path / "ct", {"no_such#nested#id": 1})


def test_pipeline_restores_and_partitions_a_volume_slice_by_slice(tmp_path):
    b = RATBundle("ct", copy_bundle(tmp_path, "ct"), TINY)
    model = tiny_checkpoint(b.ckpt_path)
    rng = np.random.default_rng(0)
    hu = (rng.normal(0, 30, (40, 56, 2)) + np.where(np.arange(56) < 28, -500.0, 60.0)[None, :, None]).astype(np.float32)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(src))
    img, kind = load_input(src)
    pipe = SlicePipeline(b)
    restored, regions = pipe.restore(img, kind), pipe.regions(img, kind)
    assert restored.shape == (1, 40, 56, 2) and regions.shape == (1, 40, 56, 2) and regions.dtype == torch.int32
    for k in range(2):
        r = RegionPartition(method="superpixel", window=(-160, 240))(torch.from_numpy(hu[..., k])[None])
        np.testing.assert_array_equal(regions[..., k].numpy(), np.asarray(r))
        x = torch.from_numpy((hu[..., k] + 1024) / 4096).float()[None, None]
        with torch.no_grad():
            want = model(x, torch.as_tensor(np.asarray(r)).long()[None]) * 4096 - 1024
        np.testing.assert_allclose(restored[0, ..., k].numpy(), want[0, 0].numpy(), atol=1e-2)
    four = tmp_path / "four.nii.gz"  # 4D: MONAI reads the last axis as 2 channels, which the CT bundle refuses
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2, 2), np.float32), np.eye(4)), str(four))
    with pytest.raises(InputError, match=r"Model 'ct': RegionPartitiond rejected the image 'four.nii.gz'"):
        pipe.regions(*load_input(four), name="four.nii.gz")
    path, info = write_result(restored, src, kind, tmp_path / "out", "vol_restore")
    out = nib.load(path)
    assert out.shape == hu.shape and info == {"format": "nifti", "dtype": "float32"}
    np.testing.assert_allclose(out.affine, affine)
    path, info = write_result(regions, src, kind, tmp_path / "out", "vol_regions", label=True, requested_dtype="uint8")
    assert info["dtype"] == "uint8" and np.asarray(nib.load(path).dataobj).dtype == np.uint8


def test_label_maps_are_never_wrapped_and_pathology_keeps_png(tmp_path):
    src = tmp_path / "tile.png"
    rgb = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src)
    img, kind = load_input(src)
    assert kind == "png" and img.shape == (3, 20, 30)  # MONAI's PILReader: (C, W, H)
    out = img.float() * 1.5 - 10  # a "restored" tile outside [0, 255] in places
    path, info = write_result(out, src, kind, tmp_path, "tile_restore", radiology=False)
    back = np.asarray(Image.open(path))
    assert path.endswith(".png") and back.shape == rgb.shape and back.dtype == np.uint8
    assert info["clipped_values"] == int(((np.rint(rgb * 1.5 - 10) < 0) | (np.rint(rgb * 1.5 - 10) > 255)).sum()) > 0
    np.testing.assert_array_equal(back, np.clip(np.rint(rgb.astype(np.float64) * 1.5 - 10), 0, 255).astype(np.uint8))
    many = torch.arange(1, 301, dtype=torch.int32).reshape(1, 15, 20)  # 300 labels do not fit uint8
    nii = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((15, 20), np.float32), np.eye(4)), str(nii))
    path, info = write_result(many, nii, "nifti", tmp_path, "s_regions", label=True, requested_dtype="uint8")
    assert info["dtype"] == "uint16" and "cannot hold label 300" in info["dtype_note"]
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), many[0].numpy())


def test_bad_inputs_name_the_problem(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti" * 20)
    with pytest.raises(InputError, match=r"Cannot read the uploaded image 'broken.nii.gz' as NIFTI") as e:
        load_input(bad)
    assert e.value.status == 400
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match=r"Unsupported image type '.txt'") as e:
        load_input(txt)
    assert e.value.status == 415
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8), np.nan, np.float32), np.eye(4)), str(nan))
    with pytest.raises(InputError, match="NaN"):
        load_input(nan)


def test_dicom_slice_comes_back_as_nifti_at_the_same_place(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = tmp_path / "ct_small.dcm"
    shutil.copyfile(get_testdata_file("CT_small.dcm"), src)
    img, kind = load_input(src)
    assert kind == "dicom"
    path, info = write_result(img, src, kind, tmp_path, "ct_small_restore")
    out = nib.load(path)
    ds = pydicom.dcmread(str(src))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(np.asarray(out.dataobj)[..., 0], hu.T.astype(np.float32))  # MONAI's (columns, rows) order
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    np.testing.assert_allclose(out.affine[:3, 3], [-x, -y, z], atol=1e-4)  # DICOM's LPS position in NIfTI's RAS


def test_nrrd_input_as_3d_slicer_may_send_it(tmp_path):
    itk = pytest.importorskip("itk")
    vol = np.random.default_rng(2).normal(0, 50, (3, 20, 16)).astype(np.float32)  # ITK's (z, y, x)
    image = itk.image_from_array(vol)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    src = tmp_path / "vol.nrrd"
    itk.imwrite(image, str(src))
    img, kind = load_input(src)
    assert kind == "nrrd" and img.shape == (1, 16, 20, 3)
    out = nib.load(write_result(img, src, kind, tmp_path, "vol_restore")[0])
    np.testing.assert_allclose(np.asarray(out.dataobj), vol.transpose(2, 1, 0))
    np.testing.assert_allclose(out.affine[:3, 3], [-10.0, 20.0, 30.0], atol=1e-5)  # LPS origin in RAS
    np.testing.assert_allclose(np.abs(np.diag(out.affine)[:3]), [0.5, 0.6, 2.0], atol=1e-6)


def test_pet_bundle_serves_from_any_working_directory_in_the_input_units(tmp_path, monkeypatch):
    """The PET bundle loads from another working directory (self-contained); its per-slice app
    transforms normalise by SUV (sidecar) and Invertd brings the prediction back to Bq/mL."""
    import json

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = RAT(in_channels=1, out_channels=1, feature_size=8).eval()
    torch.save(net.state_dict(), tmp_path / "pet.pt")
    b = RATBundle("pet", REPO / "bundles" / "pet", {"feature_size": 8, "ckpt_path": str(tmp_path / "pet.pt"),
                                                    "region_cache_dir": str(tmp_path / "regions")})  # fmt: skip
    vol = np.random.default_rng(0).uniform(0, 9000, (24, 28, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "p.nii.gz"))
    (tmp_path / "p.json").write_text(json.dumps({"InjectedRadioactivity": 300, "BodyWeight": 70}))
    img, kind = load_input(tmp_path / "p.nii.gz")
    out = SlicePipeline(b).restore(img, kind)
    factor = 70_000 / 300e6 / 10.0  # SUV / suv_scale per Bq/mL
    for k in range(2):
        x = torch.from_numpy(vol[..., k] * factor)[None]
        r = torch.as_tensor(np.asarray(RegionPartition(method="auto", window=(0, 1))(x))).long()[None]
        with torch.no_grad():
            want = net(x[None], r)[0, 0] / factor
        torch.testing.assert_close(out[0, ..., k].as_tensor(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_pathology_bundle_serves_large_images_through_sliding_windows(tmp_path, monkeypatch):
    """The pathology app path: whole-image region map, the bundle's SlidingWindowInferer (roi 32 on a 40 x 50 image:
    several overlapping windows), output back in 0..255; equal to MONAI's sliding window run by hand."""
    from monai.inferers import sliding_window_inference

    from monai_rat.engines.sliding_regions import ConditionRegionsNetwork

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = RAT(in_channels=3, out_channels=3, feature_size=8).eval()
    torch.save(net.state_dict(), tmp_path / "path.pt")
    b = RATBundle("pathology", REPO / "bundles" / "pathology", {"feature_size": 8, "ckpt_path": str(tmp_path / "path.pt"),
                  "region_cache_dir": str(tmp_path / "regions"), "roi_size": [32, 32]})  # fmt: skip
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "t.png")
    img, kind = load_input(tmp_path / "t.png")
    pipe = SlicePipeline(b)
    out = pipe.restore(img, kind)
    x = img.as_tensor().float()[None] / 255.0
    r = torch.as_tensor(np.asarray(RegionPartition(method="auto", window=(0, 1))(x[0]))).long()[None]
    np.testing.assert_array_equal(pipe.regions(img, kind).numpy(), r[0].numpy())
    with torch.no_grad():
        want = sliding_window_inference(x, (32, 32), 1, ConditionRegionsNetwork(net), overlap=0.25, mode="gaussian",
                                        condition=r.expand(-1, 3, -1, -1))  # fmt: skip
        whole = net(x, r)
    assert out.shape == img.shape
    torch.testing.assert_close(out.as_tensor(), want[0] * 255.0, rtol=1e-5, atol=1e-3)
    assert (out.as_tensor() - whole[0] * 255.0).abs().max() > 1e-2  # the windows matter: not a whole-image pass
