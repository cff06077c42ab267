"""The offline default: superpixels on the real CT slice, and the factory that picks SAM or superpixels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import pydicom_test_file, shared_fixture
from sam_tiny_helpers import KEEP_ALL, blob_image, tiny_sam

from monai_rat.transforms import (
    RegionPartition,
    RegionPartitiond,
    SAMPartition,
    SuperpixelPartition,
    SuperpixelPartitiond,
)
from monai_rat.transforms.partition import CHECKPOINT_ENV


def _full_partition(regions, shape):
    assert regions.shape == shape and regions.dtype in (np.int32, torch.int32)
    labels = np.unique(np.asarray(regions))
    np.testing.assert_array_equal(labels, np.arange(1, labels.size + 1))  # every pixel labelled, 1..L
    return labels.size


def _ct_slice(source: str):
    """A real 512 x 512 CT slice: a head slice pydicom ships (read by MONAI's ITKReader, in HU), or the
    quarter-dose slice of the shared fixtures (read by MONAI's PIL reader; skipped when absent)."""
    from monai.transforms import LoadImage

    from monai_rat.data import EnsureSlice2D

    path = pydicom_test_file("J2K_pixelrep_mismatch.dcm") if source == "pydicom" else shared_fixture("quarter_dose_ct_512.png")
    return EnsureSlice2D()(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))  # (1, 512, 512)


@pytest.mark.parametrize("source", ["pydicom", "shared"])
@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_real_ct_slice(method, source):
    ct = _ct_slice(source)
    regions = SuperpixelPartition(method=method)(ct)
    n = _full_partition(regions, (1, 512, 512))
    assert n >= 10
    assert regions.meta["filename_or_obj"] == ct.meta["filename_or_obj"]
    # regions follow anatomy: in most regions the intensity varies less than over the whole slice
    img, reg = np.asarray(ct[0]), np.asarray(regions[0])
    inside = np.mean([img[reg == r].std() for r in range(1, n + 1) if (reg == r).sum() > 50])
    assert inside < 0.5 * img.std()


def test_contract_shapes_channels_3d_and_constant():
    part = SuperpixelPartition()
    grey = blob_image(40, 48)
    _full_partition(part(grey), (1, 40, 48))
    _full_partition(part(np.concatenate([grey, grey * 0.5, -grey], 0)), (1, 40, 48))
    vol = np.stack([blob_image(40, 48, seed=s)[0] for s in range(3)], -1)[None]
    out = part(torch.from_numpy(vol))
    assert out.shape == (1, 40, 48, 3) and out.dtype == torch.int32
    for k in range(3):
        np.testing.assert_array_equal(out[0, :, :, k].numpy(), part(vol[..., k])[0])
    assert (part(np.full((1, 20, 20), 7.0)) == 1).all()
    slic = SuperpixelPartition(method="slic", n_segments=9)
    assert 2 <= int(slic(grey).max()) <= 20


def test_bad_input_and_settings():
    part = SuperpixelPartition()
    img = blob_image(16, 16)
    img[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        part(img)
    img[0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        part(img)
    with pytest.raises(ValueError, match="method must be one of"):
        SuperpixelPartition(method="watershed")
    with pytest.raises(ValueError, match="window must be"):
        SuperpixelPartition(window=(5, 1))(blob_image(16, 16))


def test_dictionary_transform():
    img = blob_image(32, 32)
    d = SuperpixelPartitiond(keys="image", regions_key="sp", method="slic")({"image": img})
    np.testing.assert_array_equal(d["sp"], SuperpixelPartition(method="slic")(img))


def test_factory_auto_without_checkpoint_uses_superpixels_and_says_so(caplog, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="monai_rat"):
        t = RegionPartitiond(keys="image")
    assert t.method_used == "superpixel" and isinstance(t.partitioner.partitioner, SuperpixelPartition)
    assert "using superpixels (felzenszwalb): no SAM checkpoint configured" in caplog.text
    assert RegionPartitiond(keys="image", checkpoint="").method_used == "superpixel"  # "" from a config: unset
    img = blob_image(32, 32)
    np.testing.assert_array_equal(t({"image": img})["regions"], SuperpixelPartition()(img))


def test_factory_picks_sam_with_a_checkpoint_or_model(caplog, monkeypatch, tmp_path):
    from monai_rat.transforms import register_sam_model

    register_sam_model("tiny_test_factory", lambda checkpoint=None: tiny_sam())
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), ckpt)
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="monai_rat"):
        t = RegionPartition(checkpoint=ckpt, model_type="tiny_test_factory", device="cpu", sam_kwargs=KEEP_ALL)
    assert t.method_used == "sam" and isinstance(t.partitioner, SAMPartition)
    assert f"using SAM (tiny_test_factory) with checkpoint '{ckpt}' from the argument `checkpoint`" in caplog.text
    img = blob_image(32, 32)
    np.testing.assert_array_equal(t(img), SAMPartition(model=tiny_sam(), **KEEP_ALL)(img))
    # the environment variable configures it too
    monkeypatch.setenv(CHECKPOINT_ENV, str(ckpt))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_rat"):
        env = RegionPartitiond(keys="image", model_type="tiny_test_factory", sam_kwargs=KEEP_ALL)
    assert env.method_used == "sam" and f"environment variable {CHECKPOINT_ENV}" in caplog.text
    # ... unless superpixels are asked for
    assert RegionPartitiond(keys="image", method="superpixel").method_used == "superpixel"
    monkeypatch.delenv(CHECKPOINT_ENV)
    assert RegionPartition(model=tiny_sam(), sam_kwargs=KEEP_ALL).method_used == "sam"


def test_factory_bad_configuration(monkeypatch, tmp_path):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(ValueError, match="method='sam' needs a SAM checkpoint"):
        RegionPartitiond(keys="image", method="sam")
    with pytest.raises(ValueError, match="method must be one of"):
        RegionPartition(method="sam2")
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError, match=f"checkpoint.*{missing}"):
        RegionPartitiond(keys="image", checkpoint=str(missing))
    monkeypatch.setenv(CHECKPOINT_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=f"checkpoint.*{missing}"):
        RegionPartition()


def test_factory_from_bundle_style_config(tmp_path, monkeypatch):
    """Built with _target_ by MONAI's ConfigParser, as a bundle JSON does."""
    from monai.bundle import ConfigParser

    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    parser = ConfigParser(
        {
            "part": {
                "_target_": "monai_rat.transforms.RegionPartitiond",
                "keys": "image",
                "regions_key": "regions",
                "method": "auto",
                "checkpoint": None,
                "model_type": "vit_b",
                "cache_dir": str(tmp_path / "regions"),
                "window": [-160, 240],
            }
        }
    )
    t = parser.get_parsed_content("part")
    out = t({"image": blob_image(32, 32, offset=700.0)})
    _full_partition(out["regions"], (1, 32, 32))
    assert list((tmp_path / "regions").rglob("*.npy"))
