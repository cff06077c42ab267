"""Flat-region texture: the window, the high-pass RMS, the grid amplitude, and the evaluation handler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_rat.engines import FlatRegionTexture
from monai_rat.metrics import flat_region_texture, flattest_window, grid_amplitude, high_pass_rms


def _scene(seed: int = 0) -> np.ndarray:
    """HU-like: noisy tissue at 40 with a flat 40 x 40 patch at (70, 50), flat air at -1000 in the corner."""
    rng = np.random.default_rng(seed)
    img = 40.0 + rng.normal(0, 20.0, (128, 128))
    img[70:110, 50:90] = 40.0
    img[:40, :40] = -1000.0
    return img


def test_flattest_window_is_the_flat_tissue_not_the_air():
    img = _scene()
    y, x = flattest_window(img, 32, value_range=(-50, 100))
    assert 70 <= y <= 110 - 32 and 50 <= x <= 90 - 32
    assert np.std(img[y : y + 32, x : x + 32]) == 0
    y, x = flattest_window(img, 32)  # no range: air or tissue, both flat
    assert np.std(img[y : y + 32, x : x + 32]) < 1e-6
    with pytest.raises(ValueError, match="no 32 x 32 window has its mean in"):
        flattest_window(img, 32, value_range=(500, 600))
    with pytest.raises(ValueError, match="at least 32 x 32"):
        flattest_window(img[:20], 32)


@pytest.mark.parametrize("period", [2, 4])
@pytest.mark.parametrize("axis", ["y", "x", "both"])
def test_grid_amplitude_reads_a_regular_pattern_in_its_own_units(period, axis):
    yy, xx = np.mgrid[0:32, 0:32]
    phase = {"y": yy, "x": xx, "both": yy + xx}[axis]
    grid = 4.0 * np.cos(2 * np.pi * phase / period)
    assert grid_amplitude(grid + 40.0) == pytest.approx(4.0, rel=1e-9)
    noise = np.random.default_rng(1).normal(0, 4.0, (32, 32))
    assert grid_amplitude(noise) < 0.5  # about 4 / 32 per bin
    assert high_pass_rms(grid + 40.0) > 2.0 and high_pass_rms(np.full((32, 32), 40.0)) == 0.0


def test_flat_region_texture_ranks_an_added_grid_above_the_target():
    target = _scene()
    yy, xx = np.mgrid[0:128, 0:128]
    res = flat_region_texture({"clean": target.copy(), "grid": target + 3.0 * (-1.0) ** (yy + xx)}, target, 32, (-50, 100))
    m = res["methods"]
    assert m["clean"] == m["target"] and m["target"]["high_pass_rms"] == 0.0
    assert m["grid"]["grid_amplitude"] == pytest.approx(3.0, rel=1e-9) and m["grid"]["high_pass_rms"] > 2.0
    with pytest.raises(ValueError, match="'bad' has shape"):
        flat_region_texture({"bad": target[:64]}, target)


class _State:
    def __init__(self, batch, output):
        self.batch, self.output = batch, output


class _Engine:
    """What the handler reads from an ignite evaluator: state.batch / state.output (decollated) and a logger."""

    def __init__(self):
        import logging

        self.logger = logging.getLogger("test_texture")
        self.state = None


def test_handler_writes_texture_json_and_counts_images_above_the_target(tmp_path, caplog):
    scale, offset = 4096.0, -1024.0
    target = torch.from_numpy((_scene() - offset) / scale).float()[None]
    yy, xx = np.mgrid[0:128, 0:128]
    grid = torch.from_numpy(4.0 * (-1.0) ** (yy + xx) / scale).float()[None]
    engine = _Engine()
    h = FlatRegionTexture(str(tmp_path), scale=scale, offset=offset, units="HU", model_label="restored (rat)")
    h._reset()
    batch = [{"image": target + 2 * grid, "label": target}, {"image": target[:, :20, :20], "label": target[:, :20, :20]}]
    engine.state = _State(batch, [{"pred": target + grid}, {"pred": target[:, :20, :20]}])
    h.measure(engine)
    with caplog.at_level("INFO", logger="test_texture"):
        path = h.write(engine)
    rec = json.loads(open(path).read())
    s = rec["summary"]
    assert s["restored (rat)"]["above_target"] == 1 and s["target"]["above_target"] == 0
    assert s["restored (rat)"]["grid_amplitude"] == pytest.approx(4.0, rel=1e-4)
    assert s["input"]["grid_amplitude"] == pytest.approx(8.0, rel=1e-4)
    assert len(rec["skipped"]) == 1 and "at least 32 x 32" in next(iter(rec["skipped"].values()))
    assert "Flat-region texture (HU)" in caplog.text and "skipped" in caplog.text
    with pytest.raises(ValueError, match="value_range must be"):
        FlatRegionTexture(str(tmp_path), value_range=(100, -50))
