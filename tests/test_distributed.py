"""RayStorage over a local Ray cluster must answer exactly as one VectorStorage. Few and quick:
one cluster of 2 CPUs for the module, three actors per store."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import hive_gpu  # noqa: E402
from hive_gpu.distributed import RayStorage  # noqa: E402
from reference import METRICS  # noqa: E402
from sharded_model import (  # noqa: E402
    DIM,
    assert_same_answers,
    assert_same_filtered,
    random_rows,
    run_random_operations,
)

# Three actors of a quarter CPU each: two stores fit at once in the 2-CPU cluster.
OPTIONS = {"shards": 3, "backend": "cpu", "cpus_per_shard": 0.25}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_equals_one_store_after_random_operations(metric, rng):
    one = hive_gpu.CpuContext().create_storage(DIM, metric)
    with RayStorage(DIM, metric, **OPTIONS) as store:
        assert store.backend == "cpu" and store.shard_count == 3
        run_random_operations(one, store, metric, rng, steps=20)
        # Duplicates of one row across every shard: the oldest wins, k beyond every shard and n.
        row = rng.standard_normal(DIM).astype(np.float32)
        for i in range(6):
            one.add_vector(f"dup{i}", row)
            store.add_vector(f"dup{i}", row)
        assert_same_answers(one, store, np.stack([row, -row]), [1, 4, max(store.shard_sizes()) + 2, len(one) + 3])


def kill_and_wait(actor, timeout: float = 60.0) -> None:
    """ray.kill returns before the actor is gone: wait until it no longer answers, so the
    calls below meet a dead shard, as they would after a crash."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.backend.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers")


def test_save_load_kill_and_restore(rng, tmp_path):
    rows = random_rows(rng, 50, rng.standard_normal((4, DIM)).astype(np.float32))
    ids = [f"r{i}" for i in range(50)]
    one = hive_gpu.CpuContext().create_storage(DIM, "euclidean")
    one.add_vectors(ids, rows)
    one.remove_vectors(ids[10:20])
    queries = np.concatenate([rows[:3], rng.standard_normal((3, DIM)).astype(np.float32)])
    store = RayStorage(DIM, "euclidean", **OPTIONS)
    store.add_vectors(ids, rows)  # one message per actor, through the object store
    store.remove_vectors(ids[10:20])
    store.save(tmp_path / "s")
    assert_same_answers(one, store, queries, [1, 5, 40])

    kill_and_wait(store.actors[1])
    with pytest.raises(hive_gpu.BackendError, match="shard 1"):
        store.search_batch(queries, 5)
    for call in (lambda: store.search(queries[0], 3), lambda: len(store), lambda: store.add_vector("x", rows[0])):
        with pytest.raises(hive_gpu.BackendError, match="shard 1"):
            call()
    store.restore(tmp_path / "s")
    assert_same_answers(one, store, queries, [1, 5, 40])
    store.close()

    # A ShardedStorage save of 3 shards onto 2 actors, re-balanced, same answers.
    with RayStorage.load(tmp_path / "s", shards=2, backend="cpu", cpus_per_shard=0.25) as two:
        assert two.shard_count == 2 and sorted(two.shard_sizes()) == [20, 20]
        assert_same_answers(one, two, queries, [1, 5, 40])


def test_bad_input_and_async(rng):
    with RayStorage(DIM, "cosine", **OPTIONS) as store:
        rows = rng.standard_normal((9, DIM)).astype(np.float32)
        store.add_vectors([f"v{i}" for i in range(9)], rows)
        before = (store.shard_sizes(), store.search_batch(rows, 9)[1].tolist())
        bad = rows.copy()
        bad[4, 2] = np.inf
        with pytest.raises(hive_gpu.NonFiniteValueError):
            store.add_vectors([f"n{i}" for i in range(9)], bad)
        with pytest.raises(hive_gpu.DuplicateIdError):
            store.add_vectors(["n0", "v3"], rows[:2])
        with pytest.raises(hive_gpu.DimensionMismatchError):
            store.search(rows[0, :3], 2)
        assert (store.shard_sizes(), store.search_batch(rows, 9)[1].tolist()) == before

        async def main():
            await store.add_vectors_async(["a0", "a1"], rows[:2])
            return await store.search_async(rows[0], 2), await store.search_batch_async(rows[:2], 2)

        hits, (_, ids) = asyncio.run(main())
        assert [h.id for h in hits] == ["v0", "a0"] and ids[1].tolist() == ["v1", "a1"]


def test_filters_typed_metadata_and_the_newer_writes(rng, tmp_path):
    one = hive_gpu.CpuContext().create_storage(DIM, "dot")
    rows = random_rows(rng, 12, None)
    ids = [f"v{i}" for i in range(12)]
    md = [{"lang": ["pt", "en", "es"][i % 3], "year": 2000 + i, "ok": i % 2 == 0, "t": ["a"] * (i % 2)} for i in range(12)]
    with RayStorage(DIM, "dot", **OPTIONS) as store:
        for s in (one, store):
            s.add_vectors(ids, rows, md)
            assert s.update_metadata("v4", {"lang": "pt", "year": 1.5})
            s.upsert_vectors(["v1", "n0"], rows[:2], [None, {"lang": "pt"}])
            assert s.remove_vectors(filter={"year": {"$gte": 2010}}) == 2
        fs = [{}, {"lang": "pt"}, {"$or": [{"ok": True}, {"t": {"$contains": "a"}}]}, hive_gpu.Filter({"year": {"$lt": 2005}}), {"lang": {"$gt": 3}}]
        assert_same_filtered(one, store, rows[:3], [1, 4, 20], fs)
        assert list(store) == one.ids()
        got, got_md = store.get_vectors(["n0", "v4"])
        assert got.tobytes() == one.get_vectors(["n0", "v4"])[0].tobytes() and got_md == [{"lang": "pt"}, {"lang": "pt", "year": 1.5}]
        with pytest.raises(hive_gpu.InvalidArgumentError):  # raised in an actor, before anything is removed
            store.remove_vectors(filter={"lang": {"$gt": 3}})
        assert len(store) == len(one)
        store.save(tmp_path / "s")
    with RayStorage.load(tmp_path / "s", shards=2, backend="cpu", cpus_per_shard=0.25) as two:
        assert_same_filtered(one, two, rows[:3], [1, 4, 20], fs)
        assert two.get_vectors(two.ids())[1] == one.get_vectors(one.ids())[1]


def test_dtype_reaches_every_actor(rng, tmp_path):
    # The actors store float16 rows: one float16 store answers the same, and a save keeps it.
    try:
        one = hive_gpu.CpuContext().create_storage(DIM, "cosine", "float16")
    except hive_gpu.InvalidDtypeError as e:
        pytest.skip(f"cpu: {e}")
    rows = rng.standard_normal((30, DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(30)]
    one.add_vectors(ids, rows)
    with RayStorage(DIM, "cosine", dtype="float16", **OPTIONS) as store:
        assert store.dtype == "float16"
        store.add_vectors(ids, rows)
        assert store.get_vectors(ids)[0].tobytes() == one.get_vectors(ids)[0].tobytes()
        assert_same_answers(one, store, rows[:3], [1, 7, 40])
        store.save(tmp_path / "s")
    with RayStorage.load(tmp_path / "s", shards=2, backend="cpu", cpus_per_shard=0.25) as two:
        assert two.dtype == "float16"
        assert_same_answers(one, two, rows[:3], [1, 7, 40])
