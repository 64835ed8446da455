"""Compile every generated Triton kernel of a model for an sm_90 target, without a GPU.

Run as a script by ``tests/test_kernels_ptx.py`` in a process *without* ``TRITON_INTERPRET`` (so the
kernels are real ``JITFunction``s): Triton's code generator, LLVM and ``ptxas`` (shipped in the triton
wheel) then check what the interpreter cannot — e.g. which globals a kernel may read, tile shapes,
register-heavy code — for each kernel's default and largest config. Prints one line per kernel.
"""

from __future__ import annotations

import sys
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sphc
from sphc.runtime import launch

INT_TABLES = {"path_start", "path_l12", "col1", "col2", "row_off"}


def signature(kernel, meta: dict, fp: str) -> tuple[dict, dict]:
    sig, consts = {}, dict(meta)
    for p in kernel.params:
        if p.is_constexpr:
            consts.setdefault(
                p.name, (tl.float64 if fp == "*fp64" else tl.float32) if p.name == "ACC" else None
            )
            sig[p.name] = "constexpr"
        elif p.name in INT_TABLES:
            sig[p.name] = "*i32"
        elif p.name.endswith("_ptr"):
            sig[p.name] = fp
        else:
            sig[p.name] = "i32"
    return sig, consts


def main(text: str, dtype: str) -> int:
    fp = {"float32": "*fp32", "float64": "*fp64"}[dtype]
    module = sphc.load(text)
    tunables = []
    for obj in list(vars(module).values()):
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, launch.Tunable):
                tunables.append(value)
    failed = 0
    target = GPUTarget("cuda", 90, 32)
    for tun in tunables:
        largest = max(tun.space, key=lambda c: sorted(c.kwargs.values()))
        for config in dict.fromkeys((tun.space[0], largest)):
            sig, consts = signature(tun.kernel, config.kwargs, fp)
            start = time.perf_counter()
            try:
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                compiled = triton.compile(ASTSource(tun.kernel, sig, consts), target=target, options=options)
                size = len(compiled.asm["ptx"])
                print(f"ok   {tun.name} {config.describe()} ptx {size} B {time.perf_counter() - start:.1f} s")
            except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
                failed += 1
                print(f"FAIL {tun.name} {config.describe()}: {type(e).__name__}: {str(e)[:2000]}")
    print(f"{len(tunables)} kernels, {failed} failed")
    return 1 if failed or not tunables else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
