"""On-disk cache of region maps, keyed by image content and every setting that changes the map."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RegionCache", "file_identity", "CACHE_FORMAT"]

logger = logging.getLogger(__name__)

#: bumped whenever the meaning of a stored map changes, so old entries are never reused
CACHE_FORMAT = "monai-rat-regions-v1"

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_identity(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, memoised per process by (real path, size, mtime).

    A checkpoint is hashed once per process (about a second for the 375 MB ViT-B file), so the cache key
    survives moving or renaming the file and changes when its content changes.

    Args:
        path: file to identify.

    Returns:
        hex digest of the file content.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
    """
    real = os.path.realpath(os.fspath(path))
    if not os.path.isfile(real):
        raise FileNotFoundError(f"no such file: {os.fspath(path)!r}")
    st = os.stat(real)
    memo = (real, st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _FILE_HASHES[memo] = digest.hexdigest()
    return _FILE_HASHES[memo]


class RegionCache:
    """A folder of region maps, one ``.npy`` file per (image content, settings) key.

    Layout: ``<cache_dir>/<key[:2]>/<key>.npy`` holds the int32 map and ``<key>.json`` beside it the
    settings it was made with (for people, not read back). ``key`` is the SHA-256 of the format
    version, the settings (as sorted JSON) and the image's dtype, shape and bytes. Writes go to a
    temporary file in the same folder and are moved into place with ``os.replace``, which is atomic:
    concurrent writers (DataLoader workers, torchrun ranks) never leave a torn file, and the last
    complete write wins (all writers of a key write the same map).

    Args:
        cache_dir: the folder; created on first write.

    Raises:
        ValueError: when ``cache_dir`` is empty.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        if not os.fspath(cache_dir):
            raise ValueError("cache_dir must be a folder path, got an empty string.")
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def key(image: np.ndarray, settings: Mapping[str, Any]) -> str:
        """Cache key of an image under given settings.

        Args:
            image: the image as the partitioner receives it (values, dtype and shape all count).
            settings: JSON-serialisable settings that change the map.

        Returns:
            hex SHA-256 digest.

        Raises:
            TypeError: when ``settings`` is not JSON-serialisable.
        """
        arr = np.ascontiguousarray(image)
        digest = hashlib.sha256()
        digest.update(CACHE_FORMAT.encode())
        digest.update(json.dumps(dict(settings), sort_keys=True, default=_json_default).encode())
        digest.update(f"|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(memoryview(arr).cast("B"))
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """Where the map of ``key`` lives.

        Args:
            key: a key from :meth:`key`.

        Returns:
            path of the ``.npy`` file.

        Raises:
            ValueError: when ``key`` is not a hex digest.
        """
        if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"key must be a hex digest, got {key!r}.")
        return self.cache_dir / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The stored map of ``key``, or ``None`` on a miss (an unreadable entry counts as a miss and is logged).

        Args:
            key: a key from :meth:`key`.

        Returns:
            the int32 map or ``None``.

        Raises:
            ValueError: when ``key`` is not a hex digest.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("region cache: unreadable entry %s (%s); recomputing.", path, e)
            return None

    def save(self, key: str, regions: np.ndarray, settings: Mapping[str, Any] | None = None) -> Path:
        """Store ``regions`` under ``key`` atomically.

        Args:
            key: a key from :meth:`key`.
            regions: the map to store.
            settings: optional settings written to a JSON side file for people to read.

        Returns:
            path of the stored ``.npy`` file.

        Raises:
            ValueError: when ``key`` is not a hex digest.
            OSError: when the folder cannot be created or written.
        """
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: np.save(f, np.asarray(regions), allow_pickle=False))
        if settings is not None:
            text = json.dumps(dict(settings), sort_keys=True, indent=1, default=_json_default).encode()
            _atomic_write(path.with_suffix(".json"), lambda f: f.write(text))
        return path

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __repr__(self) -> str:
        return f"RegionCache({str(self.cache_dir)!r})"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"setting of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")
