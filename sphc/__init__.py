"""sphc: compile a small architecture language into rotation-equivariant spherical CNNs.

Public surface: ``compile_source(text) -> str`` (the generated module's source),
``load(path_or_text)`` (compile and import in memory), ``check_source`` and ``SphcError``.
"""

__version__ = "0.1.0"

from sphc.compiler.pipeline import check_source, compile_source, load  # noqa: E402
from sphc.errors import SphcError  # noqa: E402

__all__ = ["SphcError", "__version__", "check_source", "compile_source", "load"]
