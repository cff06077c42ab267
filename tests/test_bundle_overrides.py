"""MONAI's standard command-line overrides reach inside each bundle's engines, and MONAI's standard properties
are there (``check_properties`` for the train and infer workflows); no training is run.

``--train#trainer#max_epochs 1``, ``--validate#evaluator#amp false`` and ``--train#dataloader#num_workers 0``
are what model-zoo users and MONAI Label's ``BundleTrainTask`` set. MONAI applies overrides before it
expands ``%`` macros, so each override has to land on a dict written in the bundle's own train.json (the
engines are literal copies of ``monai_rat/bundle/shared/train_common.json``, see ``monai_rat.bundle.sync``).
The engines are built with one-item datasets and a temporary output folder, from a working directory
outside the repository, so nothing is trained or written into the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bundle_helpers import ROOT

BUNDLES = ("ct", "pet", "pathology")


def _tiny_overrides(tmp_path) -> dict:
    """Overrides that keep the engines cheap to build: one-item datasets, outputs under ``tmp_path``."""
    tiny = {"_target_": "Dataset", "data": [{}]}
    return {"output_dir": str(tmp_path), "train#dataset": tiny, "validate#dataset": tiny}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_standard_overrides_reach_the_engines(bundle, tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(tmp_path)  # any working directory: the bundles are self-contained
    overrides = {"train#trainer#max_epochs": 1, "validate#evaluator#amp": "false", "train#dataloader#num_workers": 0,
                 "train#trainer#amp": "True", **_tiny_overrides(tmp_path)}  # fmt: skip
    workflow = ConfigWorkflow(config_file=str(ROOT / "bundles" / bundle / "train.json"), workflow_type="train", **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert trainer.state.max_epochs == 1
    assert evaluator.amp is False  # the string "false" (as fire passes it) is read as a flag, not as truthy text
    assert trainer.amp is True
    assert trainer.data_loader.num_workers == 0


def test_a_misspelt_flag_override_fails_naming_it(tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(config_file=str(ROOT / "bundles" / "ct" / "train.json"), workflow_type="train",
                              **{"validate#evaluator#amp": "flase", **_tiny_overrides(tmp_path)})  # fmt: skip
    with pytest.raises(Exception) as err:
        workflow.parser.get_parsed_content("validate#evaluator")
    chain = [err.value, err.value.__cause__, err.value.__context__]
    assert any(isinstance(e, ValueError) and "SupervisedEvaluator.amp must be true or false, got 'flase'" in str(e) for e in chain)


def test_the_engines_are_one_definition_in_three_bundles():
    """The trainer and evaluator are written out per bundle (for the overrides), as copies of the shared definition."""
    from monai_rat.bundle import SHARED_DIR

    shared = json.loads((SHARED_DIR / "train_common.json").read_text())
    configs = {b: json.loads((ROOT / "bundles" / b / "configs" / "train.json").read_text()) for b in BUNDLES}
    for key, source in ((("train", "trainer"), "trainer"), (("validate", "evaluator"), "evaluator")):
        engines = {b: c[key[0]][key[1]] for b, c in configs.items()}
        assert isinstance(engines["ct"], dict) and engines["ct"]["_target_"] in ("SupervisedTrainer", "SupervisedEvaluator")
        assert engines["pet"] == engines["ct"] and engines["pathology"] == engines["ct"], "#".join(key)
        assert engines["ct"] == shared[source], "#".join(key)
        assert all(c["_shared_"]["#".join(key)] == f"train_common.json#{source}" for c in configs.values()), "#".join(key)


def test_overrides_from_the_command_line(tmp_path):
    """The user's own command, with the values as text (``false``, ``1``, ``0``), printing what the engines got."""
    report = "$print('ENGINES', @train#trainer.state.max_epochs, @validate#evaluator.amp, @train#dataloader.num_workers)"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(ROOT / "bundles" / "ct" / "train.json"),
           "--train#trainer#max_epochs", "1", "--validate#evaluator#amp", "false", "--train#dataloader#num_workers", "0",
           "--output_dir", str(tmp_path), "--train#dataset", "{'_target_': 'Dataset', 'data': [{}]}",
           "--validate#dataset", "{'_target_': 'Dataset', 'data': [{}]}", "--training", f'["{report}"]']  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ENGINES 1 False 0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def _check_properties(workflow) -> list:
    """``workflow.initialize()`` then ``check_properties()``, leaving torch's thread count and RNG flags as they were."""
    import torch
    from monai.utils import set_determinism

    threads = torch.get_num_threads()
    try:
        workflow.initialize()  # the bundle's own initialize: set_num_threads, set_determinism
        return workflow.check_properties()
    finally:
        torch.set_num_threads(threads)
        set_determinism(seed=None)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_workflow_has_the_standard_properties(bundle, tmp_path, monkeypatch):
    """MONAI's TrainProperties (bundle_root, device, dataset_dir, trainer, max_epochs, train_dataset, train_inferer;
    the optional ones that the config refers to under their standard ids): nothing missing or misnamed."""
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(config_file=str(ROOT / "bundles" / bundle / "train.json"), workflow_type="train",
                              **_tiny_overrides(tmp_path))  # fmt: skip
    assert _check_properties(workflow) == []
    assert workflow.bundle_root == str(ROOT / "bundles" / bundle)  # the config's folder, not the working directory
    assert workflow.max_epochs == workflow.trainer.state.max_epochs
    assert workflow.parser["train#handlers"] == []  # MONAI reads each entry as a handler dict
    # ... and the region loss is still attached to the trainer (monai_rat.engines.with_loss_handler), once
    loss = workflow.parser.get_parsed_content("loss")
    assert loss._engine() is workflow.trainer
    assert sum(h is loss for h in workflow.parser.get_parsed_content("train#trainer#train_handlers")) == 1


@pytest.mark.parametrize("bundle", BUNDLES)
def test_infer_workflow_has_the_standard_properties_and_reads_dataset_dir(bundle, tmp_path, monkeypatch):
    """MONAI's InferProperties (bundle_root, device, dataset_dir, dataset, evaluator, network_def, inferer, ...);
    ``dataset_dir`` is what inference restores when ``input_path`` is not given."""
    import nibabel as nib
    import numpy as np
    from monai.bundle import ConfigWorkflow
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "in"
    data.mkdir()
    if bundle == "pathology":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "a.png")
    else:
        nib.save(nib.Nifti1Image(np.ones((32, 32) if bundle == "ct" else (32, 32, 2), np.float32), np.eye(4)), str(data / "a.nii.gz"))
    workflow = ConfigWorkflow(config_file=str(ROOT / "bundles" / bundle / "inference.json"), workflow_type="infer",
                              dataset_dir=str(data), output_dir=str(tmp_path / "out"),
                              region_cache_dir=str(tmp_path / "regions"))  # fmt: skip (the shipped demo weights)
    assert _check_properties(workflow) == []
    assert [d["image"] for d in workflow.dataset.data] == [str(next(data.iterdir()))]
    assert workflow.bundle_root == str(ROOT / "bundles" / bundle)
