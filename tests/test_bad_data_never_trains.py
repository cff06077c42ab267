"""Issue 15: bad data never trains silently, a failing command ends on its reason, nothing is left half-done.

Each numbered failure of the issue, through the interface a user types (``python -m monai.bundle ...``
with tiny sizes; the commands run one after the other in processes forked from one interpreter that
imported MONAI once, ``bundle_helpers.run_bundle_commands``), and the partition CLI's ``main``:

1. a CT pair of two sizes; 2. NaN / inf in a label or an image (training and validation), and a
loss that turns NaN from finite data; 3. a torn ``logs/metrics.json`` from an earlier run;
4. folder inference with one bad file; 5. a CT slice smaller than the patch; 6. inference inputs and
checkpoints that must be named (NaN NIfTI, RGB PNG to CT, truncated checkpoint, another
``feature_size``, a zero-byte DICOM); 7. the last line of every failing command is our message
(``--debug`` gives MONAI's traceback, an unrelated error keeps its traceback); 8. an unreadable DICOM
in an AAPM folder is found before training, and the partition CLI reads a bad SAM checkpoint once.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import run_bundle_commands
from ct_dicom_helpers import write_series
from PIL import Image

TRAIN = [
    "--num_iterations", "2",
    "--val_interval", "2",
    "--batch_size", "1",
    "--patch_size", "[32,32]",
    "--feature_size", "8",
    "--num_workers", "0",
]  # fmt: skip


def _nii(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return str(path)


def _hu(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1000.0, 400.0, shape)


def _with(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a[5, 7] = value
    return a


def _datalist(path: Path, training: list, validation: list) -> str:
    path.write_text(json.dumps({"training": training, "validation": validation}))
    return str(path)


def _last_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _cases(w: Path) -> dict:
    """``{case: (command line, texts the LAST line must hold, what else to check)}`` after writing the case's files."""
    cases: dict = {}
    good = {"image": _nii(w / "good" / "low.nii.gz", _hu((64, 64))), "label": _nii(w / "good" / "full.nii.gz", _hu((64, 64), 1))}
    ckpt = str(w / "ct_model.pt")

    def train(case: str, dataset: str, last: list[str], *extra: str, check: str = "stops_before_training") -> None:
        cases[case] = (["run", "training", "--config_file", "bundles/ct/train.json", "--dataset_dir", dataset,
                        "--output_dir", str(w / "runs" / case), "--region_cache_dir", str(w / "regions"), *TRAIN,
                        *extra], last, check)  # fmt: skip

    def infer(case: str, input_path: str, last: list[str], *extra: str, check: str = "writes_nothing",
              ckpt_path: str = ckpt, feature_size: str = "8") -> None:
        cases[case] = (["run", "--config_file", "bundles/ct/inference.json", "--input_path", input_path,
                        "--ckpt_path", ckpt_path, "--output_dir", str(w / "runs" / case), "--region_cache_dir",
                        str(w / "regions"), "--feature_size", feature_size, *extra], last, check)  # fmt: skip

    # 1. a pair of two sizes
    low, full = _nii(w / "1" / "low.nii.gz", _hu((64, 64))), _nii(w / "1" / "full.nii.gz", _hu((72, 72)))
    train("1_pair_shapes_differ", _datalist(w / "1.json", [{"image": low, "label": full}], [good]),
          [low, full, "has spatial shape (64, 64)", "has (72, 72)"])  # fmt: skip
    # 2. non-finite values: label, image, validation label; and a loss that diverges from finite data
    low, full = _nii(w / "2a" / "low.nii.gz", _hu((64, 64))), _nii(w / "2a" / "full.nii.gz", _with(_hu((64, 64)), np.nan))
    train("2_nan_training_label", _datalist(w / "2a.json", [{"image": low, "label": full}], [good]),
          [full, "Bad training pair", "holds 1 NaN"])  # fmt: skip
    low, full = _nii(w / "2b" / "low.nii.gz", _with(_hu((64, 64)), np.inf)), _nii(w / "2b" / "full.nii.gz", _hu((64, 64)))
    train("2_inf_training_image", _datalist(w / "2b.json", [{"image": low, "label": full}], [good]),
          [low, "0 NaN and 1 infinite value(s)"])  # fmt: skip
    low, full = _nii(w / "2c" / "low.nii.gz", _hu((64, 64))), _nii(w / "2c" / "full.nii.gz", _with(_hu((64, 64)), np.nan))
    train("2_nan_validation_label", _datalist(w / "2c.json", [good], [{"image": low, "label": full}]),
          [full, "Bad validation pair", "holds 1 NaN"])  # fmt: skip
    train("2_loss_diverges", _datalist(w / "2d.json", [good], [good]),
          ["Stopped: the training loss is", "at iteration 2", good["image"], good["label"], "before the optimiser step"],
          "--learning_rate", "1e30", check="no_checkpoint")  # fmt: skip
    # the PET bundle: an infinite value in a full-dose volume (its slicer only looked for NaN)
    pet = w / "2_pet"
    for name in ("P1", "P2", "P3"):
        vol = np.random.default_rng(0).random((40, 40, 3)) + 0.5
        _nii(pet / "low_dose" / f"{name}.nii.gz", vol)
        _nii(pet / "full_dose" / f"{name}.nii.gz", _with(vol, np.inf) if name == "P2" else vol)
    cases["2_pet_inf_label"] = (["run", "training", "--config_file", "bundles/pet/train.json", "--dataset_dir", str(pet),
                                 "--output_dir", str(w / "runs" / "2_pet_inf_label"), "--region_cache_dir",
                                 str(w / "regions"), "--slice_cache_dir", str(w / "slices"), *TRAIN],
                                [str(pet / "full_dose" / "P2.nii.gz"), "0 NaN and 3 infinite value(s)"], "stops_before_training")  # fmt: skip
    # --skip_bad_pairs: the bad pair is dropped, named in the log, and training runs on the rest
    train("2_skip_bad_pairs", _datalist(w / "2e.json", [good, {"image": low, "label": full}], [good]), [],
          "--skip_bad_pairs", "true", check="trains")  # fmt: skip
    # 3. a torn metrics log from an earlier run (killed while metrics.json was rewritten in place)
    torn = w / "runs" / "3_torn_metrics_log"
    js = _datalist(w / "3.json", [good], [good])
    base = ["run", "training", "--config_file", "bundles/ct/train.json", "--dataset_dir", js, "--output_dir", str(torn),
            "--region_cache_dir", str(w / "regions"), *TRAIN]  # fmt: skip
    cases["3_first_run"] = (base, [], "trains")
    longer = [("4" if prev == "--num_iterations" else a) for prev, a in zip([None, *base], base)]
    cases["3_kill_tears_the_log"] = (["run", "--config_file", "bundles/ct/inference.json", "--run",
                                      f"$open({str(torn / 'logs' / 'metrics.json')!r}, 'r+').truncate(30)"], [], "trains")  # fmt: skip
    cases["3_resume"] = (longer, [], "resumes_past_the_torn_log")
    # 4. folder inference with one bad file among good ones: nothing is written
    folder = w / "4"
    for name, data in (("a", _hu((48, 48))), ("b", _with(_hu((48, 48)), np.nan)), ("c", _hu((48, 48)))):
        _nii(folder / f"{name}.nii.gz", data)
    infer("4_folder_with_a_bad_file", str(folder), [str(folder / "b.nii.gz"), "Nothing was restored or written"])
    # 5. a slice smaller than the patch
    low, full = _nii(w / "5" / "low.nii.gz", _hu((20, 24))), _nii(w / "5" / "full.nii.gz", _hu((20, 24)))
    train("5_smaller_than_patch", _datalist(w / "5.json", [{"image": low, "label": full}], [good]),
          [low, "is 20 x 24, smaller than the training patch 32 x 32"])  # fmt: skip
    # 6. inference inputs and checkpoints that must be named
    infer("6_nan_nifti", _nii(w / "6" / "nan.nii.gz", _with(_hu((48, 48)), np.nan)), [str(w / "6" / "nan.nii.gz"), "holds 1 NaN"])
    rgb = w / "6" / "rgb.png"
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(rgb)
    infer("6_rgb_png_to_ct", str(rgb), [str(rgb), "has 3 channel(s) (spatial shape (48, 48)), expected 1 (a grey-scale image)"])
    trunc = w / "6" / "truncated.pt"
    infer("6_truncated_checkpoint", good["image"], [str(trunc), "is not a complete PyTorch checkpoint"], ckpt_path=str(trunc))
    infer("6_checkpoint_of_another_feature_size", good["image"], [ckpt, "does not fit the network", "feature_size"],
          feature_size="16")  # fmt: skip
    empty = w / "6" / "empty.dcm"
    empty.write_bytes(b"")
    infer("6_zero_byte_dicom", str(empty), [str(empty), "the file is empty (0 bytes"])
    # 7. --debug: MONAI's whole traceback, still ending on our message; an error that is not ours keeps its traceback
    infer("7_debug", str(rgb), [str(rgb), "has 3 channel(s)"], "--debug", check="debug_traceback")
    cases["7_not_our_error"] = (["run", "--config_file", "bundles/ct/inference.json", "--run", "$int('x')"],
                                ["ValueError: invalid literal for int() with base 10: 'x'"], "full_traceback")  # fmt: skip
    # 8. an AAPM folder holding a DICOM file whose pixel data is cut short (its header reads)
    root = w / "8_aapm"
    for pid in ("L067", "L096", "L506"):
        for dose, sub in (("full", "full_1mm"), ("quarter", "quarter_1mm")):
            write_series(root / pid / sub, pid, dose, 3, size=40)
    bad = sorted((root / "L067" / "quarter_1mm").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:-1500])
    train("8_aapm_unreadable_dicom", str(root), [str(bad), "Cannot read"])
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    w = tmp_path_factory.mktemp("bad_data")
    cases = _cases(w)
    # --ckpt_path to no file: the network is built from --feature_size, not read from the shipped demo weights
    save = ["run", "--config_file", "bundles/ct/inference.json", "--feature_size", "8", "--ckpt_path", str(w / "none.pt"), "--region_cache_dir",
            str(w / "regions"), "--run", f"$torch.save(@network_def.state_dict(), {str(w / 'ct_model.pt')!r})"]  # fmt: skip
    # the truncated checkpoint is the first 5000 bytes of a real one (written by the same runner, in order)
    cut = ["run", "--config_file", "bundles/ct/inference.json", "--run",
           f"$open({str(w / '6' / 'truncated.pt')!r}, 'wb').write(open({str(w / 'ct_model.pt')!r}, 'rb').read()[:5000])"]  # fmt: skip
    results = run_bundle_commands([save, cut] + [args for args, _, _ in cases.values()], w / "cache", w / "logs")
    for r in results[:2]:
        assert r["returncode"] == 0, r["output"][-3000:]
    return {"work": w, "cases": cases, "results": dict(zip(cases, results[2:]))}


FAILING = [
    "1_pair_shapes_differ",
    "2_nan_training_label",
    "2_inf_training_image",
    "2_nan_validation_label",
    "2_loss_diverges",
    "2_pet_inf_label",
    "4_folder_with_a_bad_file",
    "5_smaller_than_patch",
    "6_nan_nifti",
    "6_rgb_png_to_ct",
    "6_truncated_checkpoint",
    "6_checkpoint_of_another_feature_size",
    "6_zero_byte_dicom",
    "7_debug",
    "7_not_our_error",
    "8_aapm_unreadable_dicom",
]


def _shown(runs: dict, case: str) -> str:
    r = runs["results"][case]
    return f"python -m monai.bundle {' '.join(runs['cases'][case][0])} -> {r['returncode']}:\n{r['output'][-4000:]}"


def test_every_case_is_listed(runs):
    assert sorted(FAILING + ["2_skip_bad_pairs", "3_first_run", "3_kill_tears_the_log", "3_resume"]) == sorted(runs["cases"])


@pytest.mark.parametrize("case", FAILING)
def test_failing_command_ends_on_its_reason(runs, case):
    """Exit status 1, and the last line names the file and what is wrong (not MONAI's wrapper)."""
    _, last, check = runs["cases"][case]
    r = runs["results"][case]
    out, shown = r["output"], _shown(runs, case)
    assert r["returncode"] == 1, shown
    line = _last_line(out)
    assert not line.startswith("RuntimeError: Failed to evaluate"), shown
    for text in last:
        assert text in line, f"{text!r} not in the last line {line!r} of {shown}"
    models = runs["work"] / "runs" / case / "models"
    if check in ("stops_before_training", "no_checkpoint"):
        if check == "stops_before_training":
            assert "Engine run resuming from iteration 0" not in out, f"training started: {shown}"
        assert not models.exists() or not any(models.iterdir()), shown
    if check == "writes_nothing":
        written = [p for p in (runs["work"] / "runs" / case).rglob("*") if p.is_file()]
        assert not written, f"{written}: {shown}"
    if check in ("debug_traceback", "full_traceback"):
        assert "Traceback (most recent call last)" in out, shown
    if check == "debug_traceback":
        assert "Failed to evaluate ConfigExpression" in out, shown
    else:
        assert "for the whole traceback add --debug" in out or check == "full_traceback", shown


def test_skip_bad_pairs_leaves_the_bad_pair_out_and_names_it(runs):
    r = runs["results"]["2_skip_bad_pairs"]
    assert r["returncode"] == 0, _shown(runs, "2_skip_bad_pairs")
    bad = runs["work"] / "2c" / "full.nii.gz"
    assert f"Skipping bad training pair item 1: '{runs['work'] / '2c' / 'low.nii.gz'}' / '{bad}'" in r["output"]
    assert "skipped 1 bad pair(s) (skip_bad_pairs)" in r["output"]
    assert (runs["work"] / "runs" / "2_skip_bad_pairs" / "models" / "last.pt").is_file()


def test_resume_past_a_torn_metrics_log(runs):
    """A torn metrics.json is renamed aside with a warning and recovered from metrics.csv; training finishes."""
    for case in ("3_first_run", "3_kill_tears_the_log", "3_resume"):
        assert runs["results"][case]["returncode"] == 0, _shown(runs, case)
    logs = runs["work"] / "runs" / "3_torn_metrics_log" / "logs"
    out = runs["results"]["3_resume"]["output"]
    assert f"Metric log {logs / 'metrics.json'} is not readable (JSONDecodeError" in out, out[-3000:]
    assert f"recovered 1 row(s) from {logs / 'metrics.csv'}" in out
    aside = list(logs.glob("metrics.json.torn-*"))
    assert len(aside) == 1 and len(aside[0].read_text()) == 30
    history = json.loads((logs / "metrics.json").read_text())["history"]
    assert [row["iteration"] for row in history] == [2, 4]
    last = torch.load(logs.parent / "models" / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 4


def test_partition_cli_checks_a_bad_sam_checkpoint_once(tmp_path, monkeypatch):
    """``monai-rat-partition --checkpoint truncated.pth`` fails once, before the first image, naming the file."""
    from sam_tiny_helpers import blob_image, tiny_sam

    from monai_rat.partition import main
    from monai_rat.transforms import register_sam_model
    from monai_rat.transforms.partition import sam as sam_module

    builds: list[int] = []
    register_sam_model("tiny_test_issue15", lambda checkpoint=None: builds.append(1) or tiny_sam())
    monkeypatch.setattr(sam_module, "_MODELS", {})
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _nii(images / f"slice{i}.nii.gz", blob_image(40, 36, seed=i)[0])
    good = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[:2000])
    out = tmp_path / "out"
    args = [str(images), "-o", str(out), "--model-type", "tiny_test_issue15", "--no-progress"]
    with pytest.raises(ValueError, match=rf"--checkpoint '{bad}' is not a readable PyTorch checkpoint .*No image was processed"):
        main([*args, "--checkpoint", str(bad)])
    assert not builds  # found before the first image, without building the model
    other = tmp_path / "other_size.pth"  # readable, but of another model
    torch.save(tiny_sam(embed_dim=16).state_dict(), other)
    with pytest.raises(ValueError, match=rf"checkpoint '{other}' does not fit model_type 'tiny_test_issue15'"):
        main([*args, "--checkpoint", str(other)])
    assert len(builds) == 1  # built and checked once, not once per image
    assert not list(out.rglob("*_regions.nii.gz"))


def test_atomic_writers_leave_no_partial_output(tmp_path, monkeypatch):
    """Through MONAI's SaveImage (as the inference configs use it): a write failing half-way leaves no partial file."""
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, SaveImage

    from monai_rat.data import AtomicNibabelWriter, AtomicPILWriter
    from monai_rat.utils import atomic_write

    source = LoadImage(image_only=True, ensure_channel_first=True)(_nii(tmp_path / "in" / "x.nii.gz", np.ones((8, 8))))

    def save(name: str, writer, ext: str, data):
        img = MetaTensor(data, affine=source.affine, meta={**source.meta, "filename_or_obj": str(tmp_path / "in" / name)})
        SaveImage(output_dir=str(tmp_path), output_postfix="rat", output_ext=ext, writer=writer, separate_folder=False,
                  resample=False, print_log=False)(img)  # fmt: skip

    (tmp_path / "in" / "x.nii.gz").unlink()
    (tmp_path / "in").rmdir()
    save("x.nii.gz", AtomicNibabelWriter, ".nii.gz", torch.ones(1, 8, 8))
    assert nib.load(str(tmp_path / "x_rat.nii.gz")).shape == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_rat.nii.gz"]

    def half_written(img, filename):
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(nib, "save", half_written)
        for name in ("y.nii.gz", "x.nii.gz"):  # a new output, and one over an existing output
            with pytest.raises(RuntimeError, match="No space left on device"):
                save(name, AtomicNibabelWriter, ".nii.gz", torch.ones(1, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_rat.nii.gz"]
    assert nib.load(str(tmp_path / "x_rat.nii.gz")).shape == (8, 8)
    save("p.png", AtomicPILWriter, ".png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert Image.open(tmp_path / "p_rat.png").size == (8, 8)
    with pytest.raises(ValueError, match="write mode"):
        with atomic_write(tmp_path / "z.txt", "a"):
            pass
    with pytest.raises(KeyError, match="boom"):
        with atomic_write(tmp_path / "z.txt") as f:
            f.write("partial")
            raise KeyError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_rat.png", "x_rat.nii.gz"]


def test_a_non_finite_metric_is_never_a_best(tmp_path):
    """All-NaN validation reads 0.0 through MONAI's mean; neither that nor NaN replaces model.pt."""
    from types import SimpleNamespace

    from monai_rat.engines import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, filename="model.pt", key_metric_name="val_psnr",
                                  weights_only_state=True)  # fmt: skip
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1, iteration=2, metrics={"val_psnr": 0.0},
                                                   metric_details={"val_psnr": torch.tensor([[np.nan]])}))  # fmt: skip
    saver.save_if_best(engine)
    engine.state.metrics, engine.state.metric_details = {"val_psnr": float("nan")}, {}
    saver.save_if_best(engine)
    assert not (tmp_path / "model.pt").exists() and saver.best_metric == -np.inf
    engine.state.metrics, engine.state.metric_details = {"val_psnr": 20.0}, {"val_psnr": torch.tensor([[20.0]])}
    saver.save_if_best(engine)
    assert (tmp_path / "model.pt").is_file() and saver.best_metric == 20.0


def test_pair_check_geometry_and_progress(tmp_path, caplog):
    """The same grid: a shifted or rescaled affine is named; PNG pairs have no geometry to compare."""
    from monai_rat.data import check_pairs

    a = _nii(tmp_path / "a.nii.gz", _hu((40, 40)))
    shifted = tmp_path / "b.nii.gz"
    affine = np.eye(4)
    affine[0, 3] = 2.0
    nib.save(nib.Nifti1Image(_hu((40, 40)).astype(np.float32), affine), str(shifted))
    spaced = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(_hu((40, 40)).astype(np.float32), np.diag([0.5, 0.5, 1, 1])), str(spaced))
    with pytest.raises(ValueError, match=r"2 of 2 training pairs are bad") as err:
        check_pairs([{"image": a, "label": str(shifted)}, {"image": a, "label": str(spaced)}], progress=False)
    lines = str(err.value).splitlines()
    assert "b.nii.gz" in lines[1] and "origins" in lines[1] and "more than 0.1 voxel" in lines[1]
    assert "c.nii.gz" in lines[2] and "different voxel spacing (1, 1" in lines[2] and "vs (0.5, 0.5" in lines[2]
    for name in ("p", "q"):
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / f"{name}.png")
    items = [{"image": str(tmp_path / "p.png"), "label": str(tmp_path / "q.png")}] * 3
    with caplog.at_level("INFO", logger="monai_rat.data.pair_check"):
        assert len(check_pairs(items, min_size=[32, 32], channels=1, spatial_dims=2, progress=False)) == 3
    assert "Checked 3 training pairs" in caplog.text and "at least 32 x 32): all good" in caplog.text


def test_demo_pair_check_is_fast(tmp_path):
    """The check of a demo-sized set (100 pairs of 64 x 64 NIfTI slices) takes about a second, not minutes."""
    import time

    from monai_rat.data import check_pairs

    items = [{"image": _nii(tmp_path / f"{i}_low.nii.gz", _hu((64, 64), i)), "label": _nii(tmp_path / f"{i}_full.nii.gz", _hu((64, 64), i))}
             for i in range(100)]  # fmt: skip
    t0 = time.perf_counter()
    check_pairs(items, min_size=[64, 64], channels=1, spatial_dims=2, progress=False)
    assert time.perf_counter() - t0 < 10  # about 0.7 s here, on a busy 2-core machine


def test_the_reason_is_found_inside_a_dataloader_worker_error(tmp_path):
    """With num_workers > 0 (the paper schedules) the reason comes back as text inside the worker's error."""
    import io

    from monai.data import DataLoader, Dataset

    from monai_rat.bundle_errors import reason, report
    from monai_rat.data import LoadImageCheckedd

    bad = tmp_path / "truncated.nii.gz"
    _nii(bad, _hu((32, 32)))
    bad.write_bytes(bad.read_bytes()[:200])
    loader = DataLoader(Dataset([{"image": str(bad)}], transform=LoadImageCheckedd("image")), num_workers=1)
    with pytest.raises(Exception) as err:
        next(iter(loader))
    name, message, ours, outermost = reason(err.value)
    assert (name, ours, outermost) == ("ValueError", True, False), (name, message)
    assert message.startswith(f"Cannot read '{bad}' ("), message
    out = io.StringIO()
    report(type(err.value), err.value, err.value.__traceback__, file=out, debug=False)
    assert _last_line(out.getvalue()).startswith(f"ValueError: Cannot read '{bad}'")
    assert "Traceback" not in out.getvalue()
    out = io.StringIO()
    report(type(err.value), err.value, err.value.__traceback__, file=out, debug=True)
    assert "Traceback (most recent call last)" in out.getvalue()
    assert _last_line(out.getvalue()).startswith(f"ValueError: Cannot read '{bad}'")


def test_a_bug_keeps_its_traceback():
    """An error Python raises inside monai-rat's code (a bug, not a ``raise``) is printed with its whole traceback."""
    import io

    from monai_rat.bundle_errors import report
    from monai_rat.utils import as_region_labels

    try:
        try:
            as_region_labels(torch.zeros(1, 4, 4), batch=1, spatial=None)  # len(None): TypeError inside the package
        except TypeError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: \"$@evaluator.run()\"") from e
    except RuntimeError as e:
        out = io.StringIO()
        report(type(e), e, e.__traceback__, file=out, debug=False)
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text and "monai_rat/utils.py" in text
    assert _last_line(text).startswith("TypeError: ")
