"""Mean relative equivariance error of every layer kind, next to the paper's table (docs/CONVENTIONS.md §9).

For each layer: random real input signals (random bandlimited MW samples pushed through the layers
before it), many Haar-random rotations applied exactly in harmonic space (Wigner-D; a pointwise layer
then synthesises the rotated signal on its grid), and the mean over rotations of
‖layer(R x) − R layer(x)‖ / ‖R layer(x)‖ — in float32 and float64. Harmonic layers should sit at
float precision; the pointwise layers (activation on MW samples) show the sampling error, and the
rows with ``oversample`` show what evaluating them on a finer grid buys.

    python benchmarks/equivariance.py            # L=16, 100 rotations
    python benchmarks/equivariance.py --quick    # L=8, 10 rotations
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import sphc
from sphc.apps.equivariance import layer_equivariance_error, random_bandlimited

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

# (row name, model whose trailing layers are measured, how many trailing runtime layers, paper float32)
CASES = [
    ("S²→S² conv (axisymmetric)", "-> ZonalConv C=4", 1, "~5e-7 (garbled)"),
    ("S²→SO(3) conv", "-> S2Conv C=4 N=4", 1, "5.3e-7"),
    ("SO(3)→SO(3) conv", "-> S2Conv C=4 N=4 -> SO3Conv C=4 N=4", 1, "9.3e-7"),
    (
        "tensor product (mst) → gen conv",
        "-> S2Conv C=4 N=2 -> EfficientLayer mst K=4 tau=2 tau_u=4",
        2,
        "5.0e-7",
    ),
    ("S² ReLU", "-> ZonalConv C=4 -> ReLU", 1, "3.4e-1"),
    ("S² ReLU, oversample=2", "-> ZonalConv C=4 -> ReLU oversample=2", 1, "-"),
    ("S² ReLU, oversample=3", "-> ZonalConv C=4 -> ReLU oversample=3", 1, "-"),
    ("SO(3) ReLU", "-> S2Conv C=4 N=4 -> ReLU", 1, "3.7e-1"),
    ("SO(3) ReLU, oversample=2", "-> S2Conv C=4 N=4 -> ReLU oversample=2", 1, "-"),
]


# The efficient layer as generated models run it (TensorProduct fused into GenConv's uniform step),
# with the fused kernel's input stored in half precision (``Model(io_dtype=...)``, fp32 accumulation).
# The torch reference rounds its input exactly as the kernel reads it, so this is the kernel's error.
FUSED = ("-> S2Conv C=4 N=2 -> EfficientLayer mst K=4 tau=2 tau_u=4", ("", "bfloat16", "float16"))


def measure(
    chain: str, tail: int, L: int, dtype: torch.dtype, rotations: int, rng, io_dtype: str | None = None
) -> float:
    model = sphc.load(f"Input s2 L={L} C=2 {chain}").Model(io_dtype=io_dtype).to(dtype).eval()
    layers = list(model.children())
    x = layers[0](random_bandlimited(4, 2, L, dtype))
    with torch.no_grad():
        for layer in layers[1:-tail]:
            x = layer(x)
    if io_dtype is not None:  # the fused call of the generated forward()
        tp, gc = layers[-2], layers[-1]
        return layer_equivariance_error(lambda h: gc.after(tp, h), x, rotations=rotations, rng=rng)
    under_test = torch.nn.Sequential(*layers[-tail:])
    return layer_equivariance_error(under_test, x, rotations=rotations, rng=rng)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, default=16)
    p.add_argument("--rotations", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="L=8, 10 rotations")
    args = p.parse_args()
    if args.quick:
        args.L, args.rotations = 8, 10
    print(machine())
    rng = np.random.default_rng()
    rows, start = [], time.perf_counter()
    for name, chain, tail, paper in CASES:
        errs = [
            measure(chain, tail, args.L, dt, args.rotations, rng) for dt in (torch.float32, torch.float64)
        ]
        rows.append((name, paper, f"{errs[0]:.1e}", f"{errs[1]:.1e}"))
    for io in FUSED[1]:
        err = measure(FUSED[0], 2, args.L, torch.float32, args.rotations, rng, io_dtype=io)
        name = f"fused TP → gen conv, inputs {io or 'float32'}, fp32 accumulation"
        rows.append((name, "-", f"{err:.1e}", "-"))
    title = (
        f"Mean relative equivariance error, L={args.L}, {args.rotations} random rotations, batch 4 "
        "(paper: float32, its L and protocol unknown)"
    )
    print(table(("layer", "paper (f32)", "sphc float32", "sphc float64"), rows, title=title))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
