"""Classical restoration baselines as MONAI transforms, and their one-parameter tuning on validation pairs.

RAT must be shown against what a user can already run in one line. Each method below has one
parameter; :func:`tune_classical` picks it by PSNR on the validation pairs it is given (never the
test split), refining around the best grid value so that no baseline is left under-tuned.

=============  ==========================================  =============================================
method         parameter (units)                           what runs
=============  ==========================================  =============================================
``identity``   none (must be ``None``)                     the input, unchanged (the "low-quality input"
                                                           row of a table)
``gaussian``   sigma, pixels, > 0                          ``scipy.ndimage.gaussian_filter`` per channel
``tv``         weight, image intensity units, > 0          ``skimage.restoration.denoise_tv_chambolle``
                                                           per channel
``nlm``        h, image intensity units, > 0               ``skimage.restoration.denoise_nl_means``
                                                           (patch 5, distance 6, fast mode); C > 1
                                                           channels are matched jointly (``channel_axis``)
``bm3d``       sigma, noise std in image intensity units,  ``bm3d.bm3d`` per channel, ``bm3d.bm3d_rgb``
               > 0; with ``noise_psd``: a factor on the    for 3 channels (opponent colour space);
               noise std (default 1.0), > 0                ``noise_psd`` models correlated noise
``bicubic``    scale factor, integer >= 2                  ``(C, h, w) -> (C, h*s, w*s)``: torch bicubic,
                                                           ``align_corners=False``, exactly the up-step of
                                                           :class:`~monai_rat.transforms.BicubicDegrade`
``lanczos``    scale factor, integer >= 2                  ``(C, h, w) -> (C, h*s, w*s)``: separable
                                                           Lanczos-3 (PIL's ``LANCZOS`` kernel), float64
=============  ==========================================  =============================================

"Image intensity units" are the units of the array the transform receives, i.e. the network's
(CT: HU mapped to [0, 1]; pathology RGB in [0, 1]). A noise std of 20 HU is ``20 / 4096`` there when
[-1024, 3072] HU maps to [0, 1].

**Noise PSD convention** (what ``bm3d`` expects, and what :func:`estimate_noise_psd` returns): a
``(H, W)`` array, ``psd[k] = E |FFT2(noise)[k]|^2`` with the unnormalised FFT and the zero frequency
at ``[0, 0]`` (not ``fftshift``-ed). White noise of std ``sigma`` has ``psd = H * W * sigma**2``
everywhere (this is how ``bm4d`` turns a scalar sigma into a PSD); ``psd.mean() / (H * W)`` is the
noise variance. A PSD of another shape than the image is resampled to the image's shape through the
noise autocovariance (see :func:`estimate_noise_psd`).
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, ensure_tuple

__all__ = [
    "CLASSICAL_METHODS",
    "ClassicalRestore",
    "ClassicalRestored",
    "ClassicalRestoreD",
    "ClassicalRestoreDict",
    "TuneResult",
    "default_grid",
    "estimate_noise_psd",
    "estimated_noise_std",
    "tune_classical",
]

#: every method :class:`ClassicalRestore` knows, in table order.
CLASSICAL_METHODS = ("identity", "gaussian", "tv", "nlm", "bm3d", "bicubic", "lanczos")
_DENOISERS = ("gaussian", "tv", "nlm", "bm3d")
_SUPER_RESOLUTION = ("bicubic", "lanczos")

# the options each method accepts, with their defaults
_OPTIONS: dict[str, dict[str, Any]] = {
    "identity": {},
    "gaussian": {"mode": "reflect", "truncate": 4.0},
    "tv": {"eps": 2e-4, "max_num_iter": 200, "noise_relative": False},
    "nlm": {"patch_size": 5, "patch_distance": 6, "fast_mode": True, "sigma": 0.0, "noise_relative": False},
    "bm3d": {"noise_psd": None, "profile": "np", "rgb": True, "num_threads": 1, "noise_relative": False},
    "bicubic": {},
    "lanczos": {},
}

# bm3d's profile names -> its profile classes (resolved at call time, when bm3d is imported)
_BM3D_PROFILES = {
    "np": "BM3DProfile",
    "refilter": "BM3DProfileRefilter",
    "vn": "BM3DProfileVN",
    "high": "BM3DProfileHigh",
    "vn_old": "BM3DProfileVNOld",
    "deb": "BM3DProfileDeb",
    "lc": "BM3DProfileLC",
}

_LANCZOS_A = 3  # Lanczos-3: support of 3 input pixels on each side


def _check_method(method: str, where: str) -> str:
    if not isinstance(method, str) or method.lower() not in CLASSICAL_METHODS:
        raise ValueError(f"{where}: unknown `method` {method!r}; valid methods are {', '.join(CLASSICAL_METHODS)}.")
    return method.lower()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_parameter(method: str, parameter: Any, has_psd: bool, where: str):
    """Validate a method's parameter; return it as float / int / None."""
    if method == "identity":
        if parameter is not None:
            raise ValueError(f"{where}: method 'identity' takes no parameter, got {parameter!r} (pass None).")
        return None
    if parameter is None:
        if method == "bm3d" and has_psd:
            return 1.0
        units = {
            "gaussian": "sigma in pixels",
            "tv": "the TV weight in image intensity units",
            "nlm": "h in image intensity units",
            "bm3d": "the noise std in image intensity units (or pass `noise_psd`)",
            "bicubic": "the integer scale factor",
            "lanczos": "the integer scale factor",
        }[method]
        raise ValueError(f"{where}: method {method!r} needs a parameter ({units}); got None.")
    if not _is_number(parameter) or not math.isfinite(float(parameter)):
        raise ValueError(f"{where}: the parameter of {method!r} must be a finite number, got {parameter!r}.")
    if method in _SUPER_RESOLUTION:
        if float(parameter) != int(parameter) or int(parameter) < 2:
            raise ValueError(f"{where}: the parameter of {method!r} is the scale factor, an integer >= 2; got {parameter!r}.")
        return int(parameter)
    if not float(parameter) > 0:
        raise ValueError(f"{where}: the parameter of {method!r} must be > 0, got {parameter!r}.")
    return float(parameter)


def _check_options(method: str, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    allowed = _OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"{where}: method {method!r} does not take option(s) {', '.join(unknown)}; its options: {valid}.")
    return {**allowed, **options}


def _to_numpy(img: Any, where: str, name: str = "image") -> np.ndarray:
    """The image as a float numpy ``(C, H, W)`` array, checked (shape, float dtype, finite)."""
    import torch

    if isinstance(img, torch.Tensor):
        arr = img.detach().cpu().numpy() if not hasattr(img, "as_tensor") else img.as_tensor().detach().cpu().numpy()
    else:
        arr = np.asarray(img)
    if arr.ndim != 3:
        raise ValueError(f"{where}: the {name} must be a channel-first 2D image (C, H, W), got shape {tuple(arr.shape)}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{where}: the {name} must be floating point in the network's intensity units, got dtype {arr.dtype} "
            f"(shape {tuple(arr.shape)}); convert it (e.g. ScaleIntensityRange) first."
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{where}: the {name} holds {int(bad.sum())} NaN or inf values (shape {tuple(arr.shape)}).")
    return arr


def _centred_covariance_from_psd(psd: np.ndarray) -> np.ndarray:
    """Circular autocovariance of a PSD (FFT layout), centred, odd-sized: lag 0 in the middle."""
    h, w = psd.shape
    cov = np.fft.fftshift(np.real(np.fft.ifft2(psd)) / (h * w))
    ry, rx = (h - 1) // 2, (w - 1) // 2
    return cov[h // 2 - ry : h // 2 + ry + 1, w // 2 - rx : w // 2 + rx + 1]


def _psd_from_centred_covariance(cov: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """PSD on an ``shape`` grid from a centred, odd-sized autocovariance: lags beyond the grid's half
    size are dropped, lags the covariance lacks are zero; small negative values (from cutting the
    lags) are set to 0 (a PSD is non-negative)."""
    h, w = shape
    cy, cx = cov.shape[0] // 2, cov.shape[1] // 2
    ry, rx = min(cy, (h - 1) // 2), min(cx, (w - 1) // 2)
    window = cov[cy - ry : cy + ry + 1, cx - rx : cx + rx + 1]
    grid = np.zeros((h, w))
    ly = np.arange(-ry, ry + 1) % h
    lx = np.arange(-rx, rx + 1) % w
    grid[np.ix_(ly, lx)] = window
    psd = np.real(np.fft.fft2(grid)) * (h * w)
    return np.maximum(psd, 0.0)


def _resample_psd(psd: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if tuple(psd.shape) == tuple(shape):
        return psd
    return _psd_from_centred_covariance(_centred_covariance_from_psd(psd), shape)


def _check_psd(noise_psd: Any, where: str) -> np.ndarray:
    psd = np.asarray(noise_psd.detach().cpu().numpy() if hasattr(noise_psd, "detach") else noise_psd, dtype=np.float64)
    if psd.ndim not in (2, 3):
        raise ValueError(f"{where}: `noise_psd` must be (H, W) or per channel (C, H, W), got shape {tuple(psd.shape)}.")
    if not np.isfinite(psd).all() or (psd < 0).any():
        raise ValueError(f"{where}: `noise_psd` must be finite and >= 0 (a power spectrum, see estimate_noise_psd).")
    if psd.ndim == 2:
        psd = psd[None]
    if (psd.reshape(psd.shape[0], -1).max(axis=1) <= 0).any():
        raise ValueError(f"{where}: `noise_psd` is zero everywhere in at least one channel (no noise to model).")
    return psd


def _lanczos_matrix(n_in: int, scale: int) -> np.ndarray:
    """``(n_in * scale, n_in)`` Lanczos-3 up-sampling matrix, pixel centres as ``align_corners=False``.

    Output pixel ``i`` sits at input coordinate ``c = (i + 0.5) / scale`` (pixel ``j`` spans
    ``[j, j + 1)``); its weights are ``L(j + 0.5 - c)``, ``L(x) = sinc(x) sinc(x / 3)`` for ``|x| < 3``,
    over the input pixels inside the image, normalised to sum 1 (as PIL does at the borders).
    """
    centres = (np.arange(n_in * scale) + 0.5) / scale
    d = (np.arange(n_in) + 0.5)[None, :] - centres[:, None]
    weights = np.where(np.abs(d) < _LANCZOS_A, np.sinc(d) * np.sinc(d / _LANCZOS_A), 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


class ClassicalRestore(Transform):
    """Restore a channel-first 2D image ``(C, H, W)`` with a classical method and its one parameter.

    ``method`` and ``parameter`` (see the table in :mod:`monai_rat.transforms.classical`):

    - ``"identity"``: no parameter; returns the input unchanged (a copy).
    - ``"gaussian"``: sigma in pixels; ``scipy.ndimage.gaussian_filter`` on each channel. Options:
      ``mode`` (border, default ``"reflect"``), ``truncate`` (in sigmas, default 4).
    - ``"tv"``: the weight of ``skimage.restoration.denoise_tv_chambolle`` (larger = smoother; in
      image intensity units, best near the noise std), each channel separately. Options: ``eps``
      (default 2e-4), ``max_num_iter`` (default 200).
    - ``"nlm"``: ``h`` of ``skimage.restoration.denoise_nl_means`` (patch-distance cut-off in image
      intensity units, best near the noise std). Options: ``patch_size`` (default 5),
      ``patch_distance`` (default 6), ``fast_mode`` (default True), ``sigma`` (the noise std that
      scikit-image subtracts from patch distances, default 0). With C > 1 channels the patches are
      compared over all channels together (``channel_axis``).
    - ``"bm3d"``: the noise std of ``bm3d.bm3d`` in image intensity units. Options: ``noise_psd``
      (default None: white noise): a noise power spectrum (see the module docstring and
      :func:`estimate_noise_psd`), ``(H, W)`` for all channels or ``(C, H, W)`` per channel, resampled
      to the image's shape when it differs; then the parameter is a factor on the noise std (the
      PSD is multiplied by ``parameter ** 2``; default 1.0). ``profile`` (default ``"np"``; one of
      ``"np"``, ``"refilter"``, ``"vn"``, ``"high"``, ``"vn_old"``, ``"deb"``, ``"lc"`` or a
      ``bm3d.BM3DProfile``). ``num_threads`` (default 1: single-threaded and so deterministic, as
      the bm3d profiles warn that other values may change results slightly; 0 = bm3d's automatic
      choice). ``rgb`` (default True): a 3-channel image goes through ``bm3d.bm3d_rgb`` (opponent
      colour transform, block matching on the luminance, the package's colour method); any other
      channel count, ``rgb=False``, or a 3-channel image with a constant opponent channel (a grey
      image stored as RGB, which ``bm3d_rgb`` would turn into NaN) is denoised one channel at a
      time with ``bm3d.bm3d``.
    - ``"bicubic"``: the integer scale factor ``s``; the input is the LOW-resolution image,
      ``(C, h, w) -> (C, h * s, w * s)`` with ``torch.nn.functional.interpolate(mode="bicubic",
      align_corners=False)`` in float32 (float64 for a float64 input): exactly the up-sampling step
      of :class:`~monai_rat.transforms.BicubicDegrade`, so
      ``ClassicalRestore("bicubic", s)(down_s(x)) == BicubicDegrade(s)(x)``.
    - ``"lanczos"``: the integer scale factor ``s``, ``(C, h, w) -> (C, h * s, w * s)`` by separable
      Lanczos-3 resampling. Our own kernel (the same as PIL's ``Image.LANCZOS`` when enlarging,
      including its renormalised weights at the borders), because it runs in float64 on any number
      of channels in two matrix products, with no 8-bit or per-channel ``"F"``-mode image
      conversion, and with the pixel-centre convention of ``align_corners=False``, so bicubic and
      Lanczos outputs are aligned with each other and with the high-resolution target.

    ``noise_relative=True`` (``"tv"``, ``"nlm"``, ``"bm3d"`` without ``noise_psd``): the parameter is a
    factor on each image's own noise std, estimated from the image alone by
    ``skimage.restoration.estimate_sigma`` (wavelet median absolute deviation, averaged over the
    channels), so one tuned factor suits images of different noise levels (a CT slice's noise grows
    with the patient's size; a test set rarely has the validation set's noise level). The one
    parameter is still tuned on validation; the estimate needs no clean image.

    The output has the input's type (numpy array, torch tensor on its device, or MetaTensor with
    its metadata) and dtype, and the input's shape except for the two super-resolution methods.
    Those update a MetaTensor's affine for the finer pixel grid (as ``monai.transforms.Resize``
    does). Nothing is clipped: bicubic and Lanczos overshoot at edges.

    Args:
        method: one of :data:`CLASSICAL_METHODS`.
        parameter: the method's parameter (see above); ``None`` only for ``"identity"`` and for
            ``"bm3d"`` with a ``noise_psd`` (then 1.0).
        options: per-method options (see above); an option the method does not take is an error.

    Raises:
        ValueError: (at construction) when the method is unknown (the message lists the valid
            ones), the parameter is missing, not a finite number, out of range (<= 0, or not an
            integer >= 2 for a scale factor) or given to ``"identity"``, an option is not one the
            method takes, or ``noise_psd`` is not a non-negative finite ``(H, W)`` / ``(C, H, W)``
            array. At call time: when the image is not ``(C, H, W)``, holds NaN or inf, is smaller
            than BM3D's 8 x 8 block, or has a channel count that a per-channel ``noise_psd`` does
            not match.
        TypeError: at call time, when the image is not floating point.
        ImportError: at call time, for ``"bm3d"`` when the ``bm3d`` package is not installed.
    """

    backend = ["numpy", "torch"]

    def __init__(self, method: str, parameter: float | int | None = None, **options: Any) -> None:
        self.method = _check_method(method, "ClassicalRestore")
        self.options = _check_options(self.method, options, "ClassicalRestore")
        self._psd = None
        if self.method == "bm3d":
            profile, threads = self.options["profile"], self.options["num_threads"]
            if isinstance(profile, str) and profile not in _BM3D_PROFILES:
                raise ValueError(f"ClassicalRestore: unknown bm3d `profile` {profile!r}; valid: {', '.join(_BM3D_PROFILES)} or a bm3d.BM3DProfile.")
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
                raise ValueError(f"ClassicalRestore: bm3d `num_threads` must be an integer >= 0 (0 = bm3d's automatic choice), got {threads!r}.")
            if self.options["noise_psd"] is not None:
                self._psd = _check_psd(self.options["noise_psd"], "ClassicalRestore")
                if self.options["noise_relative"]:
                    raise ValueError("ClassicalRestore: `noise_relative` and `noise_psd` do not go together: with a PSD "
                                     "the parameter already is a factor on the PSD's noise std.")
        self.parameter = _check_parameter(self.method, parameter, self._psd is not None, "ClassicalRestore")
        self._psd_cache: dict[tuple[int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.options.items() if k != "noise_psd"}
        if self._psd is not None:
            shown["noise_psd"] = f"<PSD {self._psd.shape}>"
        extra = "".join(f", {k}={v!r}" for k, v in shown.items())
        return f"ClassicalRestore({self.method!r}, {self.parameter!r}{extra})"

    def __call__(self, img):
        """Restore the image.

        Args:
            img: a float channel-first ``(C, H, W)`` numpy array, torch tensor or MetaTensor, in the
                network's intensity units; for ``"bicubic"`` / ``"lanczos"`` the low-resolution image.

        Returns:
            the restored image, same type and dtype as ``img``; same shape, or ``(C, H*s, W*s)`` for
            the super-resolution methods.

        Raises:
            ValueError: when the image is not ``(C, H, W)``, holds NaN or inf, is too small for
                BM3D, or does not match a per-channel ``noise_psd``.
            TypeError: when the image is not floating point.
        """
        where = f"ClassicalRestore({self.method!r})"
        arr = _to_numpy(img, where)
        if self.method == "bicubic":
            out = self._bicubic(img)
        elif self.method == "identity":
            out = arr.copy()
        else:
            x = arr.astype(np.float64)
            p = self.parameter
            if self.options.get("noise_relative"):
                p = p * estimated_noise_std(x)
            out = getattr(self, f"_{self.method}")(x, where, p)
        restored = convert_to_dst_type(out, img, dtype=getattr(img, "dtype", None))[0]
        if self.method in _SUPER_RESOLUTION:
            self._update_affine(img, restored)
        return restored

    # -- the methods, each on a float64 (C, H, W) numpy array ------------------------------------

    def _gaussian(self, x: np.ndarray, where: str, p: float) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        o = self.options
        return np.stack([gaussian_filter(c, p, mode=o["mode"], truncate=o["truncate"]) for c in x])

    def _tv(self, x: np.ndarray, where: str, p: float) -> np.ndarray:
        from skimage.restoration import denoise_tv_chambolle

        o = self.options
        return np.stack(
            [denoise_tv_chambolle(c, weight=p, eps=o["eps"], max_num_iter=o["max_num_iter"]) for c in x]
        )

    def _nlm(self, x: np.ndarray, where: str, p: float) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        o = self.options
        kwargs = dict(patch_size=o["patch_size"], patch_distance=o["patch_distance"], h=p,
                      fast_mode=o["fast_mode"], sigma=o["sigma"], preserve_range=True)
        if x.shape[0] == 1:
            return denoise_nl_means(x[0], **kwargs)[None]
        return np.moveaxis(denoise_nl_means(np.moveaxis(x, 0, -1), channel_axis=-1, **kwargs), -1, 0)

    def _bm3d(self, x: np.ndarray, where: str, p: float) -> np.ndarray:
        try:
            import bm3d
        except ImportError as e:
            raise ImportError(
                f"{where}: method 'bm3d' needs the `bm3d` package, an optional extra because its licence is for "
                "non-commercial use only: pip install 'monai-rat[baselines]' (or pip install 'bm3d>=4.0')."
            ) from e
        c, h, w = x.shape
        if min(h, w) < 8:
            raise ValueError(f"{where}: BM3D needs an image of at least 8 x 8 pixels (its block size), got {x.shape}.")
        o = self.options
        profile = o["profile"]
        profile = copy.copy(profile) if not isinstance(profile, str) else getattr(bm3d, _BM3D_PROFILES[profile])()
        profile.num_threads = o["num_threads"]
        if self._psd is None:
            noise = [p] * c  # std per channel
        else:
            if self._psd.shape[0] not in (1, c):
                raise ValueError(f"{where}: `noise_psd` has {self._psd.shape[0]} channels, the image {c} (shape {x.shape}).")
            if (h, w) not in self._psd_cache:
                self._psd_cache[(h, w)] = np.stack([_resample_psd(p, (h, w)) for p in self._psd])
            psd = self._psd_cache[(h, w)] * p**2
            noise = [psd[0 if psd.shape[0] == 1 else i] for i in range(c)]
        # bm3d_rgb scales each opponent-colour channel by its range: a constant one (a grey image
        # stored as RGB) would divide by zero and return NaN, so such images go per channel
        opponent = np.tensordot(np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0, -0.5], [0.25, -0.5, 0.25]]), x, axes=1) if c == 3 else None
        if c == 3 and o["rgb"] and np.ptp(opponent.reshape(3, -1), axis=1).min() > 0:
            if self._psd is None:
                sigma = p
            elif self._psd.shape[0] == 1:
                sigma = noise[0]
            else:
                sigma = np.stack(noise, axis=-1)  # (H, W, 3): one PSD per channel
            return np.moveaxis(bm3d.bm3d_rgb(np.moveaxis(x, 0, -1), sigma, profile=profile), -1, 0)
        return np.stack([bm3d.bm3d(x[i], noise[i], profile=profile) for i in range(c)])

    def _lanczos(self, x: np.ndarray, where: str, p: int) -> np.ndarray:
        _, h, w = x.shape
        my, mx = _lanczos_matrix(h, p), _lanczos_matrix(w, p)
        return my[None] @ x @ mx.T[None]

    def _bicubic(self, img):
        """The up-sampling step of BicubicDegrade, kept to the same torch calls and dtype."""
        import torch
        import torch.nn.functional as F
        from monai.data import MetaTensor

        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img if isinstance(img, torch.Tensor) else np.asarray(img))
        xf = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        h, w = xf.shape[1:]
        s = self.parameter
        return F.interpolate(xf[None], size=(h * s, w * s), mode="bicubic", align_corners=False)[0]

    def _update_affine(self, img, restored) -> None:
        from monai.data import MetaTensor
        from monai.data.utils import to_affine_nd
        from monai.transforms.utils import scale_affine

        if not isinstance(img, MetaTensor) or not isinstance(restored, MetaTensor):
            return
        import torch

        old = tuple(int(v) for v in img.shape[1:])
        new = tuple(int(v) for v in restored.shape[1:])
        affine = img.affine
        scale = to_affine_nd(affine.shape[-1] - 1, scale_affine(old, new, centered=True, align_corners=False))
        restored.affine = affine @ torch.as_tensor(scale, dtype=affine.dtype, device=affine.device)


class ClassicalRestored(MapTransform):
    """Dictionary version of :class:`ClassicalRestore`.

    Example (a table row of the raw input and a tuned TV next to the network's prediction)::

        ClassicalRestored(keys="image", method="tv", parameter=0.01, output_key="tv")

    Args:
        keys: keys of the images to restore.
        method: see :class:`ClassicalRestore`.
        parameter: see :class:`ClassicalRestore`.
        output_key: where to write the restored images: one key per key (a single key for a single
            ``keys``); ``None`` (default) replaces the key's value.
        allow_missing_keys: do not raise when a key is missing.
        options: see :class:`ClassicalRestore`.

    Raises:
        ValueError: when ``output_key`` does not have one entry per key, and as :class:`ClassicalRestore`.
        KeyError: when a key is missing and ``allow_missing_keys`` is False.
    """

    backend = ClassicalRestore.backend

    def __init__(
        self,
        keys: KeysCollection,
        method: str,
        parameter: float | int | None = None,
        output_key: KeysCollection | None = None,
        allow_missing_keys: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = self.keys if output_key is None else ensure_tuple(output_key)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(
                f"ClassicalRestored: `output_key` must have one entry per key ({len(self.keys)}: {self.keys}), got {self.output_keys}."
            )
        self.restore = ClassicalRestore(method, parameter, **options)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        """Restore each key.

        Args:
            data: the dictionary.

        Returns:
            a shallow copy with the restored images written to the output keys; other keys kept.

        Raises:
            ValueError, TypeError: as :class:`ClassicalRestore`.
            KeyError: when a key is missing and ``allow_missing_keys`` is False.
        """
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.restore(d[key])
        return d


ClassicalRestoreD = ClassicalRestoreDict = ClassicalRestored


# -- noise power spectrum --------------------------------------------------------------------------


def estimate_noise_psd(
    noisy_images: Sequence[Any], clean_images: Sequence[Any], shape: Sequence[int] | None = None
) -> np.ndarray:
    """Estimate the mean noise power spectrum of validation pairs, for ``ClassicalRestore("bm3d", noise_psd=...)``.

    For each pair the residual ``noisy - clean`` (its mean per channel removed: the PSD models
    zero-mean noise, a bias is not noise) gives the sample autocovariance (biased estimator,
    zero-padded FFT, no wrap-around) at lags up to half the image size per axis (``|lag| <=
    (size - 1) // 2``; longer lags rest on few pixel pairs and are too noisy to keep). The lags that
    also fit the ``shape`` grid (the same rule) are kept, lags beyond are zero, and the PSD on that
    grid is ``H * W * FFT2(autocovariance)`` (module docstring convention: white noise of std
    ``sigma`` gives ``H * W * sigma**2``), with the small negative values that cutting the lags can
    leave set to 0. PSDs are averaged over the pairs, weighted by pixel count. This assumes
    stationary noise: CT noise after filtered back-projection is correlated (which this models)
    and also varies over the image (which it averages).

    Args:
        noisy_images: the validation inputs, each a float ``(C, H, W)`` array or tensor.
        clean_images: the matching targets, same shapes.
        shape: ``(H, W)`` of the PSD, i.e. of the images BM3D will denoise; ``None`` (default):
            the images' own shape (they must then all have the same shape). A PSD of another shape
            is also resampled this way by :class:`ClassicalRestore` itself.

    Returns:
        float64 PSD ``(H, W)`` for single-channel images, ``(C, H, W)`` (one per channel) otherwise.

    Raises:
        ValueError: when the sequences are empty or of different lengths, a pair differs in shape,
            the channel counts differ between pairs, ``shape`` is missing for images of different
            shapes or is not two integers >= 2, an image is not ``(C, H, W)`` or holds NaN or inf,
            or all residuals are zero.
        TypeError: when an image is not floating point.
    """
    where = "estimate_noise_psd"
    noisy, clean = _pairs(noisy_images, clean_images, where, same_shape=True)
    if shape is None:
        shapes = {x.shape[1:] for x in noisy}
        if len(shapes) > 1:
            raise ValueError(f"{where}: the images have different shapes {sorted(shapes)}; pass `shape` (the (H, W) BM3D will see).")
        shape = shapes.pop()
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(f"{where}: `shape` must be (H, W) with H, W >= 2, got {shape}.")
    channels = {x.shape[0] for x in noisy}
    if len(channels) > 1:
        raise ValueError(f"{where}: the images have different channel counts {sorted(channels)}.")
    total = np.zeros((channels.pop(), *shape))
    weight = 0.0
    for x, y in zip(noisy, clean):
        r = x.astype(np.float64) - y.astype(np.float64)
        for c, rc in enumerate(r):
            rc = rc - rc.mean()
            h, w = rc.shape
            power = np.abs(np.fft.fft2(rc, (2 * h, 2 * w))) ** 2
            cov = np.fft.fftshift(np.real(np.fft.ifft2(power))) / (h * w)  # lag 0 at [h, w]
            ry, rx = (h - 1) // 2, (w - 1) // 2  # longer lags rest on few pixel pairs: too noisy to keep
            cov = cov[h - ry : h + ry + 1, w - rx : w + rx + 1]
            total[c] += _psd_from_centred_covariance(cov, shape) * (h * w)
        weight += h * w
    psd = total / weight
    if not (psd > 0).any():
        raise ValueError(f"{where}: the residuals noisy - clean are zero: there is no noise to estimate.")
    return psd[0] if psd.shape[0] == 1 else psd


def estimated_noise_std(x: np.ndarray) -> float:
    """The noise std of a ``(C, H, W)`` image estimated from the image alone (no clean reference).

    ``skimage.restoration.estimate_sigma`` (median absolute deviation of the finest diagonal wavelet
    coefficients, Donoho's estimator), averaged over the channels. For correlated noise (CT after
    filtered back-projection) it is biased, by about the same factor for images of the same kind,
    which a tuned ``noise_relative`` factor absorbs.

    Args:
        x: float ``(C, H, W)`` array.

    Returns:
        the estimate, > 0 (a tiny floor keeps a noise-free image from giving 0).
    """
    from skimage.restoration import estimate_sigma

    return max(float(np.mean([estimate_sigma(c) for c in np.asarray(x, dtype=np.float64)])), 1e-12)


# -- tuning ----------------------------------------------------------------------------------------


def _pairs(inputs: Sequence[Any], targets: Sequence[Any], where: str, same_shape: bool):
    if isinstance(inputs, (str, bytes)) or isinstance(targets, (str, bytes)):
        raise ValueError(f"{where}: inputs and targets must be sequences of (C, H, W) images.")
    xs = [_to_numpy(x, where, f"input {i}") for i, x in enumerate(inputs)]
    ys = [_to_numpy(y, where, f"target {i}") for i, y in enumerate(targets)]
    if not xs or len(xs) != len(ys):
        raise ValueError(f"{where}: need as many targets as inputs (at least one), got {len(xs)} inputs and {len(ys)} targets.")
    for i, (x, y) in enumerate(zip(xs, ys)):
        if same_shape and x.shape != y.shape:
            raise ValueError(f"{where}: input {i} has shape {x.shape}, its target {y.shape}.")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{where}: input {i} has {x.shape[0]} channels, its target {y.shape[0]}.")
    return xs, ys


def default_grid(method: str, noise_std: float | None = None, *, with_psd: bool = False, noise_relative: bool = False) -> tuple:
    """The coarse grid :func:`tune_classical` starts from (it then refines around the best value).

    ========================  ======================================  =====================
    method (parameter)        with ``noise_std`` = s                  without ``noise_std``
    ========================  ======================================  =====================
    ``gaussian`` (sigma, px)  0.25 .. 4, 9 values (ratio 1.41)        the same
    ``tv`` (weight)           s x (0.1 .. 10), 9 values (ratio 1.78)  1e-3 .. 1, 13 values
    ``nlm`` (h)               s x (0.1 .. 10), 9 values (ratio 1.78)  1e-3 .. 1, 13 values
    ``bm3d`` (sigma)          s x (0.25 .. 4), 9 values (ratio 1.41)  1e-3 .. 1, 13 values
    ``bm3d`` + PSD (factor)   0.25 .. 4, 9 values (s not used)        the same
    ``noise_relative`` factor 0.25 .. 4, 9 values (s not used)        the same
    ``identity``              ``(None,)``                             the same
    ========================  ======================================  =====================

    All values are log-spaced (rounded to 4 significant digits).

    The grids without ``noise_std`` suit images scaled to [0, 1]; :func:`tune_classical` passes the
    RMS of the validation residuals instead, so its grids follow the data's noise.

    Args:
        method: one of :data:`CLASSICAL_METHODS`.
        noise_std: an estimate of the noise std in image intensity units (> 0), e.g. the RMS of
            ``input - target`` over validation pairs.
        with_psd: the grid for ``"bm3d"`` with a ``noise_psd`` (a factor on the PSD's noise std).
        noise_relative: the grid of a factor on each image's estimated noise std (``tv``, ``nlm``,
            ``bm3d`` with ``noise_relative=True``).

    Returns:
        the grid values, ascending.

    Raises:
        ValueError: for an unknown method; for ``"bicubic"`` / ``"lanczos"`` (their scale factor is
            fixed by the data: :func:`tune_classical` infers it from the input and target shapes);
            when ``noise_std`` is not a finite number > 0.
    """
    method = _check_method(method, "default_grid")
    if method in _SUPER_RESOLUTION:
        raise ValueError(
            f"default_grid: {method!r} has no grid to search: its parameter is the scale factor, fixed by the data "
            "(tune_classical infers it from the input and target shapes)."
        )
    if method == "identity":
        return (None,)
    if noise_std is not None and (not _is_number(noise_std) or not math.isfinite(noise_std) or noise_std <= 0):
        raise ValueError(f"default_grid: `noise_std` must be a finite number > 0, got {noise_std!r}.")

    def geom(lo, hi, n):
        return tuple(float(f"{v:.4g}") for v in np.geomspace(lo, hi, n))

    if method == "gaussian":
        return geom(0.25, 4.0, 9)
    if (method == "bm3d" and with_psd) or (noise_relative and method in ("tv", "nlm", "bm3d")):
        return geom(0.25, 4.0, 9)
    if noise_std is None:
        return geom(1e-3, 1.0, 13)
    lo, hi = (0.25, 4.0) if method == "bm3d" else (0.1, 10.0)
    return geom(noise_std * lo, noise_std * hi, 9)


@dataclass
class TuneResult:
    """What :func:`tune_classical` found.

    Attributes:
        method: the method tuned.
        best_parameter: the parameter with the highest mean validation PSNR.
        best_psnr: that mean PSNR (dB).
        scores: every parameter evaluated (grid, extensions and refinement) -> mean PSNR (dB).
        options: the method options the scores were computed with (kept for :meth:`as_transform`).
    """

    method: str
    best_parameter: float | int | None
    best_psnr: float
    scores: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def as_transform(self) -> ClassicalRestore:
        """The tuned method as a :class:`ClassicalRestore`, with the same options."""
        return ClassicalRestore(self.method, self.best_parameter, **self.options)


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def tune_classical(
    method: str,
    inputs: Sequence[Any],
    targets: Sequence[Any],
    grid: Sequence[float] | None = None,
    data_range: float = 1.0,
    refine: int = 8,
    max_extend: int = 4,
    progress: bool = True,
    **options: Any,
) -> TuneResult:
    """Tune a method's one parameter by mean PSNR over the validation pairs it is given.

    1. Coarse: every value of ``grid`` (default :func:`default_grid` with ``noise_std`` = the RMS of
       ``inputs - targets``; with ``noise_psd`` the PSD-factor grid).
    2. Edge: when the best value is the smallest or largest of the grid, the grid is extended past
       it by the grid's own ratio at that end, up to ``max_extend`` values, until a value inside
       wins; a ``UserWarning`` says so (and says when the best is still at the edge).
    3. Refine: golden-section search on a log scale in the bracket between the best value's two
       neighbours, ``refine`` more evaluations (the bracket shrinks by 0.618 per step; with the
       default 9-value grids, 8 steps pin the parameter to about 3 %). Probed values are rounded
       to 4 significant digits, and scored as rounded.

    PSNR is ``skimage.metrics.peak_signal_noise_ratio(target, restored, data_range=data_range)`` per
    image, averaged over the images. Super-resolution methods (``"bicubic"``, ``"lanczos"``) take the
    low-resolution images as inputs; their parameter, the scale factor, is read from the shapes
    (target / input, the same integer on both axes for every pair) and just scored; ``"identity"``
    is scored as is. Only the given pairs are seen: pass the validation split, never the test split.

    Args:
        method: one of :data:`CLASSICAL_METHODS`.
        inputs: the validation inputs, a sequence of float ``(C, H, W)`` arrays / tensors (or one
            ``(N, C, H, W)`` array).
        targets: the matching targets.
        grid: the coarse grid (positive values); ``None`` (default) for :func:`default_grid`. For
            super-resolution it may only hold the scale the shapes imply.
        data_range: the PSNR data range (default 1.0 for images in [0, 1]).
        refine: golden-section evaluations after the grid (default 8; 0 = the grid's best, as brute
            force).
        max_extend: how many values the grid may grow by at an edge (default 4; 0 = never, but
            still warn).
        progress: show a tqdm progress bar (one step per image restored).
        options: method options, as for :class:`ClassicalRestore` (e.g. ``noise_psd`` for BM3D).

    Returns:
        a :class:`TuneResult`.

    Raises:
        ValueError: for an unknown method or option; empty, unequal-length or mismatched inputs and
            targets; NaN or inf; a grid that is empty or not positive; a non-integer or inconsistent
            scale between the super-resolution inputs and targets; ``data_range`` <= 0; inputs equal
            to targets when a noise-based default grid is needed.
        TypeError: when an image is not floating point.
    """
    from skimage.metrics import peak_signal_noise_ratio
    from tqdm import tqdm

    where = "tune_classical"
    method = _check_method(method, where)
    _check_options(method, options, where)
    options = dict(options)  # as given: TuneResult.as_transform rebuilds the transform from them
    if not _is_number(data_range) or not data_range > 0:
        raise ValueError(f"{where}: `data_range` must be a number > 0, got {data_range!r}.")
    xs, ys = _pairs(inputs, targets, where, same_shape=method not in _SUPER_RESOLUTION)
    with_psd = method == "bm3d" and options.get("noise_psd") is not None
    relative = bool(options.get("noise_relative"))

    if method in _SUPER_RESOLUTION:
        scales = set()
        for i, (x, y) in enumerate(zip(xs, ys)):
            ratio = [b / a for a, b in zip(x.shape[1:], y.shape[1:])]
            if ratio[0] != ratio[1] or ratio[0] != int(ratio[0]) or ratio[0] < 2:
                raise ValueError(
                    f"{where}: {method!r} needs each target to be an integer multiple >= 2 of its low-resolution input on "
                    f"both axes; pair {i}: input {x.shape}, target {y.shape}."
                )
            scales.add(int(ratio[0]))
        if len(scales) > 1:
            raise ValueError(f"{where}: the pairs imply different scale factors {sorted(scales)}; tune one scale at a time.")
        scale = scales.pop()
        if grid is not None and any(g != scale for g in grid):
            raise ValueError(f"{where}: the shapes imply the scale factor {scale}; the grid {list(grid)} holds others.")
        grid, refine, max_extend = (scale,), 0, 0
    elif method == "identity":
        grid, refine, max_extend = (None,), 0, 0
    elif grid is None:
        noise_std = float(np.sqrt(np.mean([np.mean((x.astype(np.float64) - y) ** 2) for x, y in zip(xs, ys)])))
        if noise_std == 0:
            raise ValueError(f"{where}: the inputs equal the targets (zero residual): nothing to tune a denoiser on.")
        grid = default_grid(method, noise_std, with_psd=with_psd, noise_relative=relative)
    else:
        grid = tuple(float(g) if _is_number(g) else g for g in grid)
        if not grid or any(not _is_number(g) or not math.isfinite(g) or g <= 0 for g in grid):
            raise ValueError(f"{where}: `grid` must hold finite numbers > 0, got {list(grid)}.")
    grid = sorted(set(grid)) if grid != (None,) else [None]

    scores: dict = {}
    bar = tqdm(total=len(grid) * len(xs) + refine * len(xs), desc=f"tune {method}", disable=not progress, leave=False)

    def score(p):
        if p in scores:
            return scores[p]
        restore = ClassicalRestore(method, p, **options)
        values = []
        for x, y in zip(xs, ys):
            values.append(peak_signal_noise_ratio(y.astype(np.float64), restore(x).astype(np.float64), data_range=data_range))
            bar.update(1)
        scores[p] = float(np.mean(values))
        return scores[p]

    try:
        for p in grid:
            score(p)
        if len(grid) >= 2:
            grid = _extend_at_edge(method, grid, score, scores, max_extend, bar, len(xs))
            best = max(grid, key=lambda p: scores[p])
            i = grid.index(best)
            if 0 < i < len(grid) - 1 and refine > 0:
                _golden_refine(grid[i - 1], best, grid[i + 1], score, refine)
    finally:
        bar.close()
    if grid == [None]:
        best = None
    else:
        best = max(scores, key=lambda p: scores[p])
        scores = dict(sorted(scores.items()))
    return TuneResult(method=method, best_parameter=best, best_psnr=scores[best], scores=scores, options=options)


def _extend_at_edge(method, grid, score, scores, max_extend, bar, n_images):
    """Grow the grid past an edge that holds the best value; warn."""
    grid = list(grid)
    extended = 0
    while True:
        i = max(range(len(grid)), key=lambda k: scores[grid[k]])
        if 0 < i < len(grid) - 1:
            break
        if extended >= max_extend:
            warnings.warn(
                f"tune_classical({method!r}): the best parameter {grid[i]} is still at the "
                f"{'lower' if i == 0 else 'upper'} edge of the grid {grid[0]} .. {grid[-1]} after {extended} extension(s); "
                "the optimum may lie beyond it (pass a wider `grid` or a larger `max_extend`).",
                UserWarning,
                stacklevel=3,
            )
            return grid
        ratio = grid[1] / grid[0] if i == 0 else grid[-1] / grid[-2]
        new = _round(grid[0] / ratio) if i == 0 else _round(grid[-1] * ratio)
        if new in scores or new <= 0:  # rounding collapsed the step
            new = grid[0] / ratio if i == 0 else grid[-1] * ratio
        if extended == 0:
            warnings.warn(
                f"tune_classical({method!r}): the best parameter {grid[i]} is at the {'lower' if i == 0 else 'upper'} edge "
                f"of the grid {grid[0]} .. {grid[-1]}; extending the grid past it.",
                UserWarning,
                stacklevel=3,
            )
        bar.total += n_images
        score(new)
        grid = [new] + grid if i == 0 else grid + [new]
        extended += 1
    return grid


def _golden_refine(lo: float, best: float, hi: float, score, steps: int) -> None:
    """Golden-section search for the maximum on a log scale, inside (lo, hi) around ``best``.

    Keeps a bracket ``a < x < b`` with ``x`` the best value so far; each step probes the larger side
    of the bracket at 0.382 of its (log) width from ``x`` and shrinks the bracket.
    """
    a, x, b = lo, best, hi
    fx = score(x)
    ratio = 0.3819660112501051  # 2 - golden ratio
    for _ in range(steps):
        la, lx, lb = math.log(a), math.log(x), math.log(b)
        lu = lx + ratio * (lb - lx) if (lb - lx) > (lx - la) else lx - ratio * (lx - la)
        u = _round(math.exp(lu))
        if not a < u < b or u == x:
            break  # the bracket is down to the rounding: nothing new to probe
        fu = score(u)
        if fu > fx:
            a, b = (x, b) if u > x else (a, x)
            x, fx = u, fu
        elif u > x:
            b = u
        else:
            a = u
