"""The id index: adds, removes (swap-remove), updates and lookups checked against a dict model,
duplicates that leave the store unchanged, batches large enough to be indexed on a second
thread, awkward ids (long shared prefixes, hash collisions) and save/load after removals."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

from helpers import make_ids, snapshot, unchanged

import hive_gpu
from hive_gpu import DuplicateIdError, NonFiniteValueError, _core

# Batches of at least this many ids are indexed on a helper thread (storage.cpp).
PARALLEL_IDS = 1 << 16


class Model:
    """A store and the dict it must match: id -> (row, metadata)."""

    def __init__(self, store):
        self.s = store
        self.d = store.dimension
        self.rows: dict[str, tuple[np.ndarray, dict[str, str]]] = {}

    def add(self, ids, X, md=None):
        self.s.add_vectors(ids, X, md)
        for j, i in enumerate(ids):
            self.rows[i] = (X[j].copy(), dict(md[j]) if md else {})

    def remove(self, i):
        assert self.s.remove_vector(i) == (i in self.rows)
        self.rows.pop(i, None)

    def remove_many(self, ids):
        want = len({i for i in ids if i in self.rows})
        assert self.s.remove_vectors(ids) == want
        for i in ids:
            self.rows.pop(i, None)

    def update(self, i, v, md=None):
        assert self.s.update_vector(i, v, md) == (i in self.rows)
        if i in self.rows:
            self.rows[i] = (v.copy(), dict(md) if md is not None else self.rows[i][1])

    def check(self, ids=None, absent=()):
        s = self.s
        assert len(s) == len(self.rows)
        assert sorted(s.ids()) == sorted(self.rows)
        for i in self.rows if ids is None else ids:
            assert i in s
            got = s.get_vector(i)
            assert got is not None and got.id == i
            np.testing.assert_array_equal(got.data, self.rows[i][0])
            assert got.metadata == self.rows[i][1]
        for i in absent:
            assert i not in self.rows
            assert i not in s and s.get_vector(i) is None and s.get_metadata(i) is None


def test_interleaved_ops_match_a_dict(ctx, rng):
    d = 6
    m = Model(ctx.create_storage(d, "euclidean"))
    pool = [f"id-{k}" for k in range(400)] + [f"long-shared-prefix-{'p' * 20}-{k}" for k in range(200)]
    gone: set[str] = set()
    for step in range(400):
        op = rng.integers(0, 8)
        if op <= 2:  # a batch of fresh ids, some of them removed earlier
            free = [i for i in pool if i not in m.rows]
            if not free:
                continue
            take = rng.choice(len(free), min(len(free), int(rng.integers(1, 12))), replace=False)
            ids = [free[t] for t in take]
            X = rng.standard_normal((len(ids), d)).astype(np.float32)
            md = [{"step": str(step)} if k % 2 else {} for k in range(len(ids))]
            m.add(ids, X, md)
            gone -= set(ids)
        elif op == 3 and m.rows:  # the newest row (often in the last slot: nothing moves)
            last = m.s.ids()[-1]
            m.remove(last)
            gone.add(last)
        elif op == 4 and m.rows:  # an older row: the last row moves into its slot
            mid = m.s.ids()[len(m.rows) // 2]
            m.remove(mid)
            gone.add(mid)
        elif op == 5:  # several at once, unknown and repeated ones included
            some = [pool[t] for t in rng.integers(0, len(pool), 6)] + ["never-added"]
            gone |= {i for i in some if i in m.rows}
            m.remove_many(some + some[:2])
        elif op == 6:
            i = pool[int(rng.integers(0, len(pool)))]
            md = {"u": str(step)} if step % 3 else None
            m.update(i, rng.standard_normal(d).astype(np.float32), md)
        else:
            i = pool[int(rng.integers(0, len(pool)))]
            v = rng.standard_normal(d).astype(np.float32)
            if i in m.rows:
                with pytest.raises(DuplicateIdError, match="already exists"):
                    m.s.add_vector(i, v)
            else:
                m.s.add_vector(i, v, {"one": "1"})
                m.rows[i] = (v, {"one": "1"})
                gone.discard(i)
        if step % 25 == 0:
            m.check(absent=sorted(gone)[:50])
    m.check(absent=gone)
    # Search still names the right ids after all the slot moves.
    for i in list(m.rows)[:20]:
        assert m.s.search(m.rows[i][0], 1)[0].id == i


def test_remove_last_and_middle_then_readd(ctx, rng):
    m = Model(ctx.create_storage(4, "dot"))
    ids = make_ids(9)
    m.add(ids, rng.standard_normal((9, 4)).astype(np.float32))
    last, mid = m.s.ids()[-1], m.s.ids()[4]
    m.remove(last)
    m.check(absent=[last])
    m.remove(mid)
    m.check(absent=[last, mid])
    assert m.s.ids() == ids[:4] + ids[5:8]  # insertion order, though the last row took the freed slot
    m.add([mid, last], rng.standard_normal((2, 4)).astype(np.float32))
    m.check()
    for i in list(m.rows):
        m.remove(i)
    m.check(absent=ids)
    m.add(ids, rng.standard_normal((9, 4)).astype(np.float32))
    m.check()


def test_clear_and_readd(ctx, rng):
    m = Model(ctx.create_storage(3, "cosine"))
    m.add(make_ids(50), rng.standard_normal((50, 3)).astype(np.float32))
    m.s.clear()
    m.rows.clear()
    m.check(absent=make_ids(50))
    m.add(make_ids(60), rng.standard_normal((60, 3)).astype(np.float32))
    m.check()


@pytest.mark.parametrize("n", [5, PARALLEL_IDS + 10], ids=["small", "large"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_duplicates_leave_the_store_unchanged(ctx, rng, n, where):
    s = ctx.create_storage(4, "cosine")
    stored = make_ids(3000, "s")
    s.add_vectors(stored, rng.standard_normal((3000, 4)).astype(np.float32), [{"k": i} for i in stored])
    s.remove_vectors(stored[::5])
    before = snapshot(s)
    size, ids_before = len(s), s.ids()
    fresh = [f"new-{k}-{'x' * (k % 30)}" for k in range(n)]
    X = rng.standard_normal((n, 4)).astype(np.float32)
    at = {"first": 1, "middle": n // 2, "last": n - 1}[where]

    twice = list(fresh)
    twice[at] = fresh[at - 1]
    with pytest.raises(DuplicateIdError) as e:
        s.add_vectors(twice, X)
    assert str(e.value) == f"id '{fresh[at - 1]}' appears twice in the batch"

    clash = list(fresh)
    clash[at] = stored[1]
    with pytest.raises(DuplicateIdError) as e:
        s.add_vectors(clash, X)
    assert str(e.value) == f"id '{stored[1]}' already exists"

    assert len(s) == size and s.ids() == ids_before  # same slots too
    unchanged(s, before)
    assert not any(i in s for i in (fresh[0], fresh[at - 1], fresh[-1]))
    # The index is intact: every stored id is found, the batch goes in once it is clean.
    for i in ids_before[::97]:
        assert s.get_metadata(i) == {"k": i}
    s.add_vectors(fresh, X)
    assert len(s) == size + n and s.get_vector(fresh[at]) is not None
    with pytest.raises(DuplicateIdError, match="already exists"):
        s.add_vectors([f"z{k}" for k in range(n - 1)] + [fresh[-1]], X)
    assert len(s) == size + n and "z0" not in s


def test_large_batch_into_an_empty_store_then_duplicate(ctx, rng):
    # A failing batch larger than the store: the index is rebuilt from the stored ids.
    s = ctx.create_storage(2, "dot")
    s.add_vectors(["a", "b", "c"], np.ones((3, 2), np.float32))
    n = PARALLEL_IDS + 1
    ids = [f"big{k}" for k in range(n - 1)] + ["b"]
    with pytest.raises(DuplicateIdError, match="'b' already exists"):
        s.add_vectors(ids, np.ones((n, 2), np.float32))
    assert sorted(s.ids()) == ["a", "b", "c"] and "big0" not in s
    ids[-1] = "big0"
    with pytest.raises(DuplicateIdError, match="'big0' appears twice"):
        s.add_vectors(ids, np.ones((n, 2), np.float32))
    assert sorted(s.ids()) == ["a", "b", "c"]
    for i in "abc":
        assert s.get_vector(i) is not None


def test_bad_row_in_a_large_batch_with_a_duplicate(ctx):
    # Either error may be reported (the CPU checks rows before it looks at ids; engines that
    # check rows on the device report the duplicate), and nothing changes.
    s = ctx.create_storage(4, "dot")
    s.add_vectors(["keep"], np.ones((1, 4), np.float32))
    before = snapshot(s)
    n = PARALLEL_IDS + 3
    X = np.ones((n, 4), np.float32)
    X[n - 2, 1] = np.nan
    with pytest.raises((DuplicateIdError, NonFiniteValueError)):
        s.add_vectors([f"r{k}" for k in range(n - 1)] + ["keep"], X)
    with pytest.raises(NonFiniteValueError):
        s.add_vectors([f"r{k}" for k in range(n)], X)
    unchanged(s, before)
    assert "r0" not in s
    X[n - 2, 1] = 0
    s.add_vectors([f"r{k}" for k in range(n)], X)
    assert len(s) == n + 1


def test_large_batches_interleaved_with_removes(ctx, rng):
    m = Model(ctx.create_storage(2, "euclidean"))
    n = PARALLEL_IDS + 500
    for round in range(3):
        ids = [f"r{round}-{k}" for k in range(n)]
        m.add(ids, rng.standard_normal((n, 2)).astype(np.float32))
        m.remove_many(ids[::3] + [f"r{round - 1}-{k}" for k in range(0, n, 2)])
        m.check(ids=[i for i in ids[:200] + ids[-200:] if i in m.rows], absent=ids[:300:3])
    assert len(m.s) == len(m.rows)
    sample = list(m.rows)[:: max(1, len(m.rows) // 500)]
    m.check(ids=sample)


def test_awkward_ids(ctx, rng):
    prefix = "tenant/0001/collection/embeddings/"  # far beyond the 15-byte inline string
    ids = (
        [prefix + str(k) for k in range(300)]
        + ["p" * 4096, "p" * 4095, "p" * 4095 + "q", "q" + "p" * 4095]  # the longest allowed
        + [f"{k:0>40}" for k in range(100)]  # differ only near the end
        + [str(k) + "#" * 40 for k in range(100)]  # differ only near the start
        + ["a", "b", "ab", "ba", "\x00", "\x00\x00", "a\x00b", "é", "日本語", "🙂" * 5]
        + ["x" * k for k in range(1, 40)]  # every length through the hash's word sizes
    )
    assert len(set(ids)) == len(ids)
    m = Model(ctx.create_storage(3, "dot"))
    X = rng.standard_normal((len(ids), 3)).astype(np.float32)
    m.add(ids, X)
    m.check()
    for i in ("x" * 40, prefix, prefix + "300", "p" * 4094, "c", "\x00" * 3):
        assert i not in m.s
    m.remove_many(ids[::2])
    m.check(absent=ids[::2])
    m.add(ids[::2], X[::2])
    m.check()


@functools.lru_cache(maxsize=None)
def _ids_sharing_hash_bits(bits: int, count: int, candidates: int) -> list[list[str]]:
    """Groups of ids whose index hashes share `bits` bits: the low bits of the hash's upper
    half, which pick the home bucket (so the ids pile up in one cluster), or with bits=32 the
    whole 32-bit fragment stored in the table (so only the id strings tell them apart)."""
    mask = (1 << bits) - 1
    groups: dict[int, list[str]] = {}
    for k in range(candidates):
        i = f"c{k}"
        groups.setdefault((_core._testing.id_hash(i) >> 32) & mask, []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)[:count]


def test_ids_that_collide_in_the_hash(ctx, rng):
    cluster = _ids_sharing_hash_bits(12, 1, 60000)[0]  # one home bucket in tables up to 4096
    assert len(cluster) >= 15
    same_fragment = [i for g in _ids_sharing_hash_bits(32, 4, 300000) for i in g]
    assert len(same_fragment) >= 4
    ids = cluster + same_fragment + make_ids(40)
    m = Model(ctx.create_storage(4, "cosine"))
    order = rng.permutation(len(ids))
    for k in range(0, len(ids), 7):  # several batches: the table grows in between
        batch = [ids[j] for j in order[k : k + 7]]
        m.add(batch, rng.standard_normal((len(batch), 4)).astype(np.float32))
    m.check()
    for i in same_fragment:
        with pytest.raises(DuplicateIdError, match="already exists"):
            m.s.add_vector(i, np.ones(4, np.float32))
    # Take ids out of the middle of the cluster and the colliding pairs, one by one.
    for i in cluster[1::2] + same_fragment[::2]:
        m.remove(i)
        m.check(ids=[j for j in ids if j in m.rows])
    m.check(absent=cluster[1::2] + same_fragment[::2])
    m.add(cluster[1::2], rng.standard_normal((len(cluster[1::2]), 4)).astype(np.float32))
    m.check()


def test_save_load_after_removals(ctx, rng, tmp_path):
    m = Model(ctx.create_storage(5, "euclidean"))
    ids = make_ids(500, "persist-with-a-long-prefix-")
    X = rng.standard_normal((500, 5)).astype(np.float32)
    m.add(ids, X, [{"i": str(k)} for k in range(500)])
    m.remove_many(ids[::3])
    m.remove(m.s.ids()[-1])
    m.remove(m.s.ids()[10])
    p = tmp_path / "ids.hgv"
    m.s.save(p)
    t = ctx.load_storage(p)
    assert t.ids() == m.s.ids()
    m.s = t
    m.check(absent=ids[::3])
    # The loaded index works for every kind of write.
    with pytest.raises(DuplicateIdError, match="already exists"):
        t.add_vectors([ids[1]], X[:1])
    m.remove(ids[1])
    m.remove(t.ids()[len(t) // 2])
    m.add(ids[::3], X[::3])
    m.update(ids[4], X[0], {"after": "load"})
    m.check()


def test_async_large_batch(ctx, rng):
    # The async path hands its ids to the storage without a copy; same all-or-nothing rules.
    s = ctx.create_storage(3, "dot")
    s.add_vectors(["keep"], np.ones((1, 3), np.float32), [{"m": "1"}])
    before = snapshot(s)
    n = PARALLEL_IDS + 7
    ids = [f"async-{k}-{'y' * 16}" for k in range(n)]
    X = rng.standard_normal((n, 3)).astype(np.float32)

    async def main():
        with pytest.raises(DuplicateIdError, match="'keep' already exists"):
            await s.add_vectors_async(ids[:-1] + ["keep"], X)
        unchanged(s, before)
        await s.add_vectors_async(ids, X)
        with pytest.raises(DuplicateIdError, match="appears twice"):
            await s.add_vectors_async(["fresh", "fresh"], X[:2])

    asyncio.run(asyncio.wait_for(main(), 120))
    assert len(s) == n + 1 and "fresh" not in s
    for k in (0, n // 2, n - 1):
        np.testing.assert_array_equal(s.get_vector(ids[k]).data, X[k])


def test_hash_is_deterministic_and_spreads():
    h = [_core._testing.id_hash(f"vec-{k}") for k in range(20000)]
    assert h == [_core._testing.id_hash(f"vec-{k}") for k in range(20000)]
    assert all(0 <= x < 1 << 64 for x in h)
    assert len(set(h)) == len(h)
    # The home bucket of a 4096-bucket table: about 20000 / 4096 ids each, no pile-ups.
    counts = np.bincount([(x >> 32) & 4095 for x in h], minlength=4096)
    assert counts.max() < 20
