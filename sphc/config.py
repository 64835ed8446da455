"""Every SPHC_* environment knob, declared once (Triton's ``knobs.py`` idea).

Reading the environment anywhere else is a bug: modules ask this file, so the set of knobs
that can change sphc's behaviour is visible in one place and documented in the README.
"""

from __future__ import annotations

import os
from pathlib import Path

from sphc.errors import SphcError

#: Bump when the layout of anything sphc writes to its cache changes; old entries are then ignored.
CACHE_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """Root of sphc's persistent cache (CG tables, ...).

    ``SPHC_CACHE_DIR`` overrides it; otherwise ``$XDG_CACHE_HOME/sphc`` or ``~/.cache/sphc``.
    The format version is part of the path so an sphc upgrade never reads stale layouts.
    """
    root = os.environ.get("SPHC_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "sphc")
    return Path(root) / f"v{CACHE_FORMAT_VERSION}"


def cache_disabled() -> bool:
    """``SPHC_NO_CACHE=1`` recomputes everything and writes nothing (for timing cold compiles)."""
    return os.environ.get("SPHC_NO_CACHE", "") not in ("", "0")


def debug() -> bool:
    """``SPHC_DEBUG=1`` makes the CLI print full tracebacks instead of located diagnostics only."""
    return os.environ.get("SPHC_DEBUG", "") not in ("", "0")


def backend_default() -> str:
    """``SPHC_BACKEND=auto|reference|torch|triton`` picks the kernels of models built without ``backend=``."""
    return os.environ.get("SPHC_BACKEND", "") or "auto"


def cpu_kernels_enabled() -> bool:
    """``SPHC_CPU_KERNELS=0`` keeps the efficient layer on the torch ops instead of the compiled C kernel."""
    return os.environ.get("SPHC_CPU_KERNELS", "1") not in ("0", "")


def triton_interpreting() -> bool:
    """Triton's own ``TRITON_INTERPRET=1``: kernels defined from now on run in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def limit_scale() -> float:
    """``SPHC_LIMIT_SCALE=k`` multiplies every model-size limit by k >= 1 (README, "Limits").

    ``sphc ... --limit-scale k`` sets it for one command. A bad value is a user error, not a default.
    """
    text = os.environ.get("SPHC_LIMIT_SCALE", "").strip()
    if not text:
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not scale >= 1:  # also rejects nan
        raise SphcError(f"SPHC_LIMIT_SCALE must be a number >= 1 (or inf), got {text!r}")
    return scale
