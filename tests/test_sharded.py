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


# ---- filters, typed metadata and the rest of VectorStorage's API ---------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sharded_model import assert_same_filtered, filter_outcome  # noqa: E402
from test_filter import metadata_st, predicates  # noqa: E402
from test_surface import STORAGE_CASES, _assert_ours  # noqa: E402
from test_surface import DIM as SURFACE_DIM  # noqa: E402


@pytest.fixture(scope="module")
def cpu3():
    return _contexts("cpu", 3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_predicates_equal_one_store(cpu3, tmp_path_factory, data):
    metric = data.draw(st.sampled_from(METRICS))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    one = hive_gpu.create_context("cpu").create_storage(DIM, metric)
    sharded = ShardedStorage(cpu3, DIM, metric)
    both = (one, sharded)
    n = data.draw(st.integers(0, 30))
    ids = [f"v{i}" for i in range(n)]
    X = random_rows(rng, n, None)
    mds = [data.draw(metadata_st) for _ in range(n)]
    for s in both:
        s.add_vectors(ids, X, mds)
    next_id = n
    ops = ["add", "update", "meta", "remove", "remove_filter", "upsert"]
    for op in data.draw(st.lists(st.sampled_from(ops), max_size=10)):
        live = one.ids()
        if op == "add" or not live:
            vid, md = f"v{next_id}", data.draw(metadata_st)
            x = random_rows(rng, 1, one.get_vectors(live)[0] if live else None)[0]
            next_id += 1
            for s in both:
                s.add_vector(vid, x, md)
        elif op == "update":
            vid, md = data.draw(st.sampled_from(live)), data.draw(st.one_of(st.none(), metadata_st))
            x = rng.standard_normal(DIM).astype(np.float32)
            assert one.update_vector(vid, x, md) is sharded.update_vector(vid, x, md) is True
        elif op == "meta":
            vid, md = data.draw(st.sampled_from(live)), data.draw(metadata_st)
            assert one.update_metadata(vid, md) is sharded.update_metadata(vid, md) is True
        elif op == "remove":
            vid = data.draw(st.sampled_from(live))
            assert one.remove_vector(vid) is sharded.remove_vector(vid) is True
        elif op == "upsert":
            old = data.draw(st.lists(st.sampled_from(live), max_size=4, unique=True))
            up = old + [f"v{next_id + j}" for j in range(data.draw(st.integers(0, 3)))]
            next_id += len(up) - len(old)
            md = data.draw(st.one_of(st.none(), st.lists(st.one_of(st.none(), metadata_st), min_size=len(up), max_size=len(up))))
            rows = rng.standard_normal((len(up), DIM)).astype(np.float32)
            for s in both:
                s.upsert_vectors(up, rows, md)
        else:
            f = data.draw(predicates())
            assert filter_outcome(lambda: one.remove_vectors(filter=f)) == filter_outcome(
                lambda: sharded.remove_vectors(filter=f)
            )
        assert sharded.ids() == one.ids() and list(sharded) == list(one)
    Q = np.concatenate([random_rows(rng, 2, None), one.get_vectors(one.ids()[:1])[0]])
    fs = [data.draw(predicates()) for _ in range(3)] + [{}, {"$id": {"$in": []}}]
    ks = [1, data.draw(st.integers(1, 12)), len(one) + 3]
    assert_same_filtered(one, sharded, Q, ks, fs)
    path = tmp_path_factory.mktemp("save") / "s"
    sharded.save(path)
    with ShardedStorage.load(path, cpu3[:2]) as two:
        assert two.ids() == one.ids()
        rows1, md1 = one.get_vectors(one.ids())
        rows2, md2 = two.get_vectors(two.ids())
        assert rows1.tobytes() == rows2.tobytes() and repr(md1) == repr(md2)  # types kept: True is not 1
        assert_same_filtered(one, two, Q, ks, fs)
    sharded.close()


def test_filters_matching_nothing_everything_and_typed_values(cpu3, rng):
    md = [{"s": "pt", "i": -(2**63), "f": 2.5, "b": True, "t": ["a", "b"]}, {"i": 1, "b": False}, {}]
    one = hive_gpu.create_context("cpu").create_storage(DIM, "cosine")
    sharded = ShardedStorage(cpu3, DIM, "cosine")
    X = random_rows(rng, 9, None)
    for s in (one, sharded):
        s.add_vectors([f"v{i}" for i in range(9)], X, md * 3)
    fs = [{}, {"nope": 1}, {"b": True}, {"b": 1}, {"i": {"$lt": 0}}, {"t": {"$contains": "b"}}, hive_gpu.Filter({"f": 2.5})]
    assert_same_filtered(one, sharded, X[:3], [1, 2, 4, 100], fs)
    assert sharded.count({"nope": 1}) == 0 and sharded.search(X[0], 5, filter={"nope": 1}) == []
    assert sharded.search_batch(X[:2], 5, filter={"nope": 1})[0].shape == (2, 0)
    assert sharded.count({}) == 9 and sharded.ids(filter={}) == sharded.ids()
    assert sharded.get_metadata("v0") == md[0] and type(sharded.get_metadata("v0")["b"]) is bool
    with pytest.raises(hive_gpu.InvalidArgumentError):  # ordering a str against stored numbers
        sharded.search(X[0], 3, filter={"i": {"$gt": "a"}})
    with pytest.raises(hive_gpu.InvalidArgumentError):
        sharded.remove_vectors(filter={"i": {"$gt": "a"}})
    assert len(sharded) == 9
    assert sharded.remove_vectors(filter={"b": True}) == one.remove_vectors(filter={"b": True}) == 3
    assert sharded.ids() == one.ids()
    empty = ShardedStorage(cpu3, DIM, "cosine")
    assert empty.count({"b": True}) == 0 and empty.ids({"b": True}) == []
    assert empty.search_batch(X[:2], 3, filter={"b": True})[0].shape == (2, 0)


def test_get_vectors_and_upsert_all_or_nothing(cpu3, rng):
    one = hive_gpu.create_context("cpu").create_storage(DIM, "euclidean")
    sharded = ShardedStorage(cpu3, DIM, "euclidean")
    X = random_rows(rng, 10, None)
    for s in (one, sharded):
        s.add_vectors([f"v{i}" for i in range(10)], X, [{"n": i} for i in range(10)])
    order = ["v7", "v0", "v4", "v9"]
    got, md = sharded.get_vectors(order)
    assert got.tobytes() == X[[7, 0, 4, 9]].tobytes() and md == [{"n": 7}, {"n": 0}, {"n": 4}, {"n": 9}]
    assert sharded.get_vectors([])[0].shape == (0, DIM)
    with pytest.raises(hive_gpu.VectorNotFoundError, match="nope"):
        sharded.get_vectors(["v1", "nope", "v2"])
    before = (sharded.ids(), sharded.get_vectors(sharded.ids())[0].tobytes(), sharded.shard_sizes())
    rows = rng.standard_normal((4, DIM)).astype(np.float32)
    bad = rows.copy()
    bad[3, 0] = np.inf
    for error, args in [
        (hive_gpu.NonFiniteValueError, (["v1", "v5", "n0", "n1"], bad)),
        (hive_gpu.DuplicateIdError, (["v1", "v5", "n0", "v1"], rows)),
        (hive_gpu.DimensionMismatchError, (["v1", "v5", "n0", "n1"], rows[:, :3])),
        (hive_gpu.InvalidArgumentError, (["v1", "v5", "n0"], rows)),
        (hive_gpu.InvalidArgumentTypeError, (["v1", "v5", "n0", 4], rows)),
    ]:
        with pytest.raises(error):
            sharded.upsert_vectors(*args)
        assert (sharded.ids(), sharded.get_vectors(sharded.ids())[0].tobytes(), sharded.shard_sizes()) == before
    # A shard that fails after others wrote: the rows and metadata written are put back.
    victim = sharded._shards[sharded._shard_of("v5")]
    real = victim.upsert_vectors
    calls = []

    def fail_once(ids, data, md):
        calls.append(ids)
        if len(calls) == 1:
            raise hive_gpu.BackendError("injected")
        return real(ids, data, md)

    victim.upsert_vectors = fail_once
    with pytest.raises(hive_gpu.BackendError):
        sharded.upsert_vectors(["v1", "v2", "v5", "v8", "n0"], np.tile(rows[:1], (5, 1)), [{"z": 1}] * 5)
    assert (sharded.ids(), sharded.get_vectors(sharded.ids())[0].tobytes(), sharded.shard_sizes()) == before
    assert sharded.get_vectors(sharded.ids())[1] == one.get_vectors(one.ids())[1]
    victim.upsert_vectors = real
    # The new rows' shard fails after the stored rows were replaced: those are put back too.
    def refuse(*args):
        raise hive_gpu.BackendError("injected")

    for shard in sharded._shards:
        shard.add_vectors = refuse
    with pytest.raises(hive_gpu.BackendError):
        sharded.upsert_vectors(["v1", "n0"], rows[:2])
    assert (sharded.ids(), sharded.get_vectors(sharded.ids())[0].tobytes(), sharded.shard_sizes()) == before
    for shard in sharded._shards:
        del shard.add_vectors  # the class's method again
    for s in (one, sharded):
        s.upsert_vectors(["v2", "n0", "v6", "n1"], rows, [None, {"new": True}, {}, None])
    assert sharded.ids() == one.ids()
    assert sharded.get_vectors(sharded.ids())[1] == one.get_vectors(one.ids())[1]
    assert_same_answers(one, sharded, rows, [1, 5, 20])


def test_async_writes_and_iteration(cpu3, rng, tmp_path):
    sharded = ShardedStorage(cpu3, DIM, "dot")
    X = random_rows(rng, 6, None)
    sharded.add_vectors([f"v{i}" for i in range(6)], X)

    async def go():
        assert await sharded.update_vector_async("v1", X[0], {"a": 1})
        assert await sharded.update_metadata_async("v2", {"b": 2.5})
        assert await sharded.remove_vector_async("v3")
        assert not await sharded.remove_vector_async("v3")
        assert await sharded.remove_vectors_async(["v4", "nope"]) == 1
        assert await sharded.remove_vectors_async(filter={"a": 1}) == 1
        await sharded.save_async(tmp_path / "s")
        return await sharded.search_async(X[0], 10, filter={"b": {"$gt": 2}})

    hits = asyncio.run(go())
    assert [h.id for h in hits] == ["v2"] and hits[0].metadata == {"b": 2.5}
    assert list(sharded) == ["v0", "v2", "v5"] == ShardedStorage.load(tmp_path / "s", cpu3[:1]).ids()


_SHARDED_CASES = [c for c in STORAGE_CASES if hasattr(ShardedStorage, c[0])]


@pytest.mark.parametrize("case", range(len(_SHARDED_CASES)), ids=[c[0] for c in _SHARDED_CASES])
def test_wrong_arguments_raise_what_one_store_raises(cpu3, case):
    name, call, builtin = _SHARDED_CASES[case]
    rows = np.random.default_rng(5).standard_normal((12, SURFACE_DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(12)]
    one = hive_gpu.create_context("cpu").create_storage(SURFACE_DIM, "euclidean")
    sharded = ShardedStorage(cpu3, SURFACE_DIM, "euclidean")
    for s in (one, sharded):
        s.add_vectors(ids, rows, [{"i": str(i)} for i in range(12)])
    before = (sharded.ids(), sharded.get_vectors(sharded.ids()))
    for s in (one, sharded):
        with pytest.raises(Exception) as e:
            call(s)
        _assert_ours(e.value, builtin)
    assert sharded.ids() == before[0] and sharded.get_vectors(before[0])[1] == before[1][1]
    assert sharded.get_vectors(before[0])[0].tobytes() == before[1][0].tobytes()


@pytest.mark.parametrize(
    "call,builtin",
    [
        (lambda s: s.search(np.ones(DIM), 2, filter="lang"), TypeError),
        (lambda s: s.search_batch(np.ones((1, DIM)), 2, filter=[("a", 1)]), TypeError),
        (lambda s: s.search(np.ones(DIM), 2, filter={"$bad": 1}), ValueError),
        (lambda s: s.ids(filter=3), TypeError),
        (lambda s: s.count(filter={"a": {"$gt": [1]}}), ValueError),
        (lambda s: s.remove_vectors(), TypeError),
        (lambda s: s.remove_vectors(["v0"], filter={}), TypeError),
        (lambda s: s.update_metadata("v0", {"a": object()}), TypeError),
        (lambda s: s.update_metadata(7, {}), TypeError),
        (lambda s: s.upsert_vectors(["v0"], np.ones((1, DIM)), [{"a": float("nan")}]), ValueError),
        (lambda s: asyncio.run(s.search_batch_async(np.ones((1, DIM)), 2, filter=5)), TypeError),
    ],
)
def test_wrong_filter_and_metadata_arguments(cpu3, call, builtin):
    one = hive_gpu.create_context("cpu").create_storage(DIM, "cosine")
    sharded = ShardedStorage(cpu3, DIM, "cosine")
    for s in (one, sharded):
        s.add_vectors(["v0", "v1"], np.eye(2, DIM, dtype=np.float32), [{"a": 1}, {}])
        with pytest.raises(Exception) as e:
            call(s)
        _assert_ours(e.value, builtin)
    assert sharded.ids() == ["v0", "v1"] and sharded.get_metadata("v0") == {"a": 1}
