"""``sphc tune``: time every kernel config on the GPU, check every config in the interpreter, bake winners.

* :func:`tune_module` runs one forward + backward of a generated model on the GPU under
  ``launch.recording``: each kernel's first launch times its whole config space
  (``triton.testing.do_bench``), the winner launches, and the result is a *tuning file*.
* :func:`dry_run` runs the model in Triton's CPU interpreter once per distinct config of every
  kernel and compares outputs and gradients with the torch reference (no timing).
* :func:`read_tuning` validates a tuning file and :func:`bake` turns it into the plan fields that
  ``sphc compile --tuning`` prints: ``launch.Config(...)`` literals made only of the kernel's own
  config-space entries (integers and meta names the template defines), and ``TUNED_FOR``.

Tuning file (JSON)::

    {"sphc_version": "0.1.0", "source_sha256": "<sha256 of the .sph text>",
     "device": {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]},
     "dtype": "float32", "batch": 32,
     "kernels": {"l3_tensorproduct_fwd": {"key": {"BC": 128},
                                          "best": {"meta": {"BLOCK": 32}, "num_warps": 4, "num_stages": 1},
                                          "times_ms": {"BLOCK=32 warps=4 stages=1": 0.0123, ...},
                                          "default": {...}, "errors": {...}}, ...}}

Only ``device``, ``dtype``, ``batch`` and each kernel's ``best`` are used when baking.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__
from .errors import SphcError

DTYPES = ("float32", "float64")
#: GPU names as ``torch.cuda.get_device_name`` spells them ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-16GB").
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+/-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Bound on the integers a tuning file may carry outside the config spaces (batch, key values).
_MAX_INT = 1 << 40
#: relative tolerance of the dry run's comparison with the torch reference (float64)
DRY_RUN_TOL = 1e-10


class NoGPUError(SphcError):
    """``sphc tune`` without a CUDA device: the CLI exits with status 2."""

    exit_code = 2


# --- the kernels of a generated module ---------------------------------------------------------


def kernel_spaces(module_plan) -> dict[str, tuple]:
    """Kernel name → config space, for every kernel the plan generates.

    Mirrors the ``launch.Tunable(...)`` calls of ``templates/triton_tp.py.j2`` and
    ``templates/triton_linear.py.j2`` (``tests/test_tune.py`` checks them against a loaded module).
    """
    from . import triton_linear, triton_tp

    out: dict[str, tuple] = {}
    for k in module_plan.tp_kernels:
        out[f"{k.prefix}_fwd"] = triton_tp.CONFIGS
        out[f"{k.prefix}_bwd"] = triton_tp.CONFIGS
    for k in module_plan.linear_kernels:
        J, N = k.C * k.T, k.K * k.V
        out[f"{k.prefix}_fwd"] = triton_linear.rowgemm_space(J, N)
        out[f"{k.prefix}_dgrad"] = triton_linear.rowgemm_space(N, J)
        out[f"{k.prefix}_wgrad"] = triton_linear.wgrad_space(J, N)
    return out


def spaces_of(text: str, file: str = "<string>") -> dict[str, tuple]:
    """``kernel_spaces`` of the model in ``.sph`` text."""
    from .pipeline import check_source
    from .plan import plan

    return kernel_spaces(plan(check_source(text, file), text, file))


def _registered(module) -> list[tuple[str, object]]:
    """(kernel-registry key, ``launch.Tunable``) of every kernel a generated module registered, in order."""
    from . import launch, ops

    prefix = module.__name__ + "."
    return [
        (key, t)
        for key, kernels in ops._KERNELS.items()
        if key.startswith(prefix)
        for t in vars(kernels).values()
        if isinstance(t, launch.Tunable)
    ]


def module_tunables(module) -> list:
    """Every ``launch.Tunable`` a generated module registered, in the module's order."""
    return [t for _, t in _registered(module)]


def load_module(text: str, file: str, name: str | None = None):
    """Compile ``.sph`` text and import the generated module in memory (like ``sphc.load``)."""
    from .pipeline import compile_source, import_source

    source = compile_source(text, file)
    name = name or "sphc_model_" + hashlib.sha256(source.encode()).hexdigest()[:12]
    return import_source(source, name, f"<sphc:{file}>")


def _torch_dtype(dtype: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[dtype]


# --- tuning on the GPU ---------------------------------------------------------------------------


def device_info(device) -> dict:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "capability": [major, minor]}
    return {"name": device.type, "capability": [0, 0]}


def require_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise NoGPUError(
            "no CUDA GPU found: `sphc tune` times the kernels on a GPU; "
            "use `sphc tune --dry-run` to check every config in Triton's CPU interpreter"
        )


def tune_module(
    module, text: str, batch: int, dtype: str = "float32", device="cuda", progress: bool = True, seed: int = 0
) -> dict:
    """One forward + backward of ``module.Model`` with every kernel's config space timed; the tuning file."""
    import torch

    from . import launch

    torch.manual_seed(seed)
    dt = _torch_dtype(dtype)
    model = module.Model(backend="triton").to(device=device, dtype=dt)
    x = torch.randn(batch, *module.INPUT_SHAPE, device=device, dtype=dt)
    tunables = module_tunables(module)
    with launch.recording(progress, total=sum(len(t.space) for t in tunables)) as rec:
        y = model(x)
        y.backward(torch.randn_like(y))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    return {
        "sphc_version": __version__,
        "source_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "device": device_info(device),
        "dtype": dtype,
        "batch": batch,
        "kernels": {
            t.name: {**rec.records[t.name].to_json(), "default": t.space[0].to_json()}
            for t in tunables
            if t.name in rec.records
        },
    }


def summary(tuning: dict) -> str:
    """The table ``sphc tune`` prints: per kernel the winner, its time, the default's, the speedup."""
    from .launch import Config

    rows = [("kernel", "best config", "best ms", "default ms", "speedup")]
    for name, k in tuning["kernels"].items():
        best = Config.from_json(k["best"]).describe()
        default = k.get("default")
        t_best = k["times_ms"][best]
        t_def = k["times_ms"].get(Config.from_json(default).describe()) if default else None
        rows.append(
            (
                name,
                best,
                f"{t_best:.4f}",
                "-" if t_def is None else f"{t_def:.4f}",
                "-" if t_def is None or t_best <= 0 else f"{t_def / t_best:.2f}x",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_tuning(tuning: dict, path: Path) -> None:
    try:
        Path(path).write_text(json.dumps(tuning, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise SphcError(f"cannot write {path}: {e.strerror}") from None


# --- the dry run in Triton's interpreter --------------------------------------------------------


def _distinct(space) -> list[tuple[object, int]]:
    """(config, how many configs of the space share its meta-parameters), first of each meta kept."""
    out: dict[tuple, list] = {}
    for c in space:
        if c.meta in out:
            out[c.meta][1] += 1
        else:
            out[c.meta] = [c, 1]
    return [(c, n) for c, n in out.values()]


def _compare(got: list, want: list, names: list[str]) -> str | None:
    """None when every tensor matches to DRY_RUN_TOL (relative), else what differs first."""
    scales = [float(w.abs().max()) if w.numel() else 0.0 for w in want]
    floor = max(scales + [0.0]) * 1e-6 or 1e-300
    for name, g, w, s in zip(names, got, want, scales):
        if g is None:
            return f"{name}: no gradient"
        if g.shape != w.shape:
            return f"{name}: shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        err = float((g - w).abs().max()) if w.numel() else 0.0
        if not err <= DRY_RUN_TOL * max(s, floor):  # also catches NaN (poisoned, never written)
            return f"{name}: max error {err:.3e} (scale {s:.3g})"
    return None


def dry_run(
    text: str, file: str, batch: int = 1, out: Callable[[str], None] = print, progress: bool = False
) -> bool:
    """Check every distinct config of every kernel in Triton's interpreter; True when all pass.

    Configs are run in rounds: round r forces the r-th distinct config of every kernel at once
    (kernels with fewer configs run their default); a round that fails is re-run one kernel at a
    time, so each failure is pinned to its (kernel, config).
    """
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (module import)
    try:
        return _dry_run(text, file, batch, out, progress)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _dry_run(text: str, file: str, batch: int, out: Callable[[str], None], progress: bool) -> bool:
    import torch
    from tqdm.auto import tqdm

    from . import launch

    name = "sphc_dryrun_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    module = load_module(text, file, name)
    registered = _registered(module)
    tunables = [t for _, t in registered]
    owner = {t.name: key for key, t in registered}  # kernel → registry key of its layer
    if not tunables:
        out(f"{file}: no Triton kernels to check (every layer runs the torch reference)")
        return True
    torch.manual_seed(0)
    model = module.Model(backend="torch").double().eval()
    x = torch.randn(batch, *module.INPUT_SHAPE, dtype=torch.float64)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = ["output"] + [f"grad {n}" for n, _ in params]
    g = None

    def run() -> list:
        nonlocal g
        model.zero_grad(set_to_none=True)
        y = model(x)
        if g is None:
            g = torch.randn_like(y)
        y.backward(g)
        return [y.detach()] + [None if p.grad is None else p.grad.detach().clone() for _, p in params]

    def point(only: str | None) -> None:
        """Layers on the kernels: all of them, or only those of registry key ``only`` (others: torch)."""
        for m in model.modules():
            if m is not model and hasattr(m, "backend"):
                keys = (getattr(m, "key", None), getattr(m, "key_uniform", None))
                m.backend = "triton" if only is None or only in keys else "torch"

    want = run()

    def trial(forced: dict, only: str | None = None) -> tuple[str | None, set[str]]:
        point(only)
        try:
            with launch.poison(), launch.forcing(forced) as ran:
                got = run()
            return _compare(got, want, names), set(ran)
        except Exception as e:  # a config that fails to compile or run in the interpreter
            first = str(e).strip().splitlines()
            return type(e).__name__ + (f": {first[0]}" if first else ""), set()

    distinct = {t.name: _distinct(t.space) for t in tunables}
    n_configs = sum(len(v) for v in distinct.values())
    out(
        f"dry run of {file}: {len(tunables)} kernels, {n_configs} distinct configs in Triton's interpreter "
        f"(float64, batch {batch}), compared with backend='torch' to {DRY_RUN_TOL:g} relative"
    )
    out(
        "note: the interpreter ignores num_warps and num_stages, so each distinct set of meta-parameters "
        "runs once; timings are not measured in a dry run (run `sphc tune` on a GPU)"
    )
    out(
        "note: round r runs the r-th config of every kernel at once; after a failed round each kernel "
        "runs alone (its layer on Triton, the others on torch)"
    )
    status: dict[tuple[str, int], str | None] = {}
    rounds = max(len(v) for v in distinct.values())
    with tqdm(total=rounds, desc="dry run", unit="round", disable=not progress) as bar:
        for r in range(rounds):
            forced = {n: cs[r][0] for n, cs in distinct.items() if r < len(cs)}
            error, ran = trial(forced)
            for n in forced:
                if error is None:
                    status[(n, r)] = None if n in ran else "never launched by forward + backward"
                else:
                    bar.set_postfix_str(f"round {r + 1} failed: {n} alone")
                    e, ran_n = trial({n: forced[n]}, only=owner[n])
                    status[(n, r)] = (
                        e if e is not None or n in ran_n else "never launched by forward + backward"
                    )
            bar.update(1)
    width = max(len(n) for n in distinct)
    for n, cs in distinct.items():
        for r, (c, count) in enumerate(cs):
            meta = " ".join(f"{k}={v}" for k, v in c.meta) or "(no meta-parameters)"
            also = f"  [{count} configs: warps/stages vary]" if count > 1 else ""
            verdict = "ok  " if status[(n, r)] is None else "FAIL"
            tail = "" if status[(n, r)] is None else f"  {status[(n, r)]}"
            out(f"{verdict}  {n.ljust(width)}  {meta}{also}{tail}")
    failed = sum(s is not None for s in status.values())
    out(f"{len(status) - failed} ok, {failed} failed")
    return failed == 0


# --- reading and baking tuning files --------------------------------------------------------------


@dataclass(frozen=True)
class Tuning:
    """A validated tuning file."""

    file: str
    data: dict


def _int(v: object, lo: int = 0, hi: int = _MAX_INT) -> bool:
    return type(v) is int and lo <= v <= hi


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def read_tuning(path: Path | str) -> Tuning:
    """Read and check the schema of a tuning file (``SphcError`` naming the file otherwise)."""
    file = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SphcError(f"cannot read tuning file {file}: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SphcError(
            f"tuning file {file} is not valid JSON: {e}", hint="write it with `sphc tune`"
        ) from None
    check_tuning(data, file)
    return Tuning(file, data)


def check_tuning(data: object, file: str) -> None:
    def bad(where: str, what: str) -> SphcError:
        return SphcError(f"tuning file {file}: {where}: {what}", hint="write it with `sphc tune`")

    if not isinstance(data, dict):
        raise bad("top level", "expected a JSON object")
    for key in ("sphc_version", "source_sha256", "device", "dtype", "batch", "kernels"):
        if key not in data:
            raise bad("top level", f"missing {key!r}")
    if not isinstance(data["sphc_version"], str) or len(data["sphc_version"]) > 64:
        raise bad("sphc_version", "expected a version string")
    if not isinstance(data["source_sha256"], str) or not _SHA256.fullmatch(data["source_sha256"]):
        raise bad("source_sha256", "expected 64 lowercase hex digits")
    dev = data["device"]
    if not isinstance(dev, dict) or not isinstance(dev.get("name"), str):
        raise bad("device", 'expected {"name": ..., "capability": [major, minor]}')
    if not _DEVICE_NAME.fullmatch(dev["name"]):
        raise bad("device.name", f"{_short(dev['name'])} is not a GPU name (letters, digits, ' ._()+/-')")
    cap = dev.get("capability")
    if not isinstance(cap, list) or len(cap) != 2 or not all(_int(c, 0, 99) for c in cap):
        raise bad("device.capability", f"expected [major, minor], got {_short(cap)}")
    if data["dtype"] not in DTYPES:
        raise bad("dtype", f"expected one of {', '.join(DTYPES)}, got {_short(data['dtype'])}")
    if not _int(data["batch"], 1):
        raise bad("batch", f"expected a positive integer, got {_short(data['batch'])}")
    kernels = data["kernels"]
    if not isinstance(kernels, dict):
        raise bad("kernels", "expected an object mapping kernel names to results")
    for name, k in kernels.items():
        where = f"kernels[{_short(name)}]"
        if not isinstance(k, dict) or not isinstance(k.get("best"), dict):
            raise bad(where, 'expected an object with "best"')
        best = k["best"]
        if set(best) != {"meta", "num_warps", "num_stages"} or not isinstance(best["meta"], dict):
            raise bad(f"{where}.best", 'expected {"meta": {...}, "num_warps": n, "num_stages": n}')
        for m, v in (
            *best["meta"].items(),
            ("num_warps", best["num_warps"]),
            ("num_stages", best["num_stages"]),
        ):
            if not _int(v, 1):
                raise bad(f"{where}.best", f"{_short(m)} must be a positive integer, got {_short(v)}")
        key = k.get("key", {})
        if not isinstance(key, dict) or not all(_int(v) for v in key.values()):
            raise bad(f"{where}.key", "expected an object of integers")
        times = k.get("times_ms", {})
        if not isinstance(times, dict) or not all(type(t) in (int, float) for t in times.values()):
            raise bad(f"{where}.times_ms", "expected an object of numbers")


def source_mismatch(tuning: Tuning, text: str) -> str | None:
    """A warning when the tuning file was made for other ``.sph`` text (configs may still fit)."""
    sha = hashlib.sha256(text.encode()).hexdigest()
    if tuning.data["source_sha256"] == sha:
        return None
    return (
        f"tuning file {tuning.file} was made for other model text (source_sha256 "
        f"{tuning.data['source_sha256'][:12]}..., this model {sha[:12]}...); its configs are used where they fit"
    )


def _config_literal(c) -> str:
    meta = "(" + "".join(f"({k!r}, {int(v)}), " for k, v in c.meta).rstrip(" ") + ")"
    return f"launch.Config(meta={meta}, num_warps={int(c.num_warps)}, num_stages={int(c.num_stages)})"


def baked_configs(module_plan, tuning: Tuning) -> dict[str, object]:
    """Kernel name → the config of its space the tuning file names (``SphcError`` for anything else)."""
    spaces = kernel_spaces(module_plan)
    out = {}
    for name, k in tuning.data["kernels"].items():
        if name not in spaces:
            raise SphcError(
                f"tuning file {tuning.file}: {_short(name)} is not a kernel of this model",
                hint=f"its kernels: {', '.join(spaces) or 'none'}; was the file tuned for another model?",
            )
        space = spaces[name]
        best = k["best"]
        names = {m for c in space for m, _ in c.meta}
        unknown = sorted(set(best["meta"]) - names, key=str)
        if unknown or set(best["meta"]) != names:
            raise SphcError(
                f"tuning file {tuning.file}: kernel {name}: meta-parameters {_short(sorted(best['meta']))}, "
                f"expected {sorted(names)}"
            )
        want = (best["meta"], best["num_warps"], best["num_stages"])
        match = next((c for c in space if (c.kwargs, c.num_warps, c.num_stages) == want), None)
        if match is None:
            raise SphcError(
                f"tuning file {tuning.file}: kernel {name}: {_short(best)} is not a config of its space",
                hint="re-run `sphc tune` for this model and this version of sphc",
            )
        out[name] = match
    return out


def bake(module_plan, tuning: Tuning):
    """The plan with the tuning file's winners as ``launch.Config`` literals and ``TUNED_FOR`` set."""
    baked = {name: _config_literal(c) for name, c in baked_configs(module_plan, tuning).items()}

    def pick(prefix: str) -> tuple[tuple[str, str], ...]:
        return tuple((n, lit) for n, lit in baked.items() if n.rsplit("_", 1)[0] == prefix)

    d = tuning.data
    tuned_for = {
        "device": d["device"]["name"],
        "capability": tuple(int(c) for c in d["device"]["capability"]),
        "dtype": d["dtype"],
        "batch": int(d["batch"]),
    }
    return replace(
        module_plan,
        tp_kernels=tuple(replace(k, baked=pick(k.prefix)) for k in module_plan.tp_kernels),
        linear_kernels=tuple(replace(k, baked=pick(k.prefix)) for k in module_plan.linear_kernels),
        tuned_for=repr(tuned_for),
    )
