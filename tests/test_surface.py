"""The Python surface: wrong arguments raise errors of the hierarchy that are also the builtin
a user catches (and change nothing), ids in insertion order, batch reads and upserts, the async
forms of every write, the CPU memory cap, bfloat16 input and documentation in help()."""

from __future__ import annotations

import ast
import asyncio
import gc
import inspect
import os
import pathlib
import pydoc
import re

import numpy as np
import pytest

import hive_gpu
from hive_gpu import GpuDistanceMetric, GpuVector, HiveGpuError, errors

from helpers import make_ids
from reference import METRICS, assert_matches

DIM = 8
HANG_GUARD_S = 120.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, HANG_GUARD_S))


@pytest.fixture
def store(ctx, rng):
    s = ctx.create_storage(DIM, "euclidean")
    X = rng.standard_normal((12, DIM)).astype(np.float32)
    s.add_vectors(make_ids(12), X, [{"i": str(i)} for i in range(12)])
    s.remove_vector("v3")  # a swap-remove: slot order and insertion order now differ
    return s


def snapshot(s):
    """Everything a call could change, in insertion order."""
    ids = s.ids()
    rows, md = s.get_vectors(ids)
    return ids, rows.tobytes(), md


# -- wrong arguments, every public call --------------------------------------------------------

_Q = np.ones(DIM, np.float32)
_QQ = np.ones((2, DIM), np.float32)
_X1 = np.ones((1, DIM), np.float32)


def _async(name, *args):
    return lambda s: run(getattr(s, name)(*args))


# (method, call, builtin the error must also be). Every public method of VectorStorage appears
# at least once (test_every_storage_method_is_swept); calls on the context and the module
# take the storage argument and ignore it.
STORAGE_CASES = [
    ("add_vector", lambda s: s.add_vector(17, _Q), TypeError),
    ("add_vector", lambda s: s.add_vector(None, _Q), TypeError),
    ("add_vector", lambda s: s.add_vector("x", _Q, {1: "a"}), TypeError),
    ("add_vector", lambda s: s.add_vector("x", _Q, {"a": object()}), TypeError),
    ("add_vector", lambda s: s.add_vector("x", _Q, {"a": [1, 2]}), TypeError),
    ("add_vector", lambda s: s.add_vector("x", _Q, ["a"]), TypeError),
    ("add_vector", lambda s: s.add_vector("x", _Q, {"k": "\ud800"}), ValueError),
    ("add_vector", lambda s: s.add_vector("x", _Q, {"\udfff": "v"}), ValueError),
    ("add_vector", lambda s: s.add_vector("\ud800", _Q), ValueError),
    ("add_vector", lambda s: s.add_vector("x", "not numbers"), TypeError),
    ("add_vectors", lambda s: s.add_vectors(None, _X1), TypeError),
    ("add_vectors", lambda s: s.add_vectors(None), TypeError),
    ("add_vectors", lambda s: s.add_vectors(5, _X1), TypeError),
    ("add_vectors", lambda s: s.add_vectors("x", _X1), TypeError),
    ("add_vectors", lambda s: s.add_vectors([b"x"], _X1), TypeError),
    ("add_vectors", lambda s: s.add_vectors(["x"], _X1, [{3: "a"}]), TypeError),
    ("add_vectors", lambda s: s.add_vectors(["x"], _X1, 7), TypeError),
    ("add_vectors", lambda s: s.add_vectors(["x"], _X1, [{"a": "\ud800"}]), ValueError),
    ("add_vectors", lambda s: s.add_vectors(["\ud800"], _X1), ValueError),
    ("upsert_vectors", lambda s: s.upsert_vectors(None, _X1), TypeError),
    ("upsert_vectors", lambda s: s.upsert_vectors([1], _X1), TypeError),
    ("upsert_vectors", lambda s: s.upsert_vectors(["v0"], _X1, [{1: "a"}]), TypeError),
    ("upsert_vectors", lambda s: s.upsert_vectors(["v0"], _X1, {"a": "b"}), TypeError),
    ("upsert_vectors", lambda s: s.upsert_vectors(["v0"], _X1, [{"a": "\ud800"}]), ValueError),
    ("upsert_vectors", lambda s: s.upsert_vectors(["\ud800"], _X1), ValueError),
    ("upsert_vectors", lambda s: s.upsert_vectors(["v0"], None), TypeError),
    ("update_vector", lambda s: s.update_vector(17, _Q), TypeError),
    ("update_vector", lambda s: s.update_vector(b"v0", _Q), TypeError),
    ("update_vector", lambda s: s.update_vector("v0", _Q, {2: "x"}), TypeError),
    ("update_vector", lambda s: s.update_vector("v0", _Q, {"x": "\ud800"}), ValueError),
    ("remove_vector", lambda s: s.remove_vector(17), TypeError),
    ("remove_vector", lambda s: s.remove_vector(None), TypeError),
    ("remove_vectors", lambda s: s.remove_vectors(None), TypeError),
    ("remove_vectors", lambda s: s.remove_vectors(["v0", 5]), TypeError),
    ("remove_vectors", lambda s: s.remove_vectors("v0"), TypeError),
    ("get_vector", lambda s: s.get_vector(17), TypeError),
    ("get_vectors", lambda s: s.get_vectors(None), TypeError),
    ("get_vectors", lambda s: s.get_vectors(["v0", 2]), TypeError),
    ("get_vectors", lambda s: s.get_vectors(["v0", "nope"]), KeyError),
    ("get_metadata", lambda s: s.get_metadata(17), TypeError),
    ("search", lambda s: s.search(_Q, 2.0), TypeError),
    ("search", lambda s: s.search(_Q, "3"), TypeError),
    ("search", lambda s: s.search(_Q, None), TypeError),
    ("search", lambda s: s.search(_Q, True), TypeError),
    ("search", lambda s: s.search(_Q, np.bool_(True)), TypeError),
    ("search", lambda s: s.search(_Q, 0), ValueError),
    ("search", lambda s: s.search(_Q, -(2**70)), ValueError),
    ("search", lambda s: s.search(None, 2), TypeError),
    ("search_batch", lambda s: s.search_batch(_QQ, 2.5), TypeError),
    ("search_batch", lambda s: s.search_batch(_QQ, np.float64(2)), TypeError),
    ("search_batch", lambda s: s.search_batch(_QQ, 0), ValueError),
    ("search_batch", lambda s: s.search_batch("abc", 2), TypeError),
    ("save", lambda s: s.save(123), TypeError),
    ("save", lambda s: s.save(None), TypeError),
    ("search_async", _async("search_async", _Q, 1.5), TypeError),
    ("search_batch_async", _async("search_batch_async", _QQ, None), TypeError),
    ("add_vector_async", _async("add_vector_async", 5, _Q), TypeError),
    ("add_vector_async", _async("add_vector_async", "x", _Q, {"k": "\ud800"}), ValueError),
    ("add_vectors_async", _async("add_vectors_async", None, _X1), TypeError),
    ("add_vectors_async", _async("add_vectors_async", ["x"], _X1, [{"\ud800": "v"}]), ValueError),
    ("add_vectors_async", _async("add_vectors_async", [5], _X1), TypeError),
    ("update_vector_async", _async("update_vector_async", 5, _Q), TypeError),
    ("update_vector_async", _async("update_vector_async", "v0", _Q, {"x": b"bytes"}), TypeError),
    ("update_vector_async", _async("update_vector_async", "v0", _Q, {"x": "\ud800"}), ValueError),
    ("remove_vector_async", _async("remove_vector_async", 5), TypeError),
    ("remove_vectors_async", _async("remove_vectors_async", None), TypeError),
    ("remove_vectors_async", _async("remove_vectors_async", ["v0", 1]), TypeError),
    ("save_async", _async("save_async", 123), TypeError),
    ("update_metadata", lambda s: s.update_metadata(5, {}), TypeError),
    ("update_metadata", lambda s: s.update_metadata("v0", {"x": {"nested": 1}}), TypeError),
    ("update_metadata", lambda s: s.update_metadata("v0", {"x": "\ud800"}), ValueError),
    ("update_metadata_async", _async("update_metadata_async", "v0", {"x": None}), TypeError),
    ("update_metadata_async", _async("update_metadata_async", 7, {}), TypeError),
    ("count", lambda s: s.count({"$bogus": 1}), ValueError),
    ("count", lambda s: s.count({"year": {"$in": 5}}), ValueError),
    ("count", lambda s: s.count(42), TypeError),
    ("set_batching", lambda s: s.set_batching(max_wait_us="1"), TypeError),
    ("set_batching", lambda s: s.set_batching(max_batch=2.0), TypeError),
    ("set_batching", lambda s: s.set_batching(max_batch=0), ValueError),
    ("set_batching", lambda s: s.set_batching(max_batch=2**64), ValueError),
    ("set_batching", lambda s: s.set_batching(max_wait_us=float("nan")), ValueError),
]

# Public methods without arguments to get wrong.
NO_ARGUMENTS = {"vector_count", "ids", "memory_usage", "clear", "batching", "async_stats", "close", "to_bytes"}


def _context_cases(ctx):
    return [
        ("create_storage", lambda: ctx.create_storage(2**64), ValueError),
        ("create_storage", lambda: ctx.create_storage(-1), ValueError),
        ("create_storage", lambda: ctx.create_storage(0), ValueError),
        ("create_storage", lambda: ctx.create_storage(2.0), TypeError),
        ("create_storage", lambda: ctx.create_storage("8"), TypeError),
        ("create_storage", lambda: ctx.create_storage(True), TypeError),
        ("create_storage", lambda: ctx.create_storage(8, "manhattan"), ValueError),
        ("create_storage", lambda: ctx.create_storage(8, None), TypeError),
        ("create_storage", lambda: ctx.create_storage(8, 3), TypeError),
        ("load_storage", lambda: ctx.load_storage(123), TypeError),
        ("load_storage", lambda: ctx.load_storage(None), TypeError),
        ("configure_pool", lambda: ctx.configure_pool(max_bytes="1"), TypeError),
        ("configure_pool", lambda: ctx.configure_pool(max_bytes=-1), ValueError),
        ("configure_pool", lambda: ctx.configure_pool(max_bytes=2**64), ValueError),
        ("configure_pool", lambda: ctx.configure_pool(release_threshold=1.5), TypeError),
        ("has_available_vram", lambda: ctx.has_available_vram("1"), TypeError),
        ("has_available_vram", lambda: ctx.has_available_vram(-5), ValueError),
        ("create_context", lambda: hive_gpu.create_context(None), TypeError),
        ("create_context", lambda: hive_gpu.create_context(5), TypeError),
        ("create_context", lambda: hive_gpu.create_context("nope"), ValueError),
        ("create_context", lambda: hive_gpu.create_context("cpu", "0"), TypeError),
        ("create_context", lambda: hive_gpu.create_context("cpu", 2**64), ValueError),
        ("create_context", lambda: hive_gpu.create_context("cpu", -1), ValueError),
        ("CpuContext", lambda: hive_gpu.CpuContext(None), TypeError),
        ("CpuContext", lambda: hive_gpu.CpuContext(0.0), TypeError),
        ("Context", lambda: hive_gpu.Context(), TypeError),
        ("VectorStorage", lambda: hive_gpu.VectorStorage(384), TypeError),
        ("VectorStorage", lambda: hive_gpu.VectorStorage(None), TypeError),
    ]


def _assert_ours(error: BaseException, builtin: type) -> None:
    assert isinstance(error, HiveGpuError), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert isinstance(error, builtin), f"{type(error).__name__} is not a {builtin.__name__}: {error}"


@pytest.mark.parametrize("case", range(len(STORAGE_CASES)), ids=[c[0] for c in STORAGE_CASES])
def test_wrong_arguments_raise_ours_and_change_nothing(store, case):
    _, call, builtin = STORAGE_CASES[case]
    before = snapshot(store)
    with pytest.raises(Exception) as e:
        call(store)
    _assert_ours(e.value, builtin)
    assert snapshot(store) == before


def test_wrong_context_and_module_arguments(ctx, store):
    before = snapshot(store)
    pool = ctx.pool_stats()
    for name, call, builtin in _context_cases(ctx):
        with pytest.raises(Exception) as e:
            call()
        try:
            _assert_ours(e.value, builtin)
        except AssertionError as a:
            raise AssertionError(f"{name}: {a}") from None
    assert ctx.pool_stats().max_bytes == pool.max_bytes
    assert ctx.pool_stats().release_threshold == pool.release_threshold
    assert snapshot(store) == before


def test_every_storage_method_is_swept():
    public = {n for n, m in vars(hive_gpu.VectorStorage).items() if not n.startswith("_") and callable(m)}
    swept = {c[0] for c in STORAGE_CASES} | NO_ARGUMENTS
    missing = public - swept
    assert not missing, f"add wrong-argument cases to STORAGE_CASES for {sorted(missing)}"
    ctx_public = {n for n, m in vars(hive_gpu.Context).items() if not n.startswith("_") and callable(m)}
    ctx_swept = {c[0] for c in _context_cases(None)} | {
        "is_available", "device_count", "unavailable_reason", "device_info", "vram_usage", "pool_stats",
    }
    assert not ctx_public - ctx_swept, sorted(ctx_public - ctx_swept)


def test_reads_of_unstorable_ids_find_nothing(store):
    before = snapshot(store)
    lone = "lone \ud800 surrogate"
    assert store.get_metadata(lone) is None
    assert store.get_vector(lone) is None
    assert lone not in store and 17 not in store and None not in store
    assert store.remove_vector(lone) is False
    assert store.remove_vectors([lone, "v0"]) == 1
    assert store.update_vector(lone, _Q) is False
    with pytest.raises(hive_gpu.VectorNotFoundError, match="surrogate"):
        store.get_vectors(["v1", lone])
    assert snapshot(store)[0] == [i for i in before[0] if i != "v0"]


@pytest.mark.parametrize("k", [2**63, 2**63 - 1, 2**64 + 5, np.uint64(2**64 - 1), np.int64(2**62)])
def test_k_beyond_int64_returns_every_vector(store, rng, k):
    q = rng.standard_normal(DIM).astype(np.float32)
    assert [h.id for h in store.search(q, k)] == [h.id for h in store.search(q, len(store))]
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    scores, ids = store.search_batch(Q, k)
    assert ids.shape == (3, len(store))
    ref_scores, ref_ids = store.search_batch(Q, len(store))
    np.testing.assert_array_equal(scores, ref_scores)
    assert (ids == ref_ids).all()
    assert [h.id for h in run(store.search_async(q, k))] == [h.id for h in store.search(q, k)]


def test_numpy_integers_are_accepted_for_k(store, rng):
    q = rng.standard_normal(DIM).astype(np.float32)
    want = [h.id for h in store.search(q, 3)]
    for k in (np.int8(3), np.uint16(3), np.int64(3), np.uint64(3)):
        assert [h.id for h in store.search(q, k)] == want
        assert list(store.search_batch(q[None], k)[1][0]) == want


def test_error_classes():
    assert issubclass(errors.InvalidArgumentTypeError, TypeError)
    assert issubclass(errors.InvalidArgumentTypeError, errors.InvalidArgumentError)
    assert issubclass(errors.InvalidDtypeError, errors.InvalidArgumentTypeError)
    assert hive_gpu.InvalidArgumentTypeError is errors.InvalidArgumentTypeError


# -- ids in insertion order --------------------------------------------------------------------


def test_ids_keep_insertion_order(ctx, rng):
    s = ctx.create_storage(4, "dot")
    s.add_vectors(make_ids(6, "x"), rng.standard_normal((6, 4)).astype(np.float32))
    s.remove_vector("x1")  # x5 moves into x1's slot
    assert s.ids() == ["x0", "x2", "x3", "x4", "x5"]
    s.update_vector("x2", rng.standard_normal(4).astype(np.float32))
    s.add_vector("x1", rng.standard_normal(4).astype(np.float32))  # back, as the newest
    s.remove_vectors(["x0", "x4"])
    assert s.ids() == ["x2", "x3", "x5", "x1"]
    assert list(s) == s.ids()
    # The order is the tie order of search: equal vectors rank in insertion order.
    s.clear()
    same = np.ones((5, 4), np.float32)
    s.add_vectors(["e0", "e1", "e2", "e3", "e4"], same)
    s.remove_vector("e1")
    s.add_vector("e1", same[0])
    assert [h.id for h in s.search(same[0], 5)] == s.ids() == ["e0", "e2", "e3", "e4", "e1"]


def test_ids_order_survives_save_and_load(ctx, rng, tmp_path):
    s = ctx.create_storage(3, "euclidean")
    s.add_vectors(make_ids(50), rng.standard_normal((50, 3)).astype(np.float32))
    s.remove_vectors(make_ids(50)[::7])
    order = s.ids()
    assert order == [i for k, i in enumerate(make_ids(50)) if k % 7]
    s.save(tmp_path / "order.hgv")
    assert ctx.load_storage(tmp_path / "order.hgv").ids() == order


def test_iteration_is_a_snapshot(store):
    ids = store.ids()
    seen = []
    for i in store:
        seen.append(i)
        store.remove_vector(i)  # changing the store while iterating is safe
    assert seen == ids and len(store) == 0


# -- get_vectors and upsert_vectors ------------------------------------------------------------


def test_get_vectors(store, ctx):
    ids = ["v7", "v0", "v11", "v0"]
    rows, md = store.get_vectors(ids)
    assert rows.dtype == np.float32 and rows.shape == (4, DIM) and rows.flags.c_contiguous
    for i, row, m in zip(ids, rows, md):
        got = store.get_vector(i)
        assert row.tobytes() == got.data.tobytes() and m == got.metadata
    rows, md = store.get_vectors([])
    assert rows.shape == (0, DIM) and md == []
    rows, md = store.get_vectors(np.array(["v2", "v1"], dtype=object))
    assert md == [{"i": "2"}, {"i": "1"}]
    with pytest.raises(hive_gpu.VectorNotFoundError, match="v3") as e:
        store.get_vectors(["v0", "v3"])  # v3 was removed
    assert isinstance(e.value, KeyError)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_upsert_adds_and_replaces(ctx, rng, metric):
    s = ctx.create_storage(DIM, metric)
    X = rng.standard_normal((10, DIM)).astype(np.float32)
    ids = make_ids(10)
    s.add_vectors(ids, X, [{"i": str(i)} for i in range(10)])
    s.remove_vector("v2")
    new = rng.standard_normal((4, DIM)).astype(np.float32)
    s.upsert_vectors(["v5", "n0", "v0", "n1"], new)
    assert s.ids() == ["v0", "v1", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "n0", "n1"]
    rows, md = s.get_vectors(["v5", "n0", "v0", "n1", "v1"])
    np.testing.assert_array_equal(rows, np.vstack([new, X[1]]))
    # metadata None: a stored id keeps its metadata, a new one has none
    assert md == [{"i": "5"}, {}, {"i": "0"}, {}, {"i": "1"}]
    # A list: a dict replaces (an empty one too), None keeps.
    s.upsert_vectors(["v5", "v0", "n2", "n3"], new, [{"new": "5"}, None, {"new": "n2"}, None])
    assert [s.get_metadata(i) for i in ("v5", "v0", "n2", "n3")] == [{"new": "5"}, {"i": "0"}, {"new": "n2"}, {}]
    s.upsert_vectors(["v5"], new[:1], [{}])
    assert s.get_metadata("v5") == {}
    # Search sees exactly the upserted rows.
    row_ids = s.ids()
    rows, _ = s.get_vectors(row_ids)
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    scores, got = s.search_batch(Q, 6)
    for j in range(3):
        assert_matches(got[j], scores[j], rows, row_ids, Q[j], metric, 6)
    s.upsert_vectors([], np.zeros((0, DIM), np.float32))
    assert s.ids() == row_ids


def test_upsert_is_all_or_nothing(store):
    before = snapshot(store)
    bad = np.ones((3, DIM), np.float32)
    bad[2, 0] = np.nan
    with pytest.raises(hive_gpu.NonFiniteValueError):
        store.upsert_vectors(["v0", "new", "v1"], bad)
    with pytest.raises(hive_gpu.DuplicateIdError, match="twice"):
        store.upsert_vectors(["v0", "new", "v0"], np.ones((3, DIM), np.float32))
    with pytest.raises(hive_gpu.DuplicateIdError, match="twice"):
        store.upsert_vectors(["v0", "new", "new"], np.ones((3, DIM), np.float32))
    with pytest.raises(hive_gpu.DimensionMismatchError):
        store.upsert_vectors(["v0", "new"], np.ones((2, DIM + 1), np.float32))
    with pytest.raises(hive_gpu.InvalidArgumentError, match="ids for"):
        store.upsert_vectors(["v0", "new"], np.ones((3, DIM), np.float32))
    with pytest.raises(hive_gpu.InvalidArgumentError, match="metadata"):
        store.upsert_vectors(["v0", "new"], np.ones((2, DIM), np.float32), [None])
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.upsert_vectors(["", "new"], np.ones((2, DIM), np.float32))
    assert snapshot(store) == before


def test_upsert_rolls_back_its_writes_when_the_add_fails(ctx, rng):
    # The stored ids' rows are written first; an add beyond the memory cap then fails, and
    # the written rows must come back as they were.
    s = ctx.create_storage(64, "cosine")
    X = rng.standard_normal((16, 64)).astype(np.float32)
    s.add_vectors(make_ids(16), X, [{"i": str(i)} for i in range(16)])
    before = snapshot(s)
    # Stores of earlier tests on this session's context must not be freed by the garbage
    # collector mid-test: that would give the cap back the room this test takes away.
    gc.collect()
    gc.disable()
    old = ctx.pool_stats()
    st = old
    cap = st.used_bytes + st.rows_bytes + 1024  # cached free pool memory is not in use
    ctx.configure_pool(max_bytes=cap)
    try:
        if ctx.pool_stats().max_bytes != cap:
            pytest.skip(f"{ctx.backend}: no memory cap to configure")
        # More rows than the store's first pages hold, so the add must allocate.
        fresh = make_ids(40_000, "new")
        with pytest.raises(hive_gpu.OutOfMemoryError):
            s.upsert_vectors(["v3", "v9"] + fresh, np.ones((40_002, 64), np.float32), [{"m": "x"}] * 40_002)
    finally:
        ctx.configure_pool(max_bytes=old.max_bytes)
        gc.enable()
    assert snapshot(s) == before
    assert [h.id for h in s.search(X[9], 1)] == ["v9"]


# -- async forms of update, remove and save ----------------------------------------------------


def test_async_writes_return_what_the_sync_ones_do(ctx, rng, tmp_path):
    s = ctx.create_storage(DIM, "dot")
    X = rng.standard_normal((20, DIM)).astype(np.float32)
    s.add_vectors(make_ids(20), X, [{"i": str(i)} for i in range(20)])
    v = rng.standard_normal(DIM).astype(np.float32)

    async def main():
        assert await s.update_vector_async("v1", v) is True
        assert await s.update_vector_async(GpuVector("v2", v, {"new": "md"})) is True
        assert await s.update_vector_async("nope", v) is False
        assert await s.update_vector_async("\ud800", v) is False
        assert await s.remove_vector_async("v3") is True
        assert await s.remove_vector_async("v3") is False
        assert await s.remove_vector_async("\ud800") is False
        assert await s.remove_vectors_async(["v4", "v5", "nope", "v4", "\ud800"]) == 2
        await s.save_async(tmp_path / "a.hgv")
        with pytest.raises(hive_gpu.DimensionMismatchError):
            await s.update_vector_async("v1", np.ones(DIM + 1, np.float32))
        with pytest.raises(hive_gpu.NonFiniteValueError):
            await s.update_vector_async("v1", np.full(DIM, np.nan, np.float32))
        with pytest.raises(hive_gpu.PersistenceError):
            await s.save_async(tmp_path / "no such dir" / "a.hgv")

    run(main())
    assert s.get_vector("v1").data.tobytes() == v.tobytes() and s.get_metadata("v1") == {"i": "1"}
    assert s.get_metadata("v2") == {"new": "md"}
    assert s.ids() == [i for i in make_ids(20) if i not in ("v3", "v4", "v5")]
    t = ctx.load_storage(tmp_path / "a.hgv")
    assert snapshot(t) == snapshot(s)
    assert s.async_stats().writes == 10  # the failed ones ran too; unstorable ids never went


def test_async_save_sees_every_write_issued_before_it(ctx, rng, tmp_path):
    s = ctx.create_storage(DIM, "euclidean")
    X = rng.standard_normal((30, DIM)).astype(np.float32)
    ids = make_ids(30)
    path = tmp_path / "ordered.hgv"

    async def main():
        # Issued together: each coroutine submits its request before the next one starts.
        return await asyncio.gather(
            s.add_vectors_async(ids, X),
            s.update_vector_async("v0", X[1], {"u": "1"}),
            s.remove_vectors_async(ids[10:20]),
            s.remove_vector_async("v29"),
            s.save_async(path),
            s.add_vector_async("after", X[2]),
            s.search_async(X[1], 2),
        )

    out = run(main())
    assert out[1:5] == [True, 10, True, None]
    assert [h.id for h in out[6]] == ["v0", "v1"]  # ties in insertion order
    saved = ctx.load_storage(path)
    assert saved.ids() == ids[:10] + ids[20:29]
    assert saved.get_metadata("v0") == {"u": "1"}
    assert "after" not in saved and "after" in s


def test_async_save_is_not_withdrawn_by_cancelling(ctx, rng, tmp_path):
    s = ctx.create_storage(DIM, "cosine")
    s.add_vectors(make_ids(5), rng.standard_normal((5, DIM)).astype(np.float32))
    path = tmp_path / "kept.hgv"

    async def main():
        s.set_batching(max_batch=1)
        task = asyncio.ensure_future(s.save_async(path))
        await asyncio.sleep(0)  # the request is submitted
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await s.search_async(np.ones(DIM, np.float32), 1)  # queued after the save

    run(main())
    assert ctx.load_storage(path).ids() == make_ids(5)


def test_aio_does_not_import_the_storage():
    src = pathlib.Path(hive_gpu.aio.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not any("_storage" in m or m == "VectorStorage" for m in imported), imported
    assert "_aq" not in src and "._s" not in src


# -- the memory cap on the CPU backend ---------------------------------------------------------


def test_cpu_memory_cap(rng):
    ctx = hive_gpu.CpuContext()  # a context of its own: the cap is per context
    s = ctx.create_storage(32, "euclidean")
    assert ctx.pool_stats().rows_bytes == 0
    X = rng.standard_normal((100, 32)).astype(np.float32)
    s.add_vectors(make_ids(100), X, [{"i": str(i)} for i in range(100)])
    used = ctx.pool_stats().rows_bytes
    assert used >= 100 * 32 * 4 and used == s.memory_usage()
    ctx.configure_pool(max_bytes=used + 4096)
    assert ctx.pool_stats().max_bytes == used + 4096
    before = snapshot(s)
    with pytest.raises(hive_gpu.OutOfMemoryError, match="cap"):
        s.add_vectors(make_ids(1000, "big"), np.ones((1000, 32), np.float32))
    with pytest.raises(hive_gpu.OutOfMemoryError):
        ctx.create_storage(32, "dot").add_vectors(make_ids(1000), np.ones((1000, 32), np.float32))
    assert snapshot(s) == before and ctx.pool_stats().rows_bytes == used
    # Within the cap, adds still work (growth falls back to the exact size needed).
    room = (4096 // (32 * 4 + 16)) // 2
    s.add_vectors(make_ids(room, "fits"), np.ones((room, 32), np.float32))
    ctx.configure_pool(max_bytes=0)  # no cap
    s.add_vectors(make_ids(1000, "big"), np.ones((1000, 32), np.float32))
    assert len(s) == 1100 + room
    s.close()
    assert ctx.pool_stats().rows_bytes == 0


def test_cpu_memory_cap_covers_loads(rng, tmp_path):
    ctx = hive_gpu.CpuContext()
    s = ctx.create_storage(16, "cosine")
    s.add_vectors(make_ids(500), rng.standard_normal((500, 16)).astype(np.float32))
    s.save(tmp_path / "big.hgv")
    ctx.configure_pool(max_bytes=s.memory_usage() // 2)
    with pytest.raises(hive_gpu.OutOfMemoryError):
        ctx.load_storage(tmp_path / "big.hgv")
    s.clear()
    assert ctx.pool_stats().rows_bytes == 0
    ctx.configure_pool(max_bytes=0)
    assert len(ctx.load_storage(tmp_path / "big.hgv")) == 500


# -- bfloat16 input ----------------------------------------------------------------------------


def test_torch_bfloat16_is_accepted(ctx, rng):
    torch = pytest.importorskip("torch")
    s = ctx.create_storage(DIM, "dot")
    x = torch.from_numpy(rng.standard_normal((5, DIM)).astype(np.float32)).to(torch.bfloat16)
    want = x.float().numpy()  # bfloat16 widens to float32 exactly
    s.add_vectors(make_ids(5), x)
    s.add_vector("one", x[0].clone().requires_grad_(True))
    s.upsert_vectors(["v1"], x[2:3])
    np.testing.assert_array_equal(s.get_vectors(make_ids(5) + ["one"])[0], np.vstack([want[0], want[2], want[2:], want[:1]]))
    hits = s.search(x[3], 2)
    assert hits[0].id == "v3" and hits[0].distance == pytest.approx(float(want[3] @ want[3]), rel=1e-5)
    scores, ids = s.search_batch(x, 1)
    assert scores.shape == (5, 1)
    if torch.cuda.is_available():
        s.add_vectors(["gpu"], x[:1].cuda())
        assert s.search(x[0].cuda(), 1)[0].distance == pytest.approx(float(want[0] @ want[0]), rel=1e-5)


def test_ml_dtypes_bfloat16_is_accepted(ctx, rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    s = ctx.create_storage(DIM, "euclidean")
    x = rng.standard_normal((4, DIM)).astype(ml_dtypes.bfloat16)
    s.add_vectors(make_ids(4), x)
    np.testing.assert_array_equal(s.get_vectors(make_ids(4))[0], x.astype(np.float32))
    assert s.search(x[2], 1)[0].id == "v2"


# -- documentation in help() -------------------------------------------------------------------


def _public_callables():
    for name in hive_gpu.__all__:
        obj = getattr(hive_gpu, name)
        if inspect.isclass(obj):
            yield name, obj
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__iter__", "__len__", "__contains__"):
                    continue
                if isinstance(member, property):
                    yield f"{name}.{attr}", member.fget
                elif isinstance(member, (classmethod, staticmethod)):
                    yield f"{name}.{attr}", member.__func__
                elif inspect.isfunction(member):
                    yield f"{name}.{attr}", member
        elif inspect.isfunction(obj):
            yield name, obj
    for name in ("make_queue", "run", "set_batching", "batching", "stats"):
        yield f"aio.{name}", getattr(hive_gpu.aio, name)


def test_every_public_callable_has_a_docstring():
    undocumented = [name for name, obj in _public_callables() if not (obj.__doc__ or "").strip()]
    assert not undocumented, undocumented


def test_no_comment_banners_in_help():
    # pydoc shows the comment above a definition that has no docstring; banners such as
    # "# -- writes ---" must not be there to be shown.
    banner = re.compile(r"^\s*#\s*-{2,}.*-{3,}\s*$", re.M)
    for module in ("_storage", "_contexts", "_types", "_arrays", "aio", "errors", "__init__", "cli"):
        src = (pathlib.Path(hive_gpu.__file__).parent / f"{module}.py").read_text()
        assert not banner.search(src), (module, banner.search(src).group(0))
    text = pydoc.render_doc(hive_gpu.VectorStorage, renderer=pydoc.plaintext)
    assert "# --" not in text


def test_save_accepts_paths_of_every_kind(ctx, rng, tmp_path):
    s = ctx.create_storage(4, "dot")
    s.add_vectors(make_ids(3), rng.standard_normal((3, 4)).astype(np.float32))
    for p in (str(tmp_path / "s.hgv"), tmp_path / "p.hgv", os.fsencode(tmp_path / "b.hgv")):
        s.save(p)
        assert ctx.load_storage(p).ids() == make_ids(3)
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/not-utf8-\xff.hgv")  # a surrogate-escaped name
    s.save(odd)
    assert ctx.load_storage(odd).ids() == make_ids(3)
    assert os.path.exists(os.fsencode(str(tmp_path)) + b"/not-utf8-\xff.hgv")
