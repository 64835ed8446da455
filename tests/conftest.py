"""Shared test setup: an isolated sphc cache per test session, so no stale entry is ever trusted."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SPHC_CACHE_DIR", str(tmp_path_factory.mktemp("sphc-cache")))
    yield
    mp.undo()


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* from the compiler")
