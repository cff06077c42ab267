"""What every bundle's files are and what its bare training command resolves to (no command is run)."""

from __future__ import annotations

import json
import os

import pytest
from bundle_helpers import ROOT

# bundle -> (channels in and out, the paper schedule's patch size, other ids the bare command must resolve to)
BUNDLES = {
    "ct": (1, [256, 256], {}),
    "pet": (1, [192, 192], {}),
    "pathology": (3, [256, 256], {"degrade_factor": 4}),
}


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_bundle_files_are_thin_links_and_hold_copies_of_the_shared_config(bundle):
    """Top-level links to configs/; the shared entries are literal copies (listed in ``_shared_``), not file macros."""
    from monai_rat.bundle.sync import _file_macros

    for name in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json", "logging.conf"):
        link = ROOT / "bundles" / bundle / name
        assert link.is_symlink() and os.readlink(link) == f"configs/{name}"
    configs = ROOT / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    assert train["_shared_"]["network_def"] == "rat_network.json#network_def"
    assert train["_shared_"]["train#common_handlers"] == "train_common.json#train_handlers"
    assert train["_shared_"]["validate#common_handlers"] == "train_common.json#val_handlers"
    assert train["_shared_"]["train#trainer"] == "train_common.json#trainer"
    assert isinstance(train["network_def"], dict) and isinstance(train["train"]["common_handlers"], list)
    assert train["bundle_root"] == "$monai_rat.bundle.bundle_root()"
    for f in sorted(configs.glob("*.json")):
        assert not _file_macros(json.loads(f.read_text())), f"{f}: a '%' macro names a file (the bundle would not be self-contained)"


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_bare_command_config_is_the_demo_schedule(bundle):
    """What the bare command resolves to (without running it): demo data, demo schedule, the bundle's channels."""
    from monai.bundle import ConfigParser

    channels, paper_patch, others = BUNDLES[bundle]
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "train.json"))
    sched = parser.get("schedules")["demo"]
    assert sched["num_iterations"] % sched["val_interval"] == 0
    assert parser.get("dataset_dir") == "" and parser.get("in_channels") == channels and parser.get("out_channels") == channels
    assert parser.get("schedules")["paper"]["patch_size"] == paper_patch
    for cid, value in others.items():
        assert parser.get(cid) == value, cid


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_amp_dtype_is_an_override_that_reaches_the_engines(bundle, config):
    """``--amp_dtype float16|bfloat16`` sets autocast's dtype in every engine (default: bfloat16 where the GPU has it)."""
    import torch
    from monai.bundle import ConfigParser

    from monai_rat.engines import default_amp_dtype

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / config))
    assert parser.get_parsed_content("amp_dtype") == default_amp_dtype()
    assert default_amp_dtype() == ("bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16")
    parser["amp_dtype"] = "bfloat16"
    assert parser.get_parsed_content("amp_kwargs") == {"dtype": torch.bfloat16}
    if config == "train.json":
        engines = [parser.get("train#trainer"), parser.get("validate#evaluator")]
    else:
        engines = [parser.get("evaluator")]
    for engine in engines:
        assert engine["amp"] == "$monai_rat.utils.as_flag(@amp, 'amp')" and engine["amp_kwargs"] == "@amp_kwargs"
