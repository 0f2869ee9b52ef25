"""ShardedStorage must answer exactly as one VectorStorage holding the same rows."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest

import hive_gpu
from hive_gpu import GpuDistanceMetric, GpuVector, ShardedStorage
from hive_gpu._routing import split_rows
from reference import METRICS
from sharded_model import DIM, random_rows, assert_same_answers, run_random_operations


def _contexts(backend: str, n: int) -> list[hive_gpu.Context]:
    return [hive_gpu.create_context(backend) for _ in range(n)]


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_equals_one_store_after_random_operations(backend, ctx, metric, rng):
    one = ctx.create_storage(DIM, metric)
    with ShardedStorage(_contexts(backend, 3), DIM, metric) as sharded:
        run_random_operations(one, sharded, metric, rng)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_ties_across_shards_go_to_the_oldest(backend, ctx, metric, rng):
    row = rng.standard_normal(DIM).astype(np.float32)
    rows = np.tile(row, (10, 1))
    ids = [f"t{i}" for i in range(10)]
    one = ctx.create_storage(DIM, metric)
    sharded = ShardedStorage(_contexts(backend, 3), DIM, metric)
    for i in range(10):  # one at a time: consecutive rows land on different shards
        one.add_vector(ids[i], rows[i])
        sharded.add_vector(ids[i], rows[i])
    assert sharded.shard_sizes() == [4, 3, 3]
    other = rng.standard_normal(DIM).astype(np.float32)
    one.update_vector("t0", other)  # an update keeps its age
    sharded.update_vector("t0", other)
    one.update_vector("t0", row)
    sharded.update_vector("t0", row)
    assert [h.id for h in sharded.search(row, 4)] == ["t0", "t1", "t2", "t3"]
    assert_same_answers(one, sharded, np.stack([row, other]), [1, 3, 4, 10, 11])


def test_k_beyond_every_shard_and_empty_shards(backend, ctx, rng):
    sharded = ShardedStorage(_contexts(backend, 3), DIM, "euclidean")
    one = ctx.create_storage(DIM, "euclidean")
    q = rng.standard_normal((2, DIM)).astype(np.float32)
    assert sharded.search(q[0], 5) == []
    s, i = sharded.search_batch(q, 5)
    assert s.shape == (2, 0) and i.shape == (2, 0)
    rows = rng.standard_normal((2, DIM)).astype(np.float32)
    sharded.add_vectors(["a", "b"], rows)  # the third shard stays empty
    one.add_vectors(["a", "b"], rows)
    assert sorted(sharded.shard_sizes()) == [0, 1, 1]
    assert_same_answers(one, sharded, q, [1, 2, 3, 100])
    s, i = sharded.search_batch(q[:0], 3)
    assert s.shape == (0, 2) and i.shape == (0, 2)


def test_batches_are_balanced_and_sent_once_per_shard(rng):
    sharded = ShardedStorage(_contexts("cpu", 3), DIM, "cosine")
    calls = []
    for n, shard in enumerate(sharded._shards):
        add = shard.add_vectors
        shard.add_vectors = lambda ids, data, md, _add=add, _n=n: (calls.append((_n, len(ids))), _add(ids, data, md))
    sharded.add_vectors([f"a{i}" for i in range(10)], rng.standard_normal((10, DIM)))
    assert sorted(calls) == [(0, 4), (1, 3), (2, 3)]
    sharded.add_vectors([f"b{i}" for i in range(5)], rng.standard_normal((5, DIM)))
    assert sharded.shard_sizes() == [5, 5, 5] and sorted(calls[3:]) == [(0, 1), (1, 2), (2, 2)]


def test_routing_rule():
    assert split_rows([0, 0, 0], None, 10) == [4, 3, 3]
    assert split_rows([9, 0, 3], None, 6) == [0, 5, 1]
    assert split_rows([5, 5], None, 1) == [1, 0]
    # Capacities in rows: the larger device takes more, so both fill alike.
    assert split_rows([0, 0], [100, 300], 40) == [10, 30]
    assert split_rows([50, 0], [100, 100], 10) == [0, 10]
    assert sum(split_rows([3, 1, 4], [1e8, 1e8 + 7, 1e8], 1001)) == 1001


def _snapshot(sharded, q):
    return (sharded.shard_sizes(), sharded.ids(), sharded.search_batch(q, 50)[1].tolist())


def test_bad_input_changes_nothing(rng):
    sharded = ShardedStorage(_contexts("cpu", 3), DIM, "dot")
    sharded.add_vectors([f"v{i}" for i in range(7)], rng.standard_normal((7, DIM)))
    q = rng.standard_normal((3, DIM)).astype(np.float32)
    before = _snapshot(sharded, q)
    good = rng.standard_normal((4, DIM)).astype(np.float32)
    nan = good.copy()
    nan[3, 1] = np.nan
    huge = good.copy()
    huge[2] = 3e19
    cases = [
        (hive_gpu.DuplicateIdError, (["n0", "n1", "n0", "n2"], good)),
        (hive_gpu.DuplicateIdError, (["n0", "n1", "v3", "n2"], good)),
        (hive_gpu.NonFiniteValueError, (["n0", "n1", "n2", "n3"], nan)),
        (hive_gpu.InvalidArgumentError, (["n0", "n1", "n2", "n3"], huge)),
        (hive_gpu.DimensionMismatchError, (["n0", "n1", "n2", "n3"], good[:, :5])),
        (hive_gpu.InvalidArgumentError, (["n0", "n1", "n2"], good)),
        (hive_gpu.InvalidArgumentError, (["n0", "n1", "", "n3"], good)),
        (hive_gpu.InvalidArgumentError, (["n0", "n1", "x" * 5000, "n3"], good)),
        (hive_gpu.InvalidArgumentError, (["n0", "n1", "\ud800", "n3"], good)),
        (hive_gpu.InvalidArgumentError, (["n0", "n1", 7, "n3"], good)),
        (hive_gpu.InvalidDtypeError, (["n0", "n1", "n2", "n3"], good.astype(np.int32))),
    ]
    for error, args in cases:
        with pytest.raises(error):
            sharded.add_vectors(*args)
        assert _snapshot(sharded, q) == before
    with pytest.raises(hive_gpu.InvalidArgumentError):
        sharded.add_vectors(["n0", "n1", "n2", "n3"], good, [{}, {"k": object()}, {}, {}])
    with pytest.raises(hive_gpu.DuplicateIdError):
        sharded.add_vector("v0", good[0])
    with pytest.raises(hive_gpu.DimensionMismatchError):
        sharded.update_vector("v0", good[0, :3])
    with pytest.raises(hive_gpu.DimensionMismatchError):  # checked for an unknown id too, as one store does
        sharded.update_vector("missing", good[0, :3])
    with pytest.raises(hive_gpu.NonFiniteValueError):
        sharded.update_vector("v1", nan[3])
    with pytest.raises(hive_gpu.NonFiniteValueError):
        sharded.search(nan[3], 3)
    with pytest.raises(hive_gpu.DimensionMismatchError):
        sharded.search_batch(q[:, :4], 3)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        sharded.search(q[0], 0)
    assert _snapshot(sharded, q) == before


def test_a_failing_shard_is_undone(rng):
    sharded = ShardedStorage(_contexts("cpu", 3), DIM, "cosine")
    sharded.add_vectors([f"v{i}" for i in range(6)], rng.standard_normal((6, DIM)))
    q = rng.standard_normal((2, DIM)).astype(np.float32)
    before = _snapshot(sharded, q)

    def out_of_memory(*args):
        raise hive_gpu.OutOfMemoryError("device memory exhausted")

    sharded._shards[2].add_vectors = out_of_memory
    with pytest.raises(hive_gpu.OutOfMemoryError):
        sharded.add_vectors([f"n{i}" for i in range(9)], rng.standard_normal((9, DIM)))
    assert _snapshot(sharded, q) == before
    assert all(len(s.store) == 2 for s in sharded._shards)
    del sharded._shards[2].add_vectors
    sharded.add_vectors([f"n{i}" for i in range(9)], rng.standard_normal((9, DIM)))
    assert sharded.shard_sizes() == [5, 5, 5]


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_save_and_load_onto_other_shard_counts(backend, ctx, metric, rng, tmp_path):
    rows = random_rows(rng, 60, rng.standard_normal((5, DIM)).astype(np.float32))
    ids = [f"r{i}" for i in range(60)]
    md = [{"i": str(i)} if i % 4 == 0 else {} for i in range(60)]
    one = ctx.create_storage(DIM, metric)
    sharded = ShardedStorage(_contexts(backend, 3), DIM, metric)
    for store in (one, sharded):
        store.add_vectors(ids[:40], rows[:40], md[:40])
        store.remove_vectors(ids[5:15])
        store.add_vectors(ids[40:], rows[40:], md[40:])
        store.update_vector("r3", rows[50])
    queries = np.concatenate([rows[:4], rng.standard_normal((4, DIM)).astype(np.float32)])
    sharded.save(tmp_path / "s")
    for n in (2, 3, 1):
        loaded = ShardedStorage.load(tmp_path / "s", _contexts(backend, n))
        assert loaded.shard_count == n and loaded.metric is metric
        assert loaded.ids() == sharded.ids()  # oldest first
        assert_same_answers(one, loaded, queries, [1, 9, 30, 100])
        assert loaded.get_metadata("r16") == {"i": "16"}
        loaded.add_vector("late", rows[0])  # a later add is younger than every loaded row
        one_late = [h.id for h in loaded.search(rows[0], 60)]
        assert one_late.index("late") > one_late.index("r0")
        loaded.close()


def test_save_is_atomic_and_replaces_the_previous_generation(rng, tmp_path):
    sharded = ShardedStorage(_contexts("cpu", 3), DIM, "cosine")
    sharded.add_vectors([f"v{i}" for i in range(9)], rng.standard_normal((9, DIM)))
    d = tmp_path / "s"
    sharded.save(d)
    first = sorted(os.listdir(d))
    assert len(first) == 5  # manifest, 3 shards, the sequences
    sharded.add_vector("w", rng.standard_normal(DIM))
    save = sharded._shards[1].save

    def disk_full(path):
        raise hive_gpu.PersistenceError("no space left on device")

    sharded._shards[1].save = disk_full
    with pytest.raises(hive_gpu.PersistenceError):
        sharded.save(d)
    assert sorted(os.listdir(d)) == first  # the failed save left nothing behind
    assert len(ShardedStorage.load(d, _contexts("cpu", 2))) == 9
    sharded._shards[1].save = save
    sharded.save(d)
    second = sorted(os.listdir(d))
    assert len(second) == 5 and not set(second) & (set(first) - {"manifest.json"})
    assert "w" in ShardedStorage.load(d, _contexts("cpu", 3))


def test_damaged_saves_are_refused(rng, tmp_path):
    sharded = ShardedStorage(_contexts("cpu", 2), DIM, "cosine")
    sharded.add_vectors([f"v{i}" for i in range(9)], rng.standard_normal((9, DIM)))
    d = tmp_path / "s"
    sharded.save(d)
    manifest = json.loads((d / "manifest.json").read_text())
    ctxs = _contexts("cpu", 2)
    shard0 = d / manifest["shards"][0]["file"]
    good = shard0.read_bytes()
    shard0.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(hive_gpu.CorruptFileError):
        ShardedStorage.load(d, ctxs)
    shard0.unlink()
    with pytest.raises(hive_gpu.PersistenceError):
        ShardedStorage.load(d, ctxs)
    shard0.write_bytes(good)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(hive_gpu.CorruptFileError):
        ShardedStorage.load(d, ctxs)
    (d / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(hive_gpu.CorruptFileError):
        ShardedStorage.load(d, ctxs)
    (d / "manifest.json").unlink()
    with pytest.raises(hive_gpu.PersistenceError):
        ShardedStorage.load(d, ctxs)


def test_async_forms(rng):
    sharded = ShardedStorage(_contexts("cpu", 2), DIM, "euclidean")
    rows = rng.standard_normal((20, DIM)).astype(np.float32)

    async def main():
        await sharded.add_vectors_async([f"v{i}" for i in range(19)], rows[:19])
        await sharded.add_vector_async(GpuVector("last", rows[19], {"m": "x"}))
        hits = await sharded.search_async(rows[19], 3)
        batch = await sharded.search_batch_async(rows[:5], 4)
        with pytest.raises(hive_gpu.DuplicateIdError):
            await sharded.add_vector_async("last", rows[0])
        return hits, batch

    hits, (scores, ids) = asyncio.run(main())
    assert hits[0].id == "last" and hits[0].metadata == {"m": "x"} and hits[0].distance == 0.0
    assert hits == sharded.search(rows[19], 3)
    np.testing.assert_array_equal(ids, sharded.search_batch(rows[:5], 4)[1])


def test_cpu_shards_divide_the_cores(monkeypatch):
    monkeypatch.delenv("HIVE_GPU_CPU_THREADS", raising=False)
    with hive_gpu.create_sharded_storage(DIM, "cosine", backend="cpu", devices=2) as s:
        threads = [c.device_info().max_threads_per_block for c in s.contexts]
    assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 2
    assert "HIVE_GPU_CPU_THREADS" not in os.environ


def test_surface_and_lifetime(rng):
    with pytest.raises(hive_gpu.InvalidDtypeError):
        ShardedStorage([hive_gpu.CpuContext()], DIM, "cosine", dtype="float8")
    with pytest.raises(hive_gpu.InvalidArgumentError):
        ShardedStorage([], DIM, "cosine")
    with pytest.raises(hive_gpu.InvalidArgumentError):
        hive_gpu.create_sharded_storage(DIM, "cosine", backend="cpu", devices=0)
    with hive_gpu.create_sharded_storage(DIM, "ip", backend="cpu", devices=2) as s:
        assert s.shard_count == 2 and s.metric is GpuDistanceMetric.DOT_PRODUCT and s.dtype == "float32"
        s.add_vectors([GpuVector("a", rng.standard_normal(DIM), {"x": "y"}), GpuVector("b", rng.standard_normal(DIM))])
        assert len(s) == s.vector_count() == 2 and "a" in s and 3 not in s
        assert s.ids() == ["a", "b"] and s.memory_usage() > 0
        assert "shards=2" in repr(s) and "count=2" in repr(s)
        s.clear()
        assert len(s) == 0 and s.shard_sizes() == [0, 0]
    assert s.closed and "closed" in repr(s)
    with pytest.raises(hive_gpu.StorageClosedError):
        s.search(rng.standard_normal(DIM), 1)
    with pytest.raises(hive_gpu.StorageClosedError):
        len(s)
    s.close()


def test_euclidean_roots_that_collide():
    """Two different squared distances can have one float32 root; a shard ranks them by the
    square, and the merged list must too (within one shard and across shards)."""
    rng = np.random.default_rng(7)  # a fixed draw in which such roots occur
    rows = rng.standard_normal((1500, 16)).astype(np.float32)
    ids = [f"v{i}" for i in range(len(rows))]
    one = hive_gpu.CpuContext().create_storage(16, "euclidean")
    sharded = ShardedStorage(_contexts("cpu", 3), 16, "euclidean")
    one.add_vectors(ids, rows)
    for b, e in [(0, 10), (10, 700), (700, 1500)]:
        sharded.add_vectors(ids[b:e], rows[b:e])
    queries = rng.standard_normal((80, 16)).astype(np.float32)
    scores, _ = one.search_batch(queries, 600)
    assert (scores[:, 1:] == scores[:, :-1]).sum() >= 3  # the case really occurs here
    assert_same_answers(one, sharded, queries, [600])


def test_concurrent_searches_and_writes(rng):
    """Searches on several threads while another thread adds and removes: every answer is a
    consistent one, and the end state equals one store's."""
    import threading

    sharded = ShardedStorage(_contexts("cpu", 3), DIM, "cosine")
    one = hive_gpu.CpuContext().create_storage(DIM, "cosine")
    rows = rng.standard_normal((400, DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(400)]
    for store in (one, sharded):
        store.add_vectors(ids[:100], rows[:100])
    errors: list[BaseException] = []
    stop = threading.Event()

    def search():
        try:
            while not stop.is_set():
                scores, got = sharded.search_batch(rows[:4], 5)
                assert got.shape == (4, 5) and all(len(set(r)) == 5 for r in got.tolist())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    for b in range(100, 400, 30):
        for store in (one, sharded):
            store.add_vectors(ids[b : b + 30], rows[b : b + 30])
            store.remove_vectors(ids[b - 50 : b - 40])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert_same_answers(one, sharded, rows[:6], [1, 10, 500])



def test_filter_is_forwarded_to_every_shard_only_when_given(rng):
    sharded = ShardedStorage(_contexts("cpu", 2), DIM, "cosine")
    rows = rng.standard_normal((6, DIM)).astype(np.float32)
    sharded.add_vectors([f"v{i}" for i in range(6)], rows)

    class Spy:  # stands in for a shard's store, recording the keywords it is searched with
        def __init__(self, store):
            self.store, self.seen = store, []

        def search(self, q, k, **kw):
            self.seen.append(kw)
            return self.store.search(q, k)

        def search_batch(self, q, k, **kw):
            self.seen.append(kw)
            return self.store.search_batch(q, k)

    spies = []
    for shard in sharded._shards:
        shard.store = Spy(shard.store)
        spies.append(shard.store)
    sharded.search(rows[0], 3)
    sharded.search_batch(rows[:2], 3)
    sharded.search(rows[0], 3, filter={"lang": "pt"})
    sharded.search_batch(rows[:2], 3, filter={"lang": "pt"})
    for spy in spies:
        assert spy.seen == [{}, {}, {"filter": {"lang": "pt"}}, {"filter": {"lang": "pt"}}]
