"""Threads searching while others write: no crash, no torn result, no lost vector."""

from __future__ import annotations

import threading

import numpy as np

from helpers import make_ids


def test_searches_while_writing(ctx, rng):
    d = 32
    s = ctx.create_storage(d, "euclidean")
    base = rng.standard_normal((500, d)).astype(np.float32)
    s.add_vectors(make_ids(500, "base"), base)
    stop = threading.Event()
    errors: list[BaseException] = []
    ever_added = set(make_ids(500, "base"))
    lock = threading.Lock()

    def searcher(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                q = r.standard_normal((4, d)).astype(np.float32)
                scores, ids = s.search_batch(q, 10)
                assert ids.shape == (4, 10)  # the store never holds fewer than 500
                assert np.all(np.diff(scores, axis=1) >= -1e-4)  # sorted best first
                with lock:
                    known = set(ever_added)
                assert set(ids.ravel()) <= known
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    def writer():
        r = np.random.default_rng(1)
        try:
            for i in range(60):
                ids = make_ids(10, f"w{i}_")
                with lock:
                    ever_added.update(ids)
                s.add_vectors(ids, r.standard_normal((10, d)).astype(np.float32))
                if i % 3 == 0:
                    s.remove_vector(f"w{i}_3")
                s.update_vector("base7", r.standard_normal(d).astype(np.float32))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
    w = threading.Thread(target=writer)
    for t in threads:
        t.start()
    w.start()
    w.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(s) == 500 + 600 - 20
    assert "w3_3" not in s and "w4_3" in s


def test_parallel_searches_agree_with_serial(ctx, rng):
    d = 24
    X = rng.standard_normal((2000, d)).astype(np.float32)
    s = ctx.create_storage(d, "cosine")
    s.add_vectors(make_ids(2000), X)
    Q = rng.standard_normal((16, d)).astype(np.float32)
    serial = [s.search(q, 8) for q in Q]
    out: dict[int, list] = {}

    def run(i):
        for _ in range(5):
            out[i] = s.search(Q[i], 8)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(16):
        assert [h.id for h in out[i]] == [h.id for h in serial[i]]
