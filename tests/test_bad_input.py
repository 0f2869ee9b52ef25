"""Bad input raises the project's exceptions and leaves the store exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_ids, snapshot, unchanged

import hive_gpu
from hive_gpu import errors


@pytest.fixture
def store(ctx, rng):
    s = ctx.create_storage(8, "cosine")
    X = rng.standard_normal((20, 8)).astype(np.float32)
    s.add_vectors(make_ids(20), X, [{"i": str(i)} for i in range(20)])
    return s


def test_wrong_dimension(store, rng):
    before = snapshot(store)
    for call in (
        lambda: store.add_vector("x", np.ones(7, np.float32)),
        lambda: store.add_vectors(["x", "y"], np.ones((2, 9), np.float32)),
        lambda: store.update_vector("v1", np.ones(3, np.float32)),
        lambda: store.search(np.ones(9, np.float32), 3),
        lambda: store.search_batch(np.ones((2, 4), np.float32), 3),
    ):
        with pytest.raises(hive_gpu.DimensionMismatchError) as e:
            call()
        assert isinstance(e.value, ValueError) and isinstance(e.value, hive_gpu.HiveGpuError)
        assert "dimension" in str(e.value)
    unchanged(store, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(store, bad):
    before = snapshot(store)
    v = np.ones(8, np.float32)
    v[5] = bad
    with pytest.raises(hive_gpu.NonFiniteValueError):
        store.add_vector("x", v)
    with pytest.raises(hive_gpu.NonFiniteValueError):
        store.update_vector("v1", v)
    with pytest.raises(hive_gpu.NonFiniteValueError):
        store.search(v, 3)
    batch = np.ones((4, 8), np.float32)
    batch[2, 1] = bad
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 2"):
        store.add_vectors(["a", "b", "c", "d"], batch)
    with pytest.raises(hive_gpu.NonFiniteValueError):
        store.search_batch(batch, 3)
    unchanged(store, before)
    assert "a" not in store  # all or nothing


def test_norm_too_large_for_float32(store):
    before = snapshot(store)
    v = np.full(8, 3e19, np.float32)
    with pytest.raises(hive_gpu.InvalidArgumentError, match="norm"):
        store.add_vector("huge", v)
    unchanged(store, before)


@pytest.mark.parametrize(
    "arr",
    [
        np.ones((2, 8), np.int64),
        np.ones((2, 8), np.int32),
        np.ones((2, 8), bool),
        np.ones((2, 8), np.complex64),
        np.array([["a"] * 8] * 2),
        np.array([[object()] * 8] * 2, dtype=object),
    ],
    ids=["int64", "int32", "bool", "complex", "str", "object"],
)
def test_wrong_dtype(store, arr):
    before = snapshot(store)
    with pytest.raises(hive_gpu.InvalidDtypeError) as e:
        store.add_vectors(["a", "b"], arr)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    with pytest.raises(hive_gpu.InvalidDtypeError):
        store.search(arr[0], 2)
    unchanged(store, before)


def test_wrong_shape(store):
    before = snapshot(store)
    with pytest.raises(hive_gpu.InvalidArgumentError, match="shape"):
        store.add_vectors(["a"], np.ones(8, np.float32))
    with pytest.raises(hive_gpu.InvalidArgumentError, match="shape"):
        store.add_vectors(["a"], np.ones((1, 2, 8), np.float32))
    with pytest.raises(hive_gpu.InvalidArgumentError, match="shape"):
        store.search(np.ones((1, 8), np.float32), 2)
    with pytest.raises(hive_gpu.InvalidArgumentError, match="shape"):
        store.search_batch(np.ones(8, np.float32), 2)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.add_vectors(["a", "b", "c"], np.ones((2, 8), np.float32))
    unchanged(store, before)


def test_non_contiguous_and_other_float_dtypes_are_converted(ctx, rng):
    s = ctx.create_storage(4, "dot")
    base = rng.standard_normal((6, 8)).astype(np.float32)
    strided = base[:, ::2]  # not C-contiguous
    assert not strided.flags.c_contiguous
    s.add_vectors(make_ids(6), strided)
    for i in range(6):
        np.testing.assert_array_equal(s.get_vector(f"v{i}").data, strided[i])
    f64 = rng.standard_normal((2, 4))
    s.add_vectors(["d0", "d1"], f64)
    np.testing.assert_array_equal(s.get_vector("d1").data, f64[1].astype(np.float32))
    s.add_vector("fortran", np.asfortranarray(base[:1, :4])[0])
    s.add_vector("list", [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(s.get_vector("list").data, [1, 2, 3, 4])
    q = base[::2, 1::2]  # strided queries
    scores, ids = s.search_batch(q, 2)
    assert ids.shape == (3, 2)
    top = s.search(np.ascontiguousarray(q[0]), 2)
    assert [h.id for h in top] == list(ids[0])


def test_duplicate_ids(store, rng):
    before = snapshot(store)
    with pytest.raises(hive_gpu.DuplicateIdError, match="already exists"):
        store.add_vector("v3", np.ones(8, np.float32))
    with pytest.raises(hive_gpu.DuplicateIdError, match="twice"):
        store.add_vectors(["n1", "n2", "n1"], np.ones((3, 8), np.float32))
    with pytest.raises(hive_gpu.DuplicateIdError):
        store.add_vectors(["n1", "v19"], np.ones((2, 8), np.float32))
    unchanged(store, before)
    assert "n1" not in store


@pytest.mark.parametrize("bad_id", ["", "x" * 5000, 17, None, b"bytes", "lone \ud800 surrogate"])
def test_bad_ids(store, bad_id):
    before = snapshot(store)
    # A wrong type is a TypeError too; a bad str only a ValueError.
    builtin = ValueError if isinstance(bad_id, str) else TypeError
    with pytest.raises(hive_gpu.InvalidArgumentError) as e:
        store.add_vector(bad_id, np.ones(8, np.float32))
    assert isinstance(e.value, builtin)
    with pytest.raises(hive_gpu.InvalidArgumentError) as e:
        store.add_vectors(["ok", bad_id], np.ones((2, 8), np.float32))
    assert isinstance(e.value, builtin)
    unchanged(store, before)
    assert "ok" not in store
    if isinstance(bad_id, str):  # ids that cannot be stored are simply unknown
        assert bad_id not in store and store.get_vector(bad_id) is None
        assert store.get_metadata(bad_id) is None
        assert store.remove_vector(bad_id) is False and store.remove_vectors([bad_id, "nope"]) == 0
        assert store.update_vector(bad_id, np.ones(8, np.float32)) is False
    else:  # a wrong type is refused by every call that takes an id, but `in` is just False
        assert bad_id not in store
        for call in (
            lambda: store.get_vector(bad_id),
            lambda: store.get_metadata(bad_id),
            lambda: store.remove_vector(bad_id),
            lambda: store.remove_vectors(["v1", bad_id]),
            lambda: store.update_vector(bad_id, np.ones(8, np.float32)),
            lambda: store.get_vectors(["v1", bad_id]),
            lambda: store.upsert_vectors(["v1", bad_id], np.ones((2, 8), np.float32)),
        ):
            with pytest.raises(hive_gpu.InvalidArgumentTypeError):
                call()
    unchanged(store, before)


def test_bad_metadata(store):
    before = snapshot(store)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.add_vector("m", np.ones(8, np.float32), {"k": object()})
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.add_vectors(["m1", "m2"], np.ones((2, 8), np.float32), [{"a": "b"}])
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.add_vectors(["m1"], np.ones((1, 8), np.float32), [{1: "b"}])
    with pytest.raises(hive_gpu.InvalidArgumentError):
        store.add_vectors(["m1"], np.ones((1, 8), np.float32), ["not a dict"])
    unchanged(store, before)


@pytest.mark.parametrize("md", [{1: "a"}, {None: "a"}, {("t",): "a"}, ["k", "v"], "k=v"])
def test_metadata_of_the_wrong_type_is_a_type_error(store, md):
    before = snapshot(store)
    for call in (
        lambda: store.add_vector("m", np.ones(8, np.float32), md),
        lambda: store.add_vectors(["m"], np.ones((1, 8), np.float32), [md]),
        lambda: store.update_vector("v1", np.ones(8, np.float32), md),
        lambda: store.upsert_vectors(["v1", "m"], np.ones((2, 8), np.float32), [md, None]),
    ):
        with pytest.raises(hive_gpu.InvalidArgumentTypeError) as e:
            call()
        assert isinstance(e.value, TypeError)
    unchanged(store, before)
    assert "m" not in store


@pytest.mark.parametrize("where", ["key", "value"])
def test_metadata_that_is_not_unicode(store, where):
    before = snapshot(store)
    md = {"lone \udc80": "v"} if where == "key" else {"k": "lone \udc80"}
    for call in (
        lambda: store.add_vector("m", np.ones(8, np.float32), md),
        lambda: store.add_vectors(["m0", "m1"], np.ones((2, 8), np.float32), [{}, md]),
        lambda: store.update_vector("v1", np.ones(8, np.float32), md),
        lambda: store.upsert_vectors(["v2", "m"], np.ones((2, 8), np.float32), [None, md]),
    ):
        with pytest.raises(hive_gpu.InvalidArgumentError, match="Unicode") as e:
            call()
        assert isinstance(e.value, ValueError) and not isinstance(e.value, TypeError)
    unchanged(store, before)


@pytest.mark.parametrize("k", [0, -1, -100, -(2**64), 2.5, "3", True, None, np.float32(3)])
def test_bad_k(store, k):
    # Not an int: also a TypeError; an int below 1: a ValueError only.
    builtin = ValueError if isinstance(k, int) and not isinstance(k, bool) else TypeError
    with pytest.raises(hive_gpu.InvalidArgumentError) as e:
        store.search(np.ones(8, np.float32), k)
    assert isinstance(e.value, builtin)
    with pytest.raises(hive_gpu.InvalidArgumentError) as e:
        store.search_batch(np.ones((2, 8), np.float32), k)
    assert isinstance(e.value, builtin)


def test_unknown_ids_are_reported_not_raised(store):
    before = snapshot(store)
    assert store.get_vector("nope") is None
    assert store.get_metadata("nope") is None
    assert store.update_vector("nope", np.ones(8, np.float32)) is False
    assert store.remove_vector("nope") is False
    unchanged(store, before)


def test_bad_storage_parameters(ctx):
    for dim in (0, -3):
        with pytest.raises(hive_gpu.InvalidArgumentError):
            ctx.create_storage(dim, "cosine")
    with pytest.raises(hive_gpu.InvalidArgumentError):
        ctx.create_storage(4, "manhattan")
    with pytest.raises(hive_gpu.InvalidArgumentError):
        ctx.create_storage(2.5, "cosine")


def test_error_hierarchy():
    assert issubclass(errors.VectorNotFoundError, KeyError)
    assert issubclass(errors.OutOfMemoryError, MemoryError)
    assert issubclass(errors.NoDeviceError, RuntimeError)
    assert issubclass(errors.PersistenceError, OSError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.HiveGpuError)
