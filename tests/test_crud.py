"""Add / get / update / remove / clear semantics, identical on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import dtype_store, make_ids
from reference import METRICS, assert_matches, rounded

import hive_gpu
from hive_gpu import GpuDistanceMetric, GpuVector


def test_add_get_roundtrip_is_exact(ctx, rng, dtype):
    s = dtype_store(ctx, 33, "cosine", dtype)
    v = rng.standard_normal(33).astype(np.float32)
    s.add_vector(GpuVector("a", v, {"lang": "pt"}))
    got = s.get_vector("a")
    assert got is not None and got.id == "a" and got.metadata == {"lang": "pt"}
    assert got.data.dtype == np.float32
    # Bit for bit as stored (as given for float32), cosine included.
    np.testing.assert_array_equal(got.data, rounded(v, dtype))
    assert s.get_vector("missing") is None
    assert len(s) == s.vector_count() == 1
    assert "a" in s and "b" not in s and 3 not in s


def test_batch_add_and_forms(ctx, rng, dtype):
    s = dtype_store(ctx, 4, "dot", dtype)
    X = rng.standard_normal((10, 4)).astype(np.float32)
    s.add_vectors(make_ids(10), X, [{"i": str(i)} for i in range(10)])
    s.add_vectors([GpuVector("g1", X[0], {"k": "v"}), GpuVector("g2", X[1])])
    s.add_vectors([], np.zeros((0, 4), np.float32))
    assert len(s) == 12
    assert s.get_metadata("v7") == {"i": "7"}
    assert s.get_metadata("g1") == {"k": "v"}
    assert s.get_metadata("g2") == {}
    np.testing.assert_array_equal(s.get_vector("v9").data, rounded(X[9], dtype))
    np.testing.assert_array_equal(s.get_vectors(["g2", "v0"])[0], rounded(X[[1, 0]], dtype))
    assert sorted(s.ids()) == sorted(make_ids(10) + ["g1", "g2"])


def test_update(ctx, rng, dtype):
    s = dtype_store(ctx, 8, "euclidean", dtype)
    X = rng.standard_normal((20, 8)).astype(np.float32)
    s.add_vectors(make_ids(20), X, [{"n": str(i)} for i in range(20)])
    target = (rng.standard_normal(8) * 10).astype(np.float32)
    assert s.update_vector("v3", target)
    assert s.get_metadata("v3") == {"n": "3"}  # metadata kept when not given
    hits = s.search(rounded(target, dtype), 1)  # the stored row itself
    assert hits[0].id == "v3" and hits[0].distance == pytest.approx(0.0, abs=1e-3)
    assert s.update_vector(GpuVector("v3", target, {"new": "1"}))
    assert s.get_metadata("v3") == {"new": "1"}
    assert not s.update_vector("nope", target)
    assert len(s) == 20
    np.testing.assert_array_equal(s.get_vector("v3").data, rounded(target, dtype))


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_remove_then_search(ctx, rng, metric, dtype):
    n, d = 400, 16
    X = rng.standard_normal((n, d)).astype(np.float32)
    ids = make_ids(n)
    s = dtype_store(ctx, d, metric, dtype)
    s.add_vectors(ids, X)
    gone = set(rng.choice(n, 150, replace=False).tolist())
    for i in sorted(gone):
        assert s.remove_vector(ids[i])
    assert not s.remove_vector(ids[next(iter(gone))])
    keep = [i for i in range(n) if i not in gone]
    assert len(s) == len(keep)
    Xk, idk = rounded(X, dtype)[keep], [ids[i] for i in keep]
    for _ in range(3):
        q = rng.standard_normal(d).astype(np.float32)
        hits = s.search(q, 25)
        assert not ({h.id for h in hits} & {ids[i] for i in gone})
        assert_matches([h.id for h in hits], [h.distance for h in hits], Xk, idk, q, metric, 25)
    # Every survivor still returns its own data.
    for i in keep[:50]:
        np.testing.assert_array_equal(s.get_vector(ids[i]).data, rounded(X[i], dtype))


def test_remove_vectors_bulk(ctx, rng, dtype):
    s = dtype_store(ctx, 3, "dot", dtype)
    s.add_vectors(make_ids(10), rng.standard_normal((10, 3)).astype(np.float32))
    assert s.remove_vectors(["v1", "v2", "zz", "v1"]) == 2
    assert len(s) == 8 and "v1" not in s


def test_remove_all_then_reuse(ctx, rng):
    s = ctx.create_storage(5, "cosine")
    X = rng.standard_normal((6, 5)).astype(np.float32)
    s.add_vectors(make_ids(6), X)
    for i in make_ids(6):
        s.remove_vector(i)
    assert len(s) == 0 and s.search(X[0], 3) == []
    s.add_vectors(make_ids(6), X)  # the same ids are free again
    assert s.search(X[2], 1)[0].id == "v2"


def test_clear(ctx, rng):
    s = ctx.create_storage(7, "euclidean")
    X = rng.standard_normal((50, 7)).astype(np.float32)
    s.add_vectors(make_ids(50), X)
    s.clear()
    assert len(s) == 0 and s.ids() == [] and s.search(X[0], 5) == []
    s.add_vector("again", X[1])
    assert s.search(X[1], 5)[0].id == "again"


def test_storage_properties(ctx, dtype):
    s = dtype_store(ctx, 12, GpuDistanceMetric.DOT_PRODUCT, dtype)
    assert s.dimension == 12 and s.metric is GpuDistanceMetric.DOT_PRODUCT
    assert s.backend == ctx.backend and s.dtype == dtype
    assert "dimension=12" in repr(s) and f"dtype={dtype}" in repr(s)
    assert ctx.create_storage(3).dtype == "float32"  # the default


def test_grows_across_many_appends(ctx, rng):
    # Many small appends exercise geometric growth of the device buffers.
    s = ctx.create_storage(9, "dot")
    X = rng.standard_normal((700, 9)).astype(np.float32)
    for i in range(0, 700, 7):
        s.add_vectors(make_ids(7, f"b{i}_"), X[i : i + 7])
    assert len(s) == 700
    q = rng.standard_normal(9).astype(np.float32)
    ids = [f"b{i - i % 7}_{i % 7}" for i in range(700)]
    hits = s.search(q, 10)
    assert_matches([h.id for h in hits], [h.distance for h in hits], X, ids, q, GpuDistanceMetric.DOT_PRODUCT, 10)


def test_close(ctx, rng):
    s = ctx.create_storage(3, "dot")
    s.add_vector("a", np.ones(3, np.float32))
    s.close()
    assert s.closed
    with pytest.raises(hive_gpu.StorageClosedError):
        s.search(np.ones(3, np.float32), 1)
    with pytest.raises(hive_gpu.StorageClosedError):
        len(s)
    s.close()  # idempotent
