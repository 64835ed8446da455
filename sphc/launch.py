"""Launching generated Triton kernels: config spaces, lazy autotuning, baked configs, output poisoning.

Every generated kernel comes with a *config space* (block sizes, warps, stages). On CUDA a
``Tunable`` autotunes lazily on the first call for each key (Triton's own autotuner, whose
in-memory cache then serves later calls); a config baked in by ``sphc compile --tuning`` skips
tuning. In Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) timing means nothing, so the
baked config, else the first one, runs. ``sphc tune`` drives ``Tunable.run`` config by config.

Tests set :func:`poison` so that every output buffer a kernel is meant to overwrite starts as NaN:
an element a kernel forgets to write then fails the comparison instead of passing as a zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from . import config

_POISON = False


@contextlib.contextmanager
def poison(enabled: bool = True) -> Iterator[None]:
    """Fill kernel outputs with NaN before launch (tests only)."""
    global _POISON
    old, _POISON = _POISON, enabled
    try:
        yield
    finally:
        _POISON = old


def empty(shape: Sequence[int], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer every element of which the kernel writes (NaN-filled under ``poison``)."""
    out = torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device)
    if _POISON:
        out.fill_(float("nan"))
    return out


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (read at kernel definition time)."""
    return config.triton_interpreting()


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


@dataclass
class Tunable:
    """A generated ``@triton.jit`` kernel with its config space.

    ``grid`` maps a config's meta dict to the launch grid; ``key`` names the integer arguments whose
    values select a tuning-cache entry; ``reset`` names output arguments that accumulate (atomics)
    and must be zeroed between autotuning trials.
    """

    name: str
    kernel: object
    space: tuple[Config, ...]
    key: tuple[str, ...]
    reset: tuple[str, ...] = ()
    baked: Config | None = None
    _autotuned: object = field(default=None, repr=False)

    def run(self, grid: Callable[[dict], tuple[int, ...]], *args, config: Config | None = None, **kwargs):
        """Launch with ``config``, the baked one, lazily autotuned ones (CUDA) or the first (interpreter)."""
        chosen = config or self.baked
        if chosen is None and (interpreting() or len(self.space) == 1):
            chosen = self.space[0]
        if chosen is not None:
            meta = chosen.kwargs
            self.kernel[lambda _: grid(meta)](
                *args, **kwargs, **meta, num_warps=chosen.num_warps, num_stages=chosen.num_stages
            )
            return
        if self._autotuned is None:
            import triton

            self._autotuned = triton.autotune(
                configs=[c.to_triton() for c in self.space],
                key=list(self.key),
                reset_to_zero=list(self.reset) or None,
            )(self.kernel)
        self._autotuned[grid](*args, **kwargs)
