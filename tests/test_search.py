"""Search results of every backend against the float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import dtype_store, make_ids
from reference import METRICS, assert_matches, rounded, topk64

import hive_gpu
from hive_gpu import GpuDistanceMetric


def filled(ctx, X, metric, ids=None, dtype="float32"):
    s = dtype_store(ctx, X.shape[1], metric, dtype)
    ids = ids or make_ids(len(X))
    if len(X):
        s.add_vectors(ids, X)
    return s, ids


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (300, 17), (2000, 64), (5000, 130)])
def test_single_query_matches_reference(ctx, rng, metric, n, d, dtype):
    # 16-bit stores: the reference scores the rows as stored (rounded once, at insert).
    X = rng.standard_normal((n, d)).astype(np.float32)
    s, ids = filled(ctx, X, metric, dtype=dtype)
    R = rounded(X, dtype)
    for k in sorted({1, 10, n, n + 5}):
        q = rng.standard_normal(d).astype(np.float32)
        hits = s.search(q, k)
        assert len(hits) == min(k, n)
        assert_matches([h.id for h in hits], [h.distance for h in hits], R, ids, q, metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("nq", [1, 5, 33])
def test_batch_matches_reference(ctx, rng, metric, nq, dtype):
    n, d, k = 3000, 48, 12
    X = (rng.standard_normal((n, d)) * 3 + 0.5).astype(np.float32)
    s, ids = filled(ctx, X, metric, dtype=dtype)
    R = rounded(X, dtype)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    scores, got = s.search_batch(Q, k)
    assert scores.shape == (nq, k) and got.shape == (nq, k)
    assert scores.dtype == np.float32 and got.dtype == object
    for i in range(nq):
        assert_matches(got[i], scores[i], R, ids, Q[i], metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_batch_equals_single(ctx, rng, metric):
    X = rng.standard_normal((1500, 40)).astype(np.float32)
    s, _ = filled(ctx, X, metric)
    Q = rng.standard_normal((9, 40)).astype(np.float32)
    scores, ids = s.search_batch(Q, 7)
    for i in range(len(Q)):
        hits = s.search(Q[i], 7)
        assert [h.id for h in hits] == list(ids[i])
        np.testing.assert_allclose([h.distance for h in hits], scores[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [64, 257, 1000, 2048])
def test_large_k(ctx, rng, k):
    X = rng.standard_normal((3000, 32)).astype(np.float32)
    s, ids = filled(ctx, X, GpuDistanceMetric.DOT_PRODUCT)
    q = rng.standard_normal(32).astype(np.float32)
    hits = s.search(q, k)
    assert_matches([h.id for h in hits], [h.distance for h in hits], X, ids, q, GpuDistanceMetric.DOT_PRODUCT, k)
    scores, got = s.search_batch(np.stack([q, -q]), k)
    assert_matches(got[1], scores[1], X, ids, -q, GpuDistanceMetric.DOT_PRODUCT, k)


def test_k_larger_than_count_returns_everything_sorted(ctx, rng):
    X = rng.standard_normal((5, 8)).astype(np.float32)
    s, ids = filled(ctx, X, GpuDistanceMetric.EUCLIDEAN)
    hits = s.search(X[2], 100)
    assert len(hits) == 5
    assert hits[0].id == "v2" and hits[0].distance == pytest.approx(0.0, abs=1e-3)
    d = [h.distance for h in hits]
    assert d == sorted(d)
    scores, got = s.search_batch(X[:3], 50)
    assert scores.shape == (3, 5)


def test_empty_store_returns_nothing(ctx, rng):
    s = ctx.create_storage(16, "cosine")
    q = rng.standard_normal(16).astype(np.float32)
    assert s.search(q, 5) == []
    scores, ids = s.search_batch(np.stack([q, q]), 5)
    assert scores.shape == (2, 0) and ids.shape == (2, 0)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_ties_follow_insertion_order(ctx, rng, metric):
    d = 24
    base = rng.standard_normal(d).astype(np.float32)
    other = rng.standard_normal((50, d)).astype(np.float32)
    s = ctx.create_storage(d, metric)
    # Five identical copies inserted at different times, interleaved with other rows.
    order = []
    for i in range(5):
        s.add_vectors([f"o{i}_{j}" for j in range(10)], other[i * 10 : (i + 1) * 10])
        s.add_vector(f"dup{i}", base)
        order.append(f"dup{i}")
    hits = s.search(base, 5)
    assert [h.id for h in hits] == order
    assert len({h.distance for h in hits}) == 1
    # Removing one and re-adding it makes it the youngest copy.
    assert s.remove_vector("dup1")
    s.add_vector("dup1", base)
    hits = s.search(base, 5)
    assert [h.id for h in hits] == ["dup0", "dup2", "dup3", "dup4", "dup1"]
    scores, ids = s.search_batch(np.stack([base, base]), 3)
    assert list(ids[0]) == list(ids[1]) == ["dup0", "dup2", "dup3"]


def test_ties_survive_swap_remove_layout(ctx, rng):
    # After removals the slot layout no longer matches insertion order; ties must not care.
    d = 8
    v = np.ones(d, np.float32)
    s = ctx.create_storage(d, "dot")
    s.add_vectors([f"t{i}" for i in range(20)], np.tile(v, (20, 1)))
    for i in (0, 3, 7, 12):
        s.remove_vector(f"t{i}")
    expected = [f"t{i}" for i in range(20) if i not in (0, 3, 7, 12)]
    assert [h.id for h in s.search(v, 16)] == expected


def test_cosine_zero_vectors_score_zero(ctx, rng):
    s = ctx.create_storage(6, "cosine")
    s.add_vector("zero", np.zeros(6, np.float32))
    s.add_vector("x", rng.standard_normal(6).astype(np.float32))
    hits = s.search(np.zeros(6, np.float32), 2)
    assert [h.distance for h in hits] == [0.0, 0.0]
    assert [h.id for h in hits] == ["zero", "x"]  # all ties: insertion order
    hits = s.search(rng.standard_normal(6).astype(np.float32), 2)
    assert {h.id for h in hits} == {"zero", "x"}
    assert [h.distance for h in hits if h.id == "zero"] == [0.0]


def test_results_carry_metadata(ctx, rng):
    X = rng.standard_normal((30, 5)).astype(np.float32)
    s = ctx.create_storage(5, "euclidean")
    s.add_vectors(make_ids(30), X, [{"row": str(i)} for i in range(30)])
    for h in s.search(X[4], 3):
        assert h.metadata == {"row": h.id[1:]}


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_scaled_data(ctx, rng, metric):
    # Large and small magnitudes, not just unit-scale data.
    X = (rng.standard_normal((800, 20)) * rng.uniform(1e-3, 1e3, size=(800, 1))).astype(np.float32)
    s, ids = filled(ctx, X, metric)
    q = (rng.standard_normal(20) * 50).astype(np.float32)
    hits = s.search(q, 10)
    assert_matches([h.id for h in hits], [h.distance for h in hits], X, ids, q, metric, 10)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 120),
    d=st.integers(1, 40),
    k=st.integers(1, 130),
    metric=st.sampled_from(METRICS),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_random_stores(ctx, n, d, k, metric, seed):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, d)).astype(np.float32)
    s, ids = filled(ctx, X, metric)
    Q = r.standard_normal((3, d)).astype(np.float32)
    scores, got = s.search_batch(Q, k)
    for i in range(3):
        assert_matches(got[i], scores[i], X, ids, Q[i], metric, k)


def test_reference_helper_detects_wrong_answers(rng):
    # The oracle itself must fail on a wrong result, or the suite proves nothing.
    X = rng.standard_normal((50, 4)).astype(np.float32)
    q = rng.standard_normal(4).astype(np.float32)
    ids = make_ids(50)
    s, rows = topk64(X, q, GpuDistanceMetric.DOT_PRODUCT, 3)
    good = [ids[r] for r in rows[0]]
    assert_matches(good, s[0], X, ids, q, GpuDistanceMetric.DOT_PRODUCT, 3)
    with pytest.raises(AssertionError):
        assert_matches(good[::-1], s[0][::-1], X, ids, q, GpuDistanceMetric.DOT_PRODUCT, 3)
    with pytest.raises(AssertionError):
        assert_matches(good, s[0] + 0.5, X, ids, q, GpuDistanceMetric.DOT_PRODUCT, 3)


def test_available_backends_lists_cpu():
    assert "cpu" in hive_gpu.available_backends()
    assert hive_gpu.compiled_backends()[-1] == "cpu"
