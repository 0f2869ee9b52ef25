"""Edge cases of the CPU engine's kernels, through the public API: dimensions that are not a
multiple of the SIMD width, row counts around the tile and chunk boundaries, query counts
around the register block (4), the direct-Euclidean cut-off (3) and the query block (64),
k = n and k > n, exact ties across thread partitions, and many threads searching at once.

Every compiled instruction set is exercised on this machine: a subprocess caps the kernels
with HIVE_GPU_CPU_ISA and changes the partitioning with HIVE_GPU_CPU_THREADS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import hive_gpu
from hive_gpu import GpuDistanceMetric
from helpers import make_ids
from reference import METRICS, assert_matches

# (dimension, row counts): counts straddle the tile (floor(256 KiB / 4d / 3) * 3 rows, at most
# 1023) and leave remainders modulo the 3-row register block.
SWEEP = {
    1: [1, 7, 1024, 3001],
    3: [5, 1025, 4099],
    17: [4, 1022, 1023, 5003],
    100: [653, 655, 2000],
    768: [83, 84, 85, 300],
    4096: [14, 15, 16, 46],
}
QUERY_COUNTS = [1, 2, 3, 4, 5, 67]
# Queries checked against the oracle: both sides of the register block and the query block.
CHECKED_QUERIES = [0, 1, 2, 3, 4, 63, 64, 65, 66]


@pytest.fixture(scope="module")
def cpu():
    return hive_gpu.create_context("cpu")


def _store(ctx, X, metric):
    s = ctx.create_storage(X.shape[1], metric)
    s.add_vectors(make_ids(len(X)), X)
    return s


def _check_batch(store, X, Q, metric, k):
    scores, ids = store.search_batch(Q, k)
    assert scores.shape == (len(Q), min(k, len(X)))
    row_ids = make_ids(len(X))
    for q in (i for i in CHECKED_QUERIES if i < len(Q)):
        assert_matches(ids[q], scores[q], X, row_ids, Q[q : q + 1], metric, k)


def sweep(ctx, dims=None, seed=0) -> int:
    """Every metric, query count and k edge on every SWEEP shape; returns the checks run."""
    rng = np.random.default_rng(seed)
    checks = 0
    for d, counts in SWEEP.items():
        if dims is not None and d not in dims:
            continue
        for n in counts:
            X = rng.standard_normal((n, d)).astype(np.float32)
            for metric in METRICS:
                store = _store(ctx, X, metric)
                for nq in QUERY_COUNTS:
                    Q = rng.standard_normal((nq, d)).astype(np.float32)
                    for k in sorted({1, 10, n, n + 5}):
                        if k > n + 5 or (nq > 5 and k > 10 and n > 1100):
                            continue
                        _check_batch(store, X, Q, metric, k)
                        checks += 1
                store.close()
    return checks


@pytest.mark.parametrize("d", sorted(SWEEP))
def test_matches_float64_reference(cpu, d):
    assert sweep(cpu, dims={d}, seed=d) > 0


def test_single_query_path_matches_reference(cpu):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((2051, 37)).astype(np.float32)
    row_ids = make_ids(len(X))
    for metric in METRICS:
        store = _store(cpu, X, metric)
        for _ in range(5):
            q = rng.standard_normal(37).astype(np.float32)
            hits = store.search(q, 17)
            assert_matches([h.id for h in hits], [h.distance for h in hits], X, row_ids, q[None], metric, 17)


def _tie_data(rng, n, d, distinct=5):
    """n rows, each a copy of one of `distinct` random vectors, in random order."""
    base = rng.standard_normal((distinct, d)).astype(np.float32)
    which = rng.integers(0, distinct, n)
    return base[which], which


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 8])
def test_exact_ties_rank_by_insertion_across_partitions(cpu, metric, nq):
    rng = np.random.default_rng(3 + nq)
    n, d, k = 24_001, 33, 60
    X, which = _tie_data(rng, n, d)
    store = _store(cpu, X, metric)
    Q = rng.standard_normal((nq, d)).astype(np.float32)

    base = np.asarray([X[np.flatnonzero(which == g)[0]] for g in range(5)], np.float64)

    def expected(alive):
        # Copies score bit-identically, so within a group of copies insertion order decides.
        out = []
        for q in Q.astype(np.float64):
            if metric is GpuDistanceMetric.EUCLIDEAN:
                key = ((base - q) ** 2).sum(1)
            elif metric is GpuDistanceMetric.COSINE:
                key = -(base @ q) / np.linalg.norm(base, axis=1)
            else:
                key = -(base @ q)
            rows = [r for g in np.argsort(key) for r in np.flatnonzero(which == g) if alive[r]]
            out.append([f"v{r}" for r in rows[:k]])
        return out

    alive = np.ones(n, bool)
    _, ids = store.search_batch(Q, k)
    assert [list(r) for r in ids] == expected(alive)
    # Swap-removes move late rows into early slots: slot order is no longer insertion order.
    gone = rng.choice(n, 3000, replace=False)
    store.remove_vectors([f"v{r}" for r in gone])
    alive[gone] = False
    _, ids = store.search_batch(Q, k)
    assert [list(r) for r in ids] == expected(alive)
    if nq == 1:
        assert [h.id for h in store.search(Q[0], k)] == expected(alive)[0]


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_euclidean_self_distance_is_zero_in_every_path(cpu, scale):
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((5000, 96)) * scale).astype(np.float32)
    store = _store(cpu, X, GpuDistanceMetric.EUCLIDEAN)
    for nq in (1, 3, 4, 64):
        rows = rng.choice(len(X), nq, replace=False)
        scores, ids = store.search_batch(X[rows], 3)
        assert [r[0] for r in ids] == [f"v{r}" for r in rows]
        assert np.all(scores[:, 0] == 0.0)
        assert np.all(scores[:, 1] > 0.0)


@pytest.mark.parametrize("metric", METRICS)
def test_k_equal_to_and_above_n_returns_the_full_ranking(cpu, metric):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3001, 19)).astype(np.float32)
    store = _store(cpu, X, metric)
    Q = rng.standard_normal((6, 19)).astype(np.float32)
    for k in (3001, 3010):
        _check_batch(store, X, Q, metric, k)
        scores, ids = store.search_batch(Q, k)
        assert all(len(set(r)) == 3001 for r in ids)


def test_zero_rows_and_queries_score_zero_under_cosine(cpu):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((300, 21)).astype(np.float32)
    X[[4, 150]] = 0.0
    store = _store(cpu, X, GpuDistanceMetric.COSINE)
    scores, ids = store.search_batch(np.zeros((5, 21), np.float32), 300)
    assert np.all(scores == 0.0)
    assert [list(r) for r in ids] == [make_ids(300)] * 5  # all tie: insertion order
    scores, ids = store.search_batch(rng.standard_normal((5, 21)).astype(np.float32), 300)
    for r, s in zip(ids, scores):
        pos = {v: i for i, v in enumerate(r)}
        assert s[pos["v4"]] == 0.0 and s[pos["v150"]] == 0.0


def test_rows_read_back_bit_for_bit(cpu):
    rng = np.random.default_rng(10)
    X = rng.standard_normal((50, 17)).astype(np.float32)
    X[0, :4] = [-0.0, 1e-40, -1e-45, 3.4e18]
    for metric in METRICS:
        store = _store(cpu, X, metric)
        for i in (0, 31, 49):
            got = store.get_vector(f"v{i}").data
            assert np.asarray(got, np.float32).tobytes() == X[i].tobytes()


def test_concurrent_searches_give_identical_answers(cpu):
    rng = np.random.default_rng(12)
    X = rng.standard_normal((40_000, 64)).astype(np.float32)
    stores = {m: _store(cpu, X, m) for m in METRICS}
    queries = {nq: rng.standard_normal((nq, 64)).astype(np.float32) for nq in (1, 3, 5, 64)}
    want = {(m, nq): stores[m].search_batch(Q, 10) for m in METRICS for nq, Q in queries.items()}
    errors: list[str] = []

    def worker(seed):
        r = np.random.default_rng(seed)
        for _ in range(12):
            m = METRICS[r.integers(len(METRICS))]
            nq = list(queries)[r.integers(len(queries))]
            scores, ids = stores[m].search_batch(queries[nq], 10)
            ws, wi = want[(m, nq)]
            if not (np.array_equal(scores, ws) and np.array_equal(ids, wi)):
                errors.append(f"{m} nq={nq} differs")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


_CHILD = """
import json, os, sys
sys.path.insert(0, {tests!r})
import hive_gpu, test_cpu_kernels as t
ctx = hive_gpu.create_context("cpu")
info = ctx.device_info()
want = os.environ.get("HIVE_GPU_CPU_ISA")
runs = not want or f"kernels: {{want}}" in info.compute_capability
checks = t.sweep(ctx, dims={dims}, seed=42) if runs else 0
print(json.dumps({{"isa": info.compute_capability, "threads": info.max_threads_per_block, "checks": checks}}))
"""


def _run_child(env_extra: dict[str, str], dims) -> dict:
    env = dict(os.environ, **env_extra)
    code = _CHILD.format(tests=str(Path(__file__).parent), dims=set(dims))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_instruction_set_matches_reference(isa):
    got = _run_child({"HIVE_GPU_CPU_ISA": isa, "HIVE_GPU_CPU_THREADS": "3"}, [1, 17, 100, 768])
    if f"kernels: {isa}" not in got["isa"]:
        pytest.skip(f"this CPU cannot run the {isa} kernels ({got['isa']})")
    assert got["threads"] == 3 and got["checks"] > 0


@pytest.mark.parametrize("threads", ["1", "7"])
def test_partitioning_does_not_change_answers(threads):
    got = _run_child({"HIVE_GPU_CPU_THREADS": threads}, [3, 17, 4096])
    assert got["threads"] == int(threads) and got["checks"] > 0
