"""The demo-mode advice of ``select_schedule`` describes each bundle's own data, not the CT challenge's."""

from __future__ import annotations

import pytest
from conftest import REPO

from monai_rat.data import PATHOLOGY_DATA_HINT, PATHOLOGY_EXTENSIONS, PET_DATA_HINT
from monai_rat.engines import select_schedule
from monai_rat.engines.schedule import CT_DATA_HINT

SCHEDULES = {"paper": {"num_iterations": 200000}, "demo": {"num_iterations": 10}}


def test_data_hint_default_is_the_ct_text_and_can_be_replaced(caplog):
    with caplog.at_level("INFO", logger="monai_rat.bundle"):
        select_schedule(SCHEDULES, "")
    assert f"--dataset_dir /path/to/data ({CT_DATA_HINT}; see bundles/ct/docs/README.md)" in caplog.text
    assert "AAPM Low-Dose CT Grand Challenge folder" in CT_DATA_HINT
    caplog.clear()
    with caplog.at_level("INFO", logger="monai_rat.bundle"):
        select_schedule(SCHEDULES, "", bundle="bundles/x", data_hint="a folder of X files")
    assert "--dataset_dir /path/to/data (a folder of X files; see bundles/x/docs/README.md)" in caplog.text
    assert "AAPM" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="monai_rat.bundle"):
        select_schedule(SCHEDULES, "/data/x", data_hint="a folder of X files")
    assert "To train on real data" not in caplog.text  # real data given: no advice


def test_hints_name_what_the_datalists_accept():
    for text in ("low_dose/", "full_dose/", ".nii.gz", "datalist .json", '"label": full dose'):
        assert text in PET_DATA_HINT, text
    for text in (*PATHOLOGY_EXTENSIONS, "train/", "test/", "datalist .json"):
        assert text in PATHOLOGY_DATA_HINT, text


@pytest.mark.parametrize(
    "bundle, hint, wrong",
    [("pet", PET_DATA_HINT, "AAPM"), ("pathology", PATHOLOGY_DATA_HINT, "AAPM"), ("ct", CT_DATA_HINT, "low_dose/")],
)
def test_each_bundle_prints_its_own_data_description(caplog, bundle, hint, wrong):
    """The bare training command's advice, from the bundle's own train.json (the schedule expression only)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "train.json"))
    parser["bundle_root"] = f"bundles/{bundle}"  # a plain ConfigParser (no MONAI workflow) gets "." otherwise
    with caplog.at_level("INFO", logger="monai_rat.bundle"):
        parser.get_parsed_content("schedule")
    assert f"({hint}; see bundles/{bundle}/docs/README.md)" in caplog.text
    assert wrong not in caplog.text
