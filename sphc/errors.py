"""User-facing diagnostics: one error type, rendered gcc-style with the source line and a caret.

Every mistake a user can make (in a ``.sph`` file or when calling a generated model) becomes an
``SphcError`` carrying a ``Span``; the CLI prints ``render()`` without a traceback (the Triton
``CompilationError`` idea). A failure that is sphc's own fault is
an ``SphcInternalError`` instead, so users can tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """A 1-based source range; ``end_col`` is exclusive. Never part of equality of IR nodes."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SphcError(Exception):
    """A located user mistake: ``file:line:col: error: message``, the line, a caret and a hint."""

    def __init__(
        self, message: str, span: Span | None = None, hint: str | None = None, source: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.source = source

    def __reduce__(self):  # keep it picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.message, self.span, self.hint, self.source))

    def with_source(self, source: str) -> SphcError:
        """Attach the source text so ``render`` can show the offending line."""
        if self.source is None:
            self.source = source
        return self

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        out = [f"{where}error: {self.message}"]
        if self.span and self.source is not None:
            lines = self.source.split("\n")  # lark counts lines by "\n" only, not str.splitlines()
            if 1 <= self.span.line <= len(lines):
                text = lines[self.span.line - 1].rstrip("\r").replace("\t", " ")
                width = 1
                if self.span.end_line == self.span.line and self.span.end_col:
                    width = max(1, self.span.end_col - self.span.col)
                out.append(f"  {text}")
                out.append("  " + " " * (self.span.col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class SphcInternalError(RuntimeError):
    """A bug in sphc (a failed internal invariant), never a user mistake."""
