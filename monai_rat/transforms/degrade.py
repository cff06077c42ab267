"""Super-resolution degradation: bicubic down-sampling by a factor, then bicubic up-sampling back to the size.

The paper's pathology task: "LQ = 4x bicubic down then up" of the high-quality image, computed on
the fly. Here both resizes use ``torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)``; the down-sampling uses ``antialias=True`` by default (as MATLAB's
``imresize``, which SR papers use, does when shrinking). The down-sampled size is
``floor(H / factor), floor(W / factor)``; the up-sampling returns exactly ``(H, W)``. Bicubic
interpolation overshoots at edges, so values can leave the input's range; they are kept unless
``clip_range`` is given.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, ensure_tuple

__all__ = ["BicubicDegrade", "BicubicDegraded", "BicubicDegradeD", "BicubicDegradeDict"]


class BicubicDegrade(Transform):
    """Degrade a channel-first 2D image ``(C, H, W)``: bicubic down by ``factor``, bicubic up to ``(H, W)``.

    Args:
        factor: the down-sampling factor, an integer >= 2 (default 4, as the paper).
        antialias: anti-alias the down-sampling (default True).
        clip_range: ``(low, high)`` to clip the result to (e.g. ``(0, 1)`` for images scaled to
            [0, 1]); ``None`` (default) keeps the bicubic overshoot.

    Raises:
        ValueError: when ``factor`` or ``clip_range`` is invalid (at construction); at call time
            when the image is not ``(C, H, W)``, is smaller than ``factor`` along a side, or holds
            NaN or inf.
    """

    backend = ["torch", "numpy"]

    def __init__(self, factor: int = 4, antialias: bool = True, clip_range: Sequence[float] | None = None) -> None:
        if int(factor) != factor or int(factor) < 2:
            raise ValueError(f"BicubicDegrade: `factor` must be an integer >= 2, got {factor!r}.")
        if clip_range is not None:
            lo, hi = (float(v) for v in clip_range)
            if not hi > lo:
                raise ValueError(f"BicubicDegrade: `clip_range` must be (low, high) with high > low, got {tuple(clip_range)}.")
            clip_range = (lo, hi)
        self.factor = int(factor)
        self.antialias = bool(antialias)
        self.clip_range = clip_range

    def _prepare(self, img):
        import torch

        from monai.data import MetaTensor

        shape = tuple(getattr(img, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"BicubicDegrade expects a channel-first 2D image (C, H, W), got shape {shape}.")
        h, w = shape[1:]
        if min(h, w) < self.factor:
            raise ValueError(f"BicubicDegrade: the image {shape} is smaller than the factor {self.factor} along a side.")
        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
        xf = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        if not torch.isfinite(xf).all():
            raise ValueError(f"BicubicDegrade: the image holds {int((~torch.isfinite(xf)).sum())} NaN or inf values (shape {shape}).")
        return x, xf

    def _down(self, xf):
        import torch.nn.functional as F

        h, w = xf.shape[1:]
        return F.interpolate(xf[None], size=(h // self.factor, w // self.factor), mode="bicubic",
                             align_corners=False, antialias=self.antialias)

    @staticmethod
    def _to_input_type(out, x, img):
        import torch

        if not torch.is_floating_point(x):  # integer image: round, and keep within the type (no wrap-around)
            info = torch.iinfo(x.dtype)
            out = out.round().clamp(info.min, info.max)
        return convert_to_dst_type(out, img, dtype=getattr(img, "dtype", None))[0]

    def downsample(self, img):
        """The down-sampling step alone: the low-resolution image ``(C, floor(H / factor), floor(W / factor))``.

        Exactly what :py:meth:`__call__` up-samples (the same call, before ``clip_range``, which applies to
        the degraded output only), so super-resolution baselines can start from the image the degradation
        made: ``ClassicalRestore("bicubic", factor)(downsample(x))`` equals ``BicubicDegrade(factor)(x)``
        for float images whose sides are multiples of ``factor`` (otherwise the degradation up-samples
        by a slightly different, non-integer ratio back to ``(H, W)``). A MetaTensor keeps its metadata (the affine is not rescaled).

        Args:
            img: channel-first ``(C, H, W)`` array or tensor.

        Returns:
            the low-resolution image, same type and dtype as ``img`` (integer inputs rounded and kept in range).

        Raises:
            ValueError: as :py:meth:`__call__`.
        """
        x, xf = self._prepare(img)
        return self._to_input_type(self._down(xf)[0], x, img)

    def __call__(self, img):
        """Degrade the image.

        Args:
            img: channel-first ``(C, H, W)`` array or tensor (a MetaTensor keeps its metadata).

        Returns:
            the degraded image, same shape, type and dtype as ``img`` (integer inputs are rounded and
            kept within their type's range, e.g. [0, 255] for uint8, instead of wrapping around).

        Raises:
            ValueError: when the image is not ``(C, H, W)``, is smaller than ``factor`` along a side,
                or holds NaN or inf.
        """
        import torch.nn.functional as F

        x, xf = self._prepare(img)
        out = F.interpolate(self._down(xf), size=tuple(xf.shape[1:]), mode="bicubic", align_corners=False)[0]
        if self.clip_range is not None:
            out = out.clamp(*self.clip_range)
        return self._to_input_type(out, x, img)


class BicubicDegraded(MapTransform):
    """Dictionary version of :class:`BicubicDegrade`.

    Typical pathology use: ``BicubicDegraded(keys="label", output_keys="image")`` after copying the
    high-quality image, or ``CopyItemsd(keys="image", names="label")`` then
    ``BicubicDegraded(keys="image")`` (in place).

    Args:
        keys: keys of the images to degrade.
        factor: see :class:`BicubicDegrade` (default 4).
        antialias: see :class:`BicubicDegrade` (default True).
        clip_range: see :class:`BicubicDegrade` (default None).
        output_keys: where to write the degraded images, one per key; ``None`` (default) replaces
            the key's value.
        low_res_keys: optional keys, one per key, to also write the low-resolution image to (the
            down-sampling step, :py:meth:`BicubicDegrade.downsample`), e.g. for super-resolution
            baselines that start from it; ``None`` (default): not kept.
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: when ``output_keys`` or ``low_res_keys`` does not have one entry per key, and as
            :class:`BicubicDegrade`.
        KeyError: when a key is missing and ``allow_missing_keys`` is False.
    """

    backend = BicubicDegrade.backend

    def __init__(
        self,
        keys: KeysCollection,
        factor: int = 4,
        antialias: bool = True,
        clip_range: Sequence[float] | None = None,
        output_keys: KeysCollection | None = None,
        low_res_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(
                f"BicubicDegraded: `output_keys` must have one entry per key ({len(self.keys)}: {self.keys}), got {self.output_keys}."
            )
        self.low_res_keys = None if low_res_keys is None else ensure_tuple(low_res_keys)
        if self.low_res_keys is not None and len(self.low_res_keys) != len(self.keys):
            raise ValueError(
                f"BicubicDegraded: `low_res_keys` must have one entry per key ({len(self.keys)}: {self.keys}), got {self.low_res_keys}."
            )
        self.degrade = BicubicDegrade(factor=factor, antialias=antialias, clip_range=clip_range)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Degrade each key.

        Args:
            data: the dictionary.

        Returns:
            a shallow copy with the degraded images written to the output keys.

        Raises:
            ValueError: as :class:`BicubicDegrade`.
        """
        d = dict(data)
        low = self.low_res_keys or (None,) * len(self.keys)
        for key, out, lr in self.key_iterator(d, self.output_keys, low):
            if lr is not None:
                d[lr] = self.degrade.downsample(d[key])
            d[out] = self.degrade(d[key])
        return d


BicubicDegradeD = BicubicDegradeDict = BicubicDegraded
