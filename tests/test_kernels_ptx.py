"""Every generated kernel compiles for an NVIDIA sm_90 target, checked without a GPU.

The interpreter tests check the kernels' numbers; Triton's compiler (code generator, LLVM, and the
``ptxas`` bundled in the triton wheel) checks what the interpreter accepts but a GPU would refuse.
Each model's kernels are compiled in a subprocess without ``TRITON_INTERPRET`` for their default and
largest configs (``tests/_compile_for_gpu.py``), in float32 and float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sphc

HERE = Path(__file__).resolve().parent
TINY = (HERE.parent / "examples" / "tiny.sph").read_text()
# a fused TP small enough for the plan to unroll (21 CG entries <= plan.UNROLL_MAX_ENTRIES)
UNROLLED = "Input s2 L=3 C=1 -> GenConv K=1 tau=1 -> TensorProduct mst -> GenConv L=2 K=1 tau=1 tau_u=2"


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _ptxas_available(), reason="this triton build has no NVIDIA backend to compile with")
@pytest.mark.parametrize(("text", "dtype"), [(TINY, "float32"), (TINY, "float64"), (UNROLLED, "float32")])
def test_kernels_compile_for_sm90(text, dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    run = subprocess.run(
        [sys.executable, str(HERE / "_compile_for_gpu.py"), text, dtype],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert " 0 failed" in run.stdout
    if text == UNROLLED:  # the plan's own choice, not forced
        assert (
            "its tensor product unrolled" in sphc.compile_source(text) and "tensorproduct_fwd" in run.stdout
        )
