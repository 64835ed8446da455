"""Every user mistake is one located ``SphcError``: ``file:line:col: error: ...``, the line, a caret, a hint.

The bad models live in ``tests/invalid_models.txt`` (Triton ``invalid.mlir`` style: sections split by
``// -----``, each with ``// expect: LINE:COL "message substring"`` and an optional ``// hint:``).
The rest of this file covers what a text file cannot hold (odd line breaks, tabs, huge numbers) and
the run-time check of a generated model's input.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import sphc
from sphc import SphcError
from sphc.compiler import lower

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).with_name("invalid_models.txt")

_EXPECT = re.compile(r'^// expect: (\d+):(\d+) "(.*)"$')
_HINT = re.compile(r'^// hint: "(.*)"$')


@dataclass(frozen=True)
class Case:
    number: int
    source: str
    line: int
    col: int
    message: str
    hint: str | None

    @property
    def file(self) -> str:
        return f"case{self.number:02d}.sph"

    @property
    def id(self) -> str:
        words = re.sub(r"[^A-Za-z0-9]+", "-", self.message).strip("-")[:40]
        return f"{self.number:02d}-{self.line}:{self.col}-{words}"


def _unquote(text: str) -> str:
    return json.loads(f'"{text}"')  # the substrings may escape quotes as \"


def load_cases(path: Path = DATA) -> list[Case]:
    """Split the data file into cases; a malformed section is an error in the data, not a skip."""
    sections = path.read_text(encoding="utf-8").split("\n// -----\n")[1:]  # [0] is the preamble
    cases = []
    for number, section in enumerate(sections, 1):
        lines = section.split("\n")
        expect = hint = None
        while lines and lines[0].startswith("//"):
            directive = lines.pop(0)
            if m := _EXPECT.match(directive):
                expect = (int(m[1]), int(m[2]), _unquote(m[3]))
            elif m := _HINT.match(directive):
                hint = _unquote(m[1])
        assert expect is not None, f"section {number} of {path.name} has no `// expect:` line"
        source = "\n".join(lines).rstrip("\n")
        assert source.strip(), f"section {number} of {path.name} has no model text"
        cases.append(Case(number, source, *expect, hint))
    return cases


CASES = load_cases()


def _raise(text: str, file: str = "m.sph") -> SphcError:
    with pytest.raises(SphcError) as info:
        sphc.check_source(text, file)
    return info.value


def assert_rendered(err: SphcError, text: str) -> None:
    """gcc-style header, the offending source line, a caret under the span's column."""
    span = err.span
    assert span is not None, f"diagnostic without a location: {err.message!r}"
    rendered = err.render()
    out = rendered.split("\n")
    assert out[0] == f"{span.file}:{span.line}:{span.col}: error: {err.message}"
    assert str(err) == rendered
    source_line = text.split("\n")[span.line - 1].rstrip("\r").replace("\t", " ")
    assert out[1] == "  " + source_line, f"rendered the wrong source line:\n{rendered}"
    caret = out[2]
    assert re.fullmatch(r" *\^~*", caret), f"no caret line:\n{rendered}"
    assert caret.index("^") == 2 + span.col - 1, f"caret not under column {span.col}:\n{rendered}"
    assert "Traceback" not in rendered


def test_data_file_is_big_enough():
    assert len(CASES) >= 30
    assert len({c.source for c in CASES}) == len(CASES), "duplicate cases in invalid_models.txt"
    assert any(c.line >= 3 for c in CASES), "no multi-line case"


def test_every_layer_kind_has_a_bad_case():
    text = "\n".join(c.source for c in CASES)
    for name in lower.LAYERS:
        assert re.search(rf"\b{name}\b", text), f"no invalid case mentions `{name}`"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_model(case: Case):
    err = _raise(case.source, case.file)
    assert type(err) is SphcError
    assert err.__cause__ is None  # no chained lark / Python exception leaks out
    assert err.span is not None
    assert err.span.file == case.file
    assert (err.span.line, err.span.col) == (case.line, case.col), err.render()
    assert case.message in err.message, err.render()
    assert_rendered(err, case.source)
    if case.hint is not None:
        assert err.hint is not None and case.hint in err.hint, err.render()
        assert f"\nhint: {err.hint}" in err.render()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_diagnostic_has_a_hint(case: Case):
    """The issue asks for a hint on every diagnostic, not only the ones that come easily."""
    err = _raise(case.source, case.file)
    assert err.hint, f"no hint for: {err.render()}"


@pytest.mark.parametrize("case", CASES[::9], ids=lambda c: c.id)
def test_compile_source_reports_the_same_error(case: Case):
    with pytest.raises(SphcError) as info:
        sphc.compile_source(case.source, case.file)
    assert (info.value.span.line, info.value.span.col) == (case.line, case.col)


def test_loader_reads_directives():
    first = CASES[0]
    assert first.source == "Input s2 L=8 -> S2Conv L=4 $"
    assert (first.line, first.col) == (1, 28)
    quoted = next(c for c in CASES if '"\'"' in c.message)
    assert quoted.message == 'unexpected character "\'"'


# --- what the data file cannot hold -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Input s2 L=8\t->\tS2Conv\tL=16",  # tabs count as one column and render as one space
        "Input s2 L=8\r\n  -> S2Conv L=16\r\n",  # Windows line ends
        "Input s2 L=8\n\n\n   -> S2Conv L=16\n",
    ],
    ids=["tabs", "crlf", "blank-lines"],
)
def test_whitespace_variants_locate_the_value(text: str):
    err = _raise(text)
    lines = text.split("\n")
    assert lines[err.span.line - 1][err.span.col - 1 :].startswith("16")
    assert_rendered(err, text)


@pytest.mark.parametrize(
    "text",
    [
        "Input s2 L=8\r-> S2Conv L=16",  # old-Mac line end: lark counts no new line
        "Input s2 L=8\f-> S2Conv L=16",  # form feed is whitespace to the grammar
        "# x\u2028y\nInput s2 L=8 -> S2Conv L=16",  # U+2028 inside a comment
        "Input s2 L=8 # \x85 comment\n -> S2Conv L=16",  # NEL inside a comment
        "Input s2 L=8 -> # c\u2028",  # end of file after a U+2028 in a comment
        "",  # empty file: line 1 is empty, the caret still shows
    ],
    ids=["cr", "formfeed", "u2028-comment", "nel-comment", "eof-after-u2028", "empty"],
)
def test_render_shows_the_line_the_span_counts(text: str):
    """Spans count lines by "\\n" only (lark); the rendered source line must be that same line.

    BUG (sphc/errors.py, sphc/compiler/syntax.py): both use ``str.splitlines()``, which also splits on
    \\r, \\f, \\x85, U+2028 ..., so the caret lands under the wrong line, or past its end.
    """
    err = _raise(text)
    lines = text.split("\n")
    assert 1 <= err.span.line <= len(lines)
    assert 1 <= err.span.col <= len(lines[err.span.line - 1]) + 1
    assert_rendered(err, text)


def test_unicode_in_comments_keeps_columns():
    text = "# Ünïcödé → ∑ 😀\nInput s2 L=8  # ∂\n  -> S2Conv L=16"
    err = _raise(text)
    assert (err.span.line, err.span.col) == (3, 15)
    assert_rendered(err, text)


@pytest.mark.parametrize(
    "text, col",
    [
        ("Input s2 L=8 -> S2Conv L=4 -> Norm eps=1e400", 40),  # inf would print as `eps=inf`
        ("Input s2 L=8 -> S2Conv L=4 -> Norm eps=-1e400", 40),
        ("Input s2 L=8 -> S2Conv L=4 -> Norm momentum=1e999", 45),
    ],
)
def test_non_finite_numbers_are_rejected(text: str, col: int):
    """BUG (sphc/compiler/lower.py): 1e400 is accepted as inf; the generated module then says ``eps=inf``
    and importing it raises NameError. Every float parameter must be finite."""
    err = _raise(text)
    assert (err.span.line, err.span.col) == (1, col)
    assert_rendered(err, text)


@pytest.mark.parametrize(
    "value", ["99999999999999999999999", str(2**63), "257", "1" * 5000, "0" * 30 + "300"]
)
def test_absurd_bandlimit_is_a_located_error(value: str):
    """Range-checked where it is read: more than 18 digits in the parser (Python's int() refuses
    more than 4,300 with a bare ValueError), anything above 256 in lowering."""
    text = f"Input s2 L={value} C=1"
    err = _raise(text)
    assert (err.span.line, err.span.col) == (1, 12)
    assert "L" in err.message
    assert "between 1 and 256" in err.message or "at most 18" in err.message
    assert_rendered(err, text)


def test_a_positional_huge_integer_is_a_located_error():
    err = _raise("Input s2 L=4 -> S2Conv -> Invariant -> Dense " + "7" * 400)
    assert err.message == "this integer has 400 digits; integer literals have at most 18"
    assert (err.span.line, err.span.col) == (1, 46)


_GUARDED = textwrap.dedent(
    """
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    import sphc
    t = time.time()
    try:
        sphc.check_source(sys.argv[1], "big.sph")
        print("OK", round(time.time() - t, 1))
    except sphc.SphcError as e:
        print("SPHCERROR", e.span.line if e.span else None, e.span.col if e.span else None)
    """
)


@pytest.mark.parametrize(
    "text",
    [
        "Input s2 L=100000 -> S2Conv",  # so3_cols(L, N=L) is L x (2L-1) entries
        "Input s2 L=32 -> S2Conv -> TensorProduct mst -> TensorProduct mst",  # > 20 GB of column pairs
        "Input s2 L=64 -> S2Conv -> TensorProduct full",
    ],
    ids=["L=100000", "two-tensor-products", "full-L64"],
)
def test_oversized_models_fail_fast_with_a_located_error(text: str):
    """`sphc check` on a three-line model must not eat all memory; a size limit is a user error
    (run here under a 3 GB address-space limit and a 60 s timeout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _GUARDED, text],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"check_source({text!r}) ran for more than 60 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(("SPHCERROR 1", "OK")), proc.stdout


def test_headerless_first_layer_with_bad_L_points_at_the_value():
    """`S2Conv L=2.5` as the first layer: the problem is the value 2.5, not a missing bandlimit.

    Unhelpful today (sphc/compiler/lower.py ``_input``): "cannot tell the input bandlimit" at 1:1.
    """
    err = _raise("S2Conv L=2.5 -> Norm")
    assert (err.span.line, err.span.col) == (1, 10)
    assert "integer" in err.message


def test_load_of_a_file_that_is_not_utf8(tmp_path: Path):
    """BUG (sphc/compiler/pipeline.py ``_read``): ``read_text()`` with the locale's encoding, unguarded; a
    latin-1 file raises UnicodeDecodeError instead of an SphcError naming the file."""
    path = tmp_path / "latin.sph"
    path.write_bytes("Input s2 L=4  # café\n  -> S2Conv\n".encode("latin-1"))
    with pytest.raises(SphcError) as info:
        sphc.load(path)
    assert str(path) in info.value.message


def test_load_of_a_missing_file(tmp_path: Path):
    with pytest.raises(SphcError) as info:
        sphc.load(tmp_path / "missing.sph")
    assert "missing.sph" in info.value.message


# --- the run-time input check of a generated model -------------------------------------------

_RUNTIME_MODEL = """# a small all-harmonic model; the Input header is on line 2
  Input s2 L=6 C=2
  -> S2Conv C=2 L=4 N=2
  -> EfficientLayer mst L=3 K=2
  -> Invariant
  -> Dense 3
"""


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    module = sphc.load(_RUNTIME_MODEL)
    return module.Model()


def test_small_model_runs(small_model):
    assert small_model.input_shape == (2, 6, 11)
    y = small_model(torch.randn(4, 2, 6, 11))
    assert y.shape == (4, 3)


@pytest.mark.parametrize(
    "shape",
    [(2, 6, 11), (4, 1, 6, 11), (4, 2, 5, 11), (4, 2, 6, 10), (4, 2, 6, 11, 1), (0,)],
    ids=str,
)
def test_wrong_input_shape_names_the_expected_shape(small_model, shape):
    with pytest.raises(SphcError) as info:
        small_model(torch.randn(*shape))
    err = info.value
    assert "2, 6, 11" in err.message  # the expected (C, L, 2L-1)
    assert str(tuple(shape)) in err.message  # and what it got
    assert err.span is not None and (err.span.line, err.span.col) == (2, 3)  # the Input layer
    assert err.render().startswith("<string>:2:3: error: ")
    assert err.hint


@pytest.mark.parametrize(
    "dtype", [torch.complex64, torch.int64, torch.int32, torch.bool, torch.float64], ids=str
)
def test_wrong_input_dtype_is_a_located_error_naming_the_shape(small_model, dtype):
    """The issue: a complex or integer tensor raises SphcError naming the expected shape.

    BUG (sphc/runtime/layers.py ``InputSHT.forward``): the dtype message does not say what the model takes.
    """
    x = torch.zeros(4, 2, 6, 11, dtype=dtype)
    with pytest.raises(SphcError) as info:
        small_model(x)
    err = info.value
    assert err.span is not None and (err.span.line, err.span.col) == (2, 3)
    assert str(dtype) in err.message
    assert "2, 6, 11" in err.message, err.render()


def test_leading_zeros_do_not_count_as_digits():
    """Python's int() counts them towards its 4,300-digit limit; sphc strips them first."""
    model = sphc.check_source("Input s2 L=" + "0" * 5000 + "8 -> S2Conv C=" + "0" * 40 + "2").model
    assert model.input.L == 8 and model.layers[0].C == 2
