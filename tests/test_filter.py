"""Typed metadata and filtered search (docs/design.md, "Filters").

Every filtered answer is checked against a brute-force oracle: the predicate evaluated in
Python over the stored metadata, then an exact float64 top-k over the matching rows (ties by
insertion order). Parametrized over every backend through the ctx fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hive_gpu
from hive_gpu import Filter, GpuDistanceMetric, GpuVector, InvalidArgumentError, InvalidMetadataError
from reference import METRICS, assert_matches, topk64

DIM = 8
DATA = Path(__file__).parent / "data"


# ---- the oracle -------------------------------------------------------------------------------


def _num(v):
    return type(v) in (int, float)


def _equal(v, x) -> bool:
    if type(v) is bool or type(x) is bool:
        return type(v) is bool and type(x) is bool and v == x
    if _num(v) and _num(x):
        return v == x
    if type(v) is str and type(x) is str:
        return v == x
    return False


def _order(v, x, op) -> bool:
    if not ((_num(v) and _num(x)) or (type(v) is str and type(x) is str)):
        return False
    return {"$gt": v > x, "$gte": v >= x, "$lt": v < x, "$lte": v <= x}[op]


def _check_orderings(f, rows):
    """The oracle's errors: an ordering of a str against stored numbers, or the reverse."""
    if not isinstance(f, dict):
        return
    for key, val in f.items():
        if key in ("$and", "$or"):
            for sub in val:
                _check_orderings(sub, rows)
        elif key == "$not":
            _check_orderings(val, rows)
        elif key != "$id" and isinstance(val, dict):
            for op, x in val.items():
                if op == "$not":
                    _check_orderings({key: x}, rows)
                elif op in ("$gt", "$gte", "$lt", "$lte"):
                    stored = [md[key] for md in rows if key in md]
                    if type(x) is str and any(_num(v) for v in stored):
                        raise InvalidArgumentError("str against numbers")
                    if _num(x) and any(type(v) is str for v in stored):
                        raise InvalidArgumentError("number against str")


def _field(md, key, cond) -> bool:
    if not isinstance(cond, dict):
        cond = {"$eq": cond}
    for op, x in cond.items():
        if op == "$not":
            if _field(md, key, x):
                return False
            continue
        if key not in md:
            return False
        v = md[key]
        if op == "$eq":
            ok = _equal(v, x)
        elif op == "$ne":
            ok = not _equal(v, x)
        elif op == "$in":
            ok = any(_equal(v, y) for y in x)
        elif op == "$nin":
            ok = not any(_equal(v, y) for y in x)
        elif op == "$contains":
            ok = type(v) is list and x in v
        else:
            ok = _order(v, x, op)
        if not ok:
            return False
    return True


def passes(vid, md, f) -> bool:
    for key, val in f.items():
        if key == "$and":
            ok = all(passes(vid, md, s) for s in val)
        elif key == "$or":
            ok = any(passes(vid, md, s) for s in val)
        elif key == "$not":
            ok = not passes(vid, md, val)
        elif key == "$id":
            val = val if isinstance(val, dict) else {"$eq": val}
            ok = all(
                {"$in": lambda x: vid in x, "$nin": lambda x: vid not in x, "$eq": lambda x: vid == x,
                 "$ne": lambda x: vid != x}[op](x)
                for op, x in val.items()
            )
        else:
            ok = _field(md, key, val)
        if not ok:
            return False
    return True


class Model:
    """What the store should hold, in insertion order (the tie order)."""

    def __init__(self):
        self.rows: dict[str, tuple[np.ndarray, dict]] = {}

    def matching(self, f):
        _check_orderings(f, [md for _, md in self.rows.values()])
        return [(i, v) for i, (v, md) in self.rows.items() if passes(i, md, f)]


def check_search(store, model, f, Q, k, metric):
    """search, search_batch, ids and count under f against the oracle."""
    match = model.matching(f)
    ids = [i for i, _ in match]
    assert sorted(store.ids(filter=f)) == sorted(ids)
    assert store.count(filter=f) == len(ids)
    scores, got = store.search_batch(Q, k, filter=f)
    assert scores.shape == (len(Q), min(k, len(ids)))
    hits = store.search(Q[0], k, filter=f)
    assert [h.id for h in hits] == list(got[0])
    if not ids:
        return
    X = np.stack([v for _, v in match])
    for q in range(len(Q)):
        assert set(got[q]) <= set(ids)
        assert_matches(got[q], scores[q], X, ids, Q[q : q + 1], metric, k)
    for h in hits:
        assert h.metadata == model.rows[h.id][1]


# ---- typed metadata -------------------------------------------------------------------------


TYPED = {"s": "pt", "i": -(2**63), "big": 2**63 - 1, "f": 2.5, "b": True, "z": False, "t": ["a", "b", "a"], "e": []}


def test_typed_metadata_round_trips(ctx, tmp_path):
    store = ctx.create_storage(DIM, GpuDistanceMetric.COSINE)
    v = np.ones(DIM, np.float32)
    store.add_vector("a", v, TYPED)
    store.add_vectors(["b", "c"], np.stack([v, v]), [{"n": 1}, {"t": ("x",)}])
    for md in (store.get_metadata("a"), store.get_vector("a").metadata, store.search(v, 1)[0].metadata):
        assert md == TYPED
        assert {k: type(x) for k, x in md.items()} == {k: type(x) for k, x in TYPED.items()}
    assert store.get_metadata("c") == {"t": ["x"]}
    store.save(tmp_path / "s.hgv")
    loaded = ctx.load_storage(tmp_path / "s.hgv")
    assert loaded.get_metadata("a") == TYPED
    assert type(loaded.get_metadata("b")["n"]) is int


@pytest.mark.parametrize(
    "value", [None, object(), b"bytes", {"nested": 1}, [1, 2], ["a", 3], np.int64(3), {1, 2}, 1j]
)
def test_metadata_of_a_bad_type_names_the_key(ctx, value):
    store = ctx.create_storage(DIM, GpuDistanceMetric.COSINE)
    store.add_vector("a", np.ones(DIM, np.float32), {"keep": 1})
    with pytest.raises(InvalidMetadataError, match="bad_key") as e:
        store.add_vector("b", np.ones(DIM, np.float32), {"ok": 1, "bad_key": value})
    assert isinstance(e.value, TypeError) and isinstance(e.value, InvalidArgumentError)
    with pytest.raises(InvalidMetadataError, match="bad_key"):
        store.add_vectors(["b"], np.ones((1, DIM), np.float32), [{"bad_key": value}])
    with pytest.raises(InvalidMetadataError, match="bad_key"):
        store.update_metadata("a", {"bad_key": value})
    with pytest.raises(InvalidMetadataError, match="bad_key"):
        store.update_vector("a", np.ones(DIM, np.float32), {"bad_key": value})
    assert len(store) == 1 and store.get_metadata("a") == {"keep": 1}


@pytest.mark.parametrize("value", [float("nan"), 2**63, -(2**63) - 1])
def test_metadata_values_out_of_range(ctx, value):
    store = ctx.create_storage(DIM, GpuDistanceMetric.COSINE)
    with pytest.raises(InvalidArgumentError, match="k"):
        store.add_vector("a", np.ones(DIM, np.float32), {"k": value})
    assert len(store) == 0


def test_update_vector_keeps_or_replaces_metadata(ctx):
    store = ctx.create_storage(DIM, GpuDistanceMetric.EUCLIDEAN)
    v = np.arange(DIM, dtype=np.float32)
    store.add_vector(GpuVector("b", v, {"lang": "pt"}))
    assert GpuVector("x", v).metadata == {}
    for keep in (GpuVector("b", v + 1), GpuVector("b", v + 2, None)):
        assert store.update_vector(keep)
        assert store.get_metadata("b") == {"lang": "pt"}
    assert store.update_vector("b", v, None) and store.get_metadata("b") == {"lang": "pt"}
    assert store.count({"lang": "pt"}) == 1
    assert store.update_vector(GpuVector("b", v, {"lang": "en"}))
    assert store.ids({"lang": "pt"}) == [] and store.ids({"lang": "en"}) == ["b"]
    assert store.update_vector("b", v, {}) and store.get_metadata("b") == {}
    assert store.count({"lang": "en"}) == 0
    assert store.update_metadata("b", {"year": 2020}) and store.ids({"year": 2020.0}) == ["b"]
    assert not store.update_metadata("nope", {"year": 1})


def test_old_format_loads_with_str_values(ctx):
    # Written by format version 1: a store of ids a, c, d (b removed) with str metadata.
    store = ctx.load_storage(DATA / "store_v1.hgv")
    assert store.ids() == ["a", "c", "d"]
    assert store.get_metadata("a") == {"lang": "pt", "year": "2020"}
    assert store.get_metadata("c") == {"lang": "en", "note": "café"}
    assert store.ids({"lang": "pt"}) == ["a", "d"]
    assert store.ids({"year": {"$gte": "2020"}}) == ["a"]
    hits = store.search(np.array([1, 2, 3, 4], np.float32), 3, filter={"lang": "pt"})
    assert [h.id for h in hits] == ["a", "d"] and hits[0].distance == 0.0


def test_invalid_utf8_in_a_file_is_corrupt(ctx, tmp_path):
    store = ctx.create_storage(DIM, GpuDistanceMetric.COSINE)
    store.add_vector("a", np.ones(DIM, np.float32), {"k": "\u00e9\u00e9"})
    path = tmp_path / "s.hgv"
    store.save(path)
    raw = bytearray(path.read_bytes())
    at = raw.index("\u00e9\u00e9".encode())
    raw[at + 1] = 0x41  # a lead byte followed by an ASCII byte: not UTF-8
    # Fix the META section's CRC so that only the UTF-8 check can refuse the file.
    _refresh_crcs(raw)
    path.write_bytes(bytes(raw))
    with pytest.raises(hive_gpu.CorruptFileError, match="UTF-8"):
        ctx.load_storage(path)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _refresh_crcs(raw: bytearray) -> None:
    pos = 64
    while pos < len(raw):
        length = int.from_bytes(raw[pos + 8 : pos + 16], "little")
        payload = bytes(raw[pos + 16 : pos + 16 + length])
        raw[pos + 16 + length : pos + 20 + length] = _crc32c(payload).to_bytes(4, "little")
        pos += 20 + length


# ---- filters: fixed cases --------------------------------------------------------------------


def _store(ctx, metric, rng, n=60):
    store = ctx.create_storage(DIM, metric)
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(n)]
    mds = [
        {"lang": ["pt", "en", "es"][i % 3], "year": 2000 + i % 7, "score": (i % 5) / 2, "flag": i % 2 == 0,
         "tags": [f"t{i % 4}", f"t{i % 6}"]} if i % 10 else {}
        for i in range(n)
    ]
    store.add_vectors(ids, X, mds)
    model = Model()
    for i, x, md in zip(ids, X, mds):
        model.rows[i] = (x, md)
    return store, model


FIXED = [
    {},
    {"lang": "pt"},
    {"lang": {"$ne": "pt"}},
    {"lang": {"$nin": ["pt", "es"]}},
    {"year": {"$gte": 2003, "$lt": 2005}},
    {"year": {"$gt": 2002.5}},
    {"score": {"$lte": 1}},
    {"score": 1},
    {"flag": True},
    {"flag": {"$ne": False}},
    {"tags": {"$contains": "t3"}},
    {"$or": [{"lang": "es"}, {"tags": {"$contains": "t0"}}]},
    {"$and": [{"lang": {"$in": ["pt", "en"]}}, {"$not": {"year": 2001}}]},
    {"$not": {"lang": "pt"}},
    {"year": {"$not": {"$gt": 2003}}},
    {"$id": {"$in": ["v1", "v5", "v50", "missing"]}},
    {"$id": {"$nin": ["v1"]}, "lang": "en"},
    {"lang": "none"},
    {"year": "2001"},
    {"missing": {"$ne": 1}},
    {"lang": {"$gte": "es"}},
]


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_fixed_filters_match_the_oracle(ctx, metric, rng):
    store, model = _store(ctx, metric, rng)
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    for f in FIXED:
        for k in (1, 5, 100):
            check_search(store, model, f, Q, k, metric)
        compiled = Filter(f)
        assert store.ids(filter=compiled) == store.ids(filter=f)
        assert store.search_batch(Q, 7, filter=compiled)[1].tolist() == store.search_batch(Q, 7, filter=f)[1].tolist()


def test_nothing_and_everything(ctx, rng):
    store, model = _store(ctx, GpuDistanceMetric.DOT_PRODUCT, rng)
    Q = rng.standard_normal((4, DIM)).astype(np.float32)
    scores, ids = store.search_batch(Q, 5, filter={"lang": "xx"})
    assert scores.shape == (4, 0) and ids.shape == (4, 0)
    assert store.search(Q[0], 5, filter={"lang": "xx"}) == []
    everything = {"$or": [{"lang": {"$in": ["pt", "en", "es"]}}, {"$not": {"lang": {"$in": ["pt", "en", "es"]}}}]}
    s1, i1 = store.search_batch(Q, 9, filter=everything)
    s0, i0 = store.search_batch(Q, 9)
    assert (i1 == i0).all() and (s1 == s0).all()
    empty = ctx.create_storage(DIM, GpuDistanceMetric.COSINE)
    assert empty.search(Q[0], 3, filter={"a": 1}) == [] and empty.count({"a": 1}) == 0


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_ties_rank_by_insertion_order(ctx, metric, rng):
    store = ctx.create_storage(DIM, metric)
    base = rng.standard_normal(DIM).astype(np.float32)
    n = 200
    X = np.stack([base if i % 3 else base * 2 for i in range(n)])
    ids = [f"v{i}" for i in range(n)]
    store.add_vectors(ids, X, [{"g": i % 4} for i in range(n)])
    # Swap-removes move rows to other slots: ordinals, not slots, decide ties.
    store.remove_vectors(["v0", "v5", "v17"])
    model = Model()
    for i in range(n):
        if ids[i] not in ("v0", "v5", "v17"):
            model.rows[ids[i]] = (X[i], {"g": i % 4})
    q = rng.standard_normal(DIM).astype(np.float32)
    for f in ({"g": 1}, {"g": {"$in": [0, 3]}}, {"$id": {"$in": ["v3", "v6", "v1", "v2"]}}):
        match = model.matching(f)
        M = np.stack([v for _, v in match])
        _, rows = topk64(M, q, metric, 30)
        scores, got = store.search_batch(q[None], 30, filter=f)
        assert list(got[0]) == [match[r][0] for r in rows[0]]


def test_remove_by_filter(ctx, rng):
    store, model = _store(ctx, GpuDistanceMetric.EUCLIDEAN, rng)
    gone = [i for i, _ in model.matching({"lang": "pt"})]
    assert store.remove_vectors(filter={"lang": "pt"}) == len(gone)
    for i in gone:
        del model.rows[i]
    assert sorted(store.ids()) == sorted(model.rows)
    Q = rng.standard_normal((2, DIM)).astype(np.float32)
    check_search(store, model, {"year": {"$gte": 2002}}, Q, 10, GpuDistanceMetric.EUCLIDEAN)
    with pytest.raises(InvalidArgumentError):
        store.remove_vectors(["v1"], filter={"a": 1})
    with pytest.raises(InvalidArgumentError):
        store.remove_vectors()


BAD = [
    ({"year": {"$foo": 1}}, "filter.year.$foo"),
    ({"$and": [{"lang": "pt"}, {"year": {"$gt": "2001"}}]}, "filter.$and[1].year.$gt"),
    ({"lang": {"$lt": 3}}, "filter.lang.$lt"),
    ({"year": {"$in": 2001}}, "filter.year.$in"),
    ({"year": {"$in": [2001, [1]]}}, "filter.year.$in[1]"),
    ({"$or": []}, "filter.$or"),
    ({"$or": {"a": 1}}, "filter.$or"),
    ({"$nor": [{"a": 1}]}, "filter.$nor"),
    ({"flag": {"$gt": True}}, "filter.flag.$gt"),
    ({"tags": ["a"]}, "filter.tags"),
    ({"tags": {"$contains": 1}}, "filter.tags.$contains"),
    ({"a": {}}, "filter.a"),
    ({"a": None}, "filter.a"),
    ({"a": {"b": 1}}, "filter.a.b"),
    ({"a": float("nan")}, "filter.a"),
    ({"a": object()}, "filter.a"),
    ({"a": 2**70}, "filter.a"),
    ({"$id": {"$in": [1]}}, "filter.$id.$in[0]"),
    ({"$id": {"$gt": "a"}}, "filter.$id.$gt"),
    ({"$not": [1]}, "filter.$not"),
]


@pytest.mark.parametrize("bad,path", BAD, ids=[str(b) for b, _ in BAD])
def test_bad_filters_name_the_path_and_change_nothing(ctx, rng, bad, path):
    store, model = _store(ctx, GpuDistanceMetric.COSINE, rng)
    before = store.ids()
    q = rng.standard_normal(DIM).astype(np.float32)
    calls = [
        lambda: store.search(q, 3, filter=bad),
        lambda: store.search_batch(q[None], 3, filter=bad),
        lambda: store.ids(filter=bad),
        lambda: store.count(filter=bad),
        lambda: store.remove_vectors(filter=bad),
    ]
    # Orderings that meet the stored values' type fail when evaluated; the rest when parsed.
    if "$gt" not in path and "$lt" not in path or "$id" in path or "flag" in path:
        calls.append(lambda: Filter(bad))
    for call in calls:
        with pytest.raises(InvalidArgumentError, match=re.escape(path)):
            call()
    assert store.ids() == before


def test_filter_argument_type(ctx):
    store = ctx.create_storage(DIM, GpuDistanceMetric.COSINE)
    with pytest.raises(InvalidArgumentError):
        store.search(np.ones(DIM, np.float32), 1, filter=[("a", 1)])
    with pytest.raises(InvalidArgumentError, match="keys are str"):
        store.count({1: 2})


def test_async_filtered(ctx, rng):
    store, model = _store(ctx, GpuDistanceMetric.DOT_PRODUCT, rng)
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    f = {"year": {"$lt": 2003}}

    async def run():
        single = await asyncio.gather(*(store.search_async(q, 4, filter=f) for q in Q))
        batch = await store.search_batch_async(Q, 4, filter=Filter(f))
        found = await store.update_metadata_async("v1", {"year": 1990})
        missing = await store.update_metadata_async("nope", {"year": 1990})
        with pytest.raises(InvalidArgumentError, match="filter.year.\\$gt"):
            await store.search_async(Q[0], 4, filter={"year": {"$gt": "x"}})
        return single, batch, found, missing

    single, batch, found, missing = asyncio.run(run())
    sync_scores, sync_ids = store.search_batch(Q, 4, filter=f)
    assert [[h.id for h in hits] for hits in single] == sync_ids.tolist() == batch[1].tolist()
    assert found and not missing and store.get_metadata("v1") == {"year": 1990}


# ---- random predicates after random edits, across save/load ------------------------------------

LANGS = ["pt", "en", "es", "é"]
TAGS = ["a", "b", "c", "d"]

metadata_st = st.fixed_dictionaries(
    {},
    optional={
        "lang": st.sampled_from(LANGS),
        "year": st.integers(1998, 2004),
        "score": st.one_of(st.integers(-2, 2), st.sampled_from([-1.5, 0.0, 0.5, 1.0, 2.5])),
        "flag": st.booleans(),
        "tags": st.lists(st.sampled_from(TAGS), max_size=3),
    },
)


def _cond(draw, key):
    if key == "lang":
        x = st.sampled_from(LANGS + ["zz"])
        ops = ["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte"]
    elif key in ("year", "score"):
        x = st.one_of(st.integers(1997, 2005), st.sampled_from([-1.0, 0.5, 2000.5, 2001.0]))
        ops = ["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte"]
    elif key == "flag":
        x = st.booleans()
        ops = ["$eq", "$ne", "$in", "$nin"]
    else:
        return {"$contains": draw(st.sampled_from(TAGS + ["z"]))}
    op = draw(st.sampled_from(ops + ["short"]))
    if op == "short":
        return draw(x)
    if op in ("$in", "$nin"):
        return {op: draw(st.lists(x, max_size=3))}
    return {op: draw(x)}


@st.composite
def predicates(draw, depth=0):
    kind = draw(st.sampled_from(["field", "field", "field", "and", "or", "not", "id"] if depth < 2 else ["field"]))
    if kind == "field":
        keys = draw(st.lists(st.sampled_from(["lang", "year", "score", "flag", "tags"]), min_size=1, max_size=2, unique=True))
        return {k: _cond(draw, k) for k in keys}
    if kind == "id":
        return {"$id": {"$in": draw(st.lists(st.sampled_from([f"v{i}" for i in range(40)]), max_size=6))}}
    if kind == "not":
        return {"$not": draw(predicates(depth + 1))}
    return {f"${kind}": draw(st.lists(predicates(depth + 1), min_size=1, max_size=3))}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_predicates_after_random_edits(ctx, tmp_path, data):
    metric = data.draw(st.sampled_from(METRICS))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    store = ctx.create_storage(DIM, metric)
    model = Model()
    n = data.draw(st.integers(0, 40))
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(n)]
    mds = [data.draw(metadata_st) for _ in range(n)]
    if n:
        store.add_vectors(ids, X, mds)
    for i, x, md in zip(ids, X, mds):
        model.rows[i] = (x, md)
    next_id = n
    for op in data.draw(st.lists(st.sampled_from(["add", "update", "meta", "remove", "remove_filter"]), max_size=12)):
        live = list(model.rows)
        if op == "add" or not live:
            vid, x, md = f"v{next_id}", rng.standard_normal(DIM).astype(np.float32), data.draw(metadata_st)
            next_id += 1
            store.add_vector(vid, x, md)
            model.rows[vid] = (x, md)
        elif op == "update":
            vid = data.draw(st.sampled_from(live))
            x = rng.standard_normal(DIM).astype(np.float32)
            md = data.draw(st.one_of(st.none(), metadata_st))
            assert store.update_vector(vid, x, md)
            model.rows[vid] = (x, model.rows[vid][1] if md is None else md)
        elif op == "meta":
            vid, md = data.draw(st.sampled_from(live)), data.draw(metadata_st)
            assert store.update_metadata(vid, md)
            model.rows[vid] = (model.rows[vid][0], md)
        elif op == "remove":
            vid = data.draw(st.sampled_from(live))
            assert store.remove_vector(vid)
            del model.rows[vid]
        else:
            f = data.draw(predicates())
            try:
                gone = [i for i, _ in model.matching(f)]
            except InvalidArgumentError:
                with pytest.raises(InvalidArgumentError):
                    store.remove_vectors(filter=f)
                continue
            assert store.remove_vectors(filter=f) == len(gone)
            for i in gone:
                del model.rows[i]
    Q = rng.standard_normal((2, DIM)).astype(np.float32)
    path = tmp_path / "s.hgv"
    store.save(path)
    loaded = ctx.load_storage(path)
    for _ in range(4):
        f = data.draw(predicates())
        k = data.draw(st.integers(1, 12))
        for s in (store, loaded):
            try:
                model.matching(f)
            except InvalidArgumentError:
                with pytest.raises(InvalidArgumentError):
                    s.search(Q[0], k, filter=f)
                continue
            check_search(s, model, f, Q, k, metric)


# ---- the CPU engine's paths -----------------------------------------------------------------

_PATHS_SCRIPT = r"""
import json, sys
import numpy as np
import hive_gpu
rng = np.random.default_rng(7)
n, d = 6000, 16
X = rng.standard_normal((n, d)).astype(np.float32)
X[100:140] = X[50]  # ties
Q = rng.standard_normal((3, d)).astype(np.float32)
out = {}
for metric in ("cosine", "dot_product", "euclidean"):
    s = hive_gpu.create_context("cpu").create_storage(d, metric)
    s.add_vectors([f"v{i}" for i in range(n)], X, [{"g": i % 97, "h": i % 2} for i in range(n)])
    for name, f in (("dense", {"h": 1}), ("mid", {"g": {"$lt": 10}}), ("sparse", {"g": 3})):
        for nq in (1, 3, 7):
            sc, ids = s.search_batch(Q[:nq] if nq <= 3 else np.tile(Q, (3, 1))[:nq], 20, filter=f)
            out[f"{metric}/{name}/{nq}"] = [ids.tolist(), sc.view(np.uint32).tolist()]
print(json.dumps(out))
"""


def test_cpu_filtered_paths_agree_with_and_without_the_screen(backend):
    """Dense (masked scan and masked screen) and sparse (gathered rows) answers, whichever path
    the thresholds pick or the environment forces, are bit for bit the same, and match the
    oracle."""
    if backend != "cpu":
        pytest.skip("the CPU engine's paths")
    runs = {}
    for screen, path in (("off", "auto"), ("always", "auto"), ("off", "dense"), ("always", "dense"), ("off", "sparse")):
        env = dict(os.environ, HIVE_GPU_CPU_SCREEN=screen, HIVE_GPU_CPU_FILTER=path)
        res = subprocess.run([sys.executable, "-c", _PATHS_SCRIPT], env=env, capture_output=True, text=True, check=True)
        runs[screen, path] = json.loads(res.stdout)
    for key, run in runs.items():
        assert run == runs["off", "auto"], key
    rng = np.random.default_rng(7)
    n, d = 6000, 16
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[100:140] = X[50]
    Q = rng.standard_normal((3, d)).astype(np.float32)
    for metric in METRICS:
        for name, keep in (("dense", lambda i: i % 2 == 1), ("mid", lambda i: i % 97 < 10), ("sparse", lambda i: i % 97 == 3)):
            rows = [i for i in range(n) if keep(i)]
            ids, bits = runs["off", "auto"][f"{metric.value}/{name}/1"]
            scores = np.array(bits, np.uint32).view(np.float32)
            assert_matches(ids[0], scores[0], X[rows], [f"v{i}" for i in rows], Q[:1], metric, 20)


def test_filtered_ids_keep_insertion_order_after_removals(ctx, rng):
    store = ctx.create_storage(4, "euclidean")
    ids = [f"v{i}" for i in range(40)]
    store.add_vectors(ids, rng.standard_normal((40, 4)).astype(np.float32),
                      [{"even": i % 2 == 0, "i": i} for i in range(40)])
    for gone in ("v0", "v6", "v13", "v20"):
        store.remove_vector(gone)  # each swap-remove moves the last row into the freed slot
    left = [i for i in ids if i not in ("v0", "v6", "v13", "v20")]
    assert store.ids() == left
    assert store.ids(filter={"even": True}) == [i for i in left if int(i[1:]) % 2 == 0]
    assert store.ids(filter={"i": {"$gte": 0}}) == left
