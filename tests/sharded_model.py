"""A random sequence of writes applied to one store and to a sharded one, whose answers
must then be equal bit for bit (tests/test_sharded.py, tests/test_distributed.py)."""

from __future__ import annotations

import numpy as np

from reference import assert_matches

DIM = 12


def assert_same_answers(one, sharded, queries: np.ndarray, ks) -> None:
    """Ids and distances bit for bit, on the batch and the single-query path."""
    assert len(one) == len(sharded)
    assert sorted(one.ids()) == sorted(sharded.ids())
    for k in ks:
        s1, i1 = one.search_batch(queries, k)
        s2, i2 = sharded.search_batch(queries, k)
        assert s1.shape == s2.shape and s1.dtype == s2.dtype
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1.view(np.uint32), s2.view(np.uint32))
        for q in queries[:4]:
            assert one.search(q, k) == sharded.search(q, k)


def random_rows(rng, n: int, pool: np.ndarray | None) -> np.ndarray:
    """Random rows; a third are copies of earlier rows so that ties span shards."""
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    if pool is not None and len(pool):
        dup = rng.random(n) < 0.33
        rows[dup] = pool[rng.integers(0, len(pool), dup.sum())]
    return rows


def run_random_operations(one, sharded, metric, rng, steps: int = 30) -> None:
    """Random adds (single and batches, a third duplicating live rows), updates and removes
    on both stores, comparing every answer every ten steps."""
    live: dict[str, np.ndarray] = {}
    next_id = 0
    for step in range(steps):
        op = rng.choice(["batch", "one", "update", "remove", "remove_many"], p=[0.3, 0.2, 0.2, 0.15, 0.15])
        pool = np.stack(list(live.values())) if live else None
        if op in ("batch", "one") or not live:
            n = 1 if op == "one" else int(rng.integers(1, 40))
            ids = [f"id{next_id + j}" for j in range(n)]
            next_id += n
            rows = random_rows(rng, n, pool)
            md = [{"step": str(step)} if j % 3 == 0 else {} for j in range(n)]
            if n == 1:
                one.add_vector(ids[0], rows[0], md[0])
                sharded.add_vector(ids[0], rows[0], md[0])
            else:
                one.add_vectors(ids, rows, md)
                sharded.add_vectors(ids, rows, md)
            live.update(zip(ids, rows))
        elif op == "update":
            victim = str(rng.choice(list(live)))
            row = random_rows(rng, 1, pool)[0]
            assert one.update_vector(victim, row, {"u": "1"}) is sharded.update_vector(victim, row, {"u": "1"}) is True
            live[victim] = row
        elif op == "remove":
            victim = str(rng.choice(list(live)))
            assert one.remove_vector(victim) is sharded.remove_vector(victim) is True
            del live[victim]
        else:
            victims = [str(v) for v in rng.choice(list(live), min(len(live), 5), replace=False)] + ["missing"]
            assert one.remove_vectors(victims) == sharded.remove_vectors(victims)
            for v in victims:
                live.pop(v, None)
        if step % 10 == 9:
            pool = np.stack(list(live.values()))
            queries = np.concatenate([pool[:3], rng.standard_normal((5, DIM)).astype(np.float32)])
            biggest = max(sharded.shard_sizes())
            assert_same_answers(one, sharded, queries, [1, 7, biggest + 1, len(live) + 5])
    # Every kept vector and its metadata read back from its shard; the float64 oracle agrees.
    for id in list(live)[:20]:
        assert np.array_equal(sharded.get_vector(id).data, one.get_vector(id).data)
        assert sharded.get_metadata(id) == one.get_metadata(id)
        assert id in sharded
    ids = list(live)
    X = np.stack([live[i] for i in ids])
    q = rng.standard_normal(DIM).astype(np.float32)
    hits = sharded.search(q, 10)
    assert_matches([h.id for h in hits], [h.distance for h in hits], X, ids, q, metric, 10)
    assert "missing" not in sharded and sharded.get_vector("missing") is None
    assert not sharded.remove_vector("missing") and not sharded.update_vector("missing", q)


def filter_outcome(call):
    """What a filtered call gave: its value, or the kind of error it raised."""
    try:
        return call()
    except Exception as e:  # compared between the two stores, never swallowed
        return type(e)


def assert_same_filtered(one, sharded, queries: np.ndarray, ks, filters) -> None:
    """Under each filter: ids (in insertion order), count, and every search path bit for bit,
    or the same error from both stores."""
    for f in filters:
        # One store lists filtered ids in slot order after a swap-remove; the sharded store
        # keeps insertion order, so compare as a set and check the order against ids().
        passed, got = filter_outcome(lambda: one.ids(filter=f)), filter_outcome(lambda: sharded.ids(filter=f))
        if isinstance(passed, type):
            assert got is passed
        else:
            assert got == [i for i in one.ids() if i in set(passed)] and len(got) == len(passed)
        assert filter_outcome(lambda: one.count(filter=f)) == filter_outcome(lambda: sharded.count(filter=f))
        for k in ks:
            got1 = filter_outcome(lambda: one.search_batch(queries, k, filter=f))
            got2 = filter_outcome(lambda: sharded.search_batch(queries, k, filter=f))
            if isinstance(got1, type):
                assert got1 is got2
                continue
            (s1, i1), (s2, i2) = got1, got2
            assert s1.shape == s2.shape
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_array_equal(s1.view(np.uint32), s2.view(np.uint32))
            for q in queries[:2]:
                assert one.search(q, k, filter=f) == sharded.search(q, k, filter=f)
