"""The efficient layer's tensor product + projection as a compiled C kernel on the CPU (``csrc/tp_project.c``).

Why: the torch formulation (``fast_tp``) is ~50 small ops per degree pair; on a CPU a third of a
training step of ``examples/mnist.sph`` is their per-op overhead, and the second thread has little to
share (benchmarks/notes_cpu.md). One call of this kernel does a whole layer: every product, CG sum
and projection of a block of batch·channel lanes stays in registers, the blocks go to the OpenMP
threads torch uses.

How it is built and loaded, and when it is not:
- The source is compiled on first use with the system C compiler (``$CC``, else ``cc``) at ``-O3
  -march=native -fopenmp`` into sphc's cache (``SPHC_CACHE_DIR``; a temp folder under
  ``SPHC_NO_CACHE``), keyed by source, flags, compiler version, CPU model and instruction-set flags,
  written to a temp file and renamed (concurrent processes are safe). Later processes load the cached
  library (a few ms).
- It links the same ``libgomp.so.1`` soname torch has already loaded, so both share one thread pool.
- No compiler, a failed build, ``SPHC_CPU_KERNELS=0``, a CUDA tensor or a dtype other than
  complex64/128: ``available()`` is False and callers take the torch path (``fast_tp``), which
  computes the same function (``tests/test_cpu_kernels.py``). A failed build warns once.
- The call runs with the GIL released (ctypes), so it never blocks other Python threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sphc import config

SOURCE = Path(__file__).resolve().with_name("csrc") / "tp_project.c"
LANES = 32  # W of the C source: lanes per block, the granularity of the thread split
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", f"-DW={LANES}")
_SUFFIX = {torch.complex64: "_f32", torch.complex128: "_f64"}


class CpuKernelWarning(UserWarning):
    """The C kernel could not be built; the torch path is used instead (same results, slower)."""


def _cpu_model() -> str:
    """The CPU's model and instruction-set flags: a library built with ``-march=native`` runs only there."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return f"{model}\n{flags}"


def _compiler_version(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[0]


def _build(cc: str, target: Path) -> None:
    """Compile the source to ``target`` through a temp file in its folder (renamed when complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [cc, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, check=True
        )
        os.replace(built, target)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built into the cache if needed (into a temp folder under ``SPHC_NO_CACHE``);
    None, with one warning, if it cannot be built; None, silently, if there is no C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    try:
        parts = [SOURCE.read_text(), " ".join(FLAGS), _compiler_version(cc), _cpu_model(), platform.machine()]
        name = f"tp_project_{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:24]}.so"
        if config.cache_disabled():
            with tempfile.TemporaryDirectory() as tmp:
                _build(cc, Path(tmp) / name)
                return ctypes.CDLL(str(Path(tmp) / name))  # stays mapped after the file is gone
        target = config.cache_dir() / "cpu_kernels" / name
        if not target.exists():
            _build(cc, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(
            f"sphc: building the CPU tensor-product kernel with {cc} failed; using the torch path "
            f"(same results, slower). Set SPHC_CPU_KERNELS=0 to skip the attempt.\n{detail}",
            CpuKernelWarning,
            stacklevel=3,
        )
        return None


def available(x: torch.Tensor) -> bool:
    """Whether ``tp_project`` of this input can run the C kernel (CPU, complex64/128, built)."""
    return (
        x.device.type == "cpu"
        and x.dtype in _SUFFIX
        and config.cpu_kernels_enabled()
        and not torch.compiler.is_compiling()
        and _library() is not None
    )


@dataclass(frozen=True)
class KernelTables:
    """A plan's paths of degree l < L as the C kernel reads them (see the source's header)."""

    pairs: np.ndarray  # int32 (pairs, 6): l, entry of x_a, entry of x_b, first term, terms, row of u
    terms: np.ndarray  # int32 (terms, 3): order row of x_a, order row of x_b, output order m + l
    coef: torch.Tensor  # (terms,) CG values in the kernel's precision


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plan -> {(L, width, dtype): KernelTables}


def kernel_tables(plan, L: int, width: int, dtype: torch.dtype) -> KernelTables:
    """The tables of ``plan``'s paths of degree l < L (u of ``width`` columns), built once per plan."""
    per_plan = _TABLES.setdefault(plan, {})
    key = (L, width, dtype)
    if key in per_plan:
        return per_plan[key]
    M_in, T = 2 * plan.L_in - 1, plan.T_in
    pairs, terms, coef = [], [], []
    n_terms = 0
    for p in plan.paths:
        if p.l >= L:
            continue
        k, mi = np.nonzero(p.cg)  # block C[k = la − m_a, m + l]
        m_a = p.la - k
        m_b = (mi - p.l) - m_a
        terms.append(np.stack([m_a + plan.L_in - 1, m_b + plan.L_in - 1, mi], 1))
        coef.append(p.cg[k, mi])
        i, j = np.divmod(p.grid, p.nb)
        rows = np.empty((len(i), 6), dtype=np.int64)
        rows[:, 0] = p.l
        rows[:, 1] = p.la * M_in * T + p.a0 + i
        rows[:, 2] = p.lb * M_in * T + p.b0 + j
        rows[:, 3], rows[:, 4] = n_terms, len(k)
        rows[:, 5] = p.l * width + p.cols
        pairs.append(rows)
        n_terms += len(k)

    def flat(parts: list, cols: int) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, cols)), dtype=np.int32)

    tables = KernelTables(
        flat(pairs, 6),
        flat(terms, 3),
        torch.from_numpy(np.concatenate(coef) if coef else np.zeros(0)).to(dtype),
    )
    per_plan[key] = tables
    return tables


def _lanes(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L, M, T) complex → (L, M, T, re/im, lanes) real, lanes = B·C padded to a multiple of LANES."""
    B, C = x.shape[:2]
    BC = B * C
    lanes = -(-BC // LANES) * LANES
    out = x.real.new_empty(*x.shape[2:], 2, lanes)
    out[..., :BC].view(*x.shape[2:], 2, B, C).copy_(
        torch.view_as_real(x.resolve_conj()).permute(2, 3, 4, 5, 0, 1)
    )
    if lanes > BC:
        out[..., BC:].zero_()
    return out


def _unlanes(y: torch.Tensor, B: int, C: int) -> torch.Tensor:
    """The inverse of ``_lanes`` (padding lanes dropped)."""
    BC = B * C
    shape = y.shape[:-2]
    z = y[..., :BC].reshape(*shape, 2, B, C).permute(-2, -1, *range(len(shape)), -3)
    return torch.view_as_complex(z.contiguous())


def _ptr(t: torch.Tensor | np.ndarray) -> ctypes.c_void_p:
    """The data address of a contiguous tensor or array, for the C call."""
    return ctypes.c_void_p(t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data)


def tp_project(x: torch.Tensor, u: torch.Tensor, plan) -> torch.Tensor:
    """``fast_tp.tp_project`` for one ``TPPlan``: (B, C, L, 2L−1, τ_u), orders |m| > l zero."""
    B, C = x.shape[:2]
    L, width, tau_u = u.shape
    xl = _lanes(x)
    t = kernel_tables(plan, L, width, xl.dtype)
    lanes = xl.shape[-1]
    out = xl.new_empty(L, 2 * L - 1, tau_u, 2, lanes)
    uu = torch.view_as_real(u.resolve_conj().resolve_neg().contiguous())
    fn = getattr(_library(), "tp_project_forward" + _SUFFIX[x.dtype])
    fn(
        _ptr(xl), _ptr(uu), _ptr(out), _ptr(t.pairs), len(t.pairs), _ptr(t.terms), _ptr(t.coef),
        x.shape[-1], L, tau_u, lanes,
    )  # fmt: skip
    return _unlanes(out, B, C)


def tp_project_backward(
    g: torch.Tensor, x: torch.Tensor, u: torch.Tensor, plan
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fast_tp.tp_project_backward`` for one ``TPPlan``: (grad x, grad u)."""
    B, C = x.shape[:2]
    L, width, tau_u = u.shape
    xl, gl = _lanes(x), _lanes(g)
    t = kernel_tables(plan, L, width, xl.dtype)
    lanes = xl.shape[-1]
    gx = torch.empty_like(xl)
    gu_blocks = xl.new_empty(lanes // LANES, L, width, tau_u, 2)
    uu = torch.view_as_real(u.resolve_conj().resolve_neg().contiguous())
    fn = getattr(_library(), "tp_project_backward" + _SUFFIX[x.dtype])
    fn(
        _ptr(xl), _ptr(uu), _ptr(gl), _ptr(gx), _ptr(gu_blocks), _ptr(t.pairs), len(t.pairs), _ptr(t.terms),
        _ptr(t.coef), plan.L_in, x.shape[-1], L, width, tau_u, lanes,
    )  # fmt: skip
    return _unlanes(gx, B, C), torch.view_as_complex(gu_blocks.sum(0))
