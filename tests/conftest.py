"""Shared fixtures: every backend test runs once per backend, skipping the ones not here.

HIVE_GPU_TEST_BACKENDS=cuda,cpu restricts the run to those backends. Skips are summed up at
the end of the run, one line per backend (and per other reason), instead of one line per test.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

import hive_gpu

ALL_BACKENDS = ["cpu", "cuda", "rocm", "metal", "webgpu"]


def _selected() -> list[str]:
    env = os.environ.get("HIVE_GPU_TEST_BACKENDS")
    return [b.strip() for b in env.split(",") if b.strip()] if env else ALL_BACKENDS


_STATUS: dict[str, str] = {}


def backend_skip_reason(backend: str) -> str | None:
    if backend not in _selected():
        return f"{backend}: not selected by HIVE_GPU_TEST_BACKENDS"
    if not _STATUS:  # availability does not change during a run
        _STATUS.update(hive_gpu.backend_status())
    reason = _STATUS[backend]
    if reason:
        return f"{backend}: {reason}"
    return None


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


_CONTEXTS: dict[str, hive_gpu.Context] = {}


@pytest.fixture(params=ALL_BACKENDS)
def backend(request) -> str:
    reason = backend_skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def ctx(backend) -> hive_gpu.Context:
    # One context per backend for the whole session: device start-up is not what we test.
    if backend not in _CONTEXTS:
        _CONTEXTS[backend] = hive_gpu.create_context(backend)
    return _CONTEXTS[backend]


@pytest.fixture
def rng(request) -> np.random.Generator:
    # A fresh, reproducible stream per test.
    return np.random.default_rng(abs(hash(request.node.nodeid)) % (2**32))


def make_ids(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]
