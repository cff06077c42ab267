"""What every bundle's files are and what its bare training command resolves to (no command is run)."""

from __future__ import annotations

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
def test_bundle_files_are_thin_links_and_share_common_config(bundle):
    for name in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json", "logging.conf"):
        link = ROOT / "bundles" / bundle / name
        assert link.is_symlink() and os.readlink(link) == f"configs/{name}"
    text = (ROOT / "bundles" / bundle / "configs" / "train.json").read_text()
    assert '"%bundles/common/rat_network.json#network_def"' in text
    assert '"%bundles/common/train_common.json#trainer"' in text
    assert '"%bundles/common/train_common.json#evaluator"' in text


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
