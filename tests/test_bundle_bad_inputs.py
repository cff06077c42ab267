"""Bad inputs through the PET and pathology bundles' real command lines: each must fail at once, naming the file.

For both bundles: mismatched pairs, unreadable files (truncated or corrupt voxel data, a corrupt
header, a datalist naming a file that does not exist), an image smaller than the training patch, and
an unreadable input to inference. Every case is ``python -m monai.bundle ...`` exactly as a user types
it (tiny sizes, ``--num_workers 0``); the commands run one after the other in processes forked from
one interpreter that has imported MONAI once (``bundle_helpers.run_bundle_commands``), so the whole
module takes seconds rather than ten per command. Each must exit non-zero with a message that names
the bad file and says what is wrong, and a training command must stop before its first iteration
(ignite logs "Engine run resuming from iteration 0" when ``trainer.run()`` starts; nothing is written
under models/).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_helpers import run_bundle_commands
from PIL import Image

BAD = [
    "--num_iterations", "2",
    "--val_interval", "2",
    "--batch_size", "2",
    "--patch_size", "[32,32]",
    "--feature_size", "8",
    "--num_workers", "0",
]  # fmt: skip


def _volume(path: Path, shape, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32) + 0.5  # no air-only slice
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _pet_folder(root: Path, shapes: dict) -> Path:
    """``{patient: (low_shape, full_shape)}`` -> ``root/low_dose/<patient>.nii.gz`` and ``root/full_dose/...``."""
    for name, (low, full) in shapes.items():
        _volume(root / "low_dose" / f"{name}.nii.gz", low)
        _volume(root / "full_dose" / f"{name}.nii.gz", full, seed=1)
    return root


def _png(path: Path, hw, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _truncate(path: Path) -> Path:
    """Keep the first half of the file: the header reads, the voxel data does not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pathology_folder(root: Path) -> Path:
    _png(root / "train" / "a.png", (48, 40))
    _png(root / "test" / "b.png", (48, 40), seed=1)
    return root


def _datalist(path: Path, training: list, validation: list) -> Path:
    path.write_text(json.dumps({"training": training, "validation": validation}))
    return path


OK = ((40, 40, 3), (40, 40, 3))


def _cases(w: Path) -> dict:
    """``{case: (command line, [texts the output must hold], is_training)}`` after writing each case's files."""
    cases = {}

    def train(bundle: str, case: str, dataset: Path, expect: list[str]) -> None:
        args = ["run", "training", "--config_file", f"bundles/{bundle}/train.json", "--dataset_dir", str(dataset),
                "--output_dir", str(w / "runs" / case), "--region_cache_dir", str(w / "regions"), *(["--slice_cache_dir", str(w / "slices")] if bundle == "pet" else []), *BAD]  # fmt: skip
        cases[case] = (args, expect, True)

    def infer(bundle: str, case: str, input_path: Path, expect: list[str]) -> None:
        args = ["run", "--config_file", f"bundles/{bundle}/inference.json", "--input_path", str(input_path),
                "--ckpt_path", str(w / f"{bundle}_model.pt"), "--output_dir", str(w / "runs" / case),
                "--region_cache_dir", str(w / "regions"), "--feature_size", "8"]  # fmt: skip
        cases[case] = (args, expect, False)

    # ---- PET: (a) mismatched pairs
    d = _pet_folder(w / "pet_shapes", {"P1": OK, "P2": ((40, 40, 3), (40, 36, 3))})
    train("pet", "pet_pair_shapes_differ", d, [
        str(d / "low_dose" / "P2.nii.gz"), str(d / "full_dose" / "P2.nii.gz"),
        "low_dose shape (40, 40, 3) != full_dose shape (40, 36, 3)",
    ])  # fmt: skip
    d = _pet_folder(w / "pet_unpaired", {"P1": OK, "P2": OK, "P3": OK})
    (d / "full_dose" / "P2.nii.gz").unlink()
    train("pet", "pet_patient_in_one_folder", d, [str(d), "only in low_dose/: ['P2']; only in full_dose/: []"])
    js = _datalist(w / "pet_shapes.json",
                   [{"image": "pet_shapes/low_dose/P2.nii.gz", "label": "pet_shapes/full_dose/P2.nii.gz"}],
                   [{"image": "pet_shapes/low_dose/P1.nii.gz", "label": "pet_shapes/full_dose/P1.nii.gz"}])  # fmt: skip
    train("pet", "pet_json_pair_shapes_differ", js, [
        str(js), "item 0 of 'training'", str(w / "pet_shapes" / "full_dose" / "P2.nii.gz"),
        "low_dose shape (40, 40, 3) != full_dose shape (40, 36, 3)",
    ])  # fmt: skip
    # ---- PET: (b) unreadable files
    d = _pet_folder(w / "pet_truncated", {"P1": OK, "P2": OK})
    bad = _truncate(d / "full_dose" / "P1.nii.gz")
    train("pet", "pet_truncated_volume", d, [f"Cannot read '{bad}' (EOFError", "truncated"])
    d = _pet_folder(w / "pet_corrupt", {"P1": OK, "P2": OK})
    (d / "low_dose" / "P2.nii.gz").write_bytes(b"this is not a NIfTI file")
    train("pet", "pet_corrupt_header", d, [f"'{d / 'low_dose' / 'P2.nii.gz'}' is not a readable NIfTI file"])
    js = _datalist(w / "pet_missing.json",
                   [{"image": "pet_shapes/low_dose/P1.nii.gz", "label": "pet_shapes/full_dose/NOPE.nii.gz"}],
                   [{"image": "pet_shapes/low_dose/P1.nii.gz", "label": "pet_shapes/full_dose/P1.nii.gz"}])  # fmt: skip
    train("pet", "pet_json_missing_file", js, [
        str(js), f"names label='{w / 'pet_shapes' / 'full_dose' / 'NOPE.nii.gz'}', which does not exist",
    ])  # fmt: skip
    # ---- PET: (c) slices smaller than the 32 x 32 patch
    d = _pet_folder(w / "pet_small", {"P1": OK, "P2": ((20, 40, 3), (20, 40, 3)), "P3": OK})
    train("pet", "pet_slice_smaller_than_patch", d, [
        str(d / "low_dose" / "P2.nii.gz"), "slices along axis 2 are 20 x 40", "smaller than min_size 32 x 32",
    ])  # fmt: skip
    # ---- PET inference: corrupt header (found when listing), truncated voxel data (found when read)
    d = w / "pet_infer_corrupt"
    d.mkdir()
    (d / "vol.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    infer("pet", "pet_inference_corrupt_header", d, [f"input_path: '{d / 'vol.nii.gz'}' is not a readable NIfTI"])
    bad = _truncate(_volume(w / "pet_infer_truncated" / "vol.nii.gz", (40, 40, 3)))
    infer("pet", "pet_inference_truncated_volume", bad.parent, [f"Cannot read '{bad}' (EOFError"])

    # ---- pathology: (a) a "pair": the datalist lists the high-quality image only, the pair is made on the fly
    _png(w / "path_pairs" / "lq.png", (36, 40))
    _png(w / "path_pairs" / "hq.png", (48, 40))
    _png(w / "path_pairs" / "val.png", (48, 40))
    js = _datalist(w / "path_pairs.json", [{"image": "path_pairs/lq.png", "label": "path_pairs/hq.png"}],
                   [{"image": "path_pairs/val.png"}])  # fmt: skip
    train("pathology", "pathology_json_image_label_pair", js, [
        str(js), "item 0 of 'training' pairs image='path_pairs/lq.png' with label='path_pairs/hq.png'",
        "lists only the high-quality image",
    ])  # fmt: skip
    # ---- pathology: (b) unreadable files
    d = _pathology_folder(w / "path_truncated")
    bad = _truncate(_png(d / "train" / "c.png", (64, 64), seed=2))
    train("pathology", "pathology_truncated_png", d, [f"Cannot read '{bad}' (OSError: image file is truncated)"])
    d = _pathology_folder(w / "path_corrupt")
    (d / "train" / "c.png").write_bytes(b"not a PNG")
    train("pathology", "pathology_corrupt_png", d, [f"'{d / 'train' / 'c.png'}' is not a readable image"])
    js = _datalist(w / "path_missing.json", [{"image": "path_pairs/NOPE.png"}], [{"image": "path_pairs/val.png"}])
    train("pathology", "pathology_json_missing_file", js, [
        str(js), f"names '{w / 'path_pairs' / 'NOPE.png'}', which does not exist",
    ])  # fmt: skip
    # ---- pathology: (c) an image smaller than the 32 x 32 patch
    d = _pathology_folder(w / "path_small")
    _png(d / "train" / "tiny.png", (20, 40))
    train("pathology", "pathology_image_smaller_than_patch", d, [
        f"{d / 'train' / 'tiny.png'} (20 x 40)", "smaller than min_size=32",
    ])  # fmt: skip
    # ---- pathology inference
    d = w / "path_infer_corrupt"
    d.mkdir()
    (d / "tile.png").write_bytes(b"not a PNG")
    infer("pathology", "pathology_inference_corrupt_png", d, [f"input_path: '{d / 'tile.png'}' is not a readable image"])
    bad = _truncate(_png(w / "path_infer_truncated" / "tile.png", (64, 64)))
    infer("pathology", "pathology_inference_truncated_png", bad, [f"Cannot read '{bad}' (OSError: image file is truncated)"])
    # ---- CT inference (same checked loader)
    bad = _truncate(_png(w / "ct_infer_truncated" / "slice.png", (64, 64)))
    infer("ct", "ct_inference_truncated_png", bad, [f"Cannot read '{bad}' (OSError: image file is truncated)"])
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    w = tmp_path_factory.mktemp("bundle_bad_inputs")
    cases = _cases(w)
    # the inference cases need a checkpoint of the tiny network: the bundle's own network_def, saved by a
    # bundle command whose "run" is overridden
    # (--ckpt_path to no file: the network is built from --feature_size, not read from the shipped demo weights)
    save = [["run", "--config_file", f"bundles/{b}/inference.json", "--feature_size", "8", "--ckpt_path", str(w / "none.pt"),
             "--region_cache_dir", str(w / "regions"), "--run", f"$torch.save(@network_def.state_dict(), {str(w / f'{b}_model.pt')!r})"]
            for b in ("ct", "pet", "pathology")]  # fmt: skip
    results = run_bundle_commands(save + [args for args, _, _ in cases.values()], w / "cache", w / "logs")
    for r in results[: len(save)]:
        assert r["returncode"] == 0, r["output"][-3000:]
    return {"work": w, "cases": cases, "results": dict(zip(cases, results[len(save) :]))}


CASES = [
    "pet_pair_shapes_differ",
    "pet_patient_in_one_folder",
    "pet_json_pair_shapes_differ",
    "pet_truncated_volume",
    "pet_corrupt_header",
    "pet_json_missing_file",
    "pet_slice_smaller_than_patch",
    "pet_inference_corrupt_header",
    "pet_inference_truncated_volume",
    "pathology_json_image_label_pair",
    "pathology_truncated_png",
    "pathology_corrupt_png",
    "pathology_json_missing_file",
    "pathology_image_smaller_than_patch",
    "pathology_inference_corrupt_png",
    "pathology_inference_truncated_png",
    "ct_inference_truncated_png",
]


def test_every_case_is_listed(runs):
    assert sorted(runs["cases"]) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_at_once_naming_the_file(runs, case):
    args, expect, training = runs["cases"][case]
    r = runs["results"][case]
    out = r["output"]
    shown = f"python -m monai.bundle {' '.join(args)} -> {r['returncode']} in {r['seconds']:.1f} s:\n{out[-4000:]}"
    assert r["returncode"] != 0, shown
    for text in expect:
        assert text in out, f"{text!r} not in the output of {shown}"
    # the reason is the error itself, not a log line: it is in a traceback's exception line, and the last line
    assert re.search(r"^\w*(Error|Exception): .*" + re.escape(expect[0]), out, re.M), shown
    assert expect[0] in [ln for ln in out.splitlines() if ln.strip()][-1], shown
    if training:
        assert "Engine run resuming from iteration 0" not in out, f"training started: {shown}"
        models = runs["work"] / "runs" / case / "models"
        assert not models.exists() or not any(models.iterdir()), shown
    else:
        assert not list((runs["work"] / "runs" / case).glob("*_rat.*")), shown
