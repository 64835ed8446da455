"""``sphc tune`` and ``sphc compile --tuning`` without a GPU (sphc/apps/tune.py, sphc/runtime/launch.py).

On CPU: ``sphc tune`` says there is no GPU and exits 2; ``--dry-run`` runs every distinct config in
Triton's interpreter against the torch reference; the recorder that ``sphc tune`` uses on a GPU is
driven with a fake ``do_bench``; tuning files are baked into modules that run, and invalid ones are
rejected. (``tests/test_injection.py`` tries malicious tuning files.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import sphc
from sphc import kernel_spaces
from sphc.apps import cli, tune
from sphc.compiler import pipeline, tuning
from sphc.runtime import launch

TINY = "Input s2 L=3 C=1 -> S2Conv C=2 L=3 N=2 -> TensorProduct mst -> GenConv K=1 tau=1 tau_u=2 -> Invariant -> Dense 2"
LINEAR = "Input s2 L=2 C=1 -> S2Conv C=1 L=2 N=1 -> Invariant -> Dense 2"
REPO_ROOT = Path(__file__).resolve().parents[1]
_NAMES = itertools.count()

# Kernels that call triton.language's own @jit helpers (tl.sum in the fused TP kernels) run in the
# interpreter only if TRITON_INTERPRET=1 was set before triton was first imported, which another
# test of this session may have done without it: such checks run in a fresh process.


def subprocess_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}
    env.pop("SPHC_DEBUG", None)
    return env


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sphc-cache"))
    monkeypatch.delenv("SPHC_DEBUG", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def model_file(tmp_path: Path, text: str = TINY, name: str = "tiny.sph") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def import_file(path: Path):
    name = f"sphc_tune_test_{next(_NAMES)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- sphc tune without a GPU ---------------------------------------------------------------------


def test_tune_without_gpu_says_so_and_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = model_file(tmp_path)
    code, out, err = run(capsys, "tune", path, "--batch", 8)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: no CUDA GPU found") and "--dry-run" in err
    assert not list(tmp_path.glob("*.json"))


def test_tune_of_a_bad_model_is_a_located_error(capsys, tmp_path):
    path = model_file(tmp_path, "Input s2 L=3 -> Bogus")
    code, out, err = run(capsys, "tune", path, "--dry-run")
    assert code == 1 and err.startswith(f"{path}:1:17: error: unknown layer")


# --- sphc tune --dry-run --------------------------------------------------------------------------


def test_dry_run_checks_every_config_of_every_kernel(tmp_path):
    """`sphc tune --dry-run` (the real entry point, fresh process) on a model with TP and linear kernels."""
    path = model_file(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "sphc", "tune", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=subprocess_env(),
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "timings are not measured" in out and "ignores num_warps and num_stages" in out
    lines = [line for line in out.splitlines() if line.startswith(("ok", "FAIL"))]
    spaces = tune.spaces_of(TINY)
    assert {line.split()[1] for line in lines} == set(spaces)
    assert any(name.endswith("_tensorproduct_fwd") for name in spaces)
    for name, space in spaces.items():
        metas = {c.meta for c in space}
        assert sum(line.split()[1] == name for line in lines) == len(metas), name
    assert all(line.startswith("ok") for line in lines), out
    assert out.strip().endswith(f"{len(lines)} ok, 0 failed")
    assert not list(tmp_path.glob("*.json"))


def test_dry_run_restores_the_environment(capsys, tmp_path):
    path = model_file(tmp_path, LINEAR, "linear.sph")
    code, out, err = run(capsys, "tune", path, "--dry-run")
    assert code == 0, out + err
    assert os.environ.get("TRITON_INTERPRET") is None
    assert len([line for line in out.splitlines() if line.startswith("ok")]) == sum(
        len({c.meta for c in space}) for space in tune.spaces_of(LINEAR).values()
    )


def test_dry_run_pins_a_failure_to_its_kernel_and_config(capsys, tmp_path, monkeypatch):
    path = model_file(tmp_path, LINEAR, "linear.sph")
    spaces = tune.spaces_of(LINEAR)
    bad_name = "l1_s2conv_dgrad"
    bad = spaces[bad_name][-1]
    launch_ = launch.Tunable.launch

    def broken(self, grid, chosen, args, kwargs, extents=None):
        if self.name == bad_name and chosen.meta == bad.meta:
            raise RuntimeError("simulated compile failure\nsecond line")
        return launch_(self, grid, chosen, args, kwargs, extents)

    monkeypatch.setattr(launch.Tunable, "launch", broken)
    code, out, err = run(capsys, "tune", path, "--dry-run", "--batch", 2)
    assert code == 1, out + err
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, out
    assert bad_name in fails[0] and "RuntimeError: simulated compile failure" in fails[0]
    assert "second line" not in out
    assert out.strip().endswith("1 failed")


# --- the recorder (sphc tune on a GPU), with a fake timer ------------------------------------------


def test_recorder_times_every_config_and_writes_the_tuning_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = pipeline.load_source(LINEAR, "linear.sph", f"sphc_tune_rec_{next(_NAMES)}")
    tunables = {t.name: t for t in tune.module_tunables(module)}
    calls: dict[str, int] = {}
    current = [""]
    timer = itertools.count(1)

    def fake_bench(fn):
        name = current[0]
        calls[name] = calls.get(name, 0) + 1
        if calls[name] <= 2:  # really launch a couple of trials
            fn()
        if calls[name] == 2:
            raise RuntimeError("out of resources: shared memory\nmore detail")
        return 100.0 / next(timer)  # later configs are faster

    tune_ = launch.Recorder.tune

    def tracking(self, tunable, grid, args, kwargs, extents=None):
        current[0] = tunable.name
        return tune_(self, tunable, grid, args, kwargs, extents)

    monkeypatch.setattr(launch, "do_bench", fake_bench)
    monkeypatch.setattr(launch.Recorder, "tune", tracking)
    result = tune.tune_module(module, LINEAR, batch=3, dtype="float64", device="cpu", progress=False)

    assert result["source_sha256"] == hashlib.sha256(LINEAR.encode()).hexdigest()
    assert result["device"] == {"name": "cpu", "capability": [0, 0]}
    assert (result["dtype"], result["batch"], result["sphc_version"]) == ("float64", 3, sphc.__version__)
    assert set(result["kernels"]) == set(tunables) == {"l1_s2conv_fwd", "l1_s2conv_dgrad", "l1_s2conv_wgrad"}
    for name, k in result["kernels"].items():
        space = tunables[name].space
        # every config of the space gets a result; configs that fit this small layer to the same
        # blocks share one measurement (the fake timer gives each measurement its own time)
        assert set(k["times_ms"]) | set(k["errors"]) == {c.describe() for c in space}
        assert calls[name] == len(set(k["times_ms"].values())) + 1 < len(space)  # one trial failed
        assert set(k["key"]) == set(tunables[name].key) and all(type(v) is int for v in k["key"].values())
        assert set(k["errors"].values()) == {"RuntimeError: out of resources: shared memory"}
        best = launch.Config.from_json(k["best"]).describe()
        assert k["times_ms"][best] == min(k["times_ms"].values())  # the fastest (fake) time
        assert k["default"] == space[0].to_json()
    assert result["kernels"]["l1_s2conv_fwd"]["key"] == {"ROWS_BUCKET": 16}  # 3 * (2L - 1) = 9 rows
    assert result["kernels"]["l1_s2conv_wgrad"]["key"]["SPLIT"] == 1

    target = tmp_path / "linear.tuning.json"
    tune.write_tuning(result, target)
    assert tuning.read_tuning(target).data == result
    table = tune.summary(result).splitlines()
    assert table[0].split() == ["kernel", "best", "config", "best", "ms", "default", "ms", "speedup"]
    assert all(any(line.startswith(name) for line in table) for name in tunables)
    # the tuning file bakes: the recorded winners become the module's configs
    model_path = model_file(tmp_path, LINEAR, "linear.sph")
    assert cli.main(["compile", str(model_path), "-o", str(tmp_path / "m.py"), "--tuning", str(target)]) == 0
    baked = {t.name: t.baked for t in tune.module_tunables(import_file(tmp_path / "m.py"))}
    assert baked == {name: launch.Config.from_json(k["best"]) for name, k in result["kernels"].items()}


def test_recorder_zeroes_accumulators_between_trials_and_before_the_real_launch(monkeypatch):
    class Accumulating:
        """A kernel that adds x into out (like atomics): trials must not leave their sums behind."""

        arg_names = ["out", "x", "n", "BLOCK"]

        def __getitem__(self, grid):
            def launch_(out, x, n, BLOCK, num_warps, num_stages):
                grid({"BLOCK": BLOCK})
                out += x

            return launch_

    def bench(fn):
        for _ in range(3):
            fn()
            seen.append(out.clone())
        return 1.0

    seen: list[torch.Tensor] = []
    monkeypatch.setattr(launch, "do_bench", bench)
    space = kernel_spaces.configs({"BLOCK": (16, 32)}, warps=(4, 8), stages=(1,))
    t = launch.Tunable("acc_bwd", Accumulating(), space, key=("n",), reset=("out",))
    out, x = torch.zeros(4), torch.arange(4.0)
    with launch.recording(progress=False) as rec:
        t.run(lambda meta: (1,), out, x, 7)
    assert len(seen) == 3 * len(space) and all(torch.equal(s, x) for s in seen)
    assert torch.equal(out, x)  # the winner's launch started from zero
    assert rec.records["acc_bwd"].key == {"n": 7}
    assert rec.records["acc_bwd"].best == space[0]


RECORD_TP = """
import itertools, json, sys
import torch
from sphc.apps import tune
from sphc.compiler import pipeline
from sphc.runtime import launch, layers

module = pipeline.load_source(sys.argv[1], "tiny.sph")
timer = itertools.count(1)
calls = {}
current = [""]
tune_ = launch.Recorder.tune

def tracking(self, tunable, grid, args, kwargs, extents=None):
    current[0] = tunable.name
    return tune_(self, tunable, grid, args, kwargs, extents)

def fake(fn):
    calls[current[0]] = calls.get(current[0], 0) + 1
    if current[0].endswith("_bwd") and calls[current[0]] == 4:  # the first BLOCK=16 trial: more blocks
        fn()
    return 100.0 / next(timer)  # the last config (BLOCK=128, one block) wins

launch.do_bench = fake
launch.Recorder.tune = tracking
torch.manual_seed(0)
model = module.Model(backend="torch").double().eval()
x = torch.randn(9, *module.INPUT_SHAPE, dtype=torch.float64)  # B*C = 18: 2 blocks of 16, 1 of 128
res = []
for backend in ("torch", "triton"):
    layers.set_backend(model, backend)
    model.zero_grad()
    with launch.recording(progress=False) as rec, launch.poison():
        y = model(x)
        y.backward(torch.ones_like(y))
    res.append([y.detach()] + [p.grad.clone() for p in model.parameters()])
err = max(float((g - w).abs().max() / max(float(w.abs().max()), 1e-6)) for w, g in zip(*res))
print(json.dumps({"best": {n: r.best.describe() for n, r in rec.records.items()}, "err": err}))
"""


def test_recorder_on_the_fused_tp_kernels_resets_every_partial_buffer():
    """The TP backward's per-block grad-W partials: a BLOCK=16 trial writes two blocks, the winning
    BLOCK=128 launch one, so the buffer must be reset (``reset=("gx_ptr", "gw_ptr")``) or the stale
    block is summed into grad U. Also a lazy-autotuning (``triton.autotune``) hazard: same list."""
    proc = subprocess.run(
        [sys.executable, "-c", RECORD_TP, TINY],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(TRITON_INTERPRET="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["best"]["l2_tensorproduct_bwd"].startswith("BLOCK=128")
    assert result["err"] <= 1e-10


def test_recorder_reuses_the_winner_and_fails_when_nothing_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = pipeline.load_source(LINEAR, "linear.sph", f"sphc_tune_rec_{next(_NAMES)}")
    t = next(t for t in tune.module_tunables(module) if t.name == "l1_s2conv_fwd")
    x = torch.randn(1, *module.INPUT_SHAPE, dtype=torch.float64)

    def fail(fn):
        raise RuntimeError("nope")

    monkeypatch.setattr(launch, "do_bench", fail)
    with pytest.raises(RuntimeError, match="no config of its space ran"), launch.recording(progress=False):
        module.Model(backend="triton").double()(x)
    monkeypatch.setattr(launch, "do_bench", lambda fn: 1.0)
    with launch.recording(progress=False) as rec:
        model = module.Model(backend="triton").double()
        model(x)
        model(x)
    assert rec.records[t.name].best == t.space[0]  # ties: the first (default) config
    assert launch._RECORDER is None


# --- sphc compile --tuning ---------------------------------------------------------------------------


def synthetic_tuning(text: str, pick: int = -1) -> tuple[dict, dict]:
    """A tuning file naming config ``pick`` of every kernel's space, and those configs by kernel."""
    spaces = tune.spaces_of(text)
    chosen = {name: space[pick] for name, space in spaces.items()}
    data = {
        "sphc_version": sphc.__version__,
        "source_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "device": {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]},
        "dtype": "float32",
        "batch": 16,
        "kernels": {
            n: {"key": {}, "best": c.to_json(), "times_ms": {c.describe(): 0.5}} for n, c in chosen.items()
        },
    }
    return data, chosen


RUN_BAKED = """
import importlib.util, json, sys
import torch
from sphc.apps import tune
from sphc.runtime import launch, layers

spec = importlib.util.spec_from_file_location("baked_model", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["baked_model"] = module
spec.loader.exec_module(module)
launched = {}
launch_ = launch.Tunable.launch

def spy(self, grid, cfg, args, kwargs, extents=None):
    launched[self.name] = cfg.to_json()
    return launch_(self, grid, cfg, args, kwargs, extents)

launch.Tunable.launch = spy
torch.manual_seed(0)
model = module.Model(backend="torch").double().eval()
x = torch.randn(1, *module.INPUT_SHAPE, dtype=torch.float64)
results = []
for backend in ("torch", "triton"):
    layers.set_backend(model, backend)
    model.zero_grad()
    with launch.poison():
        y = model(x)
        y.backward(torch.ones_like(y))
    results.append([y.detach()] + [p.grad.clone() for p in model.parameters()])
err = max(float((g - w).abs().max() / max(float(w.abs().max()), 1e-6)) for w, g in zip(*results))
print(json.dumps({"launched": launched, "err": err}))
"""


def test_compile_with_tuning_bakes_the_configs(capsys, tmp_path):
    path = model_file(tmp_path)
    data, chosen = synthetic_tuning(TINY + "\n")
    tuning = tmp_path / "tiny.tuning.json"
    tuning.write_text(json.dumps(data))
    target = tmp_path / "tiny_tuned.py"
    code, out, err = run(capsys, "compile", path, "-o", target, "--tuning", tuning)
    assert code == 0, err
    assert "warning" not in err

    module = import_file(target)
    assert module.TUNED_FOR == {
        "device": "NVIDIA H100 80GB HBM3",
        "capability": (9, 0),
        "dtype": "float32",
        "batch": 16,
    }
    tunables = tune.module_tunables(module)
    assert {t.name: t.baked for t in tunables} == chosen
    assert all(t.tuned_for is module.TUNED_FOR for t in tunables)
    # the spaces tuning.kernel_spaces validates against are those of the generated Tunables
    assert {t.name: t.space for t in tunables} == tune.spaces_of(TINY)
    # every Tunable's autotuning key and reset arguments are kernel parameters
    for t in tunables:
        assert set(t.key) <= set(t.kernel.arg_names) and set(t.reset) <= set(t.kernel.arg_names)
    assert {t.key for t in tunables} == {("BC",), ("ROWS_BUCKET",), ("ROWS_BUCKET", "SPLIT")}
    # the torch backend runs the module as usual
    assert module.Model(backend="torch")(torch.randn(2, *module.INPUT_SHAPE)).shape == (2, 2)

    # in the interpreter (fresh process) the baked configs are the ones launched, and they are right
    proc = subprocess.run(
        [sys.executable, "-c", RUN_BAKED, str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(TRITON_INTERPRET="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["launched"] == {name: c.to_json() for name, c in chosen.items()}
    assert result["err"] <= 1e-10


def test_compile_untuned_module_has_no_baked_configs(monkeypatch):
    source = sphc.compile_source(TINY, "tiny.sph")
    assert "TUNED_FOR = None" in source and "baked=" not in source


def test_tuning_for_other_source_text_warns(capsys, tmp_path):
    path = model_file(tmp_path, TINY + "  # a comment changes the text, not the kernels")
    data, _ = synthetic_tuning(TINY)
    tuning = tmp_path / "t.json"
    tuning.write_text(json.dumps(data))
    code, out, err = run(capsys, "compile", path, "-o", tmp_path / "m.py", "--tuning", tuning)
    assert code == 0, err
    assert err.startswith(f"warning: tuning file {tuning} was made for other model text")
    assert "baked=rt.Config" in (tmp_path / "m.py").read_text()


def _edit(data: dict, path: str, value) -> dict:
    data = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


INVALID = {
    "not json": ("{not json", "is not valid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "missing kernels": ("kernels", KeyError),
    "missing device": ("device", KeyError),
    "bad sha": ("source_sha256", "abc"),
    "bad dtype": ("dtype", "float16"),
    "zero batch": ("batch", 0),
    "capability": ("device.capability", [9]),
    "kernels a list": ("kernels", []),
    "unknown kernel": ("kernels.l7_nothing_fwd", {"best": {"meta": {}, "num_warps": 4, "num_stages": 1}}),
    "missing best": ("kernels.l1_s2conv_fwd.best", KeyError),
    "meta missing a name": ("kernels.l1_s2conv_fwd.best.meta", {"BLOCK_M": 64}),
    "string value": ("kernels.l1_s2conv_fwd.best.num_warps", "4"),
    "negative value": ("kernels.l1_s2conv_fwd.best.num_stages", -1),
    "huge value": ("kernels.l1_s2conv_fwd.best.num_warps", 10**20),
    "not in space": ("kernels.l1_s2conv_fwd.best.num_warps", 16),
    "times not numbers": ("kernels.l1_s2conv_fwd.times_ms", {"a": "fast"}),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_tuning_files_are_rejected(capsys, tmp_path, case):
    path = model_file(tmp_path)
    where, value = INVALID[case]
    data, _ = synthetic_tuning(TINY + "\n")
    tuning = tmp_path / "bad.tuning.json"
    if case in ("not json", "not an object"):
        tuning.write_text(where)
    else:
        tuning.write_text(json.dumps(_edit(data, where, value)))
    target = tmp_path / "out.py"
    code, out, err = run(capsys, "compile", path, "-o", target, "--tuning", tuning)
    assert code == 1, err
    assert str(tuning) in err and err.startswith("error: ")
    if isinstance(value, str) and case in ("not json", "not an object"):
        assert value in err
    assert "Traceback" not in err and "internal error" not in err
    assert not target.exists()


def test_missing_tuning_file(capsys, tmp_path):
    path = model_file(tmp_path)
    code, out, err = run(capsys, "compile", path, "--tuning", tmp_path / "none.json", "-o", tmp_path / "m.py")
    assert (
        code == 1
        and err.strip()
        == f"error: cannot read tuning file {tmp_path / 'none.json'}: No such file or directory"
    )


# --- baked configs on another GPU ----------------------------------------------------------------------


def test_baked_config_on_another_gpu_warns_once_and_is_not_used(monkeypatch):
    running = ["NVIDIA A100-SXM4-80GB"]
    monkeypatch.setattr(launch, "_gpu_name", lambda args: running[0])
    monkeypatch.setattr(launch, "_WARNED", set())
    space = kernel_spaces.configs({"BLOCK": (16, 32)}, warps=(4,), stages=(1,))
    tunable = launch.Tunable(
        "k_fwd", object(), space, key=(), baked=space[1], tuned_for={"device": "NVIDIA H100"}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tunable._baked_applies(()) is False
        assert tunable._baked_applies(()) is False
    assert len(caught) == 1
    assert "tuned on 'NVIDIA H100'" in str(caught[0].message) and "autotune lazily" in str(caught[0].message)
    running[0] = "NVIDIA H100"
    assert tunable._baked_applies(()) is True
    running[0] = None  # CPU tensors (the interpreter): the baked config runs
    assert tunable._baked_applies(()) is True


def test_tunable_checks_its_key_names():
    class Kernel:
        arg_names = ["x_ptr", "BC", "BLOCK"]

    space = kernel_spaces.configs({"BLOCK": (16,)}, warps=(4,), stages=(1,))
    launch.Tunable("k", Kernel(), space, key=("BC",))
    with pytest.raises(ValueError, match="ROWS_BUCKET"):
        launch.Tunable("k", Kernel(), space, key=("ROWS_BUCKET",))
