"""Each bundle folder, copied alone outside the repository, runs its commands from yet another working directory.

A copy of ``bundles/<name>`` (its top-level links kept, relative) sits in a temporary folder with no
``bundles/`` beside it and no repository around it; every command runs with the working directory set to
an empty third folder: tiny training, evaluating (``evaluate.json`` merged over ``train.json``), inference
(on a small image of the bundle's kind), ``verify_net_in_out`` and, for CT, ``ckpt_export``. No command
names an output folder or a checkpoint file: training writes its checkpoints to ``$@bundle_root/models``
(``--ckpt_dir``, an expression, so the copy's ``models/model.pt`` is the trained model, as a published
bundle ships one), logs to ``<copy>/runs/``; evaluating and inference read ``<copy>/models/model.pt``
through ``bundle_root`` (the folder of the config given); the working directory must stay empty. The
multi-GPU overlay is resolved from the copy (its 2-process run is ``tests/test_bundle_pet.py``'s, the
same config content). CT and PET train on a few small NIfTI pairs given by a datalist JSON (``--dataset_dir``;
building their demo data takes most of a minute), pathology on its demo tiles (built in a second).

Also: ``python -m monai_rat.bundle.sync --check`` passes on the repository and fails, naming the entry,
when a copy drifts from ``monai_rat/bundle/shared``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_helpers import ROOT, TINY, bundle_env, run_bundle_commands

BUNDLES = ("ct", "pet", "pathology")
#: the checkpoints go to the copy's models/ folder, found through bundle_root
CKPT_DIR = ["--ckpt_dir", "$os.path.join(@bundle_root, 'models')"]
#: a dataset_dir selects the paper schedule: no worker processes, one thread
REAL_DATA = ["--num_workers", "0", "--num_threads", "1"]


def _copy_bundle(name: str, dest: Path) -> Path:
    """``bundles/<name>`` alone, links kept relative, without run outputs or weights."""
    return Path(shutil.copytree(ROOT / "bundles" / name, dest / name, symlinks=True,
                                ignore=shutil.ignore_patterns("runs", "*.pt", "*.ts", "cache", "eval")))  # fmt: skip


def _write_datalist(name: str, folder: Path) -> Path:
    """A MONAI datalist JSON of small low / full pairs (CT: 2D slices in HU; PET: 3D volumes), paths relative."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    splits: dict[str, list] = {"training": [], "validation": [], "test": []}
    for split, count in (("training", 2), ("validation", 1), ("test", 1)):
        for i in range(count):
            if name == "ct":
                full = rng.uniform(-1000, 400, (40, 48)).astype(np.float32)
                low = full + rng.normal(0, 40, full.shape).astype(np.float32)
            else:
                full = rng.uniform(0.2, 3, (40, 48, 3)).astype(np.float32)
                low = np.clip(full + rng.normal(0, 0.2, full.shape), 0, None).astype(np.float32)
            pair = {}
            for key, vol in (("image", low), ("label", full)):
                rel = f"{split}_{i}_{key}.nii.gz"
                nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / rel))
                pair[key] = rel
            splits[split].append(pair)
    path = folder / "datalist.json"
    path.write_text(json.dumps(splits))
    return path


def _write_input(name: str, folder: Path) -> Path:
    """One small input of the bundle's kind (values in its units)."""
    import nibabel as nib
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if name == "ct":
        path = folder / "slice.nii.gz"
        nib.save(nib.Nifti1Image(rng.uniform(-1000, 400, (40, 48)).astype(np.float32), np.eye(4)), str(path))
    elif name == "pet":
        path = folder / "vol.nii.gz"
        nib.save(nib.Nifti1Image(rng.uniform(0, 3, (32, 40, 3)).astype(np.float32), np.eye(4)), str(path))
    else:
        path = folder / "tile.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> dict:
    """Copies of the three bundles and the results of their commands, run from an empty working directory."""
    tmp = tmp_path_factory.mktemp("standalone")
    copies, elsewhere = tmp / "copies", tmp / "elsewhere"
    copies.mkdir()
    elsewhere.mkdir()
    bundle = {b: _copy_bundle(b, copies) for b in BUNDLES}
    data = {b: ["--dataset_dir", str(_write_datalist(b, tmp / "data" / b)), *REAL_DATA] for b in ("ct", "pet")}
    data["pathology"] = []
    inputs = {b: _write_input(b, tmp / "inputs" / b) for b in BUNDLES}
    commands, what = [], []
    for b in BUNDLES:
        configs = bundle[b] / "configs"
        # the options users add: an EMA of the weights (CT) and the x8 self-ensemble (CT evaluation, pathology inference)
        ema = ["--ema_decay", "0.5"] if b == "ct" else []
        x8_eval = ["--self_ensemble", "true"] if b == "ct" else []
        x8_infer = ["--self_ensemble", "true"] if b == "pathology" else []
        commands += [
            ["run", "training", "--config_file", str(bundle[b] / "train.json"), *TINY, *data[b], *CKPT_DIR, *ema],
            ["run", "evaluating", "--config_file", str([str(bundle[b] / "train.json"), str(bundle[b] / "evaluate.json")]),
             "--feature_size", "8", "--baseline_methods", "[]", "--panels", "false", *data[b], *CKPT_DIR, *x8_eval],
            ["run", "--config_file", str(bundle[b] / "inference.json"), "--input_path", str(inputs[b].parent), *x8_infer],
            ["verify_net_in_out", "network_def", "--config_file", str(configs / "inference.json"),
             "--meta_file", str(configs / "metadata.json")],
        ]  # fmt: skip
        what += [(b, "training"), (b, "evaluating"), (b, "inference"), (b, "verify_net_in_out")]
    commands.append(["ckpt_export", "network_export", "--config_file", str(bundle["ct"] / "configs" / "inference.json"),
                     "--bundle_root", str(bundle["ct"]), "--use_trace", "True", "--input_shape", "[1, 2, 32, 32]"])  # fmt: skip
    what.append(("ct", "ckpt_export"))
    results = run_bundle_commands(commands, tmp / "cache", tmp / "logs", timeout=600, cwd=elsewhere)
    return {"bundle": bundle, "elsewhere": elsewhere, "inputs": inputs, "results": dict(zip(what, results))}


@pytest.mark.parametrize("name", BUNDLES)
def test_a_copy_of_the_bundle_alone_runs_every_command_from_another_directory(standalone, name):
    copy = standalone["bundle"][name]
    for (b, command), r in standalone["results"].items():
        if b == name:
            assert r["returncode"] == 0, f"{name} {command} from a copy failed:\n{r['output'][-4000:]}"
    # bundle_root is the copy: the outputs are in it, the working directory is untouched
    run = copy / "runs" / ("demo" if name == "pathology" else "train")
    assert (copy / "models" / "model.pt").is_file() and (copy / "models" / "last.pt").is_file()
    assert (run / "logs" / "metrics.csv").is_file()
    summary = json.loads((run / "eval" / "summary.json").read_text())["metrics"]
    assert np.isfinite(summary["val_psnr"]["mean"]) and np.isfinite(summary["input_psnr"]["mean"])
    stem = standalone["inputs"][name].name.split(".")[0]
    written = sorted(p.name for p in (copy / "runs" / "inference").glob(f"{stem}_rat.*"))
    assert written == [f"{stem}_rat.png" if name == "pathology" else f"{stem}_rat.nii.gz"], written
    assert "data shape of network is verified with no error" in standalone["results"][(name, "verify_net_in_out")]["output"]
    if name == "ct":
        assert (copy / "models" / "model.ts").is_file()
        import torch

        last = torch.load(copy / "models" / "last.pt", map_location="cpu", weights_only=False)
        assert "ema" in last and "network" in last  # --ema_decay: the average is saved beside the raw weights
        assert json.loads((run / "eval" / "summary.json").read_text())["self_ensemble"] is True
    assert sorted(p.name for p in standalone["elsewhere"].iterdir()) == []
    # the multi-GPU overlay resolves from the copy (no file outside it)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(copy / "train.json"), str(copy / "multi_gpu_train.json")])
    parser.resolve_macro_and_relative_ids()
    assert parser.get("network")["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser.get("train#sampler")["_target_"] == "DistributedSampler"


def test_sync_check_passes_on_the_repository(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "monai_rat.bundle.sync", "--check"], cwd=tmp_path,
                          env=bundle_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "in sync" in proc.stdout


def test_sync_check_names_a_drifted_copy_and_the_writer_restores_it(tmp_path, capsys):
    from monai_rat.bundle.sync import main

    copy = _copy_bundle("pet", tmp_path)
    train = copy / "configs" / "train.json"
    config = json.loads(train.read_text())
    config["train"]["common_handlers"][0]["_target_"] = "monai_rat.engines.SomethingElse"
    config["optimizer"]["lr"] = 0.1
    train.write_text(json.dumps(config, indent=4))
    inference = copy / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    config["suv_scale"] = 5.0  # a copy of this bundle's train.json entry
    config["region_window"] = "%../ct/configs/inference.json#region_window"  # a macro naming another bundle's file
    inference.write_text(json.dumps(config, indent=4))
    assert main(["--check", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"{train}: 'optimizer' is not the copy of 'train_common.json#optimizer'" in out
    assert f"{train}: 'train#common_handlers' is not the copy of 'train_common.json#train_handlers'" in out
    assert f"{inference}: 'suv_scale' is not the copy of './train.json#suv_scale'" in out
    assert f"{inference}: region_window: %../ct/configs/inference.json#region_window (a macro naming a file" in out
    assert "lr_scheduler" not in out and "activity_scale" not in out  # only what drifted
    config["region_window"] = [0.0, 1.0]
    inference.write_text(json.dumps(config, indent=4))
    assert main([str(copy)]) == 0  # rewrites the copies
    assert main(["--check", str(copy)]) == 0
    assert json.loads(train.read_text())["optimizer"]["lr"] == "@learning_rate"
    assert json.loads(inference.read_text())["suv_scale"] == 10.0
    # the writer's layout is the repository's: the refreshed copy is byte for byte the committed file
    assert train.read_text() == (ROOT / "bundles" / "pet" / "configs" / "train.json").read_text()
