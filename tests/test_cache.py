"""The on-disk array cache: hits, keys, integrity checks, concurrent writers and unwritable directories."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sphc import config
from sphc.cache import DIGEST_KEY, CacheWarning, entry_path, load_or_compute

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPHC_NO_CACHE", raising=False)
    return tmp_path


class Counter:
    """A compute function that counts its calls, so a test can tell a cache hit from a recompute."""

    def __init__(self, scale: float = 1.0) -> None:
        self.calls = 0
        self.scale = scale

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return expected(self.scale)


def expected(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "x": scale * np.arange(1000, dtype=np.float64),
        "idx": np.arange(12, dtype=np.int64).reshape(3, 4),
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def test_second_call_hits_cache() -> None:
    compute = Counter()
    assert_same(load_or_compute("t", ("k", 1), compute), expected())
    assert_same(load_or_compute("t", ("k", 1), compute), expected())
    assert compute.calls == 1


def test_env_var_is_honoured(cache_env: Path) -> None:
    load_or_compute("t", "key", Counter())
    files = list(cache_env.rglob("*.npz"))
    assert files == [entry_path("t", "key")]
    assert files[0].parent == cache_env / f"v{config.CACHE_FORMAT_VERSION}" / "t"


def test_different_keys_use_different_files(cache_env: Path) -> None:
    a, b = Counter(1.0), Counter(2.0)
    assert_same(load_or_compute("t", ("k", 1), a), expected(1.0))
    assert_same(load_or_compute("t", ("k", 2), b), expected(2.0))
    assert entry_path("t", ("k", 1)) != entry_path("t", ("k", 2))
    assert len(list(cache_env.rglob("*.npz"))) == 2
    assert (a.calls, b.calls) == (1, 1)


def test_disabled_cache_computes_and_writes_nothing(cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPHC_NO_CACHE", "1")
    compute = Counter()
    load_or_compute("t", "k", compute)
    load_or_compute("t", "k", compute)
    assert compute.calls == 2
    assert not list(cache_env.rglob("*"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path: Path) -> None:
    """Flip bytes inside the stored array data (the zip's CRC or our digest must catch it)."""
    data = bytearray(path.read_bytes())
    start = data.index(np.arange(1000, dtype=np.float64)[500:501].tobytes())
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _tamper_keeping_digest(path: Path) -> None:
    """A well-formed npz whose arrays no longer match the stored digest."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["x"] = arrays["x"] + 1.0
    np.savez(path, **arrays)


def _drop_digest(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files if name != DIGEST_KEY}
    np.savez(path, **arrays)


@pytest.mark.parametrize("corrupt", [_truncate, _flip_bytes, _tamper_keeping_digest, _drop_digest])
def test_corrupt_entry_is_recomputed_and_rewritten(corrupt) -> None:
    compute = Counter()
    load_or_compute("t", "k", compute)
    corrupt(entry_path("t", "k"))
    with pytest.warns(CacheWarning):
        assert_same(load_or_compute("t", "k", compute), expected())
    assert compute.calls == 2
    assert_same(load_or_compute("t", "k", compute), expected())  # the rewritten entry is valid again
    assert compute.calls == 2


def test_unwritable_dir_still_computes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A path below a regular file cannot be created even by root, unlike a chmod-ed directory.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("SPHC_CACHE_DIR", str(blocker / "cache"))
    compute = Counter()
    with pytest.warns(CacheWarning, match="cannot write"):
        assert_same(load_or_compute("t", "k", compute), expected())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # warned once per directory, not on every call
        assert_same(load_or_compute("t", "k", compute), expected())
    assert compute.calls == 2


def test_rejects_unsafe_inputs() -> None:
    with pytest.raises(ValueError):
        load_or_compute("../escape", "k", Counter())
    with pytest.raises(TypeError):
        load_or_compute("t", "k", lambda: {"o": np.array([object()])})


RACER = """
import sys, time
from pathlib import Path
import numpy as np
from sphc.cache import load_or_compute

ready, go, out = map(Path, sys.argv[1:4])

def compute():
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists():  # hold until both processes are computing the same entry
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.01)
    return {"big": np.arange(2_000_000, dtype=np.float64), "small": np.array([1, 2, 3], dtype=np.int32)}

np.savez(out, **load_or_compute("race", ("shared", 1), compute))
"""


def test_concurrent_writers(cache_env: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    go = cache_env / "go"
    procs, readies, outs = [], [], []
    for i in range(2):
        ready, out = cache_env / f"ready{i}", cache_env / f"out{i}.npz"
        cmd = [sys.executable, "-c", RACER, str(ready), str(go), str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        readies.append(ready)
        outs.append(out)
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "racers did not start"
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()

    want = {"big": np.arange(2_000_000, dtype=np.float64), "small": np.array([1, 2, 3], dtype=np.int32)}
    for out in outs:
        with np.load(out) as npz:
            assert_same({name: npz[name] for name in npz.files}, want)
    entries = list((cache_env / f"v{config.CACHE_FORMAT_VERSION}" / "race").iterdir())
    assert entries == [entry_path("race", ("shared", 1))], "exactly one entry and no temp files"

    def must_not_run() -> dict[str, np.ndarray]:
        raise AssertionError("the surviving entry should be valid")

    assert_same(load_or_compute("race", ("shared", 1), must_not_run), want)
