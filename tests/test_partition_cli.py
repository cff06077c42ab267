"""Bulk precompute: python -m monai_rat.partition over NIfTI, PNG and DICOM folders and datalists, twice (second: all hits).

Maps come back in the input's format and orientation: PNG label images for PNGs, NIfTI with the input's affine
(slice position included) for NIfTI and DICOM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from conftest import pydicom_test_file
from sam_tiny_helpers import blob_image, tiny_sam

from monai_rat.partition import find_images, main, read_datalist
from monai_rat.transforms import register_sam_model
from monai_rat.transforms.partition import CHECKPOINT_ENV
from monai_rat.transforms.partition import sam as sam_module

REPO = Path(__file__).resolve().parents[1]
BUILDS: list[int] = []
register_sam_model("tiny_test_cli", lambda checkpoint=None: BUILDS.append(1) or tiny_sam())


@pytest.fixture
def image_folder(tmp_path):
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(blob_image(40, 36, seed=1)[0], affine), src / "slice.nii.gz")
    vol = np.stack([blob_image(40, 36, seed=s)[0] for s in (2, 3)], -1)
    nib.save(nib.Nifti1Image(vol, affine), src / "sub" / "volume.nii")
    grey = blob_image(30, 44, seed=4)[0]
    Image.fromarray(np.uint8((grey - grey.min()) / (grey.max() - grey.min()) * 255)).save(src / "grey.png")
    rgb = np.stack([np.asarray(Image.open(src / "grey.png"))] * 3, -1)
    rgb[..., 0] = 255 - rgb[..., 0]
    Image.fromarray(rgb).save(src / "sub" / "colour.png")
    (src / "notes.txt").write_text("not an image")
    return src


def _summary(out, name="partition_summary.json"):
    return json.loads((out / name).read_text())


def _outputs(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*_regions.*") if p.name.endswith((".nii.gz", ".png")))


def _read_map(path):
    """A written map as an array in the file's own layout (PNG: rows x columns; NIfTI: its data array)."""
    return np.asarray(Image.open(path)) if path.suffix == ".png" else np.asarray(nib.load(path).dataobj)


EXPECTED = ["grey_regions.png", "slice_regions.nii.gz", "sub/colour_regions.png", "sub/volume_regions.nii.gz"]


def test_folder_twice_superpixel(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    out = tmp_path / "out"
    assert main([str(image_folder), "-o", str(out), "--no-progress"]) == 0
    first = _summary(out)
    assert first["method"] == "superpixel" and first["computed"]["count"] == 4 and first["cached"]["count"] == 0
    assert _outputs(out) == EXPECTED
    # NIfTI maps: int32, the image's grid and affine, labels 1..L
    vol = nib.load(out / "sub" / "volume_regions.nii.gz")
    assert vol.shape == (40, 36, 2) and vol.get_data_dtype() == np.int32
    np.testing.assert_allclose(vol.affine, np.diag([0.7, 0.8, 2.5, 1.0]))
    # PNG maps: label images with the picture's rows and columns (MONAI's PIL reader puts the width first)
    png = Image.open(out / "sub" / "colour_regions.png")
    assert png.size == Image.open(image_folder / "sub" / "colour.png").size == (44, 30) and png.mode == "L"
    for name in EXPECTED:
        data = _read_map(out / name)
        assert data.min() == 1
    text = capsys.readouterr().out
    assert "computed : 4  per image mean" in text and "cached   : 0" in text
    before = {p: (out / p).stat().st_mtime_ns for p in EXPECTED}
    # second run: every image is a cache hit, nothing is rewritten
    assert main([str(image_folder), "-o", str(out), "--no-progress"]) == 0
    second = _summary(out)
    assert second["computed"]["count"] == 0 and second["cached"]["count"] == 4
    assert {p: (out / p).stat().st_mtime_ns for p in EXPECTED} == before
    assert all(isinstance(r["seconds"], float) for r in second["items"])
    assert "cached   : 4  per image mean" in capsys.readouterr().out
    # a deleted output is rewritten from the cache, still without recomputing
    (out / "grey_regions.png").unlink()
    assert main([str(image_folder), "-o", str(out), "--no-progress"]) == 0
    assert _summary(out)["cached"]["count"] == 4 and (out / "grey_regions.png").is_file()


def test_folder_twice_sam_batched(image_folder, tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), ckpt)
    monkeypatch.setattr(sam_module, "_MODELS", {})
    BUILDS.clear()
    out = tmp_path / "out"
    args = [str(image_folder), "-o", str(out), "--checkpoint", str(ckpt), "--model-type", "tiny_test_cli",
            "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
            "--batch-size", "3", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    first = _summary(out)
    assert first["method"] == "sam" and first["batch_size"] == 3 and first["computed"]["count"] == 4
    assert len(BUILDS) == 1 and _outputs(out) == EXPECTED
    monkeypatch.setattr(sam_module, "_MODELS", {})
    assert main(args) == 0
    assert _summary(out)["cached"]["count"] == 4 and len(BUILDS) == 1  # second run: no model built


def test_datalist_and_torchrun_shards(image_folder, tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    datalist = image_folder / "datalist.json"
    items = [{"image": p, "label": 0} for p in ("slice.nii.gz", "sub/volume.nii", "grey.png", "sub/colour.png")]
    datalist.write_text(json.dumps({"training": items[:3], "validation": items[3:]}))
    assert [n for _, n in read_datalist(datalist)] == ["slice", "sub/volume", "grey"]
    assert [n for _, n in read_datalist(datalist, "validation")] == ["sub/colour"]
    out = tmp_path / "out"
    shards = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main([str(datalist), "-o", str(out), "--no-progress"]) == 0
        s = _summary(out, f"partition_summary_rank{rank}.json")
        assert s["rank"] == rank and s["world_size"] == 2
        shards[rank] = [Path(r["input"]).name for r in s["items"]]
    assert shards == {0: ["slice.nii.gz", "grey.png"], 1: ["volume.nii"]}  # items[rank::world_size]
    assert _outputs(out) == ["grey_regions.png", "slice_regions.nii.gz", "sub/volume_regions.nii.gz"]


def test_maps_in_the_input_format_and_orientation(tmp_path, monkeypatch):
    """PNG in: a PNG map lying on the picture; DICOM in: NIfTI on the slice's place; NIfTI in: the file's affine."""
    import shutil

    import pydicom
    from monai.transforms import LoadImage

    from monai_rat.transforms import SuperpixelPartition

    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    src = tmp_path / "in"
    src.mkdir()
    # a picture that is not square and whose top half is bright: orientation mistakes show
    pic = np.zeros((30, 44), np.uint8)
    pic[:12] = 220
    pic[12:, 30:] = 110
    Image.fromarray(pic).save(src / "pic.png")
    shutil.copyfile(pydicom_test_file("CT_small.dcm"), src / "ct.dcm")
    affine = np.array([[0.0, -0.8, 0.0, 12.0], [0.7, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 41.5], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(blob_image(24, 20, seed=5)[0], affine), src / "oblique.nii.gz")
    out = tmp_path / "out"
    assert main([str(src), "-o", str(out), "--no-progress"]) == 0
    assert _outputs(out) == ["ct_regions.nii.gz", "oblique_regions.nii.gz", "pic_regions.png"]
    # PNG: the same map a MONAI pipeline sees, turned back to the picture's rows and columns
    written = np.asarray(Image.open(out / "pic_regions.png"))
    loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(src / "pic.png"))  # (1, 44, 30)
    expected = np.asarray(SuperpixelPartition()(loaded))[0].T
    assert written.shape == pic.shape == (30, 44)
    np.testing.assert_array_equal(written, expected)
    # the regions lie on the picture: the bright top band's regions are not below it, the two lower parts differ
    assert set(written[:10].ravel().tolist()).isdisjoint(written[14:].ravel().tolist()) and written[20, 5] != written[20, 40]
    # DICOM: NIfTI whose affine keeps the slice's position (z row: SliceThickness, ImagePositionPatient z), in RAS
    ds = pydicom.dcmread(src / "ct.dcm")
    ct = nib.load(out / "ct_regions.nii.gz")
    assert ct.shape[:2] == (int(ds.Columns), int(ds.Rows))
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    np.testing.assert_allclose(ct.affine[:3, 3], [-x, -y, z], atol=1e-3)  # LPS -> RAS
    np.testing.assert_allclose(ct.affine[2], [0, 0, float(ds.SliceThickness), z], atol=1e-3)
    # NIfTI: the input file's own affine
    np.testing.assert_allclose(nib.load(out / "oblique_regions.nii.gz").affine, affine, atol=1e-6)


def test_bad_files_are_reported_not_fatal(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    bad = np.full((8, 8), np.nan, np.float32)
    nib.save(nib.Nifti1Image(bad, np.eye(4)), image_folder / "nan.nii.gz")
    (image_folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main([str(image_folder), "-o", str(out), "--no-progress"]) == 1
    s = _summary(out)
    failed = {Path(r["input"]).name: r["error"] for r in s["items"] if r["status"] == "failed"}
    assert set(failed) == {"nan.nii.gz", "broken.png"} and "NaN" in failed["nan.nii.gz"]
    assert s["computed"]["count"] == 4
    assert "nan.nii.gz: ValueError" in capsys.readouterr().out


def test_missing_input_and_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="input: no such folder"):
        main([str(tmp_path / "none"), "-o", str(tmp_path / "out")])
    (tmp_path / "imgs").mkdir()
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError, match=f"checkpoint.*{missing}"):
        main([str(tmp_path / "imgs"), "-o", str(tmp_path / "out"), "--checkpoint", str(missing)])
    assert find_images(tmp_path / "imgs") == []


def test_module_and_console_script(image_folder, tmp_path):
    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "monai-rat-partition"]
    assert scripts and scripts[0].value == "monai_rat.partition:main"
    assert "console_scripts =\n    monai-rat-partition = monai_rat.partition:main" in (REPO / "setup.cfg").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", CHECKPOINT_ENV)}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "monai_rat.partition", str(image_folder), "-o", str(out), "--method", "superpixel"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "computed : 4" in run.stdout
    assert "regions rank 0/1: 100%" in run.stderr  # the tqdm progress bar
    assert "using superpixels" in run.stderr


def test_real_torchrun_two_ranks_split_the_folder(image_folder, tmp_path):
    """Under torchrun each rank takes items[RANK::WORLD_SIZE]; together they cover every image once."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", CHECKPOINT_ENV)}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "monai_rat.partition", str(image_folder), "-o", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [_summary(out, f"partition_summary_rank{r}.json") for r in (0, 1)]
    names = [[Path(i["input"]).relative_to(image_folder).as_posix() for i in s["items"]] for s in ranks]
    everything = [Path(p).relative_to(image_folder).as_posix() for p, _ in find_images(image_folder)]
    assert names == [everything[0::2], everything[1::2]]
    assert all(s["world_size"] == 2 and s["computed"]["count"] == 2 for s in ranks)
    assert _outputs(out) == EXPECTED
