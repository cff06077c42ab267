"""What the monai-rat bundles (``bundles/ct``, ``bundles/pet``, ``bundles/pathology``) need from the package.

- :func:`bundle_root`: the ``bundle_root`` of every bundle config (``"$monai_rat.bundle.bundle_root()"``): the
  folder of the bundle being run, wherever the command runs from.
- ``monai_rat/bundle/shared/*.json``: the one definition of what the bundles share (network, loss, engines,
  handlers, metrics, the multi-GPU overlay, the evaluation's common entries). The bundles never read these
  files: :mod:`monai_rat.bundle.sync` writes literal copies of them into each bundle's configs (listed in the
  config's ``"_shared_"`` map) and ``python -m monai_rat.bundle.sync --check`` says when a copy has drifted.
  So a bundle folder is self-contained: it runs from any working directory, and a copy of the folder alone
  runs (with ``monai_rat`` installed).

Kept light (standard library only): every bundle config imports it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

__all__ = ["SHARED_DIR", "bundle_root"]

#: the shared config entries (package data, see setup.cfg); read by :mod:`monai_rat.bundle.sync` only
SHARED_DIR = Path(__file__).resolve().parent / "shared"


def _bundle_of(config_dir: Path) -> str:
    # MONAI's own rule (ConfigWorkflow.run): a bundle's configs live in <bundle>/configs; a config file next to
    # the bundle's top (the top-level train.json -> configs/train.json links) names the bundle folder itself
    return str(config_dir.parent if config_dir.name == "configs" else config_dir)


def _first_config_file(value: Any) -> str | None:
    if isinstance(value, str) and value.strip()[:1] in ("[", "("):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return str(value) if value else None


def _workflow_config_dir() -> Path | None:
    """``config_root_path`` of the MONAI ``ConfigWorkflow`` that is resolving this config, if one is on the stack."""
    workflows = sys.modules.get("monai.bundle.workflows")
    cls = getattr(workflows, "ConfigWorkflow", None)
    if cls is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, cls) and getattr(obj, "config_root_path", None) is not None:
            return Path(obj.config_root_path)
        frame = frame.f_back
    return None


def _command_line_config_dir(argv: list[str]) -> Path | None:
    """The folder of the first ``--config_file`` of a ``python -m monai.bundle`` command line."""
    from monai_rat.bundle_errors import running_monai_bundle

    if not running_monai_bundle():
        return None
    args = argv[1:]
    for i, a in enumerate(args):
        value = None
        if a == "--config_file" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--config_file="):
            value = a.split("=", 1)[1]
        first = _first_config_file(value)
        if first:
            return Path(first).parent
    return None


def bundle_root(default: str = ".") -> str:
    """The folder of the bundle whose config is being run: what every bundle config's ``bundle_root`` is.

    The bundles write their outputs under ``<bundle_root>/runs`` and read the inference checkpoint from
    ``<bundle_root>/models/model.pt``. A fixed path (the repository's ``bundles/ct``) breaks outside the
    repository, and model-zoo's ``"."`` is the working directory, which is the bundle only when the command
    runs from inside it. This finds the bundle from the config file MONAI was given, in this order:

    1. a MONAI ``ConfigWorkflow`` resolving the config (``python -m monai.bundle run ...``,
       ``monai.bundle.run(...)`` from Python, ``ConfigWorkflow(...)``): the folder of its first config file;
    2. a ``python -m monai.bundle`` command line (``verify_net_in_out``, ``ckpt_export``, ... parse the config
       without a workflow): the folder of its first ``--config_file``;
    3. otherwise ``default`` (the working directory).

    For ``<bundle>/configs/x.json`` the bundle is ``<bundle>``; for ``<bundle>/x.json`` (the top-level links) it
    is ``<bundle>``: MONAI's own rule for a bundle's root. The path is returned as given (relative paths stay
    relative to the working directory). ``--bundle_root DIR`` on the command line, or ``parser["bundle_root"]``
    (MONAI Label's bundle tasks, :class:`monai_rat.apps.monailabel.bundles.RATBundle`), replaces the
    expression and wins.

    Args:
        default: the answer when no config file is known (a ``ConfigParser`` used directly from Python).
    """
    config_dir = _workflow_config_dir()
    if config_dir is None:
        config_dir = _command_line_config_dir(sys.argv)
    return _bundle_of(config_dir) if config_dir is not None else default
