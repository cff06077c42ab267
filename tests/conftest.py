"""Shared test settings: deterministic maths, and where real test images come from.

Real images the tests can always use are the ones installed packages ship (pydicom's CT slices:
:func:`pydicom_test_file`). The project's extra fixtures live outside the repository, in
``../shared/fixtures/`` (:data:`FIXTURES`); a test that wants one asks :func:`shared_fixture`, which
skips the test, naming the missing file, in a clone that has no such folder beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "rat-reference-example"


def shared_fixture(name: str) -> Path:
    """The path of a file of the shared fixtures; skips the calling test when it is not there."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(
            f"needs {path}: the project's shared fixtures (outside the repository, beside the clone) are not "
            "present; the tests that matter use images installed packages ship instead"
        )
    return path


def pydicom_test_file(name: str) -> str:
    """A DICOM file pydicom ships (e.g. ``CT_small.dcm``, ``J2K_pixelrep_mismatch.dcm``, ``693_J2KI.dcm``).

    Looked up next to the installed ``pydicom`` package first (``pydicom.data.get_testdata_file`` needs
    ``pkg_resources`` in some environments), then through ``get_testdata_file``; skips the calling test,
    naming the file, when this pydicom ships no such file.
    """
    import pydicom

    path = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", name)
    if os.path.isfile(path):
        return path
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
    except Exception:  # e.g. ModuleNotFoundError: pkg_resources
        found = None
    if not found or not os.path.isfile(str(found)):
        pytest.skip(f"needs pydicom's test file {name!r}: not in {os.path.dirname(path)} nor found by get_testdata_file")
    return str(found)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
