"""The asyncio API: results equal the synchronous ones, issue order, cancellation, errors, and
the micro-batcher's coalescing (asserted on its counters, never on time)."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest

import hive_gpu
from hive_gpu import GpuDistanceMetric, GpuVector

from helpers import make_ids

# Guards against a hang only; no assertion depends on time.
HANG_GUARD_S = 120.0

# A wait no test reaches: batches then close only on size or on a request queued behind them.
FOREVER_US = 3.6e9


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, HANG_GUARD_S))


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(ctx, rng, n=500, dim=24, metric=GpuDistanceMetric.COSINE):
    store = ctx.create_storage(dim, metric)
    data = unit_rows(rng, n, dim)
    store.add_vectors(make_ids(n), data, [{"row": str(i)} for i in range(n)])
    return store, data


def assert_same_hits(got, want):
    assert [h.id for h in got] == [h.id for h in want]
    assert [h.metadata for h in got] == [h.metadata for h in want]
    np.testing.assert_allclose([h.distance for h in got], [h.distance for h in want], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", list(GpuDistanceMetric))
def test_concurrent_searches_equal_sync(ctx, rng, metric):
    store, _ = filled(ctx, rng, metric=metric)
    queries = unit_rows(rng, 64, store.dimension)
    ks = [1 + (i % 13) for i in range(len(queries))]  # each caller keeps its own k

    async def main():
        return await asyncio.gather(*(store.search_async(q, k) for q, k in zip(queries, ks)))

    got = run(main())
    for q, k, hits in zip(queries, ks, got):
        assert len(hits) == k
        assert_same_hits(hits, store.search(q, k))
    stats = store.async_stats()
    assert stats.searches == len(queries)


def test_search_batch_async_equals_sync(ctx, rng):
    store, _ = filled(ctx, rng)
    queries = unit_rows(rng, 17, store.dimension)
    scores, ids = run(store.search_batch_async(queries, 7))
    want_scores, want_ids = store.search_batch(queries, 7)
    assert ids.shape == (17, 7) and ids.dtype == object
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert store.async_stats().batch_searches == 1


def test_k_beyond_size_and_empty_store(ctx, rng):
    store = ctx.create_storage(8)

    async def main():
        empty = await store.search_async(np.ones(8, np.float32), 5)
        await store.add_vectors_async(["a", "b"], unit_rows(rng, 2, 8))
        return empty, await store.search_async(np.ones(8, np.float32), 5)

    empty, two = run(main())
    assert empty == []
    assert sorted(h.id for h in two) == ["a", "b"]


def test_add_vector_forms(ctx, rng):
    store = ctx.create_storage(6)
    rows = unit_rows(rng, 5, 6)

    async def main():
        await store.add_vector_async(GpuVector("g", rows[0], {"k": "v"}))
        await store.add_vector_async("plain", rows[1].tolist(), {"x": "y"})
        await store.add_vectors_async([GpuVector("l0", rows[2]), GpuVector("l1", rows[3], {"m": "n"})])
        await store.add_vectors_async(["arr"], rows[4:5].astype(np.float64))
        await store.add_vectors_async([])  # nothing to add, like the sync call

    run(main())
    assert len(store) == 5
    assert store.get_metadata("g") == {"k": "v"}
    assert store.get_metadata("l1") == {"m": "n"}
    np.testing.assert_array_equal(store.get_vector("plain").data, rows[1])
    np.testing.assert_array_equal(store.get_vector("arr").data, rows[4])
    assert store.async_stats().writes == 4


def test_search_after_awaited_add_sees_it(ctx, rng):
    store, _ = filled(ctx, rng, n=200)
    fresh = unit_rows(rng, 50, store.dimension)

    async def main():
        for i, row in enumerate(fresh):
            await store.add_vector_async(f"fresh{i}", row)
            hits = await store.search_async(row, 1)
            assert hits[0].id == f"fresh{i}"

    run(main())


def test_issue_order_around_a_write(ctx, rng):
    # Searches issued before a write do not see it, searches issued after it do, even when
    # none of them is awaited in between.
    store, _ = filled(ctx, rng, n=300)
    store.set_batching(max_wait_us=FOREVER_US, max_batch=10)
    row = unit_rows(rng, 1, store.dimension)[0]

    async def main():
        before = [asyncio.ensure_future(store.search_async(row, 1)) for _ in range(10)]
        write = asyncio.ensure_future(store.add_vector_async("late", row))
        after = [asyncio.ensure_future(store.search_async(row, 1)) for _ in range(10)]
        await write
        return await asyncio.gather(*before), await asyncio.gather(*after)

    before, after = run(main())
    assert all(h[0].id != "late" for h in before)
    assert all(h[0].id == "late" for h in after)
    stats = store.async_stats()
    assert stats.search_batches == 2 and stats.largest_batch == 10


def search_all_async_matches_sync(store, queries, k):
    """Runs one concurrent search_async per query and checks each against search."""

    async def main():
        return await asyncio.gather(*(store.search_async(q, k) for q in queries))

    for q, hits in zip(queries, run(main())):
        assert_same_hits(hits, store.search(q, k))


def test_batching_coalesces(ctx, rng):
    store, _ = filled(ctx, rng)
    store.set_batching(max_wait_us=FOREVER_US, max_batch=48)
    assert store.batching() == hive_gpu.aio.BatchingConfig(FOREVER_US, 48)
    queries = unit_rows(rng, 96, store.dimension)

    search_all_async_matches_sync(store, queries, 3)
    stats = store.async_stats()
    assert stats.searches == 96
    assert stats.search_batches == 2
    assert stats.largest_batch == 48
    assert stats.mean_batch == 48.0


def test_batching_off_runs_one_query_per_engine_call(ctx, rng):
    store, _ = filled(ctx, rng)
    store.set_batching(max_batch=1)
    queries = unit_rows(rng, 40, store.dimension)

    search_all_async_matches_sync(store, queries, 4)
    stats = store.async_stats()
    assert stats.searches == 40 and stats.search_batches == 40 and stats.largest_batch == 1


def test_hundreds_of_concurrent_tasks_mixed(ctx, rng):
    store, _ = filled(ctx, rng, n=400, metric=GpuDistanceMetric.EUCLIDEAN)
    queries = unit_rows(rng, 400, store.dimension)
    # Far from every query: whether an add ran before a search cannot change its top 5.
    adds = unit_rows(rng, 40, store.dimension) + 100.0

    async def one_search(i):
        await asyncio.sleep(0)  # spread submissions over several loop iterations
        return i, await store.search_async(queries[i], 5)

    async def one_add(i):
        await store.add_vector_async(f"added{i}", adds[i])
        hits = await store.search_async(adds[i], 1)
        return hits[0].id == f"added{i}"

    async def main():
        tasks = [one_search(i) for i in range(len(queries))] + [one_add(i) for i in range(len(adds))]
        return await asyncio.gather(*tasks)

    out = run(main())
    searches, adds_seen = out[: len(queries)], out[len(queries) :]
    assert all(adds_seen)
    for i, hits in searches:
        assert_same_hits(hits, store.search(queries[i], 5))
    stats = store.async_stats()
    assert stats.searches == len(queries) + len(adds)
    assert stats.writes == len(adds)
    assert len(store) == 440


def test_cancel_drops_a_waiting_search(ctx, rng):
    store, _ = filled(ctx, rng)
    # The run never closes by itself: the cancelled search is certain not to have started.
    store.set_batching(max_wait_us=FOREVER_US, max_batch=1000)
    q = unit_rows(rng, 1, store.dimension)[0]

    async def main():
        task = asyncio.ensure_future(store.search_async(q, 3))
        await asyncio.sleep(0)  # let it submit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A write queued behind closes the run; the cancelled search is dropped, not run.
        await store.add_vector_async("after-cancel", q)
        return await store.search_batch_async(q[None, :], 1)

    _, ids = run(main())
    assert ids[0, 0] == "after-cancel"
    stats = store.async_stats()
    assert stats.cancelled == 1
    assert stats.searches == 0


def test_cancel_after_completion_and_cancelled_write(ctx, rng):
    store, _ = filled(ctx, rng)
    rows = unit_rows(rng, 30, store.dimension)

    async def main():
        # Cancel tasks at every stage; the loop must survive the late completions.
        tasks = [asyncio.ensure_future(store.search_async(r, 2)) for r in rows]
        writes = [asyncio.ensure_future(store.add_vector_async(f"w{i}", r)) for i, r in enumerate(rows)]
        await asyncio.sleep(0)
        for t in tasks[::2] + writes[::2]:
            t.cancel()
        await asyncio.gather(*tasks, *writes, return_exceptions=True)
        # A cancelled write is not withdrawn: every write issued still happens.
        return await store.search_async(rows[0], 1)

    hits = run(main())
    assert hits[0].id == "w0"
    assert all(f"w{i}" in store for i in range(len(rows)))
    stats = store.async_stats()
    assert stats.searches + stats.cancelled == len(rows) + 1


def test_completion_into_a_closed_loop_is_dropped(ctx, rng):
    store, _ = filled(ctx, rng)
    store.set_batching(max_wait_us=FOREVER_US, max_batch=1000)
    q = unit_rows(rng, 1, store.dimension)[0]
    loop = asyncio.new_event_loop()
    pending = []

    async def submit():
        pending.append(asyncio.ensure_future(store.search_async(q, 2)))
        await asyncio.sleep(0)

    loop.run_until_complete(submit())
    loop.close()  # the search is still queued; its completion will find the loop closed
    del pending
    # A later request closes the run; the orphaned search runs and its result is dropped.
    assert run(store.search_batch_async(q[None, :], 2))[1].shape == (1, 2)
    run(store.add_vector_async("still-alive", q))
    assert "still-alive" in store
    gc.collect()


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda s, q: s.search_async(q[:-1], 3), hive_gpu.DimensionMismatchError),
        (lambda s, q: s.search_async(np.full_like(q, np.nan), 3), hive_gpu.NonFiniteValueError),
        (lambda s, q: s.search_async(q, 0), hive_gpu.InvalidArgumentError),
        (lambda s, q: s.search_async(q, -2), hive_gpu.InvalidArgumentError),
        (lambda s, q: s.search_async(q.astype(np.int32), 3), hive_gpu.InvalidDtypeError),
        (lambda s, q: s.search_batch_async(q, 3), hive_gpu.InvalidArgumentError),
        (lambda s, q: s.search_batch_async(np.stack([q, q * np.inf]), 3), hive_gpu.NonFiniteValueError),
        (lambda s, q: s.add_vector_async("v0", q), hive_gpu.DuplicateIdError),
        (lambda s, q: s.add_vector_async("nan", np.full_like(q, np.nan)), hive_gpu.NonFiniteValueError),
        (lambda s, q: s.add_vector_async("short", q[:3]), hive_gpu.DimensionMismatchError),
        (lambda s, q: s.add_vector_async(7, q), hive_gpu.InvalidArgumentError),
        (lambda s, q: s.add_vectors_async(["a", "a"], np.stack([q, q])), hive_gpu.DuplicateIdError),
        (lambda s, q: s.add_vectors_async(["v1", "new"], np.stack([q, q])), hive_gpu.DuplicateIdError),
        (lambda s, q: s.add_vectors_async(["x"], np.stack([q, q])), hive_gpu.InvalidArgumentError),
        (lambda s, q: s.add_vectors_async(["x"], q[None, :-1]), hive_gpu.DimensionMismatchError),
    ],
)
def test_errors_match_sync(ctx, rng, call, error):
    store, _ = filled(ctx, rng, n=50)
    q = unit_rows(rng, 1, store.dimension)[0]
    with pytest.raises(error):
        run(call(store, q))
    assert len(store) == 50  # all or nothing


def test_errors_are_the_sync_classes_and_messages(ctx, rng):
    store, _ = filled(ctx, rng, n=50)
    q = unit_rows(rng, 1, store.dimension)[0]
    cases = [
        ("search", (q[:-1], 3)),
        ("search", (np.full_like(q, np.nan), 3)),
        ("search", (q, 0)),
        ("add_vector", ("v3", q)),
        ("add_vectors", (["v4"], q[None, :])),
    ]
    for name, args in cases:
        with pytest.raises(hive_gpu.HiveGpuError) as sync_err:
            getattr(store, name)(*args)
        with pytest.raises(hive_gpu.HiveGpuError) as async_err:
            run(getattr(store, name + "_async")(*args))
        assert type(async_err.value) is type(sync_err.value)
        assert str(async_err.value) == str(sync_err.value)


def test_a_bad_query_does_not_fail_its_batch(ctx, rng):
    store, _ = filled(ctx, rng)
    store.set_batching(max_wait_us=FOREVER_US, max_batch=8)
    good = unit_rows(rng, 7, store.dimension)
    bad = np.full(store.dimension, np.nan, np.float32)

    async def main():
        # The Python layer passes NaN through to the core, which finds it inside the batch.
        return await asyncio.gather(
            *(store.search_async(q, 2) for q in good), store.search_async(bad, 2), return_exceptions=True
        )

    out = run(main())
    assert isinstance(out[-1], hive_gpu.NonFiniteValueError)
    for q, hits in zip(good, out[:-1]):
        assert_same_hits(hits, store.search(q, 2))


def test_closed_storage(ctx, rng):
    store, _ = filled(ctx, rng, n=20)
    q = unit_rows(rng, 1, store.dimension)[0]
    run(store.search_async(q, 1))  # make the queue
    store.close()
    with pytest.raises(hive_gpu.StorageClosedError):
        run(store.search_async(q, 1))
    with pytest.raises(hive_gpu.StorageClosedError):
        run(store.add_vector_async("z", q))


def test_batching_config_validation(ctx):
    store = ctx.create_storage(4)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.set_batching(max_batch=0)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.set_batching(max_wait_us=-1)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.set_batching(max_batch=True)
    store.set_batching(max_wait_us=50)
    assert store.batching() == hive_gpu.aio.BatchingConfig(50.0, 256)


def test_searches_from_two_loops_in_threads(ctx, rng):
    # Each loop gets its own completions, from one shared queue.
    import threading

    store, _ = filled(ctx, rng)
    queries = unit_rows(rng, 60, store.dimension)
    results: dict[int, list] = {}

    def worker(part):
        async def main():
            return await asyncio.gather(*(store.search_async(q, 3) for q in queries[part::2]))

        results[part] = run(main())

    threads = [threading.Thread(target=worker, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for part in (0, 1):
        for q, hits in zip(queries[part::2], results[part]):
            assert_same_hits(hits, store.search(q, 3))
