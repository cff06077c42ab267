"""Demo data folders: built once, atomically (safe when several processes build at the same time)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DATALIST", "build_folder_atomically", "load_demo_datalist"]

logger = logging.getLogger(__name__)

DATALIST = "datalist.json"


def build_folder_atomically(final: Path, what: str, tmp_prefix: str, build: Callable[[Path], object]) -> None:
    """Build a folder in a temporary sibling, then rename it to ``final`` in one step.

    A crash leaves no half-built ``final``; if another process renamed its own copy into place first,
    that copy (which holds ``datalist.json``) is used and ours is removed.

    Args:
        final: the folder to create; its parent is created if needed.
        what: the name used in log lines, e.g. ``"CT demo data"``.
        tmp_prefix: the temporary folder's name prefix, e.g. ``".ct_demo_tmp_"``.
        build: writes the folder's files into the temporary folder it is given.

    Raises:
        OSError: when the rename fails for another reason than a concurrent build.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / DATALIST).is_file():  # another process finished first: use its copy
                logger.info("%s: %s was built concurrently; using it.", what, final)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("%s: built in %.1f s: %s", what, time.perf_counter() - t0, final)


def load_demo_datalist(folder: Path, path_keys: Sequence[str] = ("image", "label")) -> dict:
    """Read a demo folder's ``datalist.json`` (relative paths) as absolute paths.

    A folder whose datalist has no "test" split gets ``test`` = ``validation`` (and then no scores
    computed on "test" are held out).

    Args:
        folder: the demo folder.
        path_keys: the item keys that hold paths relative to ``folder``.
    """
    with open(folder / DATALIST) as f:
        rel = json.load(f)
    out = {
        split: [{**item, **{k: str(folder / item[k]) for k in path_keys}} for item in rel[split]]
        for split in ("training", "validation", "test")
        if split in rel
    }
    out.setdefault("test", copy.deepcopy(out["validation"]))
    return out
