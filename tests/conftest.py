"""Shared fixtures: every backend test runs once per backend, skipping the ones not here.

HIVE_GPU_TEST_BACKENDS=cuda,cpu restricts the run to those backends.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import hive_gpu

ALL_BACKENDS = ["cpu", "cuda", "rocm", "metal", "webgpu"]


def _selected() -> list[str]:
    env = os.environ.get("HIVE_GPU_TEST_BACKENDS")
    return [b.strip() for b in env.split(",") if b.strip()] if env else ALL_BACKENDS


def backend_skip_reason(backend: str) -> str | None:
    if backend not in _selected():
        return f"{backend}: not selected by HIVE_GPU_TEST_BACKENDS"
    if backend not in hive_gpu.compiled_backends():
        return f"{backend}: not compiled into this build"
    reason = hive_gpu.create_context.__globals__["_core"].backend_unavailable_reason(backend)
    if reason:
        return f"{backend}: {reason}"
    return None


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
