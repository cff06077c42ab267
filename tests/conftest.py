"""Shared test settings: deterministic, single-process maths, and the path to the shared fixtures."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "rat-reference-example"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
