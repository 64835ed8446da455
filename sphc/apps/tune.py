"""``sphc tune``: time every kernel config on the GPU, check every config in the interpreter, bake winners.

* :func:`tune_module` runs one forward + backward of a generated model on the GPU under
  ``launch.recording``: each kernel's first launch times its whole config space
  (``triton.testing.do_bench``), the winner launches, and the result is a *tuning file*.
* :func:`dry_run` runs the model in Triton's CPU interpreter once per distinct config of every
  kernel and compares outputs and gradients with the torch reference (no timing).
* Reading a tuning file and baking it into a plan (``sphc compile --tuning``) is the compiler's
  part: ``sphc/compiler/tuning.py``.

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
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sphc import __version__
from sphc.compiler import pipeline
from sphc.compiler.tuning import kernel_spaces
from sphc.errors import SphcError
from sphc.runtime import launch, ops
from sphc.runtime.launch import Config

#: relative tolerance of the dry run's comparison with the torch reference (float64)
DRY_RUN_TOL = 1e-10


class NoGPUError(SphcError):
    """``sphc tune`` without a CUDA device: the CLI exits with status 2."""

    exit_code = 2


# --- the kernels of a generated module ---------------------------------------------------------


def spaces_of(text: str, file: str = "<string>") -> dict[str, tuple]:
    """``kernel_spaces`` of the model in ``.sph`` text."""
    return kernel_spaces(pipeline.plan_source(text, file))


def _registered(module) -> list[tuple[str, object]]:
    """(kernel-registry key, ``launch.Tunable``) of every kernel a generated module registered, in order."""
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


def _torch_dtype(dtype: str):
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


# --- tuning on the GPU ---------------------------------------------------------------------------


def device_info(device) -> dict:
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "capability": [major, minor]}
    return {"name": device.type, "capability": [0, 0]}


def require_gpu() -> None:
    if not torch.cuda.is_available():
        raise NoGPUError(
            "no CUDA GPU found: `sphc tune` times the kernels on a GPU; "
            "use `sphc tune --dry-run` to check every config in Triton's CPU interpreter"
        )


def tune_module(
    module, text: str, batch: int, dtype: str = "float32", device="cuda", progress: bool = True, seed: int = 0
) -> dict:
    """One forward + backward of ``module.Model`` with every kernel's config space timed; the tuning file."""
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
    name = "sphc_dryrun_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    module = pipeline.load_source(text, file, name)
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
