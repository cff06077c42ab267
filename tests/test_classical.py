"""Classical restoration baselines (monai_rat.transforms.classical): each method restores, tuning finds the best
parameter honestly, super-resolution matches the degradation exactly, and bad inputs are named.

Small synthetic images (32-48 px) so the whole file runs in seconds: BM3D costs about 0.5 s per 32 x 32 call.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Resize
from PIL import Image
from scipy.ndimage import convolve, gaussian_filter
from skimage.metrics import peak_signal_noise_ratio

from monai_rat.transforms import (
    CLASSICAL_METHODS,
    BicubicDegrade,
    ClassicalRestore,
    ClassicalRestored,
    ClassicalRestoreD,
    TuneResult,
    default_grid,
    estimate_noise_psd,
    tune_classical,
)
from monai_rat.transforms.classical import _resample_psd

# bm3d (non-commercial licence) comes with the optional `baselines` extra; the README's test command installs it
needs_bm3d = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("bm3d") is None,
    reason="the bm3d package is not installed (pip install 'monai-rat[baselines]')",
)


def phantom(n: int = 48, channels: int = 1) -> np.ndarray:
    """Piecewise-smooth (a step, a disc, a ramp) plus a little texture, in [0, 1], (C, n, n) float32."""
    yy, xx = np.mgrid[:n, :n] / n
    base = 0.3 + 0.25 * (xx > 0.5) + 0.2 * (((xx - 0.35) ** 2 + (yy - 0.6) ** 2) < 0.04) + 0.1 * yy
    base = base + 0.03 * np.sin(2 * np.pi * 6 * xx) * np.cos(2 * np.pi * 5 * yy)
    return np.stack([base * (1 - 0.15 * c) for c in range(channels)]).astype(np.float32)


def white(shape, std, seed):
    return np.random.default_rng(seed).normal(0.0, std, shape).astype(np.float32)


# a high-pass kernel (noise dominated by high frequencies, as after filtered back-projection), unit norm
HP_KERNEL = np.array([[0.0, -1.0, 0.0], [-1.0, 6.0, -1.0], [0.0, -1.0, 0.0]]) / np.sqrt(40.0)


def correlated(shape2d, std, seed, kernel=HP_KERNEL):
    w = np.random.default_rng(seed).normal(size=shape2d)
    return (convolve(w, kernel, mode="wrap") * std).astype(np.float32)[None]


def true_psd(kernel, shape, std):
    return np.abs(np.fft.fft2(kernel, shape)) ** 2 * shape[0] * shape[1] * std**2


def psnr(target, image):
    return peak_signal_noise_ratio(np.asarray(target, np.float64), np.asarray(image, np.float64), data_range=1.0)


# -- denoisers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gaussian", "tv", "nlm"])
def test_tuned_denoiser_beats_the_noisy_input(method):
    clean = phantom(48)
    noisy = clean + white(clean.shape, 0.05, 1)
    result = tune_classical(method, [noisy], [clean], progress=False)
    restored = result.as_transform()(noisy)
    assert restored.shape == noisy.shape and restored.dtype == np.float32
    assert psnr(clean, restored) == pytest.approx(result.best_psnr)
    assert result.best_psnr > psnr(clean, noisy) + 2.0, (method, result.best_psnr, psnr(clean, noisy))


@needs_bm3d
def test_bm3d_at_the_true_noise_std_beats_the_noisy_input():
    clean = phantom(32)
    noisy = clean + white(clean.shape, 0.05, 2)
    restored = ClassicalRestore("bm3d", 0.05)(noisy)
    assert restored.shape == noisy.shape and restored.dtype == np.float32
    assert psnr(clean, restored) > psnr(clean, noisy) + 4.0


@needs_bm3d
def test_bm3d_with_the_noise_psd_beats_white_bm3d_on_correlated_noise():
    """Each at its own tuned parameter; the PSD estimated from other (validation) noise realisations."""
    n = 32
    clean = phantom(n)
    noisy = clean + correlated((n, n), 0.05, seed=1)
    val_noisy = [clean + correlated((n, n), 0.05, seed=s) for s in range(10, 16)]
    psd = estimate_noise_psd(val_noisy, [clean] * len(val_noisy))
    white_bm3d = tune_classical("bm3d", [noisy], [clean], grid=[0.0125, 0.025, 0.05, 0.1, 0.2], refine=3, progress=False)
    psd_bm3d = tune_classical("bm3d", [noisy], [clean], grid=[0.5, 1.0, 2.0], refine=3, progress=False, noise_psd=psd)
    assert 0.0125 < white_bm3d.best_parameter < 0.2 and 0.5 < psd_bm3d.best_parameter < 2.0
    assert psd_bm3d.best_psnr > white_bm3d.best_psnr + 0.5, (psd_bm3d, white_bm3d)
    assert white_bm3d.best_psnr > psnr(clean, noisy)


@needs_bm3d
def test_rgb_denoisers_keep_shape_and_improve():
    clean = phantom(32, channels=3)
    noisy = clean + white(clean.shape, 0.05, 3)
    outputs = {}
    for method, parameter in [("gaussian", 0.8), ("tv", 0.05), ("nlm", 0.05), ("bm3d", 0.05)]:
        outputs[method] = out = ClassicalRestore(method, parameter)(noisy)
        assert out.shape == (3, 32, 32), method
        assert psnr(clean, out) > psnr(clean, noisy) + 1.0, method
    # bm3d per channel (rgb=False) also works, and differs from the colour path
    per_channel = ClassicalRestore("bm3d", 0.05, rgb=False)(noisy)
    assert psnr(clean, per_channel) > psnr(clean, noisy) + 1.0
    assert not np.allclose(per_channel, outputs["bm3d"])
    # a grey image stored as RGB would make bm3d_rgb divide by zero (NaN): it goes per channel
    grey = np.repeat(noisy[:1], 3, axis=0)
    np.testing.assert_array_equal(ClassicalRestore("bm3d", 0.05)(grey), np.repeat(ClassicalRestore("bm3d", 0.05)(grey[:1]), 3, axis=0))


def test_identity_returns_the_input_unchanged():
    x = phantom(16)
    out = ClassicalRestore("identity")(x)
    assert np.array_equal(out, x) and out is not x
    result = tune_classical("identity", [x + 0.01], [x], progress=False)
    assert result.best_parameter is None and result.best_psnr == pytest.approx(40.0)


# -- the noise PSD -----------------------------------------------------------------------------------------


def test_estimate_noise_psd_of_white_noise_is_flat_at_the_variance():
    clean = [phantom(32)] * 8
    noisy = [c + white(c.shape, 0.05, s) for s, c in enumerate(clean)]
    psd = estimate_noise_psd(noisy, clean)
    assert psd.shape == (32, 32)
    assert psd.mean() / (32 * 32) == pytest.approx(0.05**2, rel=0.05)  # mean PSD / N = variance
    assert psd.std() / psd.mean() < 0.5  # flat, up to the periodogram's scatter over 8 images


@pytest.mark.parametrize("shape", [(32, 32), (64, 48)])
def test_estimate_noise_psd_follows_a_known_correlated_spectrum_also_on_another_grid(shape):
    clean = [phantom(32)] * 12
    noisy = [c + correlated((32, 32), 0.05, s) for s, c in enumerate(clean)]
    psd = estimate_noise_psd(noisy, clean, shape)
    expected = true_psd(HP_KERNEL, shape, 0.05)
    assert psd.shape == shape
    assert psd.mean() == pytest.approx(expected.mean(), rel=0.08)
    assert np.corrcoef(psd.ravel(), expected.ravel())[0, 1] > 0.9


def test_a_psd_is_resampled_exactly_when_the_correlation_fits_both_grids():
    small, big = true_psd(HP_KERNEL, (32, 32), 0.05), true_psd(HP_KERNEL, (64, 40), 0.05)
    np.testing.assert_allclose(_resample_psd(small, (64, 40)), big, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_resample_psd(big, (32, 32)), small, rtol=1e-9, atol=1e-12)


@needs_bm3d
def test_bm3d_with_psd_factor_one_equals_bm3d_with_the_white_std():
    x = phantom(32) + white((1, 32, 32), 0.05, 4)
    flat = np.full((32, 32), 32 * 32 * 0.05**2)
    np.testing.assert_allclose(
        ClassicalRestore("bm3d", noise_psd=flat)(x), ClassicalRestore("bm3d", 0.05)(x), atol=1e-6
    )


# -- tuning ------------------------------------------------------------------------------------------------


def test_tune_without_refinement_equals_brute_force_over_the_grid():
    clean = phantom(48)
    noisy = [clean + white(clean.shape, 0.05, s) for s in (5, 6)]
    grid = [0.01, 0.02, 0.04, 0.08, 0.16]
    result = tune_classical("tv", noisy, [clean, clean], grid=grid, refine=0, progress=False)
    brute = {g: np.mean([psnr(clean, ClassicalRestore("tv", g)(x)) for x in noisy]) for g in grid}
    best = max(brute, key=brute.get)
    assert isinstance(result, TuneResult)
    assert result.best_parameter == best and grid[0] < best < grid[-1]
    assert result.best_psnr == pytest.approx(brute[best])
    assert result.scores.keys() == brute.keys()
    for g in grid:
        assert result.scores[g] == pytest.approx(brute[g])


def test_refinement_beats_a_coarse_grid_when_the_optimum_lies_between_its_points():
    clean = phantom(48)
    noisy = clean + white(clean.shape, 0.05, 7)
    grid = [0.25, 1.0, 4.0]
    coarse = tune_classical("gaussian", [noisy], [clean], grid=grid, refine=0, progress=False)
    fine = tune_classical("gaussian", [noisy], [clean], grid=grid, refine=8, progress=False)
    assert coarse.best_parameter == 1.0
    assert fine.best_parameter not in grid and 0.25 < fine.best_parameter < 4.0
    assert fine.best_psnr > coarse.best_psnr + 0.05
    # the refined best is the best of everything it scored, and the transform reproduces it
    assert fine.best_psnr == max(fine.scores.values())
    assert psnr(clean, fine.as_transform()(noisy)) == pytest.approx(fine.best_psnr)


def test_a_best_value_at_the_grid_edge_extends_the_grid_and_warns():
    clean = phantom(48)
    noisy = clean + white(clean.shape, 0.05, 8)
    with pytest.warns(UserWarning, match="upper edge"):
        result = tune_classical("tv", [noisy], [clean], grid=[0.001, 0.002, 0.004], progress=False)
    assert result.best_parameter > 0.004 and result.best_psnr > result.scores[0.004]
    with pytest.warns(UserWarning, match="still at the upper edge"):
        tune_classical("tv", [noisy], [clean], grid=[0.001, 0.002, 0.004], max_extend=0, progress=False)


def test_default_grid_follows_the_noise_std():
    tv = default_grid("tv", 0.01)
    assert len(tv) == 9 and tv[0] == pytest.approx(0.001) and tv[-1] == pytest.approx(0.1)
    assert list(tv) == sorted(tv)
    assert default_grid("bm3d", 0.02)[4] == pytest.approx(0.02)
    assert default_grid("bm3d", with_psd=True)[4] == pytest.approx(1.0)
    assert len(default_grid("nlm")) == 13 and default_grid("identity") == (None,)
    with pytest.raises(ValueError, match="scale factor"):
        default_grid("bicubic")
    with pytest.raises(ValueError, match="noise_std"):
        default_grid("tv", -1.0)


# -- super-resolution --------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_numpy", [False, True])
def test_bicubic_of_the_downsampled_image_equals_bicubic_degrade_exactly(as_numpy):
    x = torch.rand(3, 64, 48)
    small = F.interpolate(x[None], size=(16, 12), mode="bicubic", align_corners=False, antialias=True)[0]
    up = ClassicalRestore("bicubic", 4)(small.numpy() if as_numpy else small)
    expected = BicubicDegrade(4)(x)
    assert up.shape == (3, 64, 48)
    assert np.array_equal(np.asarray(up), expected.numpy())


def test_lanczos_matches_pil_and_keeps_constants():
    x = np.random.default_rng(0).random((2, 13, 17)).astype(np.float32)
    out = ClassicalRestore("lanczos", 3)(x)
    assert out.shape == (2, 39, 51) and out.dtype == np.float32
    pil = np.stack([np.asarray(Image.fromarray(c, mode="F").resize((51, 39), Image.LANCZOS)) for c in x])
    np.testing.assert_allclose(out, pil, atol=1e-5)
    const = ClassicalRestore("lanczos", 4)(np.full((1, 9, 9), 0.37, np.float64))
    np.testing.assert_allclose(const, 0.37, atol=1e-12)


def test_lanczos_reproduces_a_smooth_ramp_better_than_nearest():
    def ramp(n, s):  # a smooth image sampled at pixel centres of an n x n grid over [0, 1]^2
        c = (np.arange(n * s) + 0.5) / (n * s)
        return np.sin(1.5 * c)[:, None] + 0.5 * c[None, :]

    low, high = ramp(16, 1)[None], ramp(16, 4)[None]
    lanczos = ClassicalRestore("lanczos", 4)(low)
    bicubic = ClassicalRestore("bicubic", 4)(low)
    nearest = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2)
    inner = (slice(None), slice(12, -12), slice(12, -12))  # beyond the 3 low-res pixels of renormalised borders
    error = {name: np.abs(out - high) for name, out in [("lanczos", lanczos), ("bicubic", bicubic), ("nearest", nearest)]}
    assert error["lanczos"][inner].max() < 0.1 * error["nearest"][inner].max()
    assert error["lanczos"].mean() < error["nearest"].mean() / 5
    assert error["lanczos"][inner].max() < error["bicubic"][inner].max()


def test_tune_super_resolution_reads_the_scale_from_the_shapes():
    x = torch.rand(3, 32, 32)
    small = F.interpolate(x[None], size=(8, 8), mode="bicubic", align_corners=False, antialias=True)[0]
    for method in ("bicubic", "lanczos"):
        result = tune_classical(method, [small], [x], progress=False)
        assert result.best_parameter == 4 and list(result.scores) == [4]
    with pytest.raises(ValueError, match="scale factor 4"):
        tune_classical("bicubic", [small], [x], grid=[2], progress=False)
    with pytest.raises(ValueError, match="integer multiple"):
        tune_classical("bicubic", [small[:, :, :7]], [x], progress=False)


def test_super_resolution_updates_a_metatensor_affine_as_resize_does():
    img = MetaTensor(torch.rand(1, 8, 8), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])), meta={"filename_or_obj": "a.png"})
    out = ClassicalRestore("lanczos", 2)(img)
    assert isinstance(out, MetaTensor) and out.shape == (1, 16, 16)
    torch.testing.assert_close(out.affine, Resize((16, 16), mode="bicubic")(img).affine)
    assert out.meta["filename_or_obj"] == "a.png"


# -- types, dictionary version, errors ---------------------------------------------------------------------


def test_output_type_dtype_and_metadata_are_kept():
    x = phantom(16) + white((1, 16, 16), 0.05, 9)
    meta = MetaTensor(torch.as_tensor(x), affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0])), meta={"filename_or_obj": "ct.dcm"})
    out = ClassicalRestore("tv", 0.05)(meta)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "ct.dcm" and torch.equal(out.affine, meta.affine)
    t64 = torch.as_tensor(x, dtype=torch.float64)
    out64 = ClassicalRestore("gaussian", 1.0)(t64)
    assert type(out64) is torch.Tensor and out64.dtype == torch.float64 and out64.shape == t64.shape


def test_dictionary_version_writes_output_key_and_keeps_other_keys():
    x = phantom(16)
    data = {"image": x, "label": x + 1, "name": "case 1"}
    out = ClassicalRestored(keys="image", method="gaussian", parameter=1.0, output_key="gauss")(data)
    assert set(out) == {"image", "label", "name", "gauss"}
    assert out["image"] is x and out["name"] == "case 1"
    np.testing.assert_allclose(out["gauss"], ClassicalRestore("gaussian", 1.0)(x))
    in_place = ClassicalRestoreD(keys=["image", "missing"], method="identity", allow_missing_keys=True)(data)
    assert np.array_equal(in_place["image"], x) and "missing" not in in_place
    with pytest.raises(KeyError):
        ClassicalRestored(keys="missing", method="identity")(data)
    with pytest.raises(ValueError, match="one entry per key"):
        ClassicalRestored(keys=["image", "label"], method="identity", output_key="a")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="median"), "unknown `method` 'median'; valid methods are identity, gaussian"),
        (dict(method="tv"), "needs a parameter"),
        (dict(method="bm3d"), "noise std"),
        (dict(method="gaussian", parameter=0.0), "must be > 0"),
        (dict(method="nlm", parameter=float("nan")), "finite number"),
        (dict(method="bicubic", parameter=2.5), "integer >= 2"),
        (dict(method="lanczos", parameter=1), "integer >= 2"),
        (dict(method="identity", parameter=1.0), "takes no parameter"),
        (dict(method="tv", parameter=0.1, patch_size=5), "does not take option"),
        (dict(method="bm3d", parameter=0.1, profile="fast"), "unknown bm3d `profile`"),
        (dict(method="bm3d", noise_psd=-np.ones((8, 8))), "noise_psd"),
        (dict(method="bm3d", noise_psd=np.zeros((8, 8))), "zero everywhere"),
    ],
)
def test_bad_construction_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassicalRestore(**kwargs)


def test_bad_images_are_named():
    tv = ClassicalRestore("tv", 0.1)
    with pytest.raises(ValueError, match=r"\(C, H, W\), got shape \(16, 16\)"):
        tv(np.zeros((16, 16), np.float32))
    bad = phantom(16)
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="1 NaN or inf"):
        tv(bad)
    with pytest.raises(TypeError, match="floating point.*uint8"):
        tv(np.zeros((1, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="as many targets as inputs"):
        tune_classical("tv", [phantom(16)], [], progress=False)
    with pytest.raises(ValueError, match="input 0 has shape"):
        tune_classical("tv", [phantom(16)], [phantom(8)], progress=False)
    with pytest.raises(ValueError, match="zero residual"):
        tune_classical("tv", [phantom(16)], [phantom(16)], progress=False)
    with pytest.raises(ValueError, match="different shapes"):
        estimate_noise_psd([phantom(16), phantom(8)], [phantom(16), phantom(8)])


@needs_bm3d
def test_bad_bm3d_images_are_named():
    with pytest.raises(ValueError, match="at least 8 x 8"):
        ClassicalRestore("bm3d", 0.1)(np.zeros((1, 6, 16), np.float32))
    with pytest.raises(ValueError, match="2 channels, the image 3"):
        ClassicalRestore("bm3d", noise_psd=np.ones((2, 16, 16)))(np.zeros((3, 16, 16), np.float32))


def test_every_listed_method_is_constructible():
    parameters = {"identity": None, "gaussian": 1.0, "tv": 0.1, "nlm": 0.1, "bm3d": 0.1, "bicubic": 2, "lanczos": 2}
    assert set(parameters) == set(CLASSICAL_METHODS)
    for method, parameter in parameters.items():
        assert ClassicalRestore(method, parameter).method == method


def test_missing_bm3d_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bm3d", None)  # `import bm3d` now raises ImportError
    with pytest.raises(ImportError, match=r"monai-rat\[baselines\].*|non-commercial"):
        ClassicalRestore("bm3d", 0.1)(phantom(16))


@pytest.mark.parametrize("method", ["tv", "nlm"])
def test_noise_relative_parameter_is_a_factor_on_the_estimated_noise_std(method):
    from monai_rat.transforms import estimated_noise_std

    clean = phantom(40)
    noisy = clean + white(clean.shape, 0.04, 5)
    est = estimated_noise_std(noisy)
    assert 0.03 < est < 0.05  # Donoho's estimate of the 0.04 white noise
    np.testing.assert_allclose(
        ClassicalRestore(method, 1.5, noise_relative=True)(noisy), ClassicalRestore(method, 1.5 * est)(noisy), atol=1e-6
    )


def test_noise_relative_tuning_carries_over_to_another_noise_level():
    """Tuned on a low-noise image, applied to a high-noise one: the relative factor adapts, a fixed weight does not."""
    clean = phantom(48)
    val = clean + white(clean.shape, 0.02, 6)
    test = clean + white(clean.shape, 0.08, 7)
    fixed = tune_classical("tv", [val], [clean], progress=False)
    relative = tune_classical("tv", [val], [clean], progress=False, noise_relative=True)
    assert 0.25 <= min(relative.scores) and max(relative.scores) <= 8.0  # a grid of factors, not of weights
    assert psnr(clean, relative.as_transform()(test)) > psnr(clean, fixed.as_transform()(test)) + 1.0


def test_noise_relative_refuses_a_psd():
    with pytest.raises(ValueError, match="noise_relative"):
        ClassicalRestore("bm3d", 1.0, noise_relative=True, noise_psd=np.ones((8, 8)))
