"""What ``torch.compile(model, fullgraph=True)`` costs and gains on the CPU, next to eager mode.

Each (model, mode) runs in its own fresh interpreter (inductor caches nothing across them: a cold
``TORCHINDUCTOR_CACHE_DIR`` per child) and reports: the first call (eager: a plain call; compiled:
tracing + inductor code generation + the call), and the median of the following calls (steady
state). Forward only, and a training step (forward + backward). The baseline, eager mode, is
measured in the same run on the same machine; the floor is the model's arithmetic (``sphc explain``'s
complex multiply-adds, 8 real FLOPs each; x3 for a training step) at the float32 GEMM rate measured
here with the same thread count.

    python benchmarks/bench_torch_compile.py                      # examples/tiny.sph and mnist.sph
    python benchmarks/bench_torch_compile.py --models examples/tiny.sph --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import fmt_s, machine, median, run_child, table, time_call

CHILD = """
import json, sys, time, warnings
import torch
import sphc

path, mode, step, batch, repeats, threads = sys.argv[1:7]
batch, repeats, threads = int(batch), int(repeats), int(threads)
torch.set_num_threads(threads)
torch.manual_seed(0)
model = sphc.load(path).Model()
x = torch.randn(batch, *model.input_shape)
run = torch.compile(model, fullgraph=True) if mode == "compiled" else model

def call():
    if step == "train":
        model.zero_grad(set_to_none=True)
        run(x).square().sum().backward()
    else:
        with torch.no_grad():
            run(x)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t = time.perf_counter()
    call()
    first = time.perf_counter() - t
times = []
for _ in range(repeats):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
complex_warn = any("complex" in str(w.message).lower() for w in caught)
print(json.dumps({"first": first, "steady": sorted(times)[len(times) // 2], "complex_warn": complex_warn}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["examples/tiny.sph", "examples/mnist.sph"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="steady-state calls after the first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    args = p.parse_args()
    import torch

    import sphc

    torch.set_num_threads(args.threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    rate = 2 * 1024**3 / median(time_call(lambda: a @ b, 7))  # FLOP/s
    print(machine())
    print(f"float32 GEMM rate ({args.threads} thread(s)): {rate / 1e9:.1f} GFLOP/s")
    print(f"batch {args.batch}, {args.repeats} steady calls, {args.threads} thread(s), float32, CPU\n")
    rows = []
    for path in args.models:
        for step in args.steps:
            result = {}
            for mode in ("eager", "compiled"):
                with tempfile.TemporaryDirectory() as cache:
                    _, result[mode] = run_child(
                        CHILD,
                        [path, mode, step, str(args.batch), str(args.repeats), str(args.threads)],
                        env={"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache},
                    )
            e, c = result["eager"], result["compiled"]
            text = Path(path).read_text(encoding="utf-8")
            macs = sum(x.macs for x in sphc.check_source(text, path).layers)
            floor = 8 * macs * args.batch * (3 if step == "train" else 1) / rate
            rows.append(
                (
                    path,
                    step,
                    fmt_s(floor),
                    fmt_s(e["first"]),
                    fmt_s(c["first"]),
                    fmt_s(e["steady"]),
                    fmt_s(c["steady"]),
                    f"{e['steady'] / c['steady']:.2f}x",
                    f"{(c['first'] - e['first']) / max(e['steady'] - c['steady'], 1e-9):.0f}"
                    if e["steady"] > c["steady"]
                    else "never",
                    "yes" if c["complex_warn"] else "no",
                )
            )
    head = (
        "model",
        "step",
        "floor",
        "eager 1st",
        "compiled 1st",
        "eager steady",
        "compiled steady",
        "speed-up",
        "calls to repay",
        "complex warning",
    )
    print(table(head, rows, title="torch.compile(fullgraph=True) vs eager (median of steady calls)"))
    print(
        "speed-up = eager steady / compiled steady; calls to repay = extra first-call time over the "
        "per-call saving"
    )


if __name__ == "__main__":
    main()
