"""Text → AST → IR: the examples parse, spans point where they should, layout does not matter,
and ``ir.dump`` is a canonical form that parses back to the same IR."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sphc
from sphc.compiler import ir, lower, syntax
from sphc.errors import Span

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PATHS = sorted((REPO_ROOT / "examples").glob("*.sph"))
EXAMPLES = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLE_PATHS}
SKETCH = "S2Conv L=32 -> TensorProduct mst -> GenConv K=8"

# Models that between them use every layer kind and every parameter (with non-default values).
EVERY_KIND = [
    "Input s2 L=8 C=2 -> ZonalConv C=3 L=6 -> ReLU oversample=2 -> S2Conv C=2 L=5 N=3"
    " -> SO3Conv C=4 L=4 N=2 -> ReLU -> Norm eps=0.001 momentum=0.5"
    " -> TensorProduct rmst L=4 cross=true -> FullGenConv 3 tau=2 L=3"
    " -> EfficientLayer full L=3 K=2 tau=3 tau_u=5 -> GenConv K=4 tau=2 tau_u=1 L=2"
    " -> Invariant -> Dense 7 act=gelu dropout=0.25 -> Dense n=3 act=softplus",
    "Input s2 L=6 -> S2Conv -> TensorProduct full -> Norm eps=1e-300 -> Invariant"
    " -> Dense 4 act=tanh -> Dense 4 act=sigmoid -> Dense 1 act=relu dropout=0.999",
    "Input s2 L=8 C=2 -> ZonalLayer C=3 L=6 act=gelu oversample=2 -> S2Layer C=2 L=5 N=3 act=tanh"
    " -> SO3Layer C=4 L=4 N=2 oversample=3 -> Pointwise softplus -> Invariant",
    "Input s2 L=4 C=5 set=true -> S2Conv C=2 L=3 N=2 -> Norm -> Invariant -> Dense 6 act=relu"
    " -> SetSum -> Dense 1",
    "Input s2 L=4 set=true -> ZonalConv -> Invariant -> SetMean -> Dense 2",
    "Input s2 L=4 set=true -> ZonalConv -> Invariant -> SetPool mean=false -> Dense 2",
]
MODELS = {**EXAMPLES, "sketch": SKETCH, **{f"every_kind_{i}": t for i, t in enumerate(EVERY_KIND)}}


def lowered(text: str, file: str = "<string>") -> ir.Model:
    return lower.lower(syntax.parse(text, file))


def test_there_are_examples():
    assert {"efficient.sph", "mnist.sph"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_parses_and_checks(name: str):
    text = EXAMPLES[name]
    ast = syntax.parse(text, name)
    assert ast.file == name and ast.source == text
    assert ast.layers[0].name == "Input"
    assert all(layer.name in lower.LAYERS for layer in ast.layers)
    analysis = sphc.check_source(text, name)
    assert analysis.params > 0
    assert len(analysis.layers) >= len(ast.layers) - 1  # EfficientLayer lowers to two IR layers


def test_the_original_sketch_parses_and_checks():
    ast = syntax.parse(SKETCH)
    assert [layer.name for layer in ast.layers] == ["S2Conv", "TensorProduct", "GenConv"]
    assert ast.layers[1].args[0].key is None and ast.layers[1].args[0].value == "mst"
    model = sphc.check_source(SKETCH).model
    assert model.input == ir.Input(ir.Domain.S2, 32, 1)  # no header: one S² channel at the first L
    assert model.layers == (
        ir.S2Conv(C=1, L=32, N=32),
        ir.TensorProduct(ir.Mixing.MST, L=32, cross=False),
        ir.GenConv(K=8, tau=1, tau_u=1, L=32),
    )


def test_every_layer_kind_is_exercised():
    used = {layer.name for text in EVERY_KIND for layer in syntax.parse(text).layers}
    assert used == set(lower.LAYERS)
    kinds = {type(x).__name__ for text in EVERY_KIND for x in lowered(text).layers}
    assert kinds == {cls.__name__ for cls in ir.Layer.__args__}
    for text in EVERY_KIND:
        sphc.check_source(text)


# --- spans -----------------------------------------------------------------------------------

SPAN_SAMPLE = """# header comment
Input s2 L=16 C=2   # the input
  -> S2Conv C=4
        L=8 N=2
  ->\tNorm
  -> EfficientLayer mst
     K=8 tau=2 -> Invariant -> Dense 10 act=relu
"""


def _at(text: str, span: Span) -> str:
    """The source text a single-line span covers."""
    assert span.end_line == span.line
    return text.split("\n")[span.line - 1][span.col - 1 : span.end_col - 1]


def test_spans_land_on_the_right_line_and_column():
    ast = syntax.parse(SPAN_SAMPLE, "spans.sph")
    where = {layer.name: (layer.span.line, layer.span.col) for layer in ast.layers}
    assert where == {
        "Input": (2, 1),
        "S2Conv": (3, 6),
        "Norm": (5, 6),
        "EfficientLayer": (6, 6),
        "Invariant": (7, 19),
        "Dense": (7, 32),
    }
    for layer in ast.layers:
        assert layer.span.file == "spans.sph"
        assert _at(SPAN_SAMPLE, layer.span) == layer.name
    s2 = ast.layers[1]
    assert [(a.key, a.value) for a in s2.args] == [("C", 4), ("L", 8), ("N", 2)]
    L = s2.args[1]
    assert (L.span.line, L.span.col, L.value_span.line, L.value_span.col) == (4, 9, 4, 11)
    assert _at(SPAN_SAMPLE, L.span) == "L=8" and _at(SPAN_SAMPLE, L.value_span) == "8"
    mix = ast.layers[3].args[0]
    assert mix.key is None and _at(SPAN_SAMPLE, mix.span) == "mst" and mix.span == mix.value_span
    # a layer's full span runs from its name to its last argument, across lines
    full = s2.full_span
    assert (full.line, full.col, full.end_line, full.end_col) == (3, 6, 4, 16)
    eff = ast.layers[3].full_span
    assert (eff.line, eff.end_line) == (6, 7)


def test_spans_survive_lowering():
    model = lowered(SPAN_SAMPLE, "spans.sph")
    assert model.input.span.line == 2
    norm = next(x for x in model.layers if isinstance(x, ir.Norm))
    assert (norm.span.line, norm.span.col) == (5, 6)
    tp, gen = (x for x in model.layers if isinstance(x, ir.TensorProduct | ir.GenConv))
    assert tp.span == gen.span and tp.span.line == 6  # both halves of the EfficientLayer


def test_numbers_and_words():
    ast = syntax.parse("Norm eps=1e-3 momentum=.5 -> Dense +3 dropout=0. -> X a=-2 b=1E+2 c=007 d=true")
    values = [(a.key, a.value, type(a.value)) for layer in ast.layers for a in layer.args]
    assert values == [
        ("eps", 0.001, float),
        ("momentum", 0.5, float),
        (None, 3, int),
        ("dropout", 0.0, float),
        ("a", -2, int),
        ("b", 100.0, float),
        ("c", 7, int),
        ("d", "true", str),
    ]


def test_positional_and_keyword_arguments_are_the_same_model():
    a = lowered("Input s2 L=8 -> S2Conv -> TensorProduct mst -> GenConv 4 -> Invariant -> Dense 3")
    b = lowered(
        "Input domain=s2 L=8 -> S2Conv -> TensorProduct mix=mst -> GenConv K=4 -> Invariant -> Dense n=3"
    )
    assert a == b


def test_defaults_are_written_out_by_dump():
    text = ir.dump(lowered("Input s2 L=8 -> S2Conv -> Norm -> Invariant -> Dense 3"))
    assert text == (
        "Input domain=s2 L=8 C=1\n"
        "  -> S2Conv C=1 L=8 N=8\n"
        "  -> Norm eps=1e-05 momentum=0.1\n"
        "  -> Invariant\n"
        "  -> Dense n=3 act=none dropout=0.0\n"
    )


# --- layout does not matter ------------------------------------------------------------------

_TOKEN = re.compile(
    r"(?P<comment>#[^\n]*)|(?P<ws>\s+)|(?P<arrow>->)|(?P<eq>=)"
    r"|(?P<number>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)"
)


def solid_tokens(text: str) -> list[str]:
    """The tokens of a model without its comments and whitespace."""
    matches = list(_TOKEN.finditer(text))
    assert "".join(m.group() for m in matches) == text
    return [m.group() for m in matches if m.lastgroup not in ("comment", "ws")]


GAPS = [
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    " \t\n   ",
    "\r\n",
    "  # a comment -> Dense 3 L=1\n",
    "#\n",
    "\n# ∑ é\n  ",
]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_whitespace_and_comments_do_not_change_the_ir(name: str):
    text = MODELS[name]
    reference = ir.dump(lowered(text))
    toks = solid_tokens(text)
    variants = [
        " ".join(toks),  # one line, no comments
        "\n".join(toks) + "\n",  # one token per line
        "\t".join(toks),
        "# leading comment\n\n" + "  ".join(toks) + "  # trailing comment",
        text.replace("\n", "\r\n"),  # Windows line ends
    ]
    for variant in variants:
        assert ir.dump(lowered(variant, "variant.sph")) == reference, variant


@settings(deadline=None, max_examples=25)
@given(st.sampled_from(sorted(MODELS)), st.data())
def test_random_layout_does_not_change_the_ir(name: str, data):
    text = MODELS[name]
    toks = solid_tokens(text)
    gaps = data.draw(st.lists(st.sampled_from(GAPS), min_size=len(toks) + 1, max_size=len(toks) + 1))
    variant = gaps[0] + "".join(t + g for t, g in zip(toks, gaps[1:]))
    assert lowered(variant) == lowered(text)
    assert ir.dump(lowered(variant)) == ir.dump(lowered(text))


def test_ir_equality_ignores_spans():
    a = lowered("Input s2 L=8 -> S2Conv L=4", "a.sph")
    b = lowered("\n\n   Input s2 L=8\n\n\n -> S2Conv     L=4", "b.sph")
    assert a.layers[0].span != b.layers[0].span
    assert a == b and hash(a) == hash(b)


# --- ir.dump round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dump_parses_back_to_an_equal_ir(name: str):
    model = lowered(MODELS[name])
    text = ir.dump(model)
    again = lowered(text, "dumped.sph")
    assert again == model
    assert ir.dump(again) == text  # canonical: a fixed point
    assert sphc.check_source(text).params == sphc.check_source(MODELS[name]).params


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dump_is_one_layer_per_line(name: str):
    model = lowered(MODELS[name])
    lines = ir.dump(model).splitlines()
    assert len(lines) == 1 + len(model.layers)
    assert lines[0] == ir.dump_layer(model.input)
    assert all(line.startswith("  -> ") for line in lines[1:])


def test_ast_repr_is_stable_and_has_no_spans():
    a, b = syntax.parse("Input s2 L=8 -> Norm", "a.sph"), syntax.parse("Input  s2\nL=8->Norm", "a.sph")
    assert repr(a) == repr(b)
    assert "Span(" not in repr(a)
