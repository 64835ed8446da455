"""The one driver: text → AST → IR → analysis → plan → Python, as named stages.

``--emit NAME`` stops after stage NAME and prints its canonical dump, so every intermediate
form can be inspected (tinygrad's and Triton's habit).
"""

from __future__ import annotations

import hashlib
import importlib.util
import linecache
import sys
import types
from pathlib import Path

from sphc.compiler import analysis, codegen, ir, lower, plan, syntax
from sphc.compiler import tuning as tuning_files
from sphc.errors import SphcError

STAGES = ("ast", "ir", "analysis", "plan", "python")


def check_source(text: str, file: str = "<string>") -> analysis.Analysis:
    """Parse, lower and analyse; raises ``SphcError`` on any mistake. Writes nothing."""
    ast = syntax.parse(text, file)  # text → AST with spans
    model = lower.lower(ast)  # AST → IR: names, defaults and shapes checked
    try:
        return analysis.analyze(model)  # IR → types, paths and costs (and size limits)
    except SphcError as e:
        raise e.with_source(text) from None


def compile_source(text: str, file: str = "<string>", emit: str = "python", tuning=None) -> str:
    """Compile ``.sph`` source text to the generated module's Python source (or an earlier stage).

    ``tuning`` (a ``tuning.Tuning`` from ``tuning.read_tuning``) bakes its kernel configs into the module.
    """
    if emit not in STAGES:
        raise ValueError(f"emit must be one of {STAGES}, got {emit!r}")
    if emit == "ast":
        return repr(syntax.parse(text, file)) + "\n"
    result = check_source(text, file)
    if emit == "ir":
        return ir.dump(result.model)
    if emit == "analysis":
        return analysis.explain_table(result) + "\n"
    module_plan = plan_source(text, file, result)  # every number the template needs
    if tuning is not None:
        module_plan = tuning_files.bake(module_plan, tuning)  # validated configs of each kernel's space
    if emit == "plan":
        return repr(module_plan) + "\n"
    return codegen.render(module_plan)  # plan → Python via templates/


def plan_source(
    text: str, file: str = "<string>", checked: analysis.Analysis | None = None
) -> plan.ModulePlan:
    """The ``ModulePlan`` of ``.sph`` text (``checked``: its analysis, when the caller has it already)."""
    return plan.plan(checked or check_source(text, file), text, file)


def read_model(path: Path) -> tuple[str, str]:
    """(text, file name) of a model file; unreadable or non-UTF-8 files are user errors."""
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as e:
        raise SphcError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SphcError(
            f"cannot read {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})",
            hint="save the model as UTF-8",
        ) from None


def _read(path_or_text: str | Path) -> tuple[str, str]:
    """``(text, file name)``: a path that exists is read, anything else is taken as source text."""
    if isinstance(path_or_text, Path) or (
        "\n" not in str(path_or_text) and str(path_or_text).endswith(".sph")
    ):
        return read_model(Path(path_or_text))
    return str(path_or_text), "<string>"


def load(path_or_text: str | Path, module_name: str | None = None) -> types.ModuleType:
    """Compile a model (a ``.sph`` path or source text) and import the result in memory."""
    return load_source(*_read(path_or_text), module_name)


def load_source(text: str, file: str = "<string>", module_name: str | None = None) -> types.ModuleType:
    """Compile ``.sph`` text and import the generated module in memory, as ``module_name`` if given."""
    source = compile_source(text, file)
    name = module_name or "sphc_model_" + hashlib.sha256(source.encode()).hexdigest()[:12]
    return import_source(source, name, f"<sphc:{file}>")


def import_source(source: str, name: str, filename: str) -> types.ModuleType:
    """Import generated Python source as module ``name`` without writing it to disk.

    The text is registered with ``linecache`` under ``filename``: ``@triton.jit`` reads a kernel's
    source through ``inspect.getsource``, and tracebacks then show the generated lines.
    """
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    sys.modules[name] = module  # before exec: pickling by reference, torch.compile and triton find it
    exec(compile(source, filename, "exec"), module.__dict__)
    return module
