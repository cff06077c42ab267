"""The two metric protocols: "float" (network units) and "reference" (the paper's code: 8-bit, BT.601 Y)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_rat.metrics import (
    ReferencePSNRMetric,
    ReferenceSSIMMetric,
    describe_protocol,
    reference_psnr,
    reference_ssim,
    restoration_metric,
    to_reference_y,
)

GAIN = 20 * math.log10(255 / 219)  # 1.3219 dB


def _on_8bit_grid(shape, seed):
    """Images whose values are already 8-bit levels in [0, 1], so clamping and rounding change nothing."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).double() / 255


def test_reference_psnr_is_float_psnr_of_the_same_8bit_values_plus_1_32_db():
    y = _on_8bit_grid((3, 1, 40, 48), 0)
    noise = torch.randint(-6, 7, y.shape, generator=torch.Generator().manual_seed(1)).double() / 255
    x = (y + noise).clamp(0, 1)  # still on the grid
    float_psnr = restoration_metric("psnr", "float", data_range=1.0)(x, y).double()
    ref = reference_psnr(x, y)
    assert ref.shape == (3, 1)
    np.testing.assert_allclose((ref - float_psnr).numpy(), GAIN, atol=1e-5)  # float32 inside MONAI's PSNRMetric
    # exactly in float64
    mse = ((x - y) ** 2).flatten(1).mean(1, keepdim=True)
    np.testing.assert_allclose((ref - 10 * torch.log10(1 / mse)).numpy(), GAIN, atol=1e-10)
    assert GAIN == pytest.approx(1.3219, abs=1e-4)


def test_quantisation_and_clamping():
    y = _on_8bit_grid((1, 1, 16, 16), 2)
    # less than half an 8-bit level: rounds back to the target, a perfect score
    assert torch.isinf(reference_psnr(y + 0.4 / 255, y)).all()
    # more than half a level: one level everywhere (where not clamped)
    inner = y.clamp(1 / 255, 254 / 255)
    ya = to_reference_y(inner + 0.6 / 255)
    yb = to_reference_y(inner)
    np.testing.assert_allclose((ya - yb).numpy(), 219 / 255, atol=1e-12)
    # values outside [0, 1] clamp: far above the top is the top, far below the bottom is the bottom
    np.testing.assert_array_equal(to_reference_y(torch.full((1, 1, 4, 4), 7.0)).numpy(), 235.0)
    np.testing.assert_array_equal(to_reference_y(torch.full((1, 1, 4, 4), -3.0)).numpy(), 16.0)
    # a window in network units: its ends map to 0 and 255
    w = to_reference_y(torch.tensor([[[[0.2, 0.3, 0.25]]]]), window=(0.2, 0.3))
    np.testing.assert_allclose(w.numpy().ravel(), [16.0, 235.0, 16 + 219 * 128 / 255], atol=1e-12)  # 127.5 -> 128 (to even)


def test_rgb_uses_bt601_weights_in_rgb_order():
    img = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    img[0, 0] = 1.0  # pure red
    np.testing.assert_allclose(to_reference_y(img).numpy(), 16 + 65.481, atol=1e-12)
    img = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    img[0, 2] = 1.0  # pure blue
    np.testing.assert_allclose(to_reference_y(img).numpy(), 16 + 24.966, atol=1e-12)
    grey = torch.full((1, 3, 2, 2), 0.5)
    np.testing.assert_allclose(to_reference_y(grey).numpy(), to_reference_y(grey[:, :1]).numpy(), atol=1e-12)


def _basicsr_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """BasicSR's ``_ssim`` written out with scipy (OpenCV's filter2D is a correlation; the valid region only)."""
    from scipy.ndimage import correlate

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    r = np.arange(11) - 5
    k = np.exp(-(r**2) / (2 * 1.5**2))
    k /= k.sum()
    win = np.outer(k, k)

    def f(t):
        return correlate(t, win, mode="reflect")[5:-5, 5:-5]

    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_reference_ssim_is_basicsr_ssim_on_y():
    from skimage.metrics import structural_similarity

    y = _on_8bit_grid((2, 3, 37, 41), 3)
    x = (y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(-0.1, 1.1)
    got = reference_ssim(x, y)
    ya, yb = to_reference_y(x).numpy(), to_reference_y(y).numpy()
    for i in range(2):
        assert got[i, 0].item() == pytest.approx(_basicsr_ssim(ya[i, 0], yb[i, 0]), abs=1e-10)
        sk = structural_similarity(ya[i, 0], yb[i, 0], data_range=255, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)  # fmt: skip
        assert got[i, 0].item() == pytest.approx(sk, abs=1e-8)
    assert reference_ssim(y, y).numpy() == pytest.approx(1.0)


def test_metric_classes_accumulate_like_monai_metrics():
    y = _on_8bit_grid((4, 1, 24, 24), 5)
    x = (y + 3 / 255).clamp(0, 1)
    psnr, ssim = ReferencePSNRMetric(), ReferenceSSIMMetric()
    for i in range(0, 4, 2):
        psnr(x[i : i + 2], y[i : i + 2])
        ssim(x[i : i + 2], y[i : i + 2])
    assert psnr.get_buffer().shape == (4, 1)
    assert psnr.aggregate().item() == pytest.approx(reference_psnr(x, y).mean().item(), rel=1e-6)
    assert ssim.aggregate().item() == pytest.approx(reference_ssim(x, y).mean().item(), rel=1e-6)
    # the factory: float gives MONAI's own metrics, reference ours with the data range as the default window
    from monai.metrics import PSNRMetric, SSIMMetric

    assert isinstance(restoration_metric("psnr"), PSNRMetric) and isinstance(restoration_metric("ssim"), SSIMMetric)
    m = restoration_metric("psnr", "reference", data_range=2.0)
    assert isinstance(m, ReferencePSNRMetric) and m.window == (0.0, 2.0)
    assert "+1.32 dB" in describe_protocol("reference") and "data range 1" in describe_protocol("float")


def test_invalid_protocol_and_shapes_are_named():
    with pytest.raises(ValueError, match="metric protocol 'basicsr'.*'float', 'reference'"):
        restoration_metric("psnr", "basicsr")
    with pytest.raises(ValueError, match="C = 1 \\(grey\\) or 3"):
        reference_psnr(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        reference_ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="window"):
        ReferencePSNRMetric(window=(1.0, 1.0))
