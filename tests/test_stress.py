"""Concurrency stress: writers, readers, searchers and a saver on one store for a bounded
time, checked against a model of what each thread did.

HIVE_GPU_STRESS_SECONDS sets the duration per run (default 2).

How the checks stay honest under real concurrency:
- Each writer owns its ids, so its own history is sequential and exact: at the end every
  owned id is present iff its writer's last operation left it present, with its last vector
  bit for bit.
- Contested ids are raced by every writer. Their order is unobservable, so what is checked
  is what any order must give: adds minus removes that succeeded is 0 or 1 per id and equals
  its presence, and its vector is one that some thread wrote to it.
- Every vector is recorded in the id's history *before* the call that writes it, so anything
  a reader can observe is already in the history when it looks. A search hit must name an id
  whose history holds a vector with that score; a get_vector must return one of the id's
  vectors bit for bit; a file saved mid-run must load as one consistent store.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import numpy as np
import pytest

from reference import assert_matches, scores64, tolerance

import hive_gpu
from hive_gpu import DuplicateIdError, GpuDistanceMetric

DURATION = float(os.environ.get("HIVE_GPU_STRESS_SECONDS", "2"))
D = 16
WRITERS, SEARCHERS, READERS = 3, 2, 1
CONTESTED = [f"c{i}" for i in range(8)]


class History:
    """Every vector ever written to each id (append-only, recorded before the write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, list[np.ndarray]] = defaultdict(list)

    def record(self, ids, rows) -> None:
        with self._lock:
            for i, r in zip(ids, rows):
                self._by_id[i].append(r)

    def of(self, id: str) -> list[np.ndarray]:
        with self._lock:
            return list(self._by_id.get(id, ()))


@pytest.mark.parametrize("metric", [GpuDistanceMetric.COSINE, GpuDistanceMetric.EUCLIDEAN], ids=lambda m: m.value)
def test_concurrent_writers_readers_searchers(ctx, metric, tmp_path):
    s = ctx.create_storage(D, metric)
    history = History()
    stop = threading.Event()
    errors: list[BaseException] = []
    owned_final: list[dict[str, np.ndarray]] = [dict() for _ in range(WRITERS)]
    contested_adds: dict[str, int] = defaultdict(int)
    contested_removes: dict[str, int] = defaultdict(int)
    counts_lock = threading.Lock()
    done = defaultdict(int)  # operations completed per kind, to show the run did something

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)
                stop.set()

        return run

    @guarded
    def writer(w: int):
        r = np.random.default_rng(100 + w)
        mine: dict[str, np.ndarray] = owned_final[w]
        serial = 0
        while not stop.is_set():
            op = r.integers(0, 10)
            if op < 3 or len(mine) < 5:  # add a batch of new owned ids
                n = int(r.integers(1, 9))
                ids = [f"w{w}_{serial + j}" for j in range(n)]
                serial += n
                X = r.standard_normal((n, D)).astype(np.float32)
                history.record(ids, X)
                s.add_vectors(ids, X)
                mine.update(zip(ids, X))
                done["add"] += 1
            elif op < 5:  # update an owned id
                id = list(mine)[int(r.integers(len(mine)))]
                v = r.standard_normal(D).astype(np.float32)
                history.record([id], [v])
                assert s.update_vector(id, v)
                mine[id] = v
                done["update"] += 1
            elif op < 7:  # remove owned ids, one or several
                victims = [list(mine)[int(i)] for i in r.choice(len(mine), size=min(3, len(mine)), replace=False)]
                if r.integers(2):
                    assert s.remove_vectors(victims + ["never-added"]) == len(victims)
                else:
                    for v in victims:
                        assert s.remove_vector(v)
                for v in victims:
                    del mine[v]
                done["remove"] += 1
            else:  # race the other writers on a contested id
                id = CONTESTED[int(r.integers(len(CONTESTED)))]
                v = r.standard_normal(D).astype(np.float32)
                kind = r.integers(3)
                if kind == 0:
                    history.record([id], [v])
                    try:
                        s.add_vector(id, v)
                        with counts_lock:
                            contested_adds[id] += 1
                    except DuplicateIdError:
                        pass
                elif kind == 1:
                    if s.remove_vector(id):
                        with counts_lock:
                            contested_removes[id] += 1
                else:
                    history.record([id], [v])
                    s.update_vector(id, v)
                done["contested"] += 1

    def check_hit(q, id, score):
        past = history.of(id)
        assert past, f"search returned {id!r}, which was never written"
        want = scores64(np.stack(past), q, metric)[0]
        tol = tolerance(np.stack(past), q, metric)
        assert np.min(np.abs(want - score)) <= tol, (id, score, want)

    @guarded
    def searcher(i: int):
        r = np.random.default_rng(200 + i)
        while not stop.is_set():
            Q = r.standard_normal((3, D)).astype(np.float32)
            scores, ids = s.search_batch(Q, 7)
            for j in range(len(Q)):
                row = list(ids[j])
                assert len(set(row)) == len(row), row
                step = np.diff(scores[j].astype(np.float64))
                assert np.all(step <= 0) if metric.higher_is_better else np.all(step >= 0)
                for id, sc in zip(row, scores[j]):
                    check_hit(Q[j], id, float(sc))
            done["search"] += 1

    @guarded
    def reader():
        r = np.random.default_rng(300)
        while not stop.is_set():
            ids = s.ids()
            assert len(set(ids)) == len(ids)
            for id in [ids[int(k)] for k in r.integers(0, len(ids), 5)] if ids else []:
                got = s.get_vector(id)
                if got is None:
                    continue  # removed since ids() was taken
                assert any(np.array_equal(got.data, v) for v in history.of(id)), id
            done["read"] += 1

    @guarded
    def saver():
        path = tmp_path / "snap.hgv"
        while not stop.is_set():
            s.save(path)
            snap = ctx.load_storage(path)
            ids = snap.ids()
            assert len(set(ids)) == len(ids) == len(snap)
            for id in ids[:: max(1, len(ids) // 20)]:
                got = snap.get_vector(id).data
                assert any(np.array_equal(got, v) for v in history.of(id)), id
            snap.close()
            done["save"] += 1
            stop.wait(0.2)

    threads = (
        [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        + [threading.Thread(target=searcher, args=(i,)) for i in range(SEARCHERS)]
        + [threading.Thread(target=reader) for _ in range(READERS)]
        + [threading.Thread(target=saver)]
    )
    for t in threads:
        t.start()
    stop.wait(DURATION)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, repr(errors[0])
    assert min(done[k] for k in ("add", "update", "remove", "contested", "search", "read", "save")) > 0, dict(done)

    # Owned ids: exactly each writer's model.
    expected = {id: v for mine in owned_final for id, v in mine.items()}
    present = set(s.ids())
    assert len(present) == len(s)
    assert present - set(CONTESTED) == set(expected), "lost or extra owned ids"
    for id, v in expected.items():
        np.testing.assert_array_equal(s.get_vector(id).data, v, err_msg=id)
    # Contested ids: consistent counts and a vector some thread wrote.
    for id in CONTESTED:
        balance = contested_adds[id] - contested_removes[id]
        assert balance in (0, 1), (id, contested_adds[id], contested_removes[id])
        assert (id in present) == (balance == 1), id
        if id in present:
            got = s.get_vector(id).data
            assert any(np.array_equal(got, v) for v in history.of(id)), id
    # And the store searches exactly like a fresh one holding the final contents.
    rows = s.ids()
    X = np.stack([s.get_vector(i).data for i in rows])
    Q = np.random.default_rng(7).standard_normal((5, D)).astype(np.float32)
    scores, ids = s.search_batch(Q, 10)
    for j in range(len(Q)):
        assert_matches(ids[j], scores[j], X, rows, Q[j], metric, 10)


def test_concurrent_contested_adds_admit_exactly_one(ctx):
    # Many threads add the same ids at once: each id is added exactly once.
    s = ctx.create_storage(4, "dot")
    n_threads, n_ids = 8, 200
    wins = [0] * n_threads
    barrier = threading.Barrier(n_threads)

    def run(t):
        barrier.wait()
        for i in range(n_ids):
            try:
                s.add_vector(f"id{i}", np.full(4, t + 1, np.float32))
                wins[t] += 1
            except DuplicateIdError:
                pass

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == n_ids == len(s)
    # Each id holds the vector of the one thread that won it.
    winners = [int(s.get_vector(f"id{i}").data[0]) - 1 for i in range(n_ids)]
    assert [winners.count(t) for t in range(n_threads)] == wins
