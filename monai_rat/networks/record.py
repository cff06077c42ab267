"""A checkpoint that says which network it belongs to: the network's description inside its state dict.

:func:`~monai_rat.networks.restoration_network` gives every network it builds a *record*: its name,
``spatial_dims``, ``in_channels``, ``out_channels``, width (``feature_size``), the extra constructor
arguments (``network_kwargs``) and the monai-rat version. The record travels inside every
``state_dict()`` of the network, in PyTorch's own per-module metadata (``state_dict._metadata[""]``,
next to the ``version`` entry PyTorch keeps there), so:

- ``torch.save(net.state_dict(), "model.pt")`` (the bundles' best-model saver, and the ``network``
  entry of ``last.pt``) stores it, and ``torch.load(..., weights_only=True)`` reads it back;
- every tool that loads the file sees a plain state dict with the same keys and tensors, and loads
  it as before: MONAI's ``CheckpointLoader``, ``ckpt_export`` (``--key_in_ckpt``), MONAI Label's bundle
  loading, ``net.load_state_dict`` (PyTorch ignores metadata entries it does not know);
- the wrappers around a network (:class:`~monai_rat.networks.BareStateDictWrapper`: ``ImageOnly``,
  the inference wrappers) keep it at the top of their own state dict.

:func:`read_network_record` reads it from a state dict, a checkpoint dictionary or a file, and
:func:`network_from_checkpoint` builds the network a checkpoint records (the bundles'
``inference.json``), checking explicit arguments against it. A state dict saved before records
existed (or copied key by key into a new dict) has none: then the explicit arguments decide.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = [
    "NETWORK_RECORD_KEY",
    "CheckpointMismatchError",
    "attach_network_record",
    "describe_record",
    "network_from_checkpoint",
    "read_network_record",
]

#: the metadata entry that holds the record
NETWORK_RECORD_KEY = "monai_rat_network"
_FIELDS = ("name", "spatial_dims", "in_channels", "out_channels", "feature_size", "network_kwargs")


class CheckpointMismatchError(ValueError):
    """A checkpoint and the network it is loaded into disagree (the message says how, and what to pass)."""


def _write_record(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: put ``module.network_record`` into the module's own metadata entry."""
    record = getattr(module, "network_record", None)
    if record is not None and isinstance(local_metadata, dict):
        local_metadata[NETWORK_RECORD_KEY] = copy.deepcopy(record)


def attach_network_record(module: nn.Module, record: Mapping[str, Any]) -> nn.Module:
    """Give ``module`` a record that its ``state_dict()`` will carry (see the module docstring).

    Args:
        module: the network.
        record: the description (``name``, ``spatial_dims``, ``in_channels``, ``out_channels``,
            ``feature_size``, ``network_kwargs``, ``monai_rat_version``); plain JSON-like values.

    Returns:
        ``module`` itself.
    """
    first = getattr(module, "network_record", None) is None
    module.network_record = dict(record)
    if first:
        module.register_state_dict_post_hook(_write_record)
    return module


def _from_metadata(metadata: Any) -> dict | None:
    if not isinstance(metadata, Mapping):
        return None
    found = [(k, v[NETWORK_RECORD_KEY]) for k, v in metadata.items() if isinstance(v, Mapping) and NETWORK_RECORD_KEY in v]
    if not found:
        return None
    return dict(min(found, key=lambda kv: len(str(kv[0])))[1])  # the outermost module's


def read_network_record(source: Any) -> dict | None:
    """The network record of a state dict, a checkpoint dictionary (e.g. ``last.pt``'s), or a checkpoint file.

    Args:
        source: a state dict (what ``net.state_dict()`` returns), a dictionary holding one (``last.pt``:
            ``{"network": ..., "optimizer": ...}``; MONAI's ``{"model": ...}``), or a path to a file
            saved with ``torch.save`` (read with ``weights_only=True``).

    Returns:
        the record, or ``None`` when there is none.

    Raises:
        FileNotFoundError: when a path is given and does not exist.
        RuntimeError, EOFError, pickle errors: as ``torch.load`` for a file that cannot be read.
    """
    if isinstance(source, (str, os.PathLike)):
        import torch

        if not os.path.isfile(source):
            raise FileNotFoundError(f"No checkpoint file at {source}.")
        source = torch.load(str(source), map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        return None
    record = _from_metadata(getattr(source, "_metadata", None))
    if record is not None:
        return record
    for key in ("network", "model", "state_dict"):  # a checkpoint dictionary of several entries
        if isinstance(source.get(key), Mapping):
            record = _from_metadata(getattr(source[key], "_metadata", None))
            if record is not None:
                return record
    return None


def describe_record(record: Mapping[str, Any] | None) -> str:
    """``rat(feature_size=16, in_channels=1, out_channels=1)``, plus ``network_kwargs`` when set."""
    if not record:
        return "an unknown network"
    parts = [f"feature_size={record.get('feature_size')}", f"in_channels={record.get('in_channels')}",
             f"out_channels={record.get('out_channels')}"]  # fmt: skip
    if record.get("network_kwargs"):
        parts.append(f"network_kwargs={dict(record['network_kwargs'])}")
    return f"{record.get('name')}({', '.join(parts)})"


def _plain(value: Any) -> Any:
    """Tuples as lists (a record read back from a file may hold tuples; a config gives lists)."""
    import json

    return json.loads(json.dumps(value, default=str))


def _override_flag(field: str) -> str:
    return {"name": "--network_name", "feature_size": "--feature_size", "network_kwargs": "--network_kwargs"}.get(field, f"--{field}")


def network_from_checkpoint(
    ckpt_path: str | os.PathLike | None,
    name: str | None = None,
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    feature_size: int | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the network that ``ckpt_path`` records; explicit arguments must agree with the record.

    - the checkpoint has a record: the network is built from it. ``name``, ``feature_size`` and
      ``network_kwargs`` given (not ``None``) must equal the record's; ``in_channels``,
      ``out_channels`` and ``spatial_dims`` (the bundle's, always given) too.
    - no record (a checkpoint saved before records existed), no file yet, or a file that cannot be
      read: the network is built from the arguments (``name`` ``None``: ``"rat"``); loading the weights
      (:class:`monai_rat.engines.CheckedCheckpointLoader`) then says what is wrong, in one line.

    Args:
        ckpt_path: the checkpoint file (``model.pt``).
        name: ``--network_name``; ``None``: the record's (or ``"rat"``).
        spatial_dims: as :func:`~monai_rat.networks.restoration_network`.
        in_channels: as :func:`~monai_rat.networks.restoration_network`.
        out_channels: as :func:`~monai_rat.networks.restoration_network`.
        feature_size: ``--feature_size``; ``None``: the record's (or the network's paper default).
        network_kwargs: ``--network_kwargs``; ``None``: the record's (or none).
        kwargs: more constructor arguments, merged into ``network_kwargs`` (e.g. a config override
            ``network_def#network#num_groups 1``).

    Raises:
        CheckpointMismatchError: when an explicit argument disagrees with the record (the message
            names the file, what it records and what to pass).
        ValueError: as :func:`~monai_rat.networks.restoration_network` for invalid arguments.
    """
    from monai_rat.networks.factory import restoration_network

    if kwargs:
        network_kwargs = {**dict(network_kwargs or {}), **kwargs}
    record = None
    if ckpt_path and os.path.isfile(ckpt_path):
        try:
            record = read_network_record(ckpt_path)
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the loader, in one line
            record = None
    if record is None:
        return restoration_network(name or "rat", spatial_dims=spatial_dims, in_channels=in_channels,
                                   out_channels=out_channels, feature_size=feature_size, network_kwargs=network_kwargs)  # fmt: skip
    given = {"name": None if name is None else str(name).lower(), "feature_size": feature_size,
             "network_kwargs": None if network_kwargs is None else dict(network_kwargs),
             "in_channels": in_channels, "out_channels": out_channels, "spatial_dims": spatial_dims}  # fmt: skip
    wrong = {k: v for k, v in given.items() if v is not None and _plain(v) != _plain(record.get(k))}
    if wrong:
        said = ", ".join(f"{_override_flag(k)} {v!r}" for k, v in wrong.items())
        fix = " ".join(f"{_override_flag(k)} {record.get(k)!r}" for k in wrong if k in ("name", "feature_size", "network_kwargs"))
        raise CheckpointMismatchError(
            f"ckpt_path: {os.fspath(ckpt_path)!r} holds {describe_record(record)} and does not fit the network asked for "
            f"({said}): drop "
            f"{'that override' if len(wrong) == 1 else 'those overrides'} (the network is read from the checkpoint)"
            + (f", pass {fix}," if fix else "")
            + " or pass the --ckpt_path of a checkpoint of the network you want."
        )
    return restoration_network(
        record["name"], spatial_dims=record.get("spatial_dims", spatial_dims), in_channels=record["in_channels"],
        out_channels=record["out_channels"], feature_size=record.get("feature_size"),
        network_kwargs=record.get("network_kwargs") or None,
    )  # fmt: skip
