"""Test-time x8 self-ensemble (EDSR's and KAIR's "+" models): the 8 flips and rotations, image and region map together.

Restore the image 8 times, once under each element of the dihedral group of the square (the 4
rotations by 90 degrees, each with and without a left-right flip), undo the flip / rotation on each
output, and take the mean. The region map (any tensor argument of the image's spatial size, e.g.
``regions=`` or the sliding window's ``condition=``) is flipped and rotated with the image, exactly
(an index permutation: integer labels stay integers), so every pass sees the partition of the image
it restores.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import Inferer, SimpleInferer

from monai_rat.networks.blocks.padding import plain_tensor, with_meta_of

__all__ = ["DIHEDRAL_TRANSFORMS", "SelfEnsembleInferer", "dihedral", "dihedral_inverse"]

#: the 8 transforms as ``(k, flip)``: flip the last axis when ``flip``, then rotate by ``k`` x 90 degrees
DIHEDRAL_TRANSFORMS: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x`` flipped along its last axis (when ``flip``), then rotated by ``k`` x 90 degrees in its last two axes.

    Args:
        x: a tensor whose last two axes are spatial (``(B, C, H, W)``; an odd ``k`` gives ``(B, C, W, H)``).
        k: quarter turns, 0 to 3 (``torch.rot90``'s direction: from the first spatial axis towards the last).
        flip: flip the last axis first.
    """
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)).contiguous() if k % 4 else x


def dihedral_inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``dihedral_inverse(dihedral(x, k, flip), k, flip) == x``.

    Args:
        y: a tensor whose last two axes are spatial.
        k: the quarter turns :func:`dihedral` applied.
        flip: whether :func:`dihedral` flipped.
    """
    if k % 4:
        y = torch.rot90(y, -k, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if flip else y.contiguous()


class _PairwiseMean:
    """Mean of tensors added one by one, summed pairwise (exact for equal tensors: 2x, 4x, 8x) in O(log n) memory."""

    def __init__(self) -> None:
        self.partial: list[tuple[int, torch.Tensor]] = []  # (count, sum), counts strictly decreasing
        self.count = 0

    def add(self, y: torch.Tensor) -> None:
        entry = (1, y)
        while self.partial and self.partial[-1][0] == entry[0]:
            n, s = self.partial.pop()
            entry = (n + entry[0], s + entry[1])
        self.partial.append(entry)
        self.count += 1

    def mean(self) -> torch.Tensor:
        total = self.partial[-1][1]
        for _, s in reversed(self.partial[:-1]):
            total = s + total
        return total / self.count


class SelfEnsembleInferer(Inferer):
    """Run ``inferer`` on the 8 flips / rotations of the image and its region map; return the mean restored image.

    For each ``(k, flip)`` of :data:`DIHEDRAL_TRANSFORMS`: the image, and every tensor argument of the
    image's spatial size (the region map ``regions=...``, or the sliding window's ``condition=...``), are
    flipped and rotated (:func:`dihedral`), ``inferer(image, network, *args, **kwargs)`` restores it, the
    output is turned back (:func:`dihedral_inverse`), and the 8 outputs are averaged (pairwise sums, so
    8 equal outputs give exactly that output). Non-tensor arguments pass unchanged.

    Composes with any MONAI inferer: ``inferer=SimpleInferer()`` (the default) calls
    ``network(image, regions=...)``; ``inferer=FittedSlidingWindowInferer(...)`` with
    :class:`~monai_rat.engines.ConditionRegionsNetwork` runs the whole sliding window 8 times (each on the
    flipped / rotated image and region map, with memory still bounded by the window).

    Rotations by 90 degrees swap the image's height and width, so the network must accept ``(W, H)``
    images as well as ``(H, W)``: fully convolutional networks do, and RAT and the learned baselines pad
    to their size multiple themselves (at the bottom and right of each pass's image, so the padded
    border is on another side of the original image in each pass; the output is cropped back each
    time). Outputs keep the input's MONAI metadata (:func:`~monai_rat.networks.blocks.padding.with_meta_of`);
    half-precision outputs (AMP) are averaged and returned in float32.

    Cost: 8 times the inference time of ``inferer``; memory of one pass plus about 3 output-sized sums.

    Args:
        inferer: the inferer of each pass (``None``: ``SimpleInferer()``).
        enabled: ``False`` runs ``inferer`` once, unchanged (the bundles' ``self_ensemble`` flag: a bool or
            a true/false string).

    Raises:
        TypeError: when ``inferer`` is not callable.
        ValueError: when ``enabled`` is not a true/false value.
    """

    def __init__(self, inferer: Callable[..., Any] | None = None, enabled: Any = True) -> None:
        from monai_rat.utils import as_flag

        if inferer is not None and not callable(inferer):
            raise TypeError(f"SelfEnsembleInferer: `inferer` must be a MONAI inferer (callable), got {type(inferer).__name__}.")
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.enabled = as_flag(enabled, "self_ensemble")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Restore ``inputs`` with the x8 self-ensemble (or once, when not ``enabled``).

        Args:
            inputs: ``(B, C, H, W)`` images (the last two axes are flipped / rotated; ``(B, C, D, H, W)``
                volumes are transformed in their last two axes).
            network: the network (or callable) ``inferer`` calls.
            args: more arguments for ``inferer`` / ``network``; tensors of the image's spatial size are
                transformed with it.
            kwargs: more keyword arguments, likewise (``regions=``, ``condition=``).

        Raises:
            ValueError: when ``inputs`` has fewer than 2 spatial axes, or a tensor argument has spatial
                axes of another size than the image's (it cannot be transformed with the image).
            TypeError: when ``inferer`` returns something other than a tensor.
        """
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 4:
            raise ValueError(
                "SelfEnsembleInferer: `inputs` must be a (B, C, H, W) tensor (flips and rotations act on its last two "
                f"axes), got {tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}."
            )
        spatial = tuple(inputs.shape[2:])
        names = [f"argument {i + 1}" for i in range(len(args))] + [f"`{k}`" for k in kwargs]
        moves = [self._moves_with_image(v, n, spatial) for v, n in zip([*args, *kwargs.values()], names)]
        move_args, move_kwargs = moves[: len(args)], dict(zip(kwargs, moves[len(args):]))
        x = plain_tensor(inputs)
        mean = _PairwiseMean()
        for k, flip in DIHEDRAL_TRANSFORMS:
            a = [dihedral(plain_tensor(v), k, flip) if m else v for v, m in zip(args, move_args)]
            kw = {n: dihedral(plain_tensor(v), k, flip) if move_kwargs[n] else v for n, v in kwargs.items()}
            y = self.inferer(dihedral(x, k, flip), network, *a, **kw)
            if not isinstance(y, torch.Tensor):
                raise TypeError(
                    f"SelfEnsembleInferer: the inferer returned {type(y).__name__}; the self-ensemble averages one tensor."
                )
            y = plain_tensor(y)
            if y.dtype in (torch.float16, torch.bfloat16):
                y = y.float()
            mean.add(dihedral_inverse(y, k, flip))
        return with_meta_of(mean.mean(), inputs)

    @staticmethod
    def _moves_with_image(value: Any, name: str, spatial: tuple[int, ...]) -> bool:
        """Whether ``value`` is transformed with the image: a tensor with the image's spatial axes."""
        if not isinstance(value, torch.Tensor) or value.ndim < 3:
            return False
        if value.ndim == len(spatial) + 2 and tuple(value.shape[2:]) == spatial:
            return True
        raise ValueError(
            f"SelfEnsembleInferer: {name} has shape {tuple(value.shape)}, not the image's spatial size {spatial}, "
            "so it cannot be flipped and rotated with the image (pass per-pixel maps of the image's size, e.g. the "
            "region map, or non-spatial values)."
        )
