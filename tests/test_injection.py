"""The generated module is executed on import: nothing from the ``.sph`` text or the file name may
reach it as code. Only validated numbers and enum words become Python; the file name only ever
appears inside string literals (``SOURCE_FILE`` and the input's location tuple).

Every place the language accepts text is tried with payloads. Each attempt must end in an
``SphcError``, or in generated source that passes an ``ast`` allow-list, that carries the payload in
no token other than a string literal equal to the file name, and that imports and runs without
firing a sentinel.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import itertools
import json
import linecache
import re
import sys
import tokenize
from pathlib import Path

import pytest
import torch

import sphc
from sphc import SphcError, runtime
from sphc.apps import cli

BASE = "Input s2 L=4 C=1 -> S2Conv C=2 L=3 N=2 -> EfficientLayer mst L=2 K=2 -> Norm -> Invariant -> Dense 2"

# Payloads that would be visible if they ever ran: a call of a function we plant in the module's
# namespace, and a shell command that creates a marker file.
CALL = "_sphc_pwned()"


def shell(marker: Path) -> str:
    return f'__import__("os").system("touch {marker}")'


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPHC_CACHE_DIR", str(tmp_path_factory.mktemp("sphc-cache")))
        yield


# --- the allow-list ---------------------------------------------------------------------------

RUNTIME_NAMES = set(runtime.__all__)  # the interface sphc.runtime declares for generated modules
ALLOWED_NODES = {
    "Module",
    "Expr",
    "Constant",
    "Import",
    "ImportFrom",
    "alias",
    "Assign",
    "Name",
    "Load",
    "Store",
    "Call",
    "keyword",
    "Tuple",
    "ClassDef",
    "FunctionDef",
    "arguments",
    "arg",
    "Attribute",
    "Return",
    "UnaryOp",
    "USub",
    "BinOp",
    "BitOr",
    "Add",
}
ALLOWED_NAMES = {
    "torch",
    "rt",
    "Model",
    "super",
    "self",
    "x",
    "backend",
    "io_dtype",
    "str",
    "None",
    "__name__",
    "input_shape",
    "SPHC_VERSION",
    "SOURCE_SHA256",
    "SOURCE_FILE",
    "INPUT_SHAPE",
    "PARAMETERS",
    "TUNED_FOR",
}
ALLOWED_ACT = {"none", "relu", "gelu", "tanh", "sigmoid", "softplus"}
_CONSTANT = re.compile(r"(CG|PATHS|COLS)_\d+")  # the layer constants plan.py defines
_ATTR = re.compile(r"l\d+_[a-z0-9]+")
#: the @triton.jit functions the kernel templates define (shared families and unrolled ones)
_KERNEL_FUNCTION = re.compile(r"degree_gemm|degree_wgrad|(l\d+_[a-z0-9]+_)?tp_(fwd|bwd)")


TEMPLATES_TEXT = "".join(
    p.read_text() for p in (Path(sphc.__file__).parent.parent / "templates").rglob("*.j2")
)
KERNEL_IMPORTS = [
    "import torch",
    "import triton",
    "import triton.language as tl",
    "from sphc import runtime as rt",
]
_KERNEL_NAME = re.compile(r"\.?l\d+_[a-z0-9_]+")


def assert_kernels_safe(section: str) -> None:
    """Kernel code is template text plus numbers: every string in it is template text or a kernel name."""
    for node in ast.walk(ast.parse(section) if isinstance(section, str) else section):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            lines = [ln.strip() for ln in node.value.splitlines() if ln.strip()]  # docstrings: line by line
            ok = _KERNEL_NAME.fullmatch(node.value) or all(ln in TEMPLATES_TEXT for ln in lines)
            assert ok, node.value[:80]


def assert_safe(source: str, file: str, payloads: tuple[str, ...] = ()) -> None:
    """Fail if the generated ``source`` could do anything but build the model from literals."""
    tree = ast.parse(source)
    kernels = [n for n in tree.body if isinstance(n, ast.FunctionDef)]  # the @triton.jit functions
    for n in kernels:  # checked on their own (template text and numbers), then left out
        assert n.decorator_list and ast.unparse(n.decorator_list[0]) == "triton.jit", n.name
        assert_kernels_safe(n)
    tree.body = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports in (["import torch", "from sphc import runtime as rt"], KERNEL_IMPORTS)
    for node in ast.walk(tree):
        kind = type(node).__name__
        assert kind in ALLOWED_NODES, f"unexpected {kind} node: {ast.unparse(node)[:200]}"
        if isinstance(node, ast.Name):
            ok = (
                node.id in ALLOWED_NAMES
                or _CONSTANT.fullmatch(node.id)
                or _KERNEL_FUNCTION.fullmatch(node.id)
            )
            assert ok, f"unexpected name {node.id!r}"
        elif isinstance(node, ast.UnaryOp):
            assert isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
        elif isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "rt":
                assert node.attr in RUNTIME_NAMES, f"rt.{node.attr}"
            elif isinstance(base, ast.Name) and base.id == "self":
                assert node.attr in ("input", "backend") or _ATTR.fullmatch(node.attr), f"self.{node.attr}"
            elif (
                isinstance(base, ast.Attribute)
                and isinstance(base.value, ast.Name)
                and base.value.id == "self"
            ):
                assert _ATTR.fullmatch(base.attr) and node.attr == "after", ast.unparse(node)
            elif isinstance(base, ast.Name) and base.id == "torch":
                assert node.attr in ("nn", "Tensor"), f"torch.{node.attr}"
            else:
                assert ast.unparse(node) in ("torch.nn.Module", "super().__init__"), ast.unparse(node)
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            assert func in (
                "super",
                "super().__init__",
                "rt.set_backend",
                "rt.register_kernels",
            ) or re.fullmatch(
                r"rt\.[A-Z]\w*|rt\.(s2|so3|prefix)_cols|self\.(input|l\d+_[a-z0-9]+)|self\.l\d+_genconv\.after",
                func,
            ), f"unexpected call {func}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            s = node.value
            ok = (
                s == file
                or s in ALLOWED_ACT
                or s == sphc.__version__
                or _KERNEL_NAME.fullmatch(s)
                or re.fullmatch(r"[0-9a-f]{64}|[A-Za-z0-9+/=]+", s)
                or s in ("ROWS_BUCKET", "SPLIT", "BC", "gx_ptr", "gw_ptr")  # autotune keys, reset buffers
                or re.fullmatch(r"BLOCK(_[JKMNR])?", s)  # meta-parameter names of baked configs
                or s.startswith("A rotation-equivariant spherical CNN generated by sphc:")
            )
            assert ok, f"unexpected string literal {s[:80]!r}"
    # SOURCE_FILE is exactly the file name, as a literal
    assigns = {
        n.targets[0].id: n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
    }
    assert ast.literal_eval(assigns["SOURCE_FILE"]) == file
    # no payload in any token but a string literal (comments included)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING:
            continue
        for p in payloads:
            assert p not in tok.string, f"payload {p!r} in a {tokenize.tok_name[tok.type]} token"
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            for p in payloads:
                assert p not in n.value or n.value == file, f"payload {p!r} in a literal"


_PROBES = itertools.count()


def run_generated(source: str, file: str, marker: Path | None = None) -> dict:
    """Execute the generated module with a sentinel planted, build the model and call it once."""
    fired = []
    namespace = {"__name__": "sphc_injection_probe", "_sphc_pwned": lambda: fired.append(1)}
    filename = f"<generated-{next(_PROBES)}>"  # in linecache: @triton.jit reads kernel source there
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    model = namespace["Model"]()
    model(torch.randn(1, *model.input_shape))
    assert not fired, "a payload ran while importing the generated module"
    if marker is not None:
        assert not marker.exists(), "a shell payload ran while importing the generated module"
    assert namespace["SOURCE_FILE"] == file
    return namespace


def attempt(text: str, file: str = "m.sph", payloads: tuple[str, ...] = (), marker: Path | None = None):
    """Compile; an SphcError is a fine answer (it must be located), anything generated must be safe."""
    try:
        source = sphc.compile_source(text, file)
    except SphcError as e:
        assert e.span is not None, e.render()
        return None
    assert_safe(source, file, payloads)
    run_generated(source, file, marker)
    return source


# --- the file name ------------------------------------------------------------------------------


FILE_NAMES = [
    "model.sph",
    "x.sph\n{P}\n#",
    'x.sph"\n{P}\n"',
    "x.sph'\n{P}\n'",
    'x.sph"""\n{P}\n"""',
    "x.sph'''\n{P}\n'''",
    "x.sph\\\n{P}",
    "x.sph\\",
    "x.sph\\'; {P}; '",
    'x.sph\\"; {P}; "',
    "x.sph\r{P}",
    "x.sph\u2028{P}",
    "x.sph\x00{P}",
    "x.sph\x0c{P}",
    "{{ {P} }}{% raw %}{% endraw %}{# x",  # jinja2 syntax must not be re-rendered
    "# -*- coding: latin-1 -*-\n{P}",
    "\udcff\udcfe{P}.sph",  # undecodable bytes from os.fsdecode
    "C:\\Users\\new\\table\\{P}.sph",
    "ユニコード/мадел/{P}.sph",
    "x" * 2000 + "{P}",
]


@pytest.mark.parametrize("template", FILE_NAMES, ids=lambda t: repr(t[:24]))
def test_file_name_is_only_a_string_literal(template: str, tmp_path: Path):
    marker = tmp_path / "pwned"
    for payload in (CALL, shell(marker)):
        file = template.replace("{P}", payload)
        source = attempt(BASE, file, (payload,), marker)
        assert source is not None, "a valid model must compile whatever its file name"


def test_file_name_of_an_error_is_rendered_not_run():
    file = 'x.sph\n__import__("os").system("true")'
    with pytest.raises(SphcError) as info:
        sphc.compile_source("Input s2 L=4 -> Bogus", file)
    assert info.value.span.file == file
    assert info.value.render().startswith(file + ":1:17: error: unknown layer `Bogus`")


def test_file_name_through_the_cli(tmp_path: Path, capsys):
    """A real file whose name holds quotes and a newline, compiled by `sphc compile -o`."""
    name = 'we"ird\'\n__import__("os").system("touch PWNED")\n.sph'
    path = tmp_path / name
    path.write_text(BASE + "\n")
    out = tmp_path / "generated_model.py"
    assert cli.main(["compile", str(path), "-o", str(out)]) == 0
    source = out.read_text()
    assert_safe(source, str(path), ('__import__("os")',))
    spec = importlib.util.spec_from_file_location("sphc_cli_injection_probe", out)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("sphc_cli_injection_probe", None)
    assert f"{path}" == module.SOURCE_FILE
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


# --- the model text -----------------------------------------------------------------------------

TEXT_ATTEMPTS = [
    # layer names
    "Input s2 L=4 -> {P}",
    "Input s2 L=4 -> __import__ os",
    "Input s2 L=4 -> exec",
    "__import__ L=4 -> S2Conv",
    "Input s2 L=4 -> S2Conv -> __class__",
    # parameter keys
    "Input s2 L=4 -> S2Conv __import__=1",
    "Input s2 L=4 __builtins__=1",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eval=1",
    # word values
    "Input s2 L=4 -> S2Conv -> TensorProduct mix=__import__",
    "Input s2 L=4 -> S2Conv -> TensorProduct __import__",
    "Input s2 L=4 -> S2Conv -> TensorProduct cross=__import__",
    "Input s2 L=4 -> S2Conv -> Invariant -> Dense 2 act=exec",
    "Input s2 L=4 -> S2Conv -> Invariant -> Dense 2 act=_sphc_pwned",
    "Input s2 L=4 -> S2Conv -> Invariant -> Dense 2 dropout=_sphc_pwned",
    "Input domain=os L=4",
    "Input s2 L=four",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=_sphc_pwned",
    # numbers
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=1e-3 momentum=9.9e-1",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=+1E+2",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=1e-400",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=-0.0",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=1e400",  # inf: must not print as the name `inf`
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=1_000",
    "Input s2 L=4 -> S2Conv L=3 -> Norm eps=0x10",
    "Input s2 L=4e0",
    "Input s2 L=\u0664 -> S2Conv L=\u0663",  # Arabic-Indic digits: Python's \\d accepts them
    "Input s2 L=4 -> S2Conv -> Invariant -> Dense .5e1",
    # comments
    '# """\nInput s2 L=4 -> S2Conv  # """ {P} """\n-> Invariant -> Dense 2',
    "# '''\n# {P}\nInput s2 L=4 -> S2Conv -> Invariant -> Dense 2  # \\",
    "Input s2 L=4 # \r{P}\n -> S2Conv -> Invariant -> Dense 2",  # \r: a new line to Python only
    "Input s2 L=4 # \u2028{P}\n -> S2Conv -> Invariant -> Dense 2",
    "Input s2 L=4 # \x0c{P}\n -> S2Conv -> Invariant -> Dense 2",
    "Input s2 L=4 # {{ {P} }} {% import os %}\n -> S2Conv -> Invariant -> Dense 2",
    "# -*- coding: latin-1 -*-\nInput s2 L=4 -> S2Conv -> Invariant -> Dense 2",
    "Input s2 L=4 -> S2Conv\n{P}\n-> Invariant",
    'Input s2 L=4 -> S2Conv """ {P} """ -> Invariant',
    # unicode
    "Input s2 L=4 -> S2Conv\u2028{P}",
    "Ιnput s2 L=4",  # Greek capital iota
    "Input s2 L=4 -> ＳＯ３Conv",  # fullwidth letters
    "Input s2 L=4 -> S2Conv\u200b -> Invariant -> Dense 2",  # zero-width space
    "Input s2 L=4 -> S2Conv\u00a0-> Invariant -> Dense 2",  # no-break space
    "Input s2 L=4 → S2Conv",
    "Input s2 L=4 -> S2Conv -> Invariant -> Dense 2 act=rel\u0075",  # a plain `relu`, spelled out
]


@pytest.mark.parametrize("template", TEXT_ATTEMPTS, ids=lambda t: repr(t[:32]))
def test_model_text_never_becomes_code(template: str, tmp_path: Path):
    marker = tmp_path / "pwned"
    for payload in (CALL, shell(marker)):
        text = template.replace("{P}", payload)
        payloads = (payload,) if "{P}" in template else ()
        if "_sphc_pwned" in template:
            payloads = ("_sphc_pwned",)
        attempt(text, "m.sph", payloads, marker)
        if "{P}" not in template:
            break


def test_valid_attempts_do_compile():
    """The allow-list is not vacuous: comments with payloads compile and yield safe source."""
    valid = [t for t in TEXT_ATTEMPTS if "1e400" not in t]  # that one has its own (failing) case
    compiled = [t for t in valid if attempt(t.replace("{P}", CALL), "m.sph", (CALL,)) is not None]
    assert len(compiled) >= 10, compiled  # the eps=+1E+2 and eps=1_000 attempts are refused (eps < 1)
    assert any("\r" in t for t in compiled) and any("{P}" in t for t in compiled)


def test_generated_source_has_no_trace_of_comments():
    text = "# secret comment\nInput s2 L=4  # another secret\n -> S2Conv -> Invariant -> Dense 2 # third\n"
    source = sphc.compile_source(text, "m.sph")
    assert "secret" not in source and "third" not in source
    assert_safe(source, "m.sph", ("secret",))


def test_allow_list_catches_injected_code():
    """Self-test: a generated module with one extra line fails the check."""
    source = sphc.compile_source(BASE, "m.sph")
    for extra in ("import os", "_sphc_pwned()", "open('x')", "SOURCE_FILE = eval('1')", "# _sphc_pwned()"):
        with pytest.raises(AssertionError):
            assert_safe(source + extra + "\n", "m.sph", ("_sphc_pwned",) if "pwned" in extra else ())
    with pytest.raises(AssertionError):
        assert_safe(source.replace("SOURCE_FILE = 'm.sph'", "SOURCE_FILE = 'n.sph'"), "m.sph")


# --- tuning files (sphc compile --tuning) ----------------------------------------------------------

TUNED = "Input s2 L=3 C=1 -> S2Conv C=2 L=3 N=2 -> TensorProduct mst -> GenConv K=1 tau=1 tau_u=2 -> Invariant -> Dense 2"


def _tuning(kernels: dict | None = None, **top) -> dict:
    from sphc.apps.tune import spaces_of

    spaces = spaces_of(TUNED)
    data = {
        "sphc_version": sphc.__version__,
        "source_sha256": hashlib.sha256(TUNED.encode()).hexdigest(),
        "device": {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]},
        "dtype": "float32",
        "batch": 8,
        "kernels": {n: {"key": {}, "best": s[-1].to_json(), "times_ms": {}} for n, s in spaces.items()},
    }
    data.update(top)
    if kernels is not None:
        data["kernels"] = kernels
    return data


def _compile_with(data: object, tmp_path: Path) -> str:
    from sphc.compiler.tuning import read_tuning

    path = tmp_path / "t.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return sphc.compile_source(TUNED, "m.sph", tuning=read_tuning(path))


_FWD = "l1_s2conv_fwd"
_GOOD = {"meta": {"BLOCK_K": 16, "BLOCK_M": 64, "BLOCK_N": 16}, "num_warps": 4, "num_stages": 2}
MALICIOUS_TUNING = {
    "string meta value": {_FWD: {"best": {**_GOOD, "meta": {**_GOOD["meta"], "BLOCK_M": CALL}}}},
    "expression meta value": {
        _FWD: {"best": {**_GOOD, "meta": {**_GOOD["meta"], "BLOCK_M": "64) or (_sphc_pwned()"}}}
    },
    "code as meta name": {_FWD: {"best": {**_GOOD, "meta": {**_GOOD["meta"], '"); _sphc_pwned(); ("': 1}}}},
    "extra meta name": {_FWD: {"best": {**_GOOD, "meta": {**_GOOD["meta"], "BLOCK_X": 16}}}},
    "huge meta value": {_FWD: {"best": {**_GOOD, "meta": {**_GOOD["meta"], "BLOCK_M": 10**30}}}},
    "huge warps": {_FWD: {"best": {**_GOOD, "num_warps": 2**70}}},
    "float warps": {_FWD: {"best": {**_GOOD, "num_warps": 4.0}}},
    "bool stages": {_FWD: {"best": {**_GOOD, "num_stages": True}}},
    "string warps": {_FWD: {"best": {**_GOOD, "num_warps": "4, _sphc_pwned()"}}},
    "unknown kernel": {"l9_bogus_fwd": {"best": _GOOD}},
    "code as kernel name": {f"{_FWD}\n{CALL}": {"best": _GOOD}},
    "extra field in best": {_FWD: {"best": {**_GOOD, "pre_hook": CALL}}},
    "valid ints outside the space": {_FWD: {"best": {**_GOOD, "meta": {**_GOOD["meta"], "BLOCK_M": 48}}}},
}
MALICIOUS_TOP = {
    "device name with code": {"device": {"name": f'x", {CALL}, "', "capability": [9, 0]}},
    "device name with newline": {"device": {"name": f"x\n{CALL}", "capability": [9, 0]}},
    "dtype with code": {"dtype": CALL},
    "batch as string": {"batch": "8"},
    "capability with code": {"device": {"name": "GPU", "capability": [CALL, 0]}},
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TUNING) + sorted(MALICIOUS_TOP))
def test_malicious_tuning_file_is_rejected(case: str, tmp_path: Path):
    if case in MALICIOUS_TUNING:
        data = _tuning({**_tuning()["kernels"], **MALICIOUS_TUNING[case]})
    else:
        data = _tuning(**MALICIOUS_TOP[case])
    with pytest.raises(SphcError) as info:
        _compile_with(data, tmp_path)
    assert "t.json" in info.value.render()


def test_valid_tuning_file_only_adds_literals(tmp_path: Path):
    source = _compile_with(_tuning(), tmp_path)
    tree = ast.parse(source)
    tuned = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "TUNED_FOR")
    assert ast.literal_eval(tuned.value) == {
        "device": "NVIDIA H100 80GB HBM3",
        "capability": (9, 0),
        "dtype": "float32",
        "batch": 8,
    }
    # the rest passes the allow-list once TUNED_FOR's dict literal is set aside
    assert_safe(source.replace(ast.get_source_segment(source, tuned), "TUNED_FOR = None"), "m.sph")
    assert source.count("baked=rt.Config(meta=(") == len(_tuning()["kernels"])
    run_generated(source, "m.sph")
