"""Persistent on-disk cache of numpy arrays (CG tables and other slow, deterministic results).

Why it is built this way:
- Entries are keyed by ``sha256(repr(key) + sphc version + CACHE_FORMAT_VERSION)``; callers put every
  engine version that changes the result into ``key``, so a stale entry is never addressed again.
- Writes go to a temp file in the target directory, are fsynced, then ``os.replace``d: two processes
  computing the same entry both write complete files, the last rename wins, readers never see a partial file.
- Each entry stores a sha256 of its arrays (names, dtypes, shapes, bytes); an entry that fails to load or
  verify is recomputed and rewritten, never trusted. Files load with ``allow_pickle=False``.
- A cache must never make a compile fail: an unwritable directory only costs a warning (once per directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sphc import __version__, config

#: Name of the extra array holding the integrity digest inside each ``.npz``.
DIGEST_KEY = "__digest__"

_warned_unwritable: set[Path] = set()


class CacheWarning(UserWarning):
    """A cache entry was unusable (corrupt, unreadable or unwritable); the result was recomputed."""


def entry_path(namespace: str, key: object) -> Path:
    """Where the entry for ``(namespace, key)`` lives; the version strings make upgrades miss old entries."""
    if not namespace or not namespace.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"cache namespace must be a plain name, got {namespace!r}")
    text = repr(key) + __version__ + str(config.CACHE_FORMAT_VERSION)
    return config.cache_dir() / namespace / f"{hashlib.sha256(text.encode()).hexdigest()}.npz"


def load_or_compute(
    namespace: str, key: object, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key``, or ``compute()`` them and store them for next time."""
    if config.cache_disabled():
        return _checked(compute())
    path = entry_path(namespace, key)
    cached = _read(path)
    if cached is not None:
        return cached
    arrays = _checked(compute())
    _write(path, arrays)
    return arrays


def _checked(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Normalise to plain arrays and reject what ``allow_pickle=False`` could not read back."""
    out = {name: np.asarray(a) for name, a in arrays.items()}
    for name, a in out.items():
        if name == DIGEST_KEY or a.dtype.hasobject:
            raise TypeError(f"cannot cache array {name!r} of dtype {a.dtype}")
    return out


def _digest(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """sha256 over names, dtypes, shapes and bytes, so any change to a stored array is detected."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """The verified arrays at ``path``, or None if it is missing or cannot be trusted."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # any failure to parse means the file is not trusted, never a crash
        warnings.warn(
            f"sphc cache: unreadable entry {path} ({exc!r}); recomputing", CacheWarning, stacklevel=3
        )
        return None
    stored = arrays.pop(DIGEST_KEY, None)
    if stored is None or not np.array_equal(stored, _digest(arrays)):
        warnings.warn(f"sphc cache: digest mismatch in {path}; recomputing", CacheWarning, stacklevel=3)
        return None
    return arrays


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically publish ``arrays`` at ``path``; on any OS error warn once per directory and carry on."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{DIGEST_KEY: _digest(arrays)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if path.parent not in _warned_unwritable:
            _warned_unwritable.add(path.parent)
            warnings.warn(
                f"sphc cache: cannot write to {path.parent} ({exc!r}); results will not be cached",
                CacheWarning,
                stacklevel=3,
            )
