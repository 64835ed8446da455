"""Find ``grammar/`` and ``templates/`` both in a source checkout and in an installed wheel.

The project keeps them at the top level (they are part of the product, not code); the wheel
carries copies under ``sphc/_data/`` (pyproject.toml ``force-include``). This is the only module
that knows both places.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # the sphc package (this file is sphc/compiler/resources.py)


@cache
def data_dir(name: str) -> Path:
    """Directory ``name`` ("grammar" or "templates"), preferring the installed copy."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"sphc installation is missing its {name}/ directory (looked in {_PACKAGE})")


def grammar_text() -> str:
    return (data_dir("grammar") / "sphc.lark").read_text()
