"""Write the shared config entries into each bundle as literal copies; ``--check`` reports a copy that drifted.

Why copies: MONAI resolves a ``%file.json#id`` macro's file relative to the *working directory*
(``ConfigParser.load_config_file`` opens the path as given), and it applies command-line overrides before
it expands macros. So a bundle that pulled shared entries from another folder ran only from the
repository root, could not be copied on its own, and an override such as ``--train#trainer#max_epochs 1``
could not reach inside an entry that was still a macro string. A bundle config therefore holds every
entry literally, and the one source of truth for what the bundles share lives in the package,
``monai_rat/bundle/shared/*.json``; this tool keeps the copies equal to it.

Each bundle config lists its generated entries in a top-level ``"_shared_"`` map, config id (MONAI's
``#`` form) to source::

    "_shared_": {
        "optimizer": "train_common.json#optimizer",
        "train#trainer": "train_common.json#trainer",
        "roi_size": "./inference.json#roi_size"
    }

- ``name.json#id``: the entry ``id`` of ``monai_rat/bundle/shared/name.json`` (shared by the bundles);
- ``./name.json#id``: the entry ``id`` of the same bundle's ``configs/name.json`` (one bundle's configs
  sharing an entry, e.g. the pathology evaluation using its inference's sliding-window route).

The config id names the entry where it is written: ``train#trainer`` is the key ``trainer`` of the dict
``train``, or a top-level key spelt ``"train#trainer"`` (an overlay such as ``evaluate.json``), whichever
the file has; the entry must exist (any placeholder value). MONAI reads ``_shared_`` as a plain dict of
strings and nothing refers to it, so it is inert at run time (``monai.bundle run``, ``check_properties``,
``verify_net_in_out`` and MONAI Label ignore it). ``%`` macros within one file (``%#id``, ``%id``) stay
allowed; a macro that names a file is reported as an error (the bundle would not be self-contained).

Usage::

    python -m monai_rat.bundle.sync            # rewrite the copies (the repository's bundles/)
    python -m monai_rat.bundle.sync --check    # exit 1, naming each entry, if a copy differs from its source
    python -m monai_rat.bundle.sync --check path/to/bundles_or_one_bundle ...

Edit a shared entry in ``monai_rat/bundle/shared/``, run the tool, commit both; ``tests/test_bundle_standalone.py``
runs ``--check``. Rewritten files use :func:`dumps` (4-space indent, short lists of plain values on one line).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_rat.bundle import SHARED_DIR

__all__ = ["SHARED_KEY", "SyncError", "dumps", "find_bundles", "sync_bundle", "main"]

#: the top-level key of a bundle config that lists its generated entries
SHARED_KEY = "_shared_"
#: the repository's bundles (a source checkout or an editable install); ``./bundles`` otherwise
_REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
_WIDTH = 120
#: a macro that names a file: MONAI's rule (ConfigParser.split_path_id), a path ending in .json / .yaml / .yml
_MACRO_FILE = re.compile(r".*\.(json|yaml|yml)(?=#|::|$)", re.IGNORECASE)


class SyncError(ValueError):
    """A ``_shared_`` map that cannot be applied (unknown source, missing entry, a file macro); the message names it."""


# ------------------------------------------------------------------------------------------------ format
def _inline(v: Any) -> bool:
    return not isinstance(v, (dict, list)) and not (isinstance(v, str) and v[:1] in "$@%")


def _dumps(obj: Any, indent: int, used: int) -> str:
    pad = " " * (indent + 4)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = []
        for k, v in obj.items():
            head = f"{pad}{json.dumps(k, ensure_ascii=False)}: "
            items.append(head + _dumps(v, indent + 4, len(head)))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        if all(_inline(v) for v in obj):
            one_line = "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in obj) + "]"
            if used + len(one_line) + 1 <= _WIDTH:
                return one_line
        return "[\n" + ",\n".join(pad + _dumps(v, indent + 4, len(pad)) for v in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def dumps(config: Any) -> str:
    """The bundle configs' JSON layout: 4-space indent, dicts and lists of ``$``/``@`` strings one item a line,
    short lists of plain values (numbers, names) on one line; ends with a newline."""
    return _dumps(config, 0, 0) + "\n"


# ------------------------------------------------------------------------------------------------ ids
def _locate(config: Any, cid: str) -> tuple[dict, str] | None:
    """``(dict, key)`` holding config id ``cid``: nested dicts, or a top-level key spelt with ``#`` (longest first)."""
    parts = cid.split("#")
    node = config
    while parts:
        if not isinstance(node, dict):
            return None
        for n in range(len(parts), 0, -1):
            key = "#".join(parts[:n])
            if key in node:
                if n == len(parts):
                    return node, key
                node, parts = node[key], parts[n:]
                break
        else:
            return None
    return None


def _file_macros(value: Any, where: str = "") -> list[str]:
    """Config ids under ``value`` whose string is a ``%`` macro naming a file (``%path.json#id``)."""
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _file_macros(v, f"{where}#{k}" if where else str(k))]
    if isinstance(value, list):
        return [m for i, v in enumerate(value) for m in _file_macros(v, f"{where}#{i}")]
    if isinstance(value, str) and value.startswith("%") and _MACRO_FILE.match(value[1:]):
        return [f"{where}: {value}"]
    return []


# ------------------------------------------------------------------------------------------------ sync
class _Bundle:
    """One bundle's config files, read once; ``expected(name)`` is a file's content with its copies refreshed."""

    def __init__(self, folder: Path, shared_dir: Path) -> None:
        self.folder = folder
        self.configs = folder / "configs"
        self.shared_dir = shared_dir
        self._raw: dict[str, Any] = {}
        self._expected: dict[str, Any] = {}
        self._busy: set[str] = set()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.configs.glob("*.json") if p.is_file())

    def raw(self, name: str) -> Any:
        if name not in self._raw:
            path = self.configs / name
            if not path.is_file():
                raise SyncError(f"{path} does not exist.")
            self._raw[name] = json.loads(path.read_text())
        return self._raw[name]

    def _source(self, name: str, cid: str, source: str) -> Any:
        if not isinstance(source, str) or "#" not in source:
            raise SyncError(f"{self.configs / name}: {SHARED_KEY}[{cid!r}] = {source!r}: expected 'file.json#id' or './file.json#id'.")
        file_part, sid = source.split("#", 1)
        if file_part.startswith("./"):
            local = file_part[2:]
            if "/" in local:
                raise SyncError(f"{self.configs / name}: {SHARED_KEY}[{cid!r}] = {source!r}: './' names a file of this bundle's configs/.")
            content = self.expected(local)
            origin = self.configs / local
        else:
            if "/" in file_part:
                raise SyncError(f"{self.configs / name}: {SHARED_KEY}[{cid!r}] = {source!r}: a shared file is a name in {self.shared_dir}.")
            origin = self.shared_dir / file_part
            if not origin.is_file():
                raise SyncError(f"{self.configs / name}: {SHARED_KEY}[{cid!r}] = {source!r}: {origin} does not exist.")
            content = json.loads(origin.read_text())
        found = _locate(content, sid)
        if found is None:
            raise SyncError(f"{self.configs / name}: {SHARED_KEY}[{cid!r}] = {source!r}: {origin} has no entry {sid!r}.")
        return copy.deepcopy(found[0][found[1]])

    def shared_map(self, name: str) -> dict:
        mapping = self.raw(name).get(SHARED_KEY, {})
        if not isinstance(mapping, dict):
            raise SyncError(f"{self.configs / name}: {SHARED_KEY} must be a dict of config id -> source, got {type(mapping).__name__}.")
        return mapping

    def expected(self, name: str) -> Any:
        """The content of ``configs/name`` with every ``_shared_`` entry equal to its source."""
        if name in self._expected:
            return self._expected[name]
        if name in self._busy:
            raise SyncError(f"{self.configs / name}: the {SHARED_KEY} sources of this bundle refer to each other in a cycle.")
        self._busy.add(name)
        try:
            content = copy.deepcopy(self.raw(name))
            for cid, source in self.shared_map(name).items():
                found = _locate(content, cid)
                if found is None:
                    raise SyncError(
                        f"{self.configs / name}: {SHARED_KEY} lists {cid!r} but the file has no such entry (add it, any "
                        "value, where it belongs: the tool fills it in)."
                    )
                found[0][found[1]] = self._source(name, cid, source)
        finally:
            self._busy.discard(name)
        self._expected[name] = content
        return content

    def drift(self, name: str) -> list[str]:
        """One line per entry of ``configs/name`` that differs from its source."""
        raw, want = self.raw(name), self.expected(name)
        lines = []
        for cid, source in self.shared_map(name).items():
            have, wanted = _locate(raw, cid), _locate(want, cid)
            if have is None or wanted is None or have[0][have[1]] != wanted[0][wanted[1]]:
                lines.append(f"{self.configs / name}: {cid!r} is not the copy of {source!r}")
        return lines


def find_bundles(paths: Sequence[str | Path] | None = None) -> list[Path]:
    """Bundle folders (holding ``configs/``) among ``paths``: bundle folders or folders of bundles.

    Default: the repository's ``bundles/`` (beside the package in a source checkout), else ``./bundles``.

    Raises:
        FileNotFoundError: when a path does not exist or holds no bundle.
    """
    if not paths:
        paths = [_REPO_BUNDLES if _REPO_BUNDLES.is_dir() else Path("bundles")]
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a folder (a bundle, e.g. bundles/ct, or a folder of bundles).")
        if (p / "configs").is_dir():
            found.append(p)
            continue
        inner = sorted(q for q in p.iterdir() if (q / "configs").is_dir())
        if not inner:
            raise FileNotFoundError(f"{p} holds no bundle (a folder with configs/).")
        found.extend(inner)
    return found


def sync_bundle(folder: str | Path, check: bool = False, shared_dir: str | Path = SHARED_DIR) -> list[str]:
    """Refresh (or, with ``check``, compare) the generated entries of one bundle's configs.

    Args:
        folder: the bundle folder (``<folder>/configs/*.json``).
        check: only report; write nothing.
        shared_dir: where ``name.json#id`` sources are (default the package's ``monai_rat/bundle/shared``).

    Returns:
        with ``check``: one line per drifted entry and per ``%`` macro that names a file (empty: in sync);
        otherwise the files rewritten, plus the file macros found (which the tool cannot fix).

    Raises:
        SyncError: when a ``_shared_`` map names a missing source, file or entry.
    """
    bundle = _Bundle(Path(folder), Path(shared_dir))
    report: list[str] = []
    for name in bundle.names():
        raw = bundle.raw(name)
        report += [f"{bundle.configs / name}: {m} (a macro naming a file: the bundle is not self-contained)" for m in _file_macros(raw)]
        if SHARED_KEY not in raw:
            continue
        if check:
            report += bundle.drift(name)
            continue
        path = bundle.configs / name
        text = dumps(bundle.expected(name))
        if path.read_text() != text:
            path.write_text(text)
            report.append(f"wrote {path}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_rat.bundle.sync [--check] [PATH ...]``; exit status 0 (in sync / written) or 1."""
    ap = argparse.ArgumentParser(prog="python -m monai_rat.bundle.sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="bundle folders or folders of bundles (default: the repository's bundles/)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each entry that differs from its source")
    args = ap.parse_args(argv)
    failed = False
    try:
        for folder in find_bundles(args.paths):
            for line in sync_bundle(folder, check=args.check):
                print(line)
                failed = failed or not line.startswith("wrote ")
    except (SyncError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if failed:
        print("bundle configs are out of sync with monai_rat/bundle/shared (run python -m monai_rat.bundle.sync) or have a "
              "'%' macro that names a file (write the entry out, or list it in _shared_)", file=sys.stderr)  # fmt: skip
        return 1
    if args.check:
        print("bundle configs are in sync with monai_rat/bundle/shared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
