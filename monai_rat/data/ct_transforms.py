"""Loading and normalising CT slices with MONAI transforms (DICOM ``.IMA`` / ``.dcm`` and NIfTI).

Checked with MONAI 1.6.1 (see tests/test_ct_data.py):

- both ``ITKReader`` (``LoadImage``'s default for a DICOM file) and ``PydicomReader`` apply the file's
  RescaleSlope / RescaleIntercept, so a loaded slice is in HU (float32);
- both return a DICOM slice transposed with respect to pydicom's ``pixel_array`` (``(columns, rows)``);
  ``ITKReader`` adds a trailing singleton slice axis, ``(W, H, 1)``, ``PydicomReader`` does not;
- ``NibabelReader`` returns a 2D NIfTI as stored (the demo data: ``(H, W)``, already in HU).

:class:`EnsureSlice2Dd` removes the singleton slice axis so that every reader ends at ``(C, X, Y)``,
and :func:`ct_load_transforms` chains reading, channel-first, that and the HU window
``[-1024, 3072] HU -> [0, 1]`` (``ScaleIntensityRanged``, ``clip=False``: values outside the window go
outside [0, 1], nothing is clipped).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = [
    "CT_HU_WINDOW",
    "CT_DISPLAY_WINDOW",
    "EnsureSlice2D",
    "EnsureSlice2Dd",
    "EnsureSlice2DD",
    "EnsureSlice2DDict",
    "ct_load_transforms",
    "ct_to_hu_transform",
]

#: the HU range mapped to [0, 1] for training (the normalisation most used on the AAPM data).
CT_HU_WINDOW = (-1024.0, 3072.0)
#: the usual display window for abdomen CT, [-160, 240] HU (for figures only).
CT_DISPLAY_WINDOW = (-160.0, 240.0)


class EnsureSlice2D(Transform):
    """Make a channel-first 2D slice ``(C, X, Y)`` from ``(C, X, Y)`` or ``(C, X, Y, 1)``.

    ``ITKReader`` reads one DICOM file as a 3D image with one slice; this drops that axis. A MetaTensor
    keeps its 4 x 4 affine, as a 2D NIfTI slice has one: the slice's position (the z row, e.g.
    ImagePositionPatient and the slice thickness of a DICOM file) stays known, so outputs written from
    the slice lie where the input lies. Anything else is an error, never a silent reshape.

    Raises:
        ValueError: when the image is neither ``(C, X, Y)`` nor ``(C, X, Y, 1)``.
    """

    backend = ["torch", "numpy"]

    def __call__(self, img):
        """Drop the trailing singleton axis when there is one.

        Args:
            img: channel-first array or tensor.

        Returns:
            the image as ``(C, X, Y)``.

        Raises:
            ValueError: when the image is neither ``(C, X, Y)`` nor ``(C, X, Y, 1)``.
        """
        from monai.transforms import SqueezeDim

        shape = tuple(img.shape)
        if len(shape) == 3:
            return img
        if len(shape) == 4 and shape[-1] == 1:
            return SqueezeDim(dim=-1, update_meta=False)(img)  # update_meta would drop the affine's z row
        name = ""
        meta = getattr(img, "meta", None)
        if meta is not None and meta.get("filename_or_obj"):
            name = f" ({meta['filename_or_obj']})"
        raise ValueError(f"Expected a channel-first 2D slice (C, X, Y) or (C, X, Y, 1){name}, got shape {shape}.")


class EnsureSlice2Dd(MapTransform):
    """Dictionary version of :class:`EnsureSlice2D`.

    Args:
        keys: keys of the images.
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: as :class:`EnsureSlice2D`.
        KeyError: when a key is missing and ``allow_missing_keys`` is False.
    """

    backend = EnsureSlice2D.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureSlice2D()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Apply :class:`EnsureSlice2D` to each key.

        Args:
            data: the dictionary.

        Returns:
            a shallow copy with the keys converted.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


EnsureSlice2DD = EnsureSlice2DDict = EnsureSlice2Dd


def ct_load_transforms(
    keys: KeysCollection = ("image", "label"),
    reader=None,
    hu_window: Sequence[float] = CT_HU_WINDOW,
    allow_missing_keys: bool = False,
) -> list:
    """MONAI transforms that read CT slices in HU and map the window to [0, 1].

    ``LoadImaged(keys, reader, image_only=True, ensure_channel_first=True)`` ->
    :class:`EnsureSlice2Dd` -> ``ScaleIntensityRanged(a_min=hu_window[0], a_max=hu_window[1], b_min=0,
    b_max=1, clip=False)`` -> ``EnsureTyped(dtype=float32)``. In a bundle config::

        "preprocessing": {"_target_": "Compose",
                          "transforms": "$monai_rat.data.ct_load_transforms(['image', 'label'])"}

    Args:
        keys: the image keys (default "image" (low dose) and "label" (full dose)).
        reader: a MONAI reader name or instance; None (default) lets ``LoadImaged`` choose by file
            (ITKReader for DICOM, NibabelReader for NIfTI), which both rescale DICOM to HU.
        hu_window: (low, high) HU mapped to (0, 1) (default (-1024, 3072)).
        allow_missing_keys: passed to every transform.

    Returns:
        the list of transforms.

    Raises:
        ValueError: when ``hu_window`` is not two increasing numbers.
    """
    from monai.transforms import EnsureTyped, LoadImaged, ScaleIntensityRanged
    import torch

    lo, hi = (float(v) for v in hu_window)
    if not hi > lo:
        raise ValueError(f"ct_load_transforms: `hu_window` must be (low, high) with high > low, got {tuple(hu_window)}.")
    return [
        LoadImaged(keys, reader=reader, image_only=True, ensure_channel_first=True, allow_missing_keys=allow_missing_keys),
        EnsureSlice2Dd(keys, allow_missing_keys=allow_missing_keys),
        ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=False, allow_missing_keys=allow_missing_keys),
        EnsureTyped(keys, dtype=torch.float32, allow_missing_keys=allow_missing_keys),
    ]


def ct_to_hu_transform(keys: KeysCollection = "pred", hu_window: Sequence[float] = CT_HU_WINDOW, allow_missing_keys: bool = False):
    """The inverse of the window in :func:`ct_load_transforms`: [0, 1] back to HU (no clipping).

    Args:
        keys: the keys to convert (default "pred").
        hu_window: the (low, high) HU window used for loading (default (-1024, 3072)).
        allow_missing_keys: do not raise when a key is missing.

    Returns:
        a ``ScaleIntensityRanged`` mapping 0 -> low and 1 -> high.

    Raises:
        ValueError: when ``hu_window`` is not two increasing numbers.
    """
    from monai.transforms import ScaleIntensityRanged

    lo, hi = (float(v) for v in hu_window)
    if not hi > lo:
        raise ValueError(f"ct_to_hu_transform: `hu_window` must be (low, high) with high > low, got {tuple(hu_window)}.")
    return ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=lo, b_max=hi, clip=False, allow_missing_keys=allow_missing_keys)
