"""The evaluation paths of a filter give one answer: a single posting read in place (a list
or a bitmap, with its cached sorted slots), listed slots ($in, $id), and the general bitset
evaluation, on stores large enough for every posting form, through adds with and without
metadata, updates, upserts and removals that change the postings between searches."""

from __future__ import annotations

import numpy as np
import pytest

from hive_gpu import Filter, GpuDistanceMetric
from test_filter import Model, check_search

DIM = 8
N = 4096  # postings: "b" (1%) a bitmap listed for the engines, "c" (0.2%) a list, "a" (50%) dense

# Every operator, on a key whose postings take every form.
OPERATORS = [
    {"g": "a"},
    {"g": "b"},
    {"g": "c"},
    {"g": {"$ne": "a"}},
    {"g": {"$in": ["b", "c"]}},
    {"g": {"$in": ["c"]}},
    {"g": {"$nin": ["a", "d"]}},
    {"g": {"$gt": "b"}},
    {"g": {"$gte": "c"}},
    {"g": {"$lt": "b"}},
    {"g": {"$lte": "b"}},
    {"n": {"$gte": 95}},
    {"n": {"$lt": 2, "$gte": 1}},
    {"n": 7.0},
    {"tags": {"$contains": "rare"}},
    {"tags": {"$contains": "x0"}},
    {"flag": False},
    {"$or": [{"g": "c"}, {"n": 3}]},
    {"$and": [{"g": "b"}, {"n": {"$lt": 50}}]},
    {"$and": [{"g": "a"}, {"tags": {"$contains": "rare"}}]},
    {"$not": {"g": "a"}},
    {"g": {"$not": {"$eq": "b"}}},
    {"$id": {"$in": ["v3", "v17", "v4000", "nope"]}},
    {"$id": {"$nin": ["v3"]}, "g": "c"},
]

# The same rows through different paths: the single posting, listed slots and the general
# evaluation ($or of one condition twice, $and with an always-true member).
EQUIVALENT = [
    [{"g": "b"}, {"g": {"$in": ["b", "b"]}}, {"$or": [{"g": "b"}, {"g": "b"}]}, {"$and": [{"g": "b"}, {"$not": {"g": "zz"}}]}],
    [{"g": "c"}, {"g": {"$in": ["c", "zz"]}}, {"$or": [{"g": "c"}, {"g": "zz"}]}, {"$and": [{"g": "c"}, {"n": {"$gte": 0}}]}],
    [{"g": "a"}, {"g": {"$in": ["a"]}}, {"$or": [{"g": "a"}, {"g": "a"}]}, {"$and": [{"g": "a"}, {"$not": {"g": "zz"}}]}],
    [{"tags": {"$contains": "rare"}}, {"$or": [{"tags": {"$contains": "rare"}}, {"g": "zz"}]}],
]


def _metadata(i: int, rng: np.random.Generator) -> dict:
    r = rng.random()
    g = "b" if r < 0.01 else "c" if r < 0.012 else "a" if r < 0.5 else "d"
    md = {"g": g, "n": int(rng.integers(0, 100)) if i % 3 else float(rng.integers(0, 100)), "flag": bool(i % 2)}
    if i % 5 == 0:
        md["tags"] = ["rare"] if i % 125 == 0 else [f"x{i % 4}", f"x{i % 3}"]
    return md


def _grow(store, model, rng, first: int, n: int, with_metadata: bool) -> None:
    ids = [f"v{i}" for i in range(first, first + n)]
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    mds = [_metadata(i, rng) for i in range(first, first + n)] if with_metadata else None
    store.add_vectors(ids, X, mds)
    for j, i in enumerate(ids):
        model.rows[i] = (X[j], mds[j] if mds else {})


def _check_all(store, model, Q, metric) -> None:
    for f in OPERATORS:
        check_search(store, model, f, Q, 10, metric)
    for forms in EQUIVALENT:
        first = store.search_batch(Q, 10, filter=forms[0])
        for f in forms[1:]:
            got = store.search_batch(Q, 10, filter=Filter(f))
            assert got[1].tolist() == first[1].tolist(), f
            assert np.array_equal(got[0], first[0]), f
            assert store.count(filter=f) == store.count(filter=forms[0])
            assert store.ids(filter=f) == store.ids(filter=forms[0])


@pytest.mark.parametrize("metric", [GpuDistanceMetric.COSINE, GpuDistanceMetric.EUCLIDEAN], ids=lambda m: m.value)
def test_paths_agree_through_changes(ctx, metric, rng):
    store = ctx.create_storage(DIM, metric)
    model = Model()
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    _grow(store, model, rng, 0, N, True)
    _check_all(store, model, Q, metric)

    # Rows without metadata extend the store past every posting's bitmap and list.
    _grow(store, model, rng, N, N // 2, False)
    _check_all(store, model, Q, metric)

    # Removals swap the last row into the hole (relabelling its postings), updates move rows
    # between postings: the cached sorted slots must follow.
    ids = list(model.rows)
    gone = [ids[i] for i in rng.choice(len(ids), 700, replace=False)]
    assert store.remove_vectors(gone) == len(gone)
    for i in gone:
        del model.rows[i]
    _check_all(store, model, Q, metric)

    ids = list(model.rows)
    for i in rng.choice(len(ids), 60, replace=False):
        vid = ids[i]
        md = {"g": "b", "n": 1} if i % 2 else {}
        assert store.update_metadata(vid, md)
        model.rows[vid] = (model.rows[vid][0], md)
    _check_all(store, model, Q, metric)

    # Metadata given to rows added without any, by upsert; new rows with metadata after them.
    late = [f"v{i}" for i in range(N, N + N // 2) if f"v{i}" in model.rows][:40]
    X = rng.standard_normal((len(late) + 5, DIM)).astype(np.float32)
    upserted = late + [f"u{i}" for i in range(5)]
    mds = [{"g": "c", "tags": ["rare"]} for _ in upserted]
    store.upsert_vectors(upserted, X, mds)
    for j, vid in enumerate(upserted):
        model.rows.pop(vid, None)  # an upsert keeps a stored id's place; ties are rare here
        model.rows[vid] = (X[j], mds[j])
    assert store.count(filter={"g": "c", "tags": {"$contains": "rare"}}) == sum(
        1 for _, md in model.rows.values() if md.get("g") == "c" and "rare" in md.get("tags", []))
    _grow(store, model, rng, 2 * N, 300, True)
    for f in OPERATORS:
        assert sorted(store.ids(filter=f)) == sorted(i for i, _ in model.matching(f))
        assert store.count(filter=f) == len(model.matching(f))

    # Removal by filter, from a single posting read in place.
    before = store.count(filter={"g": "b"})
    assert store.remove_vectors(filter={"g": "b"}) == before
    for vid in [i for i, (_, md) in model.rows.items() if md.get("g") == "b"]:
        del model.rows[vid]
    assert store.count(filter={"g": "b"}) == 0
    for f in OPERATORS:
        assert sorted(store.ids(filter=f)) == sorted(i for i, _ in model.matching(f))


def test_metadata_of_rows_added_without_it(ctx, rng, tmp_path):
    """Rows added without metadata hold none, whatever comes before and after them: reads,
    updates, swap-removes and save/load."""
    store = ctx.create_storage(DIM, GpuDistanceMetric.DOT_PRODUCT)
    X = rng.standard_normal((40, DIM)).astype(np.float32)
    store.add_vectors([f"a{i}" for i in range(10)], X[:10])
    store.add_vectors([f"b{i}" for i in range(10)], X[10:20], [{"k": i} for i in range(10)])
    store.add_vectors([f"c{i}" for i in range(20)], X[20:])
    expect = {**{f"a{i}": {} for i in range(10)}, **{f"b{i}": {"k": i} for i in range(10)},
              **{f"c{i}": {} for i in range(20)}}
    assert store.update_metadata("c15", {"k": 100})
    expect["c15"] = {"k": 100}
    assert store.update_metadata("c16", {})
    for vid in ("b9", "a0", "c19", "b0", "c2"):  # the last row moves into each hole
        assert store.remove_vector(vid)
        del expect[vid]
    for vid, md in expect.items():
        assert store.get_metadata(vid) == md
    assert sorted(store.ids(filter={"k": {"$gte": 0}})) == sorted(v for v, md in expect.items() if md)
    path = tmp_path / "s.hgpu"
    store.save(path)
    again = ctx.load_storage(path)
    for vid, md in expect.items():
        assert again.get_metadata(vid) == md
    assert again.count(filter={"k": {"$gte": 0}}) == store.count(filter={"k": {"$gte": 0}})


@pytest.mark.parametrize("value", ["b", "c"], ids=["bitmap", "list"])
def test_swap_remove_relabels_cached_slots(ctx, rng, value):
    """Removing a row moves the last row into its slot: a posting only that move touches
    (no insert, no erase) must not keep its cached slots."""
    metric = GpuDistanceMetric.EUCLIDEAN
    store = ctx.create_storage(DIM, metric)
    model = Model()
    _grow(store, model, rng, 0, N, True)
    Q = rng.standard_normal((2, DIM)).astype(np.float32)
    for step in range(3):
        x = rng.standard_normal((1, DIM)).astype(np.float32)
        vid = f"last{step}"
        store.add_vectors([vid], x, [{"g": value}])
        model.rows[vid] = (x[0], {"g": value})
        check_search(store, model, {"g": value}, Q, 10, metric)  # caches the sorted slots
        other = next(i for i, (_, md) in model.rows.items() if md.get("g") == "d")
        assert store.remove_vector(other)
        del model.rows[other]
        check_search(store, model, {"g": value}, Q, 10, metric)
        assert store.search(Q[0], 10_000, filter={"g": value})[-1].id in model.rows
