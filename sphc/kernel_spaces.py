"""Config spaces of the generated Triton kernels: the meta-parameters each kernel may be launched with.

Torch-free on purpose: the compiler names each kernel's space (``sphc tune`` and ``sphc compile
--tuning`` check configs against it) and the runtime autotunes over the same space, so both import
it from here and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sphc.layout import next_pow2


@dataclass(frozen=True)
class Config:
    """One point of a kernel's config space: constexpr meta-parameters plus launch options."""

    meta: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    @property
    def kwargs(self) -> dict[str, int]:
        return dict(self.meta)

    def describe(self) -> str:
        return (
            " ".join(f"{k}={v}" for k, v in self.meta) + f" warps={self.num_warps} stages={self.num_stages}"
        )

    def to_triton(self):
        import triton

        return triton.Config(self.kwargs, num_warps=self.num_warps, num_stages=self.num_stages)

    @staticmethod
    def from_json(d: dict) -> Config:
        return Config(
            tuple(sorted((k, int(v)) for k, v in d["meta"].items())), d["num_warps"], d["num_stages"]
        )

    def to_json(self) -> dict:
        return {"meta": self.kwargs, "num_warps": self.num_warps, "num_stages": self.num_stages}


def configs(
    space: dict[str, Sequence[int]], warps: Sequence[int], stages: Sequence[int]
) -> tuple[Config, ...]:
    """The Cartesian product of a meta-parameter space with warps and stages, first entries first."""
    out: list[Config] = [Config(())]
    for name, values in space.items():
        out = [Config(c.meta + ((name, v),)) for c in out for v in values]
    return tuple(Config(c.meta, w, s) for c in out for w in warps for s in stages)


def _space(names: tuple[str, ...], rows: tuple[tuple[int, ...], ...]) -> tuple[Config, ...]:
    """Configs from rows of (block sizes in ``names`` order..., warps, stages); meta sorted by name."""
    return tuple(Config(tuple(sorted(zip(names, r[:-2]))), r[-2], r[-1]) for r in rows)


#: The per-degree linear kernel (``degree_gemm``, forward and input gradient): (BLOCK_M rows,
#: BLOCK_N output columns, BLOCK_K reduction, warps, stages), default first.
ROWGEMM_SPACE = _space(
    ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
    (
        (64, 64, 32, 4, 2),
        (32, 64, 32, 4, 2),
        (64, 32, 32, 4, 2),
        (32, 32, 32, 4, 2),
        (64, 64, 16, 4, 3),
        (128, 64, 32, 8, 2),
        (128, 32, 32, 4, 3),
        (64, 128, 32, 8, 2),
        (64, 64, 64, 8, 3),
        (16, 64, 64, 4, 2),
    ),
)

#: Its weight gradient (``degree_wgrad``): (BLOCK_J weight rows, BLOCK_N weight columns, BLOCK_R
#: reduction over signal rows, warps, stages).
WGRAD_SPACE = _space(
    ("BLOCK_J", "BLOCK_N", "BLOCK_R"),
    (
        (32, 32, 64, 4, 2),
        (64, 64, 32, 4, 2),
        (32, 32, 32, 4, 3),
        (64, 32, 64, 4, 2),
        (32, 64, 64, 4, 2),
        (16, 32, 128, 4, 2),
        (64, 64, 64, 8, 3),
        (16, 16, 128, 4, 2),
    ),
)

#: Both fused tensor-product kernels: examples per program, warps, pipeline stages.
TP_SPACE = configs({"BLOCK": (32, 16, 64, 128)}, warps=(4, 2, 8), stages=(1,))


def fit(config: Config, extents: dict[str, int]) -> Config:
    """``config`` with each block named in ``extents`` shrunk to the smallest power of two covering
    its extent, but never below 16 (the smallest ``tl.dot`` operand every target takes): no block
    wider than the problem. The spaces stay fixed (tuning files name their configs); a launch fits."""
    meta = tuple((k, max(16, min(v, next_pow2(extents[k]))) if k in extents else v) for k, v in config.meta)
    return Config(meta, config.num_warps, config.num_stages)
