"""Find the monai-rat bundles the MONAI Label app serves, and read what it needs from each one.

A bundle is a folder ``<bundles>/<name>/`` holding ``configs/inference.json`` and
``configs/metadata.json`` (MONAI's layout; ``bundles/ct`` in this repository, later ``bundles/pet`` and
``bundles/pathology``). The model name is the folder name. The app never copies a bundle's settings:
the network, the preprocessing (intensity scaling, region maps) and the postprocessing all come from
the bundle's own ``inference.json``, so the server restores an image exactly as
``python -m monai.bundle run --config_file <bundle>/configs/inference.json`` does.

Only MONAI is needed here (no ``monailabel``), so this module can be used and tested on its own.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "BUNDLES_ENV",
    "RESERVED_CONF",
    "RATBundle",
    "CheckpointError",
    "available_models",
    "default_bundles_dir",
    "parse_overrides",
    "select_models",
]

#: environment variable naming the folder of bundles (``--conf bundles DIR`` wins over it)
BUNDLES_ENV = "MONAI_RAT_BUNDLES"
#: ``--conf`` keys the app reads itself (every other key must be ``<model>.<config id>``)
RESERVED_CONF = ("models", "bundles")
#: MONAI Label's own ``--conf`` keys that may appear too (passed through, ignored here)
_MONAILABEL_CONF = ("server_mode", "zoo_source", "skip_trainers", "skip_strategies", "skip_scoring", "epistemic_enabled")
#: modalities (``network_data_format.inputs.image.modality``) whose results are written as NIfTI
RADIOLOGY_MODALITIES = ("CT", "PT", "PET", "MR", "MRI", "NM")

_REPO_BUNDLES = Path(__file__).resolve().parents[3] / "bundles"


class CheckpointError(FileNotFoundError):
    """A model's checkpoint is missing or does not fit its network; the message says what to do."""


def default_bundles_dir() -> Path:
    """The folder of bundles when ``--conf bundles`` is not given.

    ``$MONAI_RAT_BUNDLES`` when set, else the repository's ``bundles/`` next to the ``monai_rat``
    package (an editable install or a source checkout), else ``./bundles``.

    Raises:
        FileNotFoundError: when ``$MONAI_RAT_BUNDLES`` is set to a path that is not a folder.
    """
    env = os.environ.get(BUNDLES_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"{BUNDLES_ENV}={env!r} is not a folder of bundles.")
        return p.resolve()
    if _REPO_BUNDLES.is_dir():
        return _REPO_BUNDLES
    return Path("bundles").resolve()


def available_models(bundles_dir: str | os.PathLike) -> list[str]:
    """Names of the bundles under ``bundles_dir`` that the app can serve, sorted.

    A sub-folder counts when it holds ``configs/inference.json`` and ``configs/metadata.json``.

    Args:
        bundles_dir: the folder of bundles.

    Raises:
        FileNotFoundError: when ``bundles_dir`` is not a folder.
    """
    root = Path(bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"The folder of bundles {str(root)!r} does not exist: pass --conf bundles /path/to/monai-rat/bundles "
            f"(or set {BUNDLES_ENV})."
        )
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and (p / "configs" / "inference.json").is_file() and (p / "configs" / "metadata.json").is_file()
    )


def select_models(requested: str | Sequence[str] | None, bundles_dir: str | os.PathLike) -> list[str]:
    """The models to serve: ``requested`` (``"ct"``, ``"ct,pet"``, ``"all"``; ``None`` = all), checked.

    Args:
        requested: the value of ``--conf models`` (comma or space separated), a list, or ``None``/``"all"``.
        bundles_dir: the folder of bundles.

    Raises:
        ValueError: when a requested model has no bundle, or no bundle is found at all; the message lists
            the available models and the folder searched.
        FileNotFoundError: when ``bundles_dir`` is not a folder.
    """
    available = available_models(bundles_dir)
    if not available:
        raise ValueError(
            f"No bundle found in {str(bundles_dir)!r} (a bundle is a folder with configs/inference.json and "
            "configs/metadata.json, e.g. bundles/ct). Pass --conf bundles /path/to/monai-rat/bundles."
        )
    if requested is None:
        return available
    names = requested.replace(",", " ").split() if isinstance(requested, str) else [str(n) for n in requested]
    if not names or names == ["all"]:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"--conf models {' '.join(names)!r}: no bundle for {', '.join(repr(u) for u in unknown)} in {str(bundles_dir)!r}. "
            f"Available models: {', '.join(available)} (or 'all'). A model is served when <bundles>/<name>/configs/"
            "inference.json and metadata.json exist (the pet and pathology bundles are added by their own issue)."
        )
    return list(dict.fromkeys(names))


def _parse_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_overrides(conf: Mapping[str, Any], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-model config overrides from ``--conf <model>.<config id> <value>`` pairs.

    ``--conf ct.feature_size 16`` sets the id ``feature_size`` of the ``ct`` bundle's ``inference.json``
    (values are read as JSON when they parse: ``16`` is an int, ``[-160,240]`` a list, ``null`` None;
    otherwise they stay strings, e.g. paths). Nested ids use MONAI's ``#``:
    ``--conf ct.network_def#network#num_groups 1``.

    Args:
        conf: the app's ``--conf`` dictionary.
        models: the models being served.

    Raises:
        ValueError: for a key that is neither reserved (``models``, ``bundles``, ...) nor ``<model>.<id>``
            with a served model.
    """
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for key, value in conf.items():
        if key in RESERVED_CONF or key in _MONAILABEL_CONF:
            continue
        model, dot, cid = key.partition(".")
        if not dot or not cid:
            raise ValueError(
                f"--conf {key} {value}: unknown setting. Use --conf models NAMES, --conf bundles DIR, or "
                f"--conf <model>.<config id> VALUE (e.g. --conf ct.feature_size 16)."
            )
        if model not in out:
            raise ValueError(f"--conf {key} {value}: {model!r} is not a served model (served: {', '.join(models)}).")
        out[model][cid] = _parse_value(value)
    return out


def _is_saver(t: Any) -> bool:
    inner = getattr(t, "transform", None)
    return type(t).__name__.startswith("Save") or (inner is not None and type(inner).__name__.startswith("Save"))


def _is_loader(t: Any) -> bool:
    return type(t).__name__.startswith("LoadImage")


class RATBundle:
    """One bundle's inference settings, read with MONAI's ``ConfigParser`` from its ``inference.json``.

    ``bundle_root`` is set to the bundle folder (absolute), so relative defaults such as
    ``models/model.pt`` resolve inside the bundle wherever the server runs (the region cache defaults to
    the user cache, :func:`monai_rat.data.default_cache_dir`); then
    ``overrides`` are applied (see :func:`parse_overrides`).

    Args:
        name: the model name (the bundle folder's name).
        bundle_dir: the bundle folder.
        overrides: ``{config id: value}`` applied over ``inference.json``.

    Raises:
        FileNotFoundError: when ``configs/inference.json`` or ``configs/metadata.json`` is missing.
        ValueError: when an override cannot be applied, or the config lacks ``network_def``,
            ``preprocessing`` or ``ckpt_path``.
    """

    def __init__(self, name: str, bundle_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> None:
        from monai.bundle import ConfigParser

        self.name = name
        self.bundle_dir = Path(bundle_dir).resolve()
        self.config_file = self.bundle_dir / "configs" / "inference.json"
        self.meta_file = self.bundle_dir / "configs" / "metadata.json"
        for f in (self.config_file, self.meta_file):
            if not f.is_file():
                raise FileNotFoundError(f"Bundle {name!r}: {f} is missing (a bundle needs configs/inference.json and metadata.json).")
        self.overrides = dict(overrides or {})
        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        parser.read_meta(str(self.meta_file))
        # the bundle is self-contained (no '%' macro names a file), so it loads from any working directory;
        # bundle_root would find the folder from a `monai.bundle` command line, which the server does not have
        parser["bundle_root"] = str(self.bundle_dir)
        for cid, value in self.overrides.items():
            try:
                parser[cid] = value
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise ValueError(f"Bundle {name!r}: cannot set config id {cid!r} of {self.config_file}: {e!r}.") from e
        for cid in ("network_def", "preprocessing", "ckpt_path"):
            if cid not in parser:
                raise ValueError(f"Bundle {name!r}: {self.config_file} has no {cid!r} entry.")
        self.parser = parser
        self.metadata: dict = dict(parser.get("_meta_", {}))
        fmt = self.metadata.get("network_data_format", {})
        self.input_format: dict = dict(fmt.get("inputs", {}).get("image", {}))
        self.modality = str(self.input_format.get("modality", ""))
        # a relative path (e.g. `--conf ct.ckpt_path bundles/ct/runs/demo/models/model.pt`) is relative to the
        # directory the server starts in, as on a command line
        self.ckpt_path = Path(str(parser.get_parsed_content("ckpt_path"))).expanduser().absolute()
        extra = parser.get("prepare_batch", {}) or {}
        self.regions_key = str(dict(extra.get("extra_keys", {}) or {}).get("regions", "regions"))

    # -- what the app shows ---------------------------------------------------------------------------
    @property
    def title(self) -> str:
        """The bundle's ``name`` from its metadata (the folder name when it has none)."""
        return str(self.metadata.get("name", self.name))

    @property
    def is_radiology(self) -> bool:
        """Whether results are written as NIfTI (CT, PET, MR) rather than in the input's 2D format (pathology)."""
        return self.modality.upper() in RADIOLOGY_MODALITIES

    def checkpoint_help(self) -> str:
        """Why the checkpoint is not usable and how to make one (the text the API returns)."""
        rel = os.path.relpath(self.bundle_dir, Path.cwd()) if self.bundle_dir.is_relative_to(Path.cwd()) else str(self.bundle_dir)
        train = f"{rel}/train.json" if (self.bundle_dir / "train.json").exists() else f"{rel}/configs/train.json"
        return (
            f"Model {self.name!r} has no checkpoint: {self.ckpt_path} does not exist. Make one by training the bundle, "
            f"e.g. `python -m monai.bundle run training --config_file {train}` "
            f"(see {rel}/docs/README.md), "
            f"then copy the best weights there: `cp {rel}/runs/<run>/models/model.pt {self.ckpt_path}`; or start the "
            f"server with `--conf {self.name}.ckpt_path /path/to/model.pt` (a checkpoint saved by monai-rat records its "
            f"network; an older one also needs its settings, e.g. `--conf {self.name}.feature_size 16`). The server keeps "
            f"running; the regions_{self.name} task works "
            "without a checkpoint."
        )

    # -- what the app runs ----------------------------------------------------------------------------
    def build_network(self) -> Any:
        """A new instance of the bundle's ``network_def`` (weights not loaded)."""
        return self.parser.get_parsed_content("network_def", lazy=False)

    def load_network(self, device: Any = "cpu") -> Any:
        """The bundle's network with the checkpoint's weights, in eval mode on ``device``.

        Args:
            device: torch device.

        Raises:
            CheckpointError: when the checkpoint file is missing, unreadable, or does not fit the network
                (the message names the file and the settings to check).
        """
        import torch

        if not self.ckpt_path.is_file():
            raise CheckpointError(self.checkpoint_help())
        try:
            state = torch.load(str(self.ckpt_path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same error for the user
            raise CheckpointError(f"Model {self.name!r}: cannot read checkpoint {self.ckpt_path}: {e}") from e
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        try:
            net = self.build_network()
        except Exception as e:  # noqa: BLE001 - a checkpoint that records another network than the overrides ask for
            from monai_rat.networks.record import CheckpointMismatchError

            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, CheckpointMismatchError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise CheckpointError(f"Model {self.name!r}: {cause} (server overrides are --conf {self.name}.<id> VALUE).") from e
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"Model {self.name!r}: checkpoint {self.ckpt_path} does not fit the network in {self.config_file} "
                f"(overrides {self.overrides or 'none'}): {str(e).splitlines()[0]} ... It records no network (saved by "
                f"older code): give the settings it was trained with, e.g. --conf {self.name}.feature_size 16 (the demo's; the "
                f"paper's model is feature_size 64) or, for a learned baseline, --conf {self.name}.network_name redcnn."
            ) from e
        return net.to(device).eval()

    def preprocessing(self) -> list[Callable]:
        """The per-slice transforms after loading (the app loads the image itself).

        A bundle whose ``preprocessing`` works on whole volumes or whole images (PET: 3D padding for
        ``SliceInferer``; pathology: the map repeated for ``SlidingWindowInferer``) gives the 2D per-slice
        version as ``app_preprocessing``; otherwise ``preprocessing`` is used without its loaders.
        """
        cid = "app_preprocessing" if "app_preprocessing" in self.parser else "preprocessing"
        return [t for t in self._transforms(cid) if not _is_loader(t)]

    def postprocessing(self) -> list[Callable]:
        """The per-slice transforms after the network (``app_postprocessing`` when the bundle has one), without writers."""
        cid = "app_postprocessing" if "app_postprocessing" in self.parser else "postprocessing"
        return [t for t in self._transforms(cid) if not _is_saver(t)]

    def app_inferer(self) -> Callable | None:
        """The bundle's ``app_inferer`` (e.g. pathology's ``SlidingWindowInferer`` for large images), or ``None``.

        The app calls it as ``inferer(image, network, condition=regions)``, the region map repeated over the
        image's channels (MONAI's sliding window crops ``condition`` with each window); without one it calls
        ``network(image, regions)`` on the whole slice.
        """
        if "app_inferer" not in self.parser:
            return None
        return self.parser.get_parsed_content("app_inferer", lazy=True)

    def _transforms(self, cid: str) -> list[Callable]:
        if cid not in self.parser:
            return []
        # lazy: pre- and postprocessing share one resolved config, so an Invertd in the postprocessing holds the very
        # transform instances that ran (MONAI checks the instance when inverting)
        comp = self.parser.get_parsed_content(cid, lazy=True)
        ts = getattr(comp, "transforms", comp)
        return list(ts) if isinstance(ts, (list, tuple)) else [ts]

    def describe(self) -> dict[str, Any]:
        """What ``/info/`` shows about the bundle (folder, checkpoint, whether it exists, overrides)."""
        return {
            "bundle": str(self.bundle_dir),
            "bundle_name": self.title,
            "modality": self.modality,
            "checkpoint": str(self.ckpt_path),
            "checkpoint_found": self.ckpt_path.is_file(),
            "overrides": copy.deepcopy(self.overrides),
        }
