"""Stage 1, text → AST: parse ``.sph`` source with lark and keep a ``Span`` on every node.

The AST is deliberately dumb (names and literal values); meaning is assigned by ``lower.py``.
Lark's exceptions are translated here into located ``SphcError``s with the expected tokens in
user words, so nothing from lark reaches a user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import lark

from sphc.compiler.resources import grammar_text
from sphc.errors import Span, SphcError


@dataclass(frozen=True, slots=True)
class Arg:
    """One layer argument: ``key=value`` or a positional ``value`` (key is None)."""

    key: str | None
    value: int | float | str
    span: Span = field(compare=False, repr=False)
    value_span: Span = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LayerNode:
    name: str
    args: tuple[Arg, ...]
    span: Span = field(compare=False, repr=False)  # the layer name
    full_span: Span = field(compare=False, repr=False)  # the whole layer text


@dataclass(frozen=True, slots=True)
class ModelAST:
    layers: tuple[LayerNode, ...]
    file: str
    source: str = field(compare=False, repr=False)


# Terminal names → what a user would call them in "expected ..." messages.
_TOKEN_WORDS = {
    "ARROW": "'->'",
    "NAME": "a layer or parameter name",
    "NUMBER": "a number",
    "EQUAL": "'='",
    "$END": "end of file",
}


@cache
def _parser() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _span(file: str, meta) -> Span:
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(file: str, tok: lark.Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


#: Most digits an integer literal may have. Every integer parameter is far below 10^18 (README,
#: "Limits"), and Python refuses int() of more than 4,300 digits with a bare ValueError.
MAX_INT_DIGITS = 18


def _number(text: str, key: str | None, span: Span, source: str) -> int | float:
    """The literal's value; floats may overflow to inf (``lower`` rejects non-finite values)."""
    if any(c in text for c in ".eE"):
        return float(text)
    body = text.lstrip("+-").lstrip("0") or "0"  # leading zeros count for int()'s 4,300-digit limit
    digits = len(body)
    if digits > MAX_INT_DIGITS:
        what = f"the value of {key}" if key else "this integer"
        raise SphcError(
            f"{what} has {digits:,} digits; integer literals have at most {MAX_INT_DIGITS}",
            span,
            hint='no parameter accepts a value anywhere near this size (README, "Limits")',
            source=source,
        )
    return -int(body) if text.startswith("-") else int(body)


def _build(tree: lark.Tree, file: str, source: str) -> ModelAST:
    layers = []
    for node in tree.children[0].children:
        if isinstance(node, lark.Token):  # an ARROW between layers
            continue
        name_tok, *arg_nodes = node.children
        args = []
        for a in arg_nodes:
            if a.data == "kwarg":
                key_tok, val = a.children
                key = str(key_tok)
            else:
                key_tok, key, (val,) = None, None, a.children
            tok = val.children[0]
            number = val.data == "number"
            value = _number(str(tok), key, _tok_span(file, tok), source) if number else str(tok)
            first = key_tok if key_tok is not None else tok
            span = Span(file, first.line, first.column, tok.end_line, tok.end_column)
            args.append(Arg(key, value, span, _tok_span(file, tok)))
        layers.append(
            LayerNode(str(name_tok), tuple(args), _tok_span(file, name_tok), _span(file, node.meta))
        )
    return ModelAST(tuple(layers), file, source)


def _expected(tokens) -> str:
    words = sorted({_TOKEN_WORDS.get(t, repr(t)) for t in tokens})
    return ", ".join(words) if words else "something else"


def parse(source: str, file: str = "<string>") -> ModelAST:
    """Parse ``source``; raise ``SphcError`` naming file, line, column and what was expected."""
    try:
        tree = _parser().parse(source)
    except lark.UnexpectedCharacters as e:
        char = source[e.pos_in_stream] if e.pos_in_stream < len(source) else ""
        raise SphcError(
            f"unexpected character {char!r}; expected {_expected(e.allowed)}",
            Span(file, e.line, e.column, e.line, e.column + 1),
            hint="layers look like `Name key=value ...` and are joined by `->`; `#` starts a comment",
            source=source,
        ) from None
    except lark.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = source.rstrip("\r\n").split("\n")  # lark counts lines by "\n" only
            span = Span(file, len(lines), len(lines[-1]) + 1)
            what = "end of file"
            if source.rstrip().endswith("->"):
                raise SphcError(
                    "unexpected end of file after `->`; expected a layer",
                    span,
                    hint="a `->` must be followed by a layer, e.g. `-> Invariant`",
                    source=source,
                ) from None
        else:
            span = _tok_span(file, tok)
            what = repr(str(tok))
        raise SphcError(
            f"unexpected {what}; expected {_expected(e.expected)}",
            span,
            hint="layers look like `Name key=value ...` and are joined by `->`",
            source=source,
        ) from None
    return _build(tree, file, source)
