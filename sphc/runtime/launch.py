"""Launching generated Triton kernels: config spaces, lazy autotuning, baked configs, output poisoning.

Every generated kernel comes with a *config space* (block sizes, warps, stages). On CUDA a
``Tunable`` autotunes lazily on the first call for each key (Triton's own autotuner, whose
in-memory cache then serves later calls); a config baked in by ``sphc compile --tuning`` skips
tuning. In Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) timing means nothing, so the
baked config, else the first one, runs.

The autotuning *key* of each kernel family is a launch argument the kernel really takes (checked
when a ``Tunable`` is built): the fused TP kernels key on ``BC`` (batch × channels, the grid's
second axis), the per-degree linear kernels on ``ROWS_BUCKET`` (signal rows rounded up to a power
of two, so ragged last batches reuse a config) and the weight-gradient kernel also on ``SPLIT``.
Everything else the kernels depend on (degrees, widths, paths) is a compile-time constant of the
generated module, so one cache entry per key value is exact.

Which config a launch uses, first match wins: an explicit ``config=`` (tests); a config forced by
:func:`forcing` (``sphc tune --dry-run``); the :class:`Recorder` of :func:`recording`, which times
every config of the space for that call and launches the winner (``sphc tune``); the baked config
(unless ``TUNED_FOR`` names another GPU than the one running: then a warning, once, and lazy
tuning); in the interpreter or for a one-point space the first config; else Triton's autotuner.

Tests set :func:`poison` so that every output buffer a kernel is meant to overwrite starts as NaN:
an element a kernel forgets to write then fails the comparison instead of passing as a zero.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from sphc import config
from sphc.kernel_spaces import Config, fit

_POISON = False
_FORCED: dict[str, Config] = {}
_FORCED_RAN: set[str] = set()
_RECORDER: Recorder | None = None
_DEVICE_NAMES: dict[int, str] = {}
_WARNED: set[tuple[str, str]] = set()


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


@dataclass
class Tunable:
    """A generated ``@triton.jit`` kernel with its config space.

    ``grid`` maps a config's meta dict to the launch grid; ``key`` names the integer arguments whose
    values select a tuning-cache entry; ``reset`` names output arguments that accumulate (atomics)
    and must be zeroed between autotuning trials. ``baked`` is a config chosen by ``sphc tune`` and
    compiled in, ``tuned_for`` the generated module's ``TUNED_FOR`` (the GPU it was tuned on).
    """

    name: str
    kernel: object
    space: tuple[Config, ...]
    key: tuple[str, ...]
    reset: tuple[str, ...] = ()
    baked: Config | None = None
    tuned_for: dict | None = None
    _autotuned: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        names = getattr(self.kernel, "arg_names", None)
        if names is not None:
            missing = [a for a in (*self.key, *self.reset) if a not in names]
            if missing:
                raise ValueError(f"kernel {self.name}: key/reset arguments {missing} are not parameters")

    def arguments(self, args: tuple, kwargs: dict) -> dict[str, object]:
        """The launch arguments by parameter name."""
        return {**dict(zip(self.kernel.arg_names, args)), **kwargs}

    def launch(
        self, grid: Callable[[dict], tuple[int, ...]], chosen: Config, args: tuple, kwargs: dict, extents=None
    ):
        """Launch once with ``chosen`` (a config of the space), fitted to ``extents``."""
        fitted = fit(chosen, extents) if extents else chosen
        meta = fitted.kwargs
        self.kernel[lambda _: grid(meta)](
            *args, **kwargs, **meta, num_warps=fitted.num_warps, num_stages=fitted.num_stages
        )

    def run(
        self,
        grid: Callable[[dict], tuple[int, ...]],
        *args,
        extents: dict[str, int] | None = None,
        config: Config | None = None,
        **kwargs,
    ):
        """Launch with the config the module docstring's order picks, fitted to ``extents``
        (``kernel_spaces.fit``: block sizes shrunk to the problem this layer launches)."""
        chosen = config or _FORCED.get(self.name)
        if chosen is not None and config is None:
            _FORCED_RAN.add(self.name)
        if chosen is None and _RECORDER is not None:
            chosen = _RECORDER.tune(self, grid, args, kwargs, extents)
        if chosen is None and self.baked is not None and self._baked_applies(args):
            chosen = self.baked
        if chosen is None and (interpreting() or len(self.space) == 1):
            chosen = self.space[0]
        if chosen is not None:
            self.launch(grid, chosen, args, kwargs, extents)
            return
        if self._autotuned is None:
            import triton

            fitted = [fit(c, extents) if extents else c for c in self.space]
            self._autotuned = triton.autotune(
                configs=[c.to_triton() for c in dict.fromkeys(fitted)],  # fitting can merge configs
                key=list(self.key),
                reset_to_zero=list(self.reset) or None,
            )(self.kernel)
        self._autotuned[grid](*args, **kwargs)

    def _baked_applies(self, args: tuple) -> bool:
        """False (with a warning, once per GPU pair) when the baked config was tuned on another GPU."""
        tuned = (self.tuned_for or {}).get("device")
        running = _gpu_name(args) if tuned is not None else None
        if running is None or running == tuned:
            return True
        if (tuned, running) not in _WARNED:
            _WARNED.add((tuned, running))
            warnings.warn(
                f"sphc: this model's kernels were tuned on {tuned!r} but run on {running!r}; they "
                "autotune lazily instead of using the baked configs (run `sphc tune` on this GPU)",
                RuntimeWarning,
                stacklevel=4,
            )
        return False


def _gpu_name(args: tuple) -> str | None:
    """The name of the CUDA device of a launch's first tensor argument (None: not on a GPU)."""
    t = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if t is None or not t.is_cuda:
        return None
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE_NAMES:
        _DEVICE_NAMES[index] = torch.cuda.get_device_name(index)
    return _DEVICE_NAMES[index]


@contextlib.contextmanager
def forcing(configs: dict[str, Config]) -> Iterator[set[str]]:
    """Launch kernel ``name`` with ``configs[name]`` (``sphc tune --dry-run``).

    Yields the set of the forced kernels' names that actually launched inside the block.
    """
    global _FORCED, _FORCED_RAN
    old, old_ran = _FORCED, _FORCED_RAN
    _FORCED, _FORCED_RAN = dict(configs), set()
    try:
        yield _FORCED_RAN
    finally:
        _FORCED, _FORCED_RAN = old, old_ran


def do_bench(fn: Callable[[], object]) -> float:
    """Median milliseconds per call of ``fn`` on the current CUDA device (Triton's benchmark loop)."""
    from triton.testing import do_bench as bench

    return float(bench(fn, warmup=25, rep=100, return_mode="median"))


@dataclass
class TuningRecord:
    """What :class:`Recorder` measured for one kernel: its key, every config's time, the winner."""

    key: dict[str, int]
    best: Config
    default: Config
    times_ms: dict[str, float]
    errors: dict[str, str]

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "best": self.best.to_json(),
            "times_ms": self.times_ms,
            "errors": self.errors,
        }


@dataclass
class Recorder:
    """Times every config of each kernel's space on its first launch (``sphc tune``).

    Kernels launched again (same name) reuse the winner. ``total`` (configs to time, all kernels
    together) sizes the progress bar; ``progress=False`` hides it.
    """

    progress: bool = True
    total: int | None = None
    records: dict[str, TuningRecord] = field(default_factory=dict)
    _bar: object = field(default=None, repr=False)

    def _progress(self):
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="tuning", unit="config", disable=not self.progress)
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def tune(self, tunable: Tunable, grid, args: tuple, kwargs: dict, extents=None) -> Config:
        """Time every config of the space (configs that fit to the same one are timed once); the winner."""
        if tunable.name in self.records:
            return self.records[tunable.name].best
        named = tunable.arguments(args, kwargs)
        key = {k: int(named[k]) for k in tunable.key}
        resets = [named[r] for r in tunable.reset]
        measured: dict[Config, float | str] = {}
        bar = self._progress()
        bar.set_postfix_str(tunable.name)
        for cfg in tunable.space:
            fitted = fit(cfg, extents) if extents else cfg
            if fitted not in measured:

                def trial(cfg: Config = cfg) -> None:
                    for t in resets:
                        t.zero_()
                    tunable.launch(grid, cfg, args, kwargs, extents)

                try:
                    measured[fitted] = do_bench(trial)
                except Exception as e:  # a config that does not compile or launch (e.g. out of resources)
                    first = str(e).strip().splitlines()
                    measured[fitted] = type(e).__name__ + (f": {first[0]}" if first else "")
            bar.update(1)
        results = {c.describe(): measured[fit(c, extents) if extents else c] for c in tunable.space}
        errors = {d: t for d, t in results.items() if isinstance(t, str)}
        times = {d: t for d, t in results.items() if not isinstance(t, str)}
        if not times:
            raise RuntimeError(f"kernel {tunable.name}: no config of its space ran: {errors}")
        best = min((c for c in tunable.space if c.describe() in times), key=lambda c: times[c.describe()])
        self.records[tunable.name] = TuningRecord(key, best, tunable.space[0], times, errors)
        for t in resets:  # the trials accumulated into these; the real launch starts from zero
            t.zero_()
        return best


@contextlib.contextmanager
def recording(progress: bool = True, total: int | None = None) -> Iterator[Recorder]:
    """Within the block, every ``Tunable`` launch times its whole config space first (see ``Recorder``)."""
    global _RECORDER
    old, _RECORDER = _RECORDER, Recorder(progress, total)
    try:
        yield _RECORDER
    finally:
        _RECORDER.close()
        _RECORDER = old
