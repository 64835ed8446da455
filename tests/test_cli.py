"""The ``sphc`` command line: exit codes, where output goes, and no traceback for user mistakes.

Exit codes (sphc/apps/cli.py): 0 ok, 1 a user mistake (located diagnostic on stderr), 2 usage
(argparse), 3 an internal error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sphc
from sphc.apps import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
EFFICIENT = EXAMPLES / "efficient.sph"  # all-harmonic: compiles and runs
MNIST = EXAMPLES / "mnist.sph"  # has pointwise ReLUs: checks, but does not compile yet


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sphc-cache"))
    monkeypatch.delenv("SPHC_DEBUG", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    return code, out, err


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


# --- check -------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.sph")), ids=lambda p: p.name)
def test_check_examples_ok(capsys, example: Path):
    code, out, err = run(capsys, "check", example)
    assert code == 0, err
    analysis = sphc.check_source(example.read_text(encoding="utf-8"))
    assert out.strip() == f"{example}: ok ({len(analysis.layers)} layers, {analysis.params:,} parameters)"
    assert err == ""


def test_check_bad_file_prints_the_diagnostic_without_traceback(capsys, tmp_path: Path):
    bad = tmp_path / "bad.sph"
    bad.write_text("Input s2 L=8\n  -> S2Conv L=4\n  -> TensorProduct foo\n")
    code, out, err = run(capsys, "check", bad)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"{bad}:3:20: error: mix must be one of full, mst, rmst, got 'foo'"
    assert lines[1] == "    -> TensorProduct foo"
    assert lines[2] == " " * 21 + "^~~"
    assert lines[3].startswith("hint: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text, where",
    [
        ("Input s2 L=8 -> S2Conv L=16\n", ":1:26: error: bandlimit grows"),
        ("Input s2 L=8 ->\n", ":1:16: error: unexpected end of file"),
        ("Input s2 L=8 -> Bogus\n", ":1:17: error: unknown layer `Bogus`"),
        ("Input s2 L=8 $\n", ":1:14: error: unexpected character '$'"),
    ],
)
@pytest.mark.parametrize("command", ["check", "explain", "compile"])
def test_every_command_reports_user_errors_with_exit_1(capsys, tmp_path, text, where, command):
    bad = tmp_path / "bad.sph"
    bad.write_text(text)
    argv = [command, bad] + (["-o", tmp_path / "out.py"] if command == "compile" else [])
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith(f"{bad}{where}")
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "out.py").exists()


def test_missing_file(capsys, tmp_path: Path):
    missing = tmp_path / "nope.sph"
    code, out, err = run(capsys, "check", missing)
    assert code == 1
    assert err.strip() == f"error: cannot read {missing}: No such file or directory"
    assert "Traceback" not in err


def test_directory_instead_of_file(capsys, tmp_path: Path):
    code, out, err = run(capsys, "check", tmp_path)
    assert code == 1
    assert f"cannot read {tmp_path}" in err and "Traceback" not in err


def test_file_that_is_not_utf8_is_a_user_error(capsys, tmp_path: Path):
    """BUG (sphc/apps/cli.py ``_run``): only OSError is caught around ``read_text()``; a latin-1 file
    raises UnicodeDecodeError and the CLI calls it an internal error (exit 3)."""
    latin = tmp_path / "latin.sph"
    latin.write_bytes("Input s2 L=4  # café\n  -> S2Conv\n".encode("latin-1"))
    code, out, err = run(capsys, "check", latin)
    assert code == 1, err
    assert str(latin) in err and "UTF-8" in err.upper()
    assert "internal error" not in err


def test_unwritable_output_is_a_user_error(capsys, tmp_path: Path):
    """BUG (sphc/apps/cli.py ``_run``): ``Path(target).write_text`` is not guarded; a missing output
    directory raises FileNotFoundError and the CLI calls it an internal error (exit 3)."""
    target = tmp_path / "no" / "such" / "dir" / "model.py"
    code, out, err = run(capsys, "compile", EFFICIENT, "-o", target)
    assert code == 1, err
    assert str(target) in err
    assert "internal error" not in err


# --- compile -----------------------------------------------------------------------------------


def test_compile_writes_a_module_that_imports_and_runs(capsys, tmp_path: Path):
    target = tmp_path / "efficient_model.py"
    code, out, err = run(capsys, "compile", EFFICIENT, "-o", target)
    assert code == 0, err
    assert out == ""
    assert err.strip() == f"wrote {target}"
    module = import_file(target, "sphc_cli_compiled_efficient")
    assert f"{EFFICIENT}" == module.SOURCE_FILE
    assert module.INPUT_SHAPE == (1, 32, 63)
    torch.manual_seed(0)
    model = module.Model()
    assert sum(p.numel() for p in model.parameters()) == module.PARAMETERS
    y = model(torch.randn(2, *module.Model.input_shape))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_compile_default_output_is_next_to_the_model(capsys, tmp_path: Path):
    model = tmp_path / "tiny.sph"
    model.write_text("Input s2 L=4 -> S2Conv L=3 N=2 -> EfficientLayer mst L=2 K=2 -> Invariant -> Dense 3\n")
    code, out, err = run(capsys, "compile", model)
    assert code == 0, err
    module = import_file(tmp_path / "tiny.py", "sphc_cli_compiled_tiny")
    assert module.Model()(torch.randn(2, *module.INPUT_SHAPE)).shape == (2, 3)


def test_compile_to_stdout(capsys):
    code, out, err = run(capsys, "compile", EFFICIENT, "-o", "-")
    assert code == 0, err
    assert out == sphc.compile_source(EFFICIENT.read_text(encoding="utf-8"), str(EFFICIENT))
    assert out.startswith("# Generated by sphc")
    compile(out, "<stdout>", "exec")


def test_compile_of_a_hybrid_model_runs(capsys, tmp_path: Path):
    code, out, err = run(capsys, "compile", MNIST, "-o", tmp_path / "m.py")
    assert code == 0, err
    spec = importlib.util.spec_from_file_location("mnist_model", tmp_path / "m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Model()
    assert model(torch.randn(2, *model.input_shape)).shape == (2, 10)


@pytest.mark.parametrize(
    "stage, check",
    [
        ("ast", lambda out: out.startswith("ModelAST(layers=(LayerNode(name='Input'")),
        ("ir", lambda out: out.startswith("Input domain=s2 L=32 C=1\n  -> S2Conv C=4 L=16 N=2\n")),
        ("analysis", lambda out: "params" in out and f"total parameters: {_efficient_params():,}" in out),
        ("plan", lambda out: out.startswith("ModulePlan(") and "file_literal=" in out),
        ("python", lambda out: out.startswith("# Generated by sphc")),
    ],
)
def test_emit_stages(capsys, stage, check):
    argv = ["compile", EFFICIENT, "--emit", stage] + (["-o", "-"] if stage == "python" else [])
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert check(out), out[:500]
    assert out == sphc.compile_source(EFFICIENT.read_text(encoding="utf-8"), str(EFFICIENT), emit=stage)


def test_emit_ir_reparses_to_the_same_model(capsys):
    code, out, _ = run(capsys, "compile", EFFICIENT, "--emit", "ir")
    assert code == 0
    original = sphc.check_source(EFFICIENT.read_text(encoding="utf-8")).model
    assert sphc.check_source(out).model == original


def test_emit_to_a_file(capsys, tmp_path: Path):
    target = tmp_path / "out.ir"
    code, out, err = run(capsys, "compile", EFFICIENT, "--emit", "ir", "-o", target)
    assert code == 0 and out == ""
    assert target.read_text().startswith("Input domain=s2")


# --- explain -----------------------------------------------------------------------------------


def test_explain_mnist_prints_the_table(capsys):
    code, out, err = run(capsys, "explain", MNIST)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if "params" in line.split())
    for column in ("layer", "params", "MACs", "paths"):
        assert column in header
    total = sphc.check_source(MNIST.read_text(encoding="utf-8")).params
    assert f"total parameters: {total:,}" in out
    assert 50_000 <= total <= 65_000  # the paper's budget for Spherical MNIST is ~58k
    for name in ("S2Conv", "SO3Conv", "Pointwise", "TensorProduct", "GenConv", "Norm", "Invariant", "Dense"):
        assert name in out


def test_explain_several_models_side_by_side(capsys):
    """The mixing examples' own comment suggests `sphc explain examples/mixing_*.sph`."""
    files = sorted(EXAMPLES.glob("mixing_*.sph"))
    code, out, err = run(capsys, "explain", *files)
    assert code == 0, err
    for f in files:  # each model's full table, headed by its file
        assert f"== {f} ==" in out
        assert f"total parameters: {sphc.check_source(f.read_text(encoding='utf-8')).params:,}" in out
    summary = out.split("\n\n")[-1].splitlines()
    assert summary[0].split() == [str(f) for f in files]
    rows = {line.split("  ")[0]: line.split()[-len(files) :] for line in summary[1:]}
    params = [sphc.check_source(f.read_text(encoding="utf-8")).params for f in files]
    assert rows["parameters"] == [f"{p:,}" for p in params]
    cg = [int(v.replace(",", "")) for v in rows["CG entries"]]
    assert cg[0] > cg[1] > cg[2]  # full > mst > rmst, the comparison the examples are for


def test_explain_stops_at_the_first_bad_model(capsys, tmp_path):
    bad = tmp_path / "bad.sph"
    bad.write_text("Input s2 L=8 -> Bogus\n")
    code, out, err = run(capsys, "explain", EFFICIENT, bad)
    assert code == 1 and err.startswith(f"{bad}:1:17: error: unknown layer")


def test_every_file_an_example_in_the_help_names_exists(capsys):
    for command in ("compile", "check", "explain", "tune", "train", "plot"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        for name in re.findall(r"examples/[\w*]+\.sph", text):
            assert list(REPO_ROOT.glob(name)), f"`sphc {command} --help` names {name}, which does not exist"


def test_train_help_documents_every_flag_and_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    train_parser = next(
        a for a in cli._parser()._subparsers._group_actions[0].choices.items() if a[0] == "train"
    )[1]
    for action in train_parser._actions:
        assert action.help, f"--{action.dest} has no help"
        switch = isinstance(action, argparse._StoreFalseAction)  # --no-X: the default is its absence
        if action.default not in (None, False) and action.dest != "help" and not switch:
            assert "(default: %(default)s)" in action.help, f"--{action.dest} hides its default"
    for key in ("x_train", "y_train", "x_test", "y_test"):  # what --data-path's .npz must hold
        assert key in text


@pytest.mark.parametrize("how", ["flag", "env"])
def test_limit_scale_raises_the_size_limits(capsys, tmp_path, monkeypatch, how):
    big = tmp_path / "big.sph"
    big.write_text("Input s2 L=8 -> S2Conv C=1200 N=8 -> SO3Conv C=1200 -> Invariant -> Dense 2\n")
    code, out, err = run(capsys, "check", big)
    assert code == 1 and "parameters; the limit is 100,000,000" in err and "--limit-scale" in err
    if how == "flag":
        code, out, err = run(capsys, "check", big, "--limit-scale", "100")
    else:
        monkeypatch.setenv("SPHC_LIMIT_SCALE", "100")
        code, out, err = run(capsys, "check", big)
    assert code == 0, err
    assert out.startswith(f"{big}: ok (")
    assert os.environ.get("SPHC_LIMIT_SCALE") == ("100" if how == "env" else None)  # the flag is undone


@pytest.mark.parametrize("value", ["0.5", "nan", "-3"])
def test_a_bad_limit_scale_is_a_user_error(capsys, value, monkeypatch):
    code, out, err = run(capsys, "check", EFFICIENT, f"--limit-scale={value}")
    assert code == 1 and "--limit-scale must be a number >= 1" in err
    monkeypatch.setenv("SPHC_LIMIT_SCALE", value)
    code, out, err = run(capsys, "check", EFFICIENT)
    assert code == 1 and "SPHC_LIMIT_SCALE must be a number >= 1" in err


# --- usage and internal errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["check"],
        ["compile"],
        ["compile", "x.sph", "--emit", "bytecode"],
        ["check", "x.sph", "--bogus"],
        ["check", "a.sph", "b.sph"],
        ["explain"],
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    _, err = capsys.readouterr()
    assert "usage: sphc" in err


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sphc {sphc.__version__}"
    with pytest.raises(SystemExit) as info:
        cli.main(["compile", "--help"])
    assert info.value.code == 0
    assert "--emit" in capsys.readouterr().out


def test_internal_error_exit_3(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("invariant broken")

    monkeypatch.setattr(cli, "check_source", broken)
    code, out, err = run(capsys, "check", EFFICIENT)
    assert code == 3
    assert "internal error" in err and "SPHC_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("SPHC_DEBUG", "1")
    code, out, err = run(capsys, "check", EFFICIENT)
    assert code == 3
    assert "Traceback" in err and "invariant broken" in err


# --- the real entry point ----------------------------------------------------------------------


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SPHC_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sphc", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )


def _efficient_params() -> int:
    return sphc.check_source((REPO_ROOT / "examples" / "efficient.sph").read_text()).params


def test_python_m_sphc_check():
    proc = _subprocess("check", "examples/efficient.sph")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("examples/efficient.sph: ok (")
    assert f"{_efficient_params():,} parameters" in proc.stdout


def test_python_m_sphc_bad_model(tmp_path: Path):
    bad = tmp_path / "bad.sph"
    bad.write_text("Input s2 L=8\n -> Dense 10\n")
    proc = _subprocess("check", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{bad}:2:5: error: `Dense` takes a features signal")
    assert "Traceback" not in proc.stderr
