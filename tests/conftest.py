"""Shared fixtures: every backend test runs once per backend, skipping the ones not here.

HIVE_GPU_TEST_BACKENDS=cuda,cpu restricts the run to those backends. Skips are summed up at
the end of the run, one line per backend (and per other reason), instead of one line per test.
"""

from __future__ import annotations

import collections
import zlib

import numpy as np
import pytest

import hive_gpu
from helpers import ALL_BACKENDS, backend_skip_reason


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # pyproject's addopts leave out "-rs": a build without GPUs would list hundreds of skipped
    # tests. Each backend's skips share one reason ("cuda: ..."), so this is a line per backend.
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts = collections.Counter(_skip_reason(r) for r in skipped)
    terminalreporter.section("skipped tests by reason", sep="-")
    for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.line(f"{n:6d}  {reason}")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request) -> str:
    reason = backend_skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture(params=["float32", "float16", "bfloat16"])
def dtype(request) -> str:
    """A storage dtype; make the store with helpers.dtype_store, which skips the dtypes a
    backend does not store yet."""
    return request.param


@pytest.fixture(scope="session")
def context_for():
    """``context_for(name)``: the session's one context of that backend, made on first use
    (device start-up is not what we test)."""
    made: dict[str, hive_gpu.Context] = {}

    def get(backend: str) -> hive_gpu.Context:
        if backend not in made:
            made[backend] = hive_gpu.create_context(backend)
        return made[backend]

    return get


@pytest.fixture
def ctx(backend, context_for) -> hive_gpu.Context:
    return context_for(backend)


def seed_of(nodeid: str) -> int:
    """The rng seed of a test: a stable hash of its node id (hash() is salted per process)."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def rng(request) -> np.random.Generator:
    # A fresh, reproducible stream per test; a failure's report names its seed.
    return np.random.default_rng(seed_of(request.node.nodeid))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "rng" in getattr(item, "fixturenames", ()):
        report.sections.append(("rng seed", f"np.random.default_rng({seed_of(item.nodeid)})"))
