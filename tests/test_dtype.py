"""Storage dtypes (float32, float16, bfloat16) on every backend: rows rounded once at insert,
scores against the float64 reference computed on the rounded rows, the input rules, and
persistence of the dtype."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest

from helpers import HEADER, build, dtype_store, make_ids, parse, snapshot, unchanged
from reference import DTYPES, METRICS, assert_matches, bf16_bits, bf16_round, rounded

import hive_gpu
from hive_gpu import GpuDistanceMetric

DATA = Path(__file__).parent / "data"
DIM = 24


def filled(ctx, X, metric, dtype, ids=None):
    s = dtype_store(ctx, X.shape[1], metric, dtype)
    ids = ids or make_ids(len(X))
    if len(X):
        s.add_vectors(ids, X)
    return s, ids


def ml_dtypes_or_skip():
    return pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed (bfloat16 NumPy arrays)")


# -- search against the reference on the rounded rows ---------------------------------------


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("n", [1, 9, 600])
def test_search_matches_reference_on_rounded_rows(ctx, rng, dtype, metric, n):
    X = (rng.standard_normal((n, DIM)) * 2 + 0.25).astype(np.float32)
    s, ids = filled(ctx, X, metric, dtype)
    assert s.dtype == dtype
    R = rounded(X, dtype)
    Q = rng.standard_normal((6, DIM)).astype(np.float32)
    for k in sorted({1, 10, n, n + 7}):
        scores, got = s.search_batch(Q, k)
        assert scores.shape == (6, min(k, n))
        for i in range(len(Q)):
            assert_matches(got[i], scores[i], R, ids, Q[i], metric, k)
        hits = s.search(Q[0], k)
        assert_matches([h.id for h in hits], [h.distance for h in hits], R, ids, Q[0], metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_ties_rank_by_insertion_order(ctx, rng, dtype, metric):
    # Rows that differ below the dtype's precision round to one stored row: exact ties. The
    # base row is exactly representable in both 16-bit dtypes, so the nudge rounds back to it.
    base = bf16_round(rng.standard_normal(DIM).astype(np.float32) + 3)
    X = np.stack([base, base, base * (1 + 2**-20), base]).astype(np.float32)
    s, ids = filled(ctx, X, metric, dtype, ["d", "c", "b", "a"])
    R = rounded(X, dtype)
    q = rng.standard_normal(DIM).astype(np.float32)
    hits = s.search(q, 4)
    if dtype != "float32":
        assert (R == R[0]).all()
        assert [h.id for h in hits] == ["d", "c", "b", "a"]
        assert len({h.distance for h in hits}) == 1
    assert_matches([h.id for h in hits], [h.distance for h in hits], R, ids, q, metric, 4)


def test_empty_store_and_k_beyond_count(ctx, rng, dtype):
    s = dtype_store(ctx, DIM, "cosine", dtype)
    q = rng.standard_normal(DIM).astype(np.float32)
    assert s.search(q, 5) == []
    scores, ids = s.search_batch(np.stack([q, q]), 5)
    assert scores.shape == (2, 0) and ids.shape == (2, 0)
    X = rng.standard_normal((3, DIM)).astype(np.float32)
    s.add_vectors(make_ids(3), X)
    hits = s.search(q, 100)
    assert len(hits) == 3
    assert_matches([h.id for h in hits], [h.distance for h in hits], rounded(X, dtype), make_ids(3), q,
                   GpuDistanceMetric.COSINE, 100)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_removed_ids_are_never_returned(ctx, rng, dtype, metric):
    n = 200
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    s, ids = filled(ctx, X, metric, dtype)
    gone = set(ids[::3])
    assert s.remove_vectors(sorted(gone)) == len(gone)
    keep = [i for i, v in enumerate(ids) if v not in gone]
    R, kept_ids = rounded(X, dtype)[keep], [ids[i] for i in keep]
    Q = rng.standard_normal((4, DIM)).astype(np.float32)
    scores, got = s.search_batch(Q, 25)
    for i in range(len(Q)):
        assert not gone & set(got[i])
        assert_matches(got[i], scores[i], R, kept_ids, Q[i], metric, 25)


def test_filters_with_dtype(ctx, rng, dtype):
    n = 300
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    s = dtype_store(ctx, DIM, "dot_product", dtype)
    ids = make_ids(n)
    s.add_vectors(ids, X, [{"even": i % 2 == 0, "i": i} for i in range(n)])
    q = rng.standard_normal(DIM).astype(np.float32)
    keep = [i for i in range(n) if i % 2 == 0 and i >= 40]
    hits = s.search(q, 15, filter={"even": True, "i": {"$gte": 40}})
    assert_matches([h.id for h in hits], [h.distance for h in hits], rounded(X, dtype)[keep],
                   [ids[i] for i in keep], q, GpuDistanceMetric.DOT_PRODUCT, 15)


def test_16_bit_queries_are_widened(ctx, rng, dtype):
    X = rng.standard_normal((50, DIM)).astype(np.float32)
    s, ids = filled(ctx, X, "euclidean", dtype)
    q16 = rng.standard_normal(DIM).astype(np.float16)
    hits = s.search(q16, 5)
    want = s.search(q16.astype(np.float32), 5)
    assert [(h.id, h.distance) for h in hits] == [(h.id, h.distance) for h in want]
    assert_matches([h.id for h in hits], [h.distance for h in hits], rounded(X, dtype), ids,
                   q16.astype(np.float32), GpuDistanceMetric.EUCLIDEAN, 5)


# -- rounding at insert -----------------------------------------------------------------------


def _rounding_cases(rng) -> np.ndarray:
    """Random values at many scales plus the awkward ones: halfway cases of both 16-bit
    formats, float16 subnormals and the largest float16."""
    rows = [rng.standard_normal(DIM) * scale for scale in (1e-6, 1e-3, 1.0, 300.0, 3e4)]
    halfway = [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, 2**-24, 3 * 2**-25, 2**-25, 5e-8,
               65504.0, -65504.0, 6.1e-5, 1e-7, -1 - 2**-11, 0.0, -0.0, 1 / 3]
    rows.append(np.resize(np.array(halfway), DIM))
    return np.clip(np.stack(rows), -65504, 65504).astype(np.float32)


def test_float32_input_rounds_to_nearest_even(ctx, rng, dtype):
    X = _rounding_cases(rng)
    s, ids = filled(ctx, X, "dot_product", dtype)
    got, _ = s.get_vectors(ids)
    assert got.dtype == np.float32
    if dtype == "float16":
        want = X.astype(np.float16).astype(np.float32)  # NumPy's IEEE conversion
    else:
        want = rounded(X, dtype)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert s.get_vector(ids[-1]).data.tobytes() == want[-1].tobytes()


def test_bfloat16_reference_helper_rounds_to_nearest_even():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 3.0], np.float32)
    np.testing.assert_array_equal(bf16_round(x), np.array([1.0, 1 + 2**-6, 1 + 2**-7, -1.0, 3.0], np.float32))
    ml_dtypes = pytest.importorskip("ml_dtypes")
    y = np.random.default_rng(7).standard_normal(4096).astype(np.float32)
    np.testing.assert_array_equal(bf16_bits(y), y.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_float16_input_into_float16_store_is_bit_exact(ctx, rng):
    s = dtype_store(ctx, DIM, "cosine", "float16")
    X16 = _rounding_cases(rng).astype(np.float16)
    s.add_vectors(make_ids(len(X16)), X16)
    got, _ = s.get_vectors(make_ids(len(X16)))
    np.testing.assert_array_equal(got.view(np.uint32), X16.astype(np.float32).view(np.uint32))
    s.add_vector("one", X16[2])
    s.update_vector("v0", X16[3])
    np.testing.assert_array_equal(s.get_vector("one").data, X16[2].astype(np.float32))
    np.testing.assert_array_equal(s.get_vector("v0").data, X16[3].astype(np.float32))


def test_float16_input_into_other_stores(ctx, rng, dtype):
    X16 = _rounding_cases(rng).astype(np.float16)
    s, ids = filled(ctx, X16, "euclidean", dtype)
    got, _ = s.get_vectors(ids)
    np.testing.assert_array_equal(got, rounded(X16.astype(np.float32), dtype))


def test_bfloat16_input(ctx, rng, dtype):
    ml_dtypes = ml_dtypes_or_skip()
    Xb = (rng.standard_normal((40, DIM)) * 100).astype(ml_dtypes.bfloat16)
    s, ids = filled(ctx, Xb, "dot_product", dtype)
    wide = Xb.astype(np.float32)
    got, _ = s.get_vectors(ids)
    np.testing.assert_array_equal(got, rounded(wide, dtype))
    if dtype == "bfloat16":  # its own dtype: kept bit for bit
        np.testing.assert_array_equal(got.view(np.uint32) >> 16, Xb.view(np.uint16))
    s.update_vector("v1", Xb[5])
    np.testing.assert_array_equal(s.get_vector("v1").data, rounded(wide[5], dtype))


# -- the input rules ------------------------------------------------------------------------


def test_value_beyond_float16_is_refused_naming_the_row(ctx, rng):
    s = dtype_store(ctx, DIM, "cosine", "float16")
    X = rng.standard_normal((5, DIM)).astype(np.float32)
    s.add_vectors(make_ids(5), X, [{"i": i} for i in range(5)])
    before = snapshot(s)
    bad = rng.standard_normal((4, DIM)).astype(np.float32)
    bad[2, 7] = 70000.0
    with pytest.raises(hive_gpu.NonFiniteValueError, match=r"row 2 holds 70000.*does not fit float16"):
        s.add_vectors(make_ids(4, "n"), bad)
    unchanged(s, before)
    with pytest.raises(hive_gpu.NonFiniteValueError, match="does not fit float16"):
        s.add_vector("x", bad[2])
    with pytest.raises(hive_gpu.NonFiniteValueError, match="does not fit float16"):
        s.update_vector("v1", -bad[2])
    # An upsert replacing stored rows and adding new ones changes nothing either.
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 2"):
        s.upsert_vectors(["v0", "v1", "new"], bad[:3])
    unchanged(s, before)
    assert isinstance(hive_gpu.NonFiniteValueError("x"), ValueError)
    # The largest float16 itself fits, and float32/bfloat16 stores take 70000.
    edge = np.full(DIM, 65504.0, np.float32)
    s.add_vector("edge", edge)
    np.testing.assert_array_equal(s.get_vector("edge").data, edge)


def test_wide_values_fit_float32_and_bfloat16(ctx, rng, dtype):
    if dtype == "float16":
        pytest.skip("float16 refuses them (test_value_beyond_float16_is_refused_naming_the_row)")
    s = dtype_store(ctx, DIM, "dot_product", dtype)
    v = np.full(DIM, 70000.0, np.float32)
    s.add_vector("a", v)
    np.testing.assert_array_equal(s.get_vector("a").data, rounded(v, dtype))


def test_non_finite_16_bit_input_is_refused(ctx, rng, dtype):
    s = dtype_store(ctx, DIM, "cosine", dtype)
    s.add_vectors(make_ids(3), rng.standard_normal((3, DIM)).astype(np.float32))
    before = snapshot(s)
    X16 = rng.standard_normal((3, DIM)).astype(np.float16)
    X16[1, 0] = np.inf
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 1 contains NaN or infinity"):
        s.add_vectors(make_ids(3, "n"), X16)
    X16[1, 0] = np.nan
    with pytest.raises(hive_gpu.NonFiniteValueError):
        s.update_vector("v0", X16[1])
    unchanged(s, before)


def test_bfloat16_norm_bound_is_checked_on_stored_values(ctx, dtype):
    if dtype == "float16":
        pytest.skip("float16 values cannot reach the norm bound")
    s = dtype_store(ctx, 4, "dot_product", dtype)
    big = np.full(4, 1.5e38, np.float32)  # squared norm 9e76, beyond FLT_MAX / 4
    with pytest.raises(hive_gpu.InvalidArgumentError, match="norm too large"):
        s.add_vector("a", big)
    assert len(s) == 0


@pytest.mark.parametrize("bad", ["float64", "int8", "fp8", "", "FLOAT17", np.float64, np.int32, None, 3, object()])
def test_bad_dtype_is_refused(ctx, bad):
    with pytest.raises(hive_gpu.InvalidDtypeError) as e:
        ctx.create_storage(DIM, "cosine", bad)
    assert isinstance(e.value, ValueError) and isinstance(e.value, TypeError)


@pytest.mark.parametrize("given,name", [("FP16", "float16"), ("half", "float16"), ("bf16", "bfloat16"),
                                        (np.float16, "float16"), (np.dtype("float32"), "float32"),
                                        ("float32", "float32")])
def test_dtype_spellings(ctx, given, name):
    s = dtype_store(ctx, 3, "cosine", given)
    assert s.dtype == name and f"dtype={name}" in repr(s)


def test_ml_dtypes_bfloat16_names_the_dtype(ctx):
    ml_dtypes = ml_dtypes_or_skip()
    assert dtype_store(ctx, 3, "cosine", ml_dtypes.bfloat16).dtype == "bfloat16"


def test_an_engine_without_16_bit_rows_says_so():
    # The capability check the suite relies on: a refused 16-bit dtype names the backend's
    # limitation (InvalidDtypeError "does not store"), never a silent float32 store.
    for backend, reason in hive_gpu.backend_status().items():
        if reason:
            continue
        ctx = hive_gpu.create_context(backend)
        for dtype in DTYPES:
            try:
                s = ctx.create_storage(3, "cosine", dtype)
            except hive_gpu.InvalidDtypeError as e:
                assert dtype != "float32" and "does not store" in str(e)
            else:
                assert s.dtype == dtype


# -- persistence ------------------------------------------------------------------------------


def test_save_load_keeps_dtype_and_values(ctx, rng, dtype, tmp_path):
    X = rng.standard_normal((57, DIM)).astype(np.float32)
    s, ids = filled(ctx, X, "cosine", dtype)
    s.remove_vector("v3")
    p = tmp_path / "s.hgv"
    s.save(p)
    fields, sections = parse(p.read_bytes())
    assert fields[1] == 3 and fields[6] == DTYPES.index(dtype)
    vecs = sections[3][2]
    n = len(s)
    assert len(vecs) == n * DIM * (4 if dtype == "float32" else 2)
    stored, _ = s.get_vectors(s.ids())
    file_types = {"float32": "<f4", "float16": "<f2"}
    if dtype in file_types:
        in_file = np.frombuffer(vecs, file_types[dtype]).astype(np.float32).reshape(n, DIM)
    else:
        in_file = (np.frombuffer(vecs, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(n, DIM)
    # The file holds the stored values themselves (in slot order; compare as sets of rows).
    assert sorted(map(bytes, in_file)) == sorted(map(bytes, stored))
    info = hive_gpu._core.inspect_file(str(p))
    assert info["dtype"] == dtype and info["format_version"] == 3
    t = ctx.load_storage(p)
    assert t.dtype == dtype and t.ids() == s.ids()
    np.testing.assert_array_equal(t.get_vectors(t.ids())[0], stored)
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    a, ai = s.search_batch(Q, 9)
    b, bi = t.search_batch(Q, 9)
    np.testing.assert_array_equal(a, b)
    assert (ai == bi).all()


def test_bytes_pickle_and_copy_keep_dtype(ctx, rng, dtype):
    X = rng.standard_normal((20, DIM)).astype(np.float32)
    s, ids = filled(ctx, X, "euclidean", dtype)
    stored = s.get_vectors(ids)[0]
    for t in (hive_gpu.VectorStorage.from_bytes(s.to_bytes(), ctx), pickle.loads(pickle.dumps(s)),
              copy.copy(s), copy.deepcopy(s)):
        assert t.dtype == dtype
        np.testing.assert_array_equal(t.get_vectors(ids)[0], stored)
        assert t.to_bytes() == s.to_bytes()


def test_a_float16_file_loads_on_every_backend(ctx, rng, tmp_path, context_for):
    # Written on the CPU when it stores float16, else on this backend; loaded here.
    writer = context_for("cpu")
    X = rng.standard_normal((30, DIM)).astype(np.float32)
    try:
        s = writer.create_storage(DIM, "dot_product", "float16")
    except hive_gpu.InvalidDtypeError:
        s = dtype_store(ctx, DIM, "dot_product", "float16")
    s.add_vectors(make_ids(30), X)
    p = tmp_path / "f16.hgv"
    s.save(p)
    t = dtype_store(ctx, DIM, "dot_product", "float16")  # skips a backend without float16 rows
    t.close()
    loaded = ctx.load_storage(p)
    assert loaded.dtype == "float16" and loaded.backend == ctx.backend
    np.testing.assert_array_equal(loaded.get_vectors(make_ids(30))[0], rounded(X, "float16"))
    q = rng.standard_normal(DIM).astype(np.float32)
    hits = loaded.search(q, 7)
    assert_matches([h.id for h in hits], [h.distance for h in hits], rounded(X, "float16"), make_ids(30), q,
                   GpuDistanceMetric.DOT_PRODUCT, 7)


def test_a_16_bit_file_on_a_backend_without_16_bit_rows_is_refused_clearly(ctx, tmp_path):
    # A file whose dtype the backend cannot store raises InvalidDtypeError, not a corrupt file.
    try:
        ctx.create_storage(3, "cosine", "float16").close()
        pytest.skip(f"{ctx.backend} stores float16 rows")
    except hive_gpu.InvalidDtypeError:
        pass
    raw = ctx.create_storage(3, "cosine").to_bytes()
    fields, sections = parse(raw)
    fields[6] = 1  # an empty float16 store
    p = tmp_path / "f16.hgv"
    p.write_bytes(build(fields, sections))
    assert hive_gpu._core.inspect_file(str(p))["dtype"] == "float16"
    with pytest.raises(hive_gpu.InvalidDtypeError, match="does not store"):
        ctx.load_storage(p)


def test_version_2_file_loads_as_float32(ctx):
    # Written by format version 2 (no dtype field): ids a, c, d (b removed), typed metadata.
    store = ctx.load_storage(DATA / "store_v2.hgv")
    assert store.dtype == "float32" and store.ids() == ["a", "c", "d"]
    assert store.get_metadata("a") == {"lang": "pt", "year": 2020}
    assert store.get_metadata("d") == {"tags": ["x", "y"]}
    np.testing.assert_array_equal(store.get_vector("c").data, np.full(4, 3.0, np.float32))
    hits = store.search(np.array([1, 2, 3, 4], np.float32), 3)
    assert [h.id for h in hits] == ["a", "c", "d"] and hits[0].distance == 0.0
    assert hive_gpu._core.inspect_file(str(DATA / "store_v2.hgv"))["format_version"] == 2
    # Saving again writes version 3, float32.
    fields, _ = parse(store.to_bytes())
    assert fields[1] == 3 and fields[6] == 0


def test_version_1_file_loads_as_float32(ctx):
    store = ctx.load_storage(DATA / "store_v1.hgv")
    assert store.dtype == "float32" and store.ids() == ["a", "c", "d"]


def test_version_2_file_with_a_dtype_byte_is_corrupt(ctx, tmp_path):
    fields, sections = parse((DATA / "store_v2.hgv").read_bytes())
    fields[6] = 1  # version 2 has no dtype field: the bytes are reserved
    p = tmp_path / "bad.hgv"
    p.write_bytes(build(fields, sections))
    with pytest.raises(hive_gpu.CorruptFileError, match="header fields"):
        ctx.load_storage(p)


def test_float16_file_vectors_section_length_is_checked(ctx, rng, tmp_path):
    s = dtype_store(ctx, DIM, "cosine", "float16")
    s.add_vectors(make_ids(4), rng.standard_normal((4, DIM)).astype(np.float32))
    fields, sections = parse(s.to_bytes())
    sections[3][2] = sections[3][2] + bytes(DIM * 2)  # one row more than the count
    p = tmp_path / "bad.hgv"
    p.write_bytes(build(fields, sections))
    with pytest.raises(hive_gpu.CorruptFileError):
        ctx.load_storage(p)
    fields, sections = parse(s.to_bytes())
    bad = bytearray(sections[3][2])
    bad[2:4] = np.array([np.inf], np.float16).tobytes()
    sections[3][2] = bytes(bad)
    p.write_bytes(build(fields, sections))
    with pytest.raises(hive_gpu.CorruptFileError, match="NaN or infinity"):
        ctx.load_storage(p)
    assert HEADER.size == 64


# -- sharded stores -----------------------------------------------------------------------


def test_sharded_storage_with_dtype(rng, dtype, tmp_path):
    probe = dtype_store(hive_gpu.CpuContext(), 2, "cosine", dtype)
    probe.close()
    s = hive_gpu.create_sharded_storage(DIM, "cosine", "cpu", devices=2, dtype=dtype)
    assert s.dtype == dtype and f"dtype={dtype}" in repr(s)
    X = rng.standard_normal((120, DIM)).astype(np.float32)
    ids = make_ids(120)
    s.add_vectors(ids, X)
    np.testing.assert_array_equal(s.get_vectors(ids)[0], rounded(X, dtype))
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    scores, got = s.search_batch(Q, 12)
    for i in range(3):
        assert_matches(got[i], scores[i], rounded(X, dtype), ids, Q[i], GpuDistanceMetric.COSINE, 12)
    s.save(tmp_path / "sh")
    t = hive_gpu.ShardedStorage.load(tmp_path / "sh", [hive_gpu.CpuContext()])
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.get_vectors(ids)[0], rounded(X, dtype))
