"""One call for every restoration network of monai-rat: ``restoration_network(name, ...)``, all called ``(x, regions)``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from monai_rat import __version__
from monai_rat.networks.edsr import EDSR
from monai_rat.networks.nafnet import NAFNet
from monai_rat.networks.rat import RAT
from monai_rat.networks.rdst import RDST
from monai_rat.networks.record import attach_network_record
from monai_rat.networks.redcnn import REDCNN
from monai_rat.networks.srcnn import SRCNN
from monai_rat.networks.wrappers import ImageOnly

__all__ = ["RESTORATION_NETWORKS", "restoration_network"]

#: the names :func:`restoration_network` accepts (RAT first, then the learned baselines)
RESTORATION_NETWORKS = ("rat", "nafnet", "redcnn", "restormer", "srcnn", "edsr", "rdst")



def _padded_restormer() -> Callable[..., nn.Module]:
    from monai_rat.networks.restormer import PaddedRestormer  # imports monai.networks.nets (seconds): on demand

    return PaddedRestormer


# name -> (class, or a function returning it; the class argument that ``feature_size`` sets; extra defaults)
_NETWORKS: dict[str, tuple[Callable[..., Any], str, dict[str, Any]]] = {
    "rat": (RAT, "feature_size", {}),
    "nafnet": (NAFNet, "feature_size", {}),
    "redcnn": (REDCNN, "feature_size", {}),
    "restormer": (_padded_restormer, "dim", {}),
    "srcnn": (SRCNN, "feature_size", {}),
    "edsr": (EDSR, "feature_size", {"upscale": 1}),
    "rdst": (RDST, "feature_size", {"upscale": 1}),
}
_FIXED = ("name", "spatial_dims", "in_channels", "out_channels")


def restoration_network(
    name: str,
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    feature_size: int | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a same-size restoration network by name, called ``network(x, regions=None)`` whatever it is.

    The bundles build their network with this (``--network_name redcnn``), so RAT and every learned
    baseline train with the same engines, data, loss and schedule. Every returned module takes
    ``forward(x, regions=None)`` (as MONAI's ``PrepareBatchExtraInput({"regions": "regions"})`` calls it,
    and the inference wrappers ``RegionMapNetwork`` / ``ConditionRegionsNetwork``), accepts a MONAI
    ``MetaTensor`` and returns an image of the input's size:

    ============  ====================================================  ======================  =================
    name          network (paper defaults)                              ``feature_size`` sets   parameters, 1 ch
    ============  ====================================================  ======================  =================
    ``rat``       :class:`RAT` (uses ``regions``), width 64             ``feature_size``        15,945,025
    ``nafnet``    :class:`NAFNet`: RAT's U-shape, 12 middle NAFBlocks   ``feature_size`` (64)   6,534,465
    ``redcnn``    :class:`REDCNN`, 96 filters, 5x5, no padding          ``feature_size`` (96)   1,848,865
    ``restormer`` :class:`PaddedRestormer` (MONAI's), (4, 6, 6, 8)      ``dim`` (48)            26,124,052
    ``srcnn``     :class:`SRCNN` 9-1-5, same-size padding               ``feature_size`` (64)   8,129
    ``edsr``      :class:`EDSR` baseline, 16 blocks, ``upscale=1``      ``feature_size`` (64)   1,219,841
    ``rdst``      :class:`RDST`, 8 RDSTBs, ``upscale=1``                ``feature_size`` (60)   4,200,721
    ============  ====================================================  ======================  =================

    The returned module carries a record of these arguments (name, width, ``network_kwargs``, channels,
    the monai-rat version) in every ``state_dict()`` it gives (:mod:`monai_rat.networks.record`), so a
    ``model.pt`` says which network it belongs to and ``inference.json`` rebuilds it without
    ``--network_name`` / ``--feature_size``.

    All but RAT ignore ``regions``: they are wrapped in :class:`~monai_rat.networks.ImageOnly`, whose
    state dict is the bare network's (no prefix). A checkpoint therefore belongs to one network and one
    set of sizes: a ``redcnn`` ``model.pt`` loads only into ``restoration_network("redcnn", ...)`` with
    the same arguments (in a bundle: the same ``--network_name``, ``--feature_size`` and ``--network_kwargs``).

    ``rdst``: when ``feature_size`` (or ``growth_rate``) is given and ``num_heads`` is not,
    ``num_heads`` is ``gcd(6, feature_size, growth_rate)`` (6 at the paper's 60 / 30), because RDST's
    heads must divide all its dense widths.

    Args:
        name: one of :data:`RESTORATION_NETWORKS` (case-insensitive).
        spatial_dims: 2 (every network here is 2D; volumes go slice by slice).
        in_channels: image channels in.
        out_channels: image channels out (equal to ``in_channels`` for the residual networks).
        feature_size: the network's width (see the table); ``None``: its paper's default.
        network_kwargs: more constructor arguments for the named network (the bundles' ``network_kwargs``
            id, e.g. ``{"middle_blocks": 4}`` for NAFNet or ``{"attention": "window"}`` for RAT).
        kwargs: more constructor arguments, as ``network_kwargs`` (the two must not share a key).

    Raises:
        ValueError: for an unknown ``name`` (the message lists the valid ones), an argument the named
            network does not take (the message lists those it does), a key given twice, or a
            ``network_kwargs`` entry that sets ``name``, ``spatial_dims``, ``in_channels``,
            ``out_channels`` or the width that ``feature_size`` already sets.
    """
    key = str(name).lower()
    if key not in _NETWORKS:
        raise ValueError(f"Unknown restoration network {name!r}; valid names: {', '.join(RESTORATION_NETWORKS)}.")
    cls, width_arg, defaults = _NETWORKS[key]
    if not isinstance(cls, type):
        cls = cls()
    extra = dict(network_kwargs or {})
    for k in extra:
        if k in kwargs:
            raise ValueError(f"{k!r} is given both in network_kwargs and as a keyword argument; give it once.")
        if k in _FIXED:
            raise ValueError(f"network_kwargs must not set {k!r}: pass it to restoration_network itself.")
    extra.update(kwargs)
    for k in ("feature_size", width_arg):
        if k in extra and feature_size is not None:
            raise ValueError(
                f"The width of {key!r} is given twice: feature_size={feature_size} and {k}={extra[k]!r}; give it once."
            )
    if "feature_size" in extra and width_arg != "feature_size":
        extra[width_arg] = extra.pop("feature_size")
    args = {**defaults, **extra}
    if feature_size is not None:
        args[width_arg] = feature_size
    if key == "rdst" and "num_heads" not in args:
        args["num_heads"] = math.gcd(6, args.get("feature_size", 60), args.get("growth_rate", 30))
    accepted = [p for p in inspect.signature(cls).parameters if p not in _FIXED]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(
            f"{cls.__name__} ({key!r}) does not take {', '.join(map(repr, unknown))}; its arguments: {', '.join(accepted)}."
        )
    network = cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)
    network = network if key == "rat" else ImageOnly(network)
    width = args.get(width_arg, inspect.signature(cls).parameters[width_arg].default)
    record = {
        "name": key,
        "spatial_dims": int(spatial_dims),
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "feature_size": None if width is inspect.Parameter.empty else width,
        "network_kwargs": {k: v for k, v in extra.items() if k not in ("feature_size", width_arg)},
        "monai_rat_version": __version__,
    }
    return attach_network_record(network, record)
