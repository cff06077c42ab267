"""Pad an image at the bottom and right to a multiple of a size, as RAT does, and crop the result back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_to_multiple", "plain_tensor", "with_meta_of"]


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI ``MetaTensor`` metadata (tracking it through every layer only costs time)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def with_meta_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` carrying ``x``'s MONAI metadata (meta dict, affine, applied operations) when ``x`` is a ``MetaTensor``.

    The networks compute on plain tensors (:func:`plain_tensor`) and put the input's metadata back on
    their same-size output, so ``SaveImaged`` / ``Invertd`` downstream still know the geometry. A plain
    ``x`` (also under ``torch.jit.trace`` / ``torch.export``) returns ``y`` unchanged, and so does an
    output of another spatial size (e.g. super-resolution), where ``x``'s affine would be wrong.
    Duck-typed, so the networks do not import ``monai.data`` (seconds).
    """
    if not (isinstance(x, torch.Tensor) and hasattr(x, "copy_meta_from")) or hasattr(y, "copy_meta_from"):
        return y
    if y.shape[2:] != x.shape[2:]:
        return y
    return type(x)(y).copy_meta_from(x)  # stays on autograd's graph (MetaTensor wraps y, no copy)


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 0) -> torch.Tensor:
    """Pad ``x`` (``(B, C, H, W)``) at the bottom and right so that H and W are multiples of ``multiple``.

    The padding reflects the image, or replicates its edge where the image is not larger than the
    padding (reflection needs ``pad < size``): RAT's rule, shared by the networks built on its U-shape
    and the padded Restormer. Crop the network's output back with ``y[..., :H, :W]``.

    Args:
        x: ``(B, C, H, W)`` image.
        multiple: the padded sides are multiples of this.
        min_size: each padded side is also larger than this (e.g. MONAI's Restormer asserts sides
            greater than ``2 ** levels``); 0 for no minimum.

    Raises:
        ValueError: when ``multiple`` is not a positive integer.
    """
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}.")
    h, w = x.shape[-2:]
    hp, wp = h + (-h) % multiple, w + (-w) % multiple
    while hp <= min_size:
        hp += multiple
    while wp <= min_size:
        wp += multiple
    ph, pw = hp - h, wp - w
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)
