"""BicubicDegrade(d), the pathology demo tiles, pathology_datalist and the load/degrade transforms."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from monai_rat.data import PATHOLOGY_DEMO_BLOCKS, make_pathology_demo, pathology_datalist, pathology_load_transforms
from monai_rat.transforms import BicubicDegrade, BicubicDegraded


def _ihc(dtype=np.float32):
    from skimage.data import immunohistochemistry

    img = immunohistochemistry().transpose(2, 0, 1)
    return img.astype(np.float32) / 255 if dtype == np.float32 else img


def test_degrade_shape_blur_and_psnr():
    img = _ihc()[:, :256, :256]
    out = BicubicDegrade()(img)
    assert out.shape == img.shape and out.dtype == np.float32
    psnr = 10 * np.log10(1 / np.mean((out - img) ** 2))
    assert 20 < psnr < 35, psnr  # blurred, not destroyed (ihc at 4x: about 27 dB)
    assert psnr < 10 * np.log10(1 / np.mean((BicubicDegrade(factor=2)(img) - img) ** 2))  # 4x loses more than 2x
    # a smooth image survives almost unchanged; fine detail does not
    yy, xx = np.mgrid[:64, :64] / 64.0
    smooth = np.stack([0.5 + 0.2 * np.sin(2 * np.pi * xx)] * 3).astype(np.float32)
    assert np.abs(BicubicDegrade()(smooth) - smooth)[:, 8:-8, 8:-8].max() < 0.02
    checker = (((np.indices((64, 64)).sum(0)) % 2).astype(np.float32))[None]
    assert np.abs(BicubicDegrade()(checker) - 0.5).max() < 0.1  # 1-pixel pattern averaged out


def test_degrade_equals_explicit_torch_resizes_and_keeps_types():
    import torch.nn.functional as F

    img = torch.rand(3, 60, 52)
    ref = F.interpolate(F.interpolate(img[None], size=(15, 13), mode="bicubic", antialias=True), size=(60, 52), mode="bicubic")[0]
    torch.testing.assert_close(BicubicDegrade()(img), ref)
    mt = MetaTensor(img, meta={"filename_or_obj": "a.png"})
    out = BicubicDegrade()(mt)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    u8 = _ihc(np.uint8)[:, :64, :64]
    out = BicubicDegrade()(u8)
    assert out.dtype == np.uint8 and out.shape == u8.shape  # rounded, kept in [0, 255] (no wrap-around)
    f = BicubicDegrade()(u8.astype(np.float32))
    assert np.abs(out.astype(np.float32) - np.clip(np.round(f), 0, 255)).max() == 0
    clipped = BicubicDegrade(clip_range=(0, 1))(checker := np.kron(np.eye(2), np.ones((8, 8)))[None].astype(np.float32))
    assert clipped.min() >= 0 and clipped.max() <= 1 and checker.shape == clipped.shape


def test_degrade_dictionary():
    img = torch.rand(3, 32, 32)
    d = BicubicDegraded(keys="label", output_keys="image")({"label": img})
    assert d["label"] is img
    torch.testing.assert_close(d["image"], BicubicDegrade()(img))
    d = BicubicDegraded(keys="image")({"image": img})
    torch.testing.assert_close(d["image"], BicubicDegrade()(img))
    with pytest.raises(ValueError, match="output_keys"):
        BicubicDegraded(keys=("a", "b"), output_keys="c")
    with pytest.raises(ValueError, match="low_res_keys"):
        BicubicDegraded(keys=("a", "b"), low_res_keys="c")


def test_downsample_is_the_low_resolution_image_the_degradation_up_samples():
    """The LR image super-resolution baselines start from is exactly the degradation's own down-step."""
    from monai_rat.data.pathology_demo import pathology_load_transforms
    from monai_rat.transforms import ClassicalRestore

    img = torch.rand(3, 36, 48)
    deg = BicubicDegrade(4)
    low = deg.downsample(img)
    assert low.shape == (3, 9, 12) and low.dtype == img.dtype
    assert torch.equal(ClassicalRestore("bicubic", 4)(low), deg(img))  # bit for bit
    d = BicubicDegraded(keys="image", low_res_keys="image_lr")({"image": img})
    assert torch.equal(d["image_lr"], low) and torch.equal(d["image"], deg(img))
    u8 = (np.random.default_rng(0).random((3, 16, 16)) * 255).astype(np.uint8)
    assert deg.downsample(u8).dtype == np.uint8 and deg.downsample(u8).shape == (3, 4, 4)
    assert type(pathology_load_transforms(4, low_res_key="image_lr")[-1].low_res_keys) is tuple


@pytest.mark.parametrize(
    "img, match",
    [(np.ones((8, 8)), r"\(C, H, W\)"), (np.ones((3, 3, 16)), "smaller than the factor"),
     (np.full((1, 8, 8), np.nan), "NaN")],
)
def test_degrade_bad_inputs(img, match):
    with pytest.raises(ValueError, match=match):
        BicubicDegrade()(img)


@pytest.mark.parametrize("kwargs", [{"factor": 1}, {"factor": 2.5}, {"clip_range": (1, 0)}])
def test_degrade_bad_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BicubicDegrade(**kwargs)


def test_demo_tiles_split_reuse_and_transforms(tmp_path, caplog):
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry()
    out = make_pathology_demo(tmp_path)
    assert [len(out[s]) for s in ("training", "validation", "test")] == [21, 4, 4]  # 7 x 3 overlapping, 4 x 1, 4 x 1
    for split in ("training", "validation", "test"):
        for it in out[split]:
            y0, x0, y1, x1 = it["box"]
            tile = np.asarray(Image.open(it["image"]))
            assert tile.shape == (128, 128, 3) and tile.dtype == np.uint8 and (y1 - y0, x1 - x0) == (128, 128)
            np.testing.assert_array_equal(tile, ihc[y0:y1, x0:x1])  # the box says where the tile is
            assert it["source"] == "real" and it["name"] == f"ihc_{split[:5].replace('valid', 'val')}_y{y0:03d}_x{x0:03d}"
    assert len(list(tmp_path.iterdir())) == 1  # no temporary folder left
    assert make_pathology_demo(tmp_path) == out
    os.remove(out["test"][0]["image"])
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        assert make_pathology_demo(tmp_path) == out
    assert "missing" in caplog.text and os.path.isfile(out["test"][0]["image"])
    no_overlap = make_pathology_demo(tmp_path, tile_size=64, train_stride=64)
    assert [len(no_overlap[s]) for s in ("training", "validation", "test")] == [32, 16, 16]
    for bad in ({"tile_size": 256}, {"tile_size": 100}, {"train_stride": 48}, {"train_stride": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_pathology_demo(tmp_path, **bad)
    # the load / degrade chain: image = LQ, label = HQ in [0, 1], aligned
    tile = np.asarray(Image.open(out["training"][0]["image"]))
    d = Compose(pathology_load_transforms())(out["training"][0])
    assert d["image"].shape == d["label"].shape == (3, 128, 128)
    np.testing.assert_allclose(d["label"].numpy(), tile.transpose(2, 1, 0) / 255.0, atol=1e-6)
    torch.testing.assert_close(d["image"].as_tensor(), BicubicDegrade()(d["label"]).as_tensor())


@pytest.mark.parametrize("tile_size, train_stride", [(128, None), (64, 16), (32, 32)])
def test_demo_blocks_are_disjoint(tmp_path, tile_size, train_stride):
    """No pixel of ihc.png is in two splits; each split stays in its column block; training covers its block."""
    out = make_pathology_demo(tmp_path, tile_size=tile_size, train_stride=train_stride)
    owner = np.full((512, 512), "", dtype=object)
    for split in ("training", "validation", "test"):
        c0, c1 = PATHOLOGY_DEMO_BLOCKS[split]
        anatomy = {it["anatomy"] for it in out[split]}
        assert len(anatomy) == 1 and f"columns {c0}-{c1 - 1}" in anatomy.pop()
        covered = np.zeros((512, 512), bool)
        for it in out[split]:
            y0, x0, y1, x1 = it["box"]
            assert c0 <= x0 and x1 <= c1, (split, it["box"])
            seen = owner[y0:y1, x0:x1]
            assert not ((seen != "") & (seen != split)).any(), (split, it["box"])  # no pixel of another split
            owner[y0:y1, x0:x1] = split
            covered[y0:y1, x0:x1] = True
        assert covered[:, c0:c1].all() and not covered[:, :c0].any() and not covered[:, c1:].any()
    assert {it["anatomy"] for it in out["validation"]}.isdisjoint({it["anatomy"] for it in out["test"]})
    # only validation touches test: the test block's left neighbour is the validation block
    assert (owner[:, 383] == "validation").all() and (owner[:, 384] == "test").all() and (owner[:, 255] == "training").all()


def test_demo_through_datalist(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        out = pathology_datalist(cache_dir=tmp_path)
    assert "PATHOLOGY DEMO tiles (21 training / 4 validation / 4 test" in caplog.text and "NOT held out" not in caplog.text
    assert len(out["training"]) == 21 and out["test"] != out["validation"]
    with pytest.raises(ValueError, match="min_size=256"):
        pathology_datalist(cache_dir=tmp_path, min_size=256)  # 128-pixel tiles, 256 patch


def _png(path, size=(40, 48), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size[1], size[0]), color=(10, 20, 30) if mode == "RGB" else 10).save(path)


def _names(out):
    return {split: sorted(it["name"] for it in out[split]) for split in ("training", "validation", "test")}


def test_flat_folder_three_way_split(tmp_path, caplog):
    flat = tmp_path / "flat"
    for i in range(20):
        _png(flat / f"tma_{i:02d}.png")
    (flat / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        out = _names(pathology_datalist(flat, seed=3))
    assert "NOT held out" not in caplog.text
    # test round(20 * 113 / 573) = 4, validation round(0.1 * 16) = 2, training the other 14
    assert [len(out[s]) for s in ("training", "validation", "test")] == [14, 2, 4]
    sets = {s: set(v) for s, v in out.items()}
    assert not sets["training"] & sets["validation"] and not sets["training"] & sets["test"] and not sets["validation"] & sets["test"]
    assert set().union(*sets.values()) == {f"tma_{i:02d}" for i in range(20)}
    assert _names(pathology_datalist(flat, seed=3)) == out and _names(pathology_datalist(flat, seed=4)) != out
    # the paper's 573 images would give 460 / 113 train / test, validation 46 of the 460
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        two_way = pathology_datalist(flat, seed=3, test_fraction=0)
    assert two_way["test"] == two_way["validation"] and len(two_way["validation"]) == 2
    assert 'test_fraction=0 (no test split), so "test" = "validation"' in caplog.text
    few = tmp_path / "few"
    for i in range(2):
        _png(few / f"a{i}.png")
    with pytest.raises(ValueError, match="2 image.*cannot be split into training, validation and test.*test_fraction=0"):
        pathology_datalist(few)
    with pytest.raises(ValueError, match="test_fraction"):
        pathology_datalist(flat, test_fraction=1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        pathology_datalist(flat, val_fraction=0)


def test_train_test_folders_take_validation_from_train(tmp_path, caplog):
    split = tmp_path / "split"
    for name in ("a.png", "b.tif", "c.png", "d.png"):
        _png(split / "train" / name)
    _png(split / "test" / "t1.png")
    _png(split / "test" / "t2.png")
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        out = _names(pathology_datalist(split, val_fraction=0.25))
    assert out["test"] == ["t1", "t2"] and len(out["validation"]) == 1 and len(out["training"]) == 3  # test/ never validates
    assert set(out["validation"]) | set(out["training"]) == {"a", "b", "c", "d"} and "NOT held out" not in caplog.text
    _png(split / "val" / "v.png")  # a val/ folder is used as it is
    assert _names(pathology_datalist(split)) == {"training": ["a", "b", "c", "d"], "validation": ["v"], "test": ["t1", "t2"]}
    one = tmp_path / "one"
    _png(one / "train" / "a.png")
    _png(one / "test" / "t.png")
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        out = pathology_datalist(one)
    assert _names(out) == {"training": ["a"], "validation": ["t"], "test": ["t"]}
    assert "train/ holds 1 image and there is no val/ folder: validation = test/" in caplog.text and "NOT held out" in caplog.text


def test_json_test_split(tmp_path, caplog):
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png")
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"training": [{"image": "a.png"}], "validation": [{"image": "b.png"}], "test": [{"image": "c.png"}]}))
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        out = pathology_datalist(js)
    assert out["test"][0]["image"] == str(tmp_path / "c.png") and "NOT held out" not in caplog.text
    js.write_text(json.dumps({"training": [{"image": "a.png"}], "validation": [{"image": "b.png"}]}))
    with caplog.at_level(logging.WARNING, logger="monai_rat.data.pathology_demo"):
        out = pathology_datalist(js, seed=1)  # another memo key
    assert out["test"] == out["validation"] and "has no (or an empty) 'test' list" in caplog.text
    js.write_text(json.dumps({"training": [{"image": "a.png"}], "validation": [{"image": "b.png"}], "test": [{"image": "nope.png"}]}))
    with pytest.raises(FileNotFoundError, match="item 0 of 'test'.*nope.png"):
        pathology_datalist(js, seed=2)
    _png(tmp_path / "tiny.png", (20, 20))
    js.write_text(json.dumps({"training": [{"image": "a.png"}], "validation": [{"image": "b.png"}], "test": [{"image": "tiny.png"}]}))
    with pytest.raises(ValueError, match=r"tiny.png \(20 x 20\)"):
        pathology_datalist(js, seed=3, min_size=32)  # the test images are checked too


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        pathology_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image file"):
        pathology_datalist(tmp_path / "empty")
    bad = tmp_path / "bad"
    _png(bad / "good.png")
    _png(bad / "good2.png")
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png.*not a readable image"):
        pathology_datalist(bad)
    small = tmp_path / "small"
    _png(small / "big1.png", size=(300, 300))
    _png(small / "big2.png", size=(300, 300))
    _png(small / "tiny.png", size=(100, 300))
    with pytest.raises(ValueError, match=r"tiny.png \(100 x 300\)"):
        pathology_datalist(small, min_size=256)
    with pytest.raises(ValueError, match="demo data only"):
        pathology_datalist(small, tile_size=64)
    js = tmp_path / "bad.json"
    js.write_text(json.dumps({"training": [{"image": "missing.png"}], "validation": []}))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        pathology_datalist(js)
    js.write_text("{")
    with pytest.raises(ValueError, match="not readable JSON"):
        pathology_datalist(js)
    grey = tmp_path / "grey.png"
    _png(grey, mode="L")
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps the transform's error
        Compose(pathology_load_transforms())({"image": str(grey)})
    assert isinstance(err.value.__cause__, ValueError)
    assert "expected an RGB image (3 channels), got 1" in str(err.value.__cause__) and "grey.png" in str(err.value.__cause__)
