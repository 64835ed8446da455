"""Compile every generated Triton kernel of a model for an sm_90 target, without a GPU.

Run as a script by ``tests/test_kernels_ptx.py``, in two steps, each its own process:

* ``record``: with ``TRITON_INTERPRET=1`` the model runs forward and backward on the Triton backend
  in the interpreter, and every launch is recorded — kernel, argument types and the ``tl.constexpr``
  values (the shapes each layer passes) — as JSON on stdout;
* ``compile``: without the interpreter (so the kernels are real ``JITFunction``s), each recorded
  launch is compiled for its default and largest config: Triton's code generator, LLVM and the
  ``ptxas`` shipped in the triton wheel check what the interpreter cannot (which globals a kernel
  may read, tile shapes, register-heavy code). One line per kernel and config.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time


def record(text: str, dtype: str) -> int:
    import torch

    import sphc
    from sphc.kernel_spaces import fit
    from sphc.runtime import launch

    calls: dict[str, dict] = {}
    original = launch.Tunable.launch

    def recording(self, grid, chosen, args, kwargs, extents=None):
        chosen = fit(chosen, extents) if extents else chosen
        named = {**self.arguments(args, kwargs), **chosen.kwargs}
        sig, consts = {}, {}
        for p in inspect.signature(self.kernel.fn).parameters.values():
            value = named.get(p.name)
            if "constexpr" in str(p.annotation):
                consts[p.name] = str(value) if not isinstance(value, bool | int) else value
            elif isinstance(value, torch.Tensor):
                sig[p.name] = {torch.float32: "*fp32", torch.float64: "*fp64", torch.int32: "*i32",
                               torch.int64: "*i64", torch.bfloat16: "*bf16", torch.float16: "*fp16"}[value.dtype]  # fmt: skip
            else:
                sig[p.name] = "i64" if abs(int(value)) >= 2**31 else "i32"
        ran = {"meta": chosen.kwargs, "num_warps": chosen.num_warps, "num_stages": chosen.num_stages}
        calls.setdefault(self.name, {"sig": sig, "consts": consts, "ran": ran})
        return original(self, grid, chosen, args, kwargs)  # already fitted

    launch.Tunable.launch = recording
    torch.manual_seed(0)
    dt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    model = sphc.load(text).Model(backend="triton").to(dt)
    y = model(torch.randn(2, *model.input_shape, dtype=dt))
    (torch.view_as_real(y) if y.is_complex() else y).square().sum().backward()
    print(json.dumps(calls))
    return 0


def compile_recorded(text: str, calls: dict) -> int:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import sphc
    from sphc.kernel_spaces import Config
    from sphc.runtime import ops

    module = sphc.load(text)
    tunables = {
        t.name: t
        for key, kernels in ops._KERNELS.items()
        if key.startswith(module.__name__ + ".")
        for t in vars(kernels).values()
        if hasattr(t, "space")
    }
    failed = 0
    target = GPUTarget("cuda", 90, 32)
    for name, call in calls.items():
        tun = tunables[name]
        largest = max(tun.space, key=lambda c: sorted(c.kwargs.values()))
        for config in dict.fromkeys((Config.from_json(call["ran"]), largest)):  # as launched; the largest
            dtypes = {"fp32": tl.float32, "fp64": tl.float64}
            consts = {k: dtypes[v] if k == "ACC" else v for k, v in call["consts"].items()}
            consts.update(config.kwargs)
            sig = {**call["sig"], **{k: "constexpr" for k in consts}}
            start = time.perf_counter()
            try:
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                compiled = triton.compile(ASTSource(tun.kernel, sig, consts), target=target, options=options)
                size = len(compiled.asm["ptx"])
                print(f"ok   {name} {config.describe()} ptx {size} B {time.perf_counter() - start:.1f} s")
            except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
                failed += 1
                print(f"FAIL {name} {config.describe()}: {type(e).__name__}: {str(e)[:2000]}")
    print(f"{len(calls)} kernels, {failed} failed")
    return 1 if failed or not calls else 0


def main(text: str, dtype: str) -> int:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, __file__, "--record", text, dtype],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        print(run.stdout[-3000:] + run.stderr[-3000:])
        return 1
    return compile_recorded(text, json.loads(run.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    if sys.argv[1] == "--record":
        sys.exit(record(sys.argv[2], sys.argv[3]))
    sys.exit(main(sys.argv[1], sys.argv[2]))
