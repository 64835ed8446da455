"""Shared test setup: an isolated sphc cache per test session, so no stale entry is ever trusted.

Without a GPU the generated kernels are tested in Triton's CPU interpreter, which must be switched on
before ``triton`` is first imported (some ``triton.language`` helpers bind to the mode at import):
so it is set here, before any test module loads a generated model. With CUDA the kernel tests run
the compiled kernels on the GPU instead (``tests/test_kernels_*.py`` pick the device).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SPHC_CACHE_DIR", str(tmp_path_factory.mktemp("sphc-cache")))
    yield
    mp.undo()


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* from the compiler")
