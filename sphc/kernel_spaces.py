"""Config spaces of the generated Triton kernels: the meta-parameters each kernel may be launched with.

Torch-free on purpose: the compiler names each kernel's space (``sphc tune`` and ``sphc compile
--tuning`` check configs against it) and the runtime autotunes over the same space, so both import
it from here and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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


#: (BLOCK_M rows, BLOCK_N output columns, BLOCK_K reduction, warps, stages), default first. Block
#: sizes are clamped to the problem (never below 16, the smallest tl.dot operand every target takes).
_ROWGEMM = (
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
)

#: (BLOCK_J weight rows, BLOCK_N weight columns, BLOCK_R reduction over signal rows, warps, stages).
_WGRAD = (
    (32, 32, 64, 4, 2),
    (64, 64, 32, 4, 2),
    (32, 32, 32, 4, 3),
    (64, 32, 64, 4, 2),
    (32, 64, 64, 4, 2),
    (16, 32, 128, 4, 2),
    (64, 64, 64, 8, 3),
    (16, 16, 128, 4, 2),
)


def _block(n: int, cap: int) -> int:
    """The smallest power of two >= n, clamped to [16, cap]: no block wider than the problem needs."""
    return max(16, min(cap, 1 << max(0, n - 1).bit_length()))


def rowgemm_space(J: int, N: int) -> tuple[Config, ...]:
    """Configs of the forward / input-gradient kernel: reduction size ``J``, output width ``N``."""
    out: list[Config] = []
    for bm, bn, bk, warps, stages in _ROWGEMM:
        meta = (("BLOCK_M", bm), ("BLOCK_N", _block(N, bn)), ("BLOCK_K", _block(J, bk)))
        cfg = Config(tuple(sorted(meta)), warps, stages)  # sorted like Config.from_json
        if cfg not in out:
            out.append(cfg)
    return tuple(out)


def wgrad_space(J: int, N: int) -> tuple[Config, ...]:
    """Configs of the weight-gradient kernel, whose output tile is (``J`` = C·T) × (``N`` = K·V)."""
    out: list[Config] = []
    for bj, bn, br, warps, stages in _WGRAD:
        meta = (("BLOCK_J", _block(J, bj)), ("BLOCK_N", _block(N, bn)), ("BLOCK_R", br))
        cfg = Config(tuple(sorted(meta)), warps, stages)  # sorted like Config.from_json
        if cfg not in out:
            out.append(cfg)
    return tuple(out)


#: The space of both fused tensor-product kernels: examples per program, warps, pipeline stages.
TP_SPACE = configs({"BLOCK": (32, 16, 64, 128)}, warps=(4, 2, 8), stages=(1,))
