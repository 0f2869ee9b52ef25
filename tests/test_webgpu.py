"""WebGPU-specific checks: the paths of the WGSL engine the shared suite may not reach
(several storage pages, both selection kernels, both scoring kernels, merge passes, row
padding), the CPU backend as a second oracle, and how unavailability is reported.

Runs on whatever adapter WebGPU finds: lavapipe (Mesa's Vulkan on the CPU) in CI.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import hive_gpu
from helpers import backend_skip_reason, make_ids
from hive_gpu._storage import _METRIC_TO_CORE, VectorStorage
from reference import METRICS, assert_matches, tolerance, topk64

_SKIP = backend_skip_reason("webgpu")
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


@pytest.fixture(scope="module")
def wctx():
    return hive_gpu.create_context("webgpu")


def _rows(rng, n, d, scale=1.0):
    return (rng.standard_normal((n, d)) * scale).astype(np.float32)


def _random_store(wctx, rng, n, d, metric):
    """A store of n random rows of dimension d, ids v0..v(n-1): (store, rows, ids)."""
    X = _rows(rng, n, d)
    ids = make_ids(n)
    store = wctx.create_storage(d, metric)
    store.add_vectors(ids, X)
    return store, X, ids


def _grow_remove_update(store, rng, d, removes, stored=lambda X: X):
    """Adds random rows in uneven batches (growth adds pages), swap-removes `removes` of them
    (rows move across pages) and updates 40: {id: the values the store holds}."""
    model: dict[str, np.ndarray] = {}
    for batch in (1, 50, 100, 300, 37):
        ids = [f"r{len(model) + i}" for i in range(batch)]
        X = _rows(rng, batch, d)
        store.add_vectors(ids, X)
        model.update(zip(ids, stored(X)))
    for rid in map(str, rng.choice(sorted(model), removes, replace=False)):
        assert store.remove_vector(rid)
        del model[rid]
    for rid in map(str, rng.choice(sorted(model), 40, replace=False)):
        v = _rows(rng, 1, d)[0]
        store.update_vector(rid, v)
        model[rid] = stored(v[None])[0]
    return model


def _check_all(store, X, ids, Q, metric, k):
    scores, got = store.search_batch(Q, k)
    assert scores.shape == (len(Q), min(k, len(X)))
    for i in range(len(Q)):
        assert_matches(got[i], scores[i], X, ids, Q[i : i + 1], metric, k)


def test_device_info_comes_from_the_adapter(wctx):
    info = wctx.device_info()
    assert info.backend.startswith("WebGPU/")
    assert info.name
    assert info.max_threads_per_block >= 256
    assert info.max_shared_memory >= 16384
    # webgpu.h exposes no memory sizes: they are reported unknown, never invented.
    for field in ("vram_total", "vram_available", "vram_used"):
        assert field in info.unknown
    assert info.vram_total == 0 and info.vram_available == 0


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("k", [1, 5, 32, 33, 700])
def test_many_pages_match_reference(monkeypatch, wctx, metric, k):
    # 16-float rows and 16 KiB pages: 256 rows a page, so 2600 rows span 11 pages.
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(16 * 1024))
    rng = np.random.default_rng(k * 10 + len(metric.value))
    n, d = 2600, 16
    store, X, ids = _random_store(wctx, rng, n, d, metric)
    Q = _rows(rng, 3, d)
    _check_all(store, X, ids, Q, metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_paged_store_survives_removes_updates_and_growth(monkeypatch, wctx, metric):
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(8 * 1024))  # 128 rows of 16 floats
    rng = np.random.default_rng(7)
    d = 16
    store = wctx.create_storage(d, metric)
    model = _grow_remove_update(store, rng, d, 120)
    assert len(store) == len(model)
    for rid in list(model)[:25]:
        np.testing.assert_array_equal(store.get_vector(rid).data, model[rid])
    order = list(model)
    X = np.stack([model[r] for r in order])
    Q = _rows(rng, 4, d)
    for k in (3, 40, len(order)):
        scores, got = store.search_batch(Q, k)
        ref_s, _ = topk64(X, Q, metric, k)
        np.testing.assert_allclose(scores, ref_s, rtol=0, atol=tolerance(X, Q, metric))
        for i in range(len(Q)):
            assert set(got[i]) <= set(model)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("d", [1, 3, 5, 17, 130])
def test_dimensions_not_multiple_of_four(wctx, metric, d):
    # Rows are stored padded to vec4 with zeros; padding must change no score and no read.
    rng = np.random.default_rng(d)
    n = 300
    store, X, ids = _random_store(wctx, rng, n, d, metric)
    np.testing.assert_array_equal(store.get_vector("v123").data, X[123])
    _check_all(store, X, ids, _rows(rng, 2, d), metric, 10)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("nq", [1, 2, 3, 5, 8, 9, 64, 65, 130])
def test_batch_sizes_cover_both_scoring_kernels(wctx, metric, nq):
    # nq <= 8 uses the per-row kernel, larger batches the 64x64 tiled one.
    rng = np.random.default_rng(nq)
    n, d = 700, 24
    store, X, ids = _random_store(wctx, rng, n, d, metric)
    Q = _rows(rng, nq, d)
    scores, got = store.search_batch(Q, 6)
    for i in range(nq):
        assert_matches(got[i], scores[i], X, ids, Q[i : i + 1], metric, 6)
        single = store.search(Q[i], 6)
        assert [h.id for h in single] == list(got[i])


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("k", [2048, 2049, 3000, 5000])
def test_large_k_uses_merge_passes(wctx, metric, k):
    # k above one 2048-entry segment: lists double in each merge pass until they hold k.
    rng = np.random.default_rng(k)
    n, d = 5000, 8
    store, X, ids = _random_store(wctx, rng, n, d, metric)
    Q = _rows(rng, 2, d)
    _check_all(store, X, ids, Q, metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_merge_pass_larger_than_the_first_lists(wctx, metric):
    # 10 lists of 2048 merge into 5 of 4096, then 3 of 8000: more entries than the first
    # pass wrote, in the buffer that held it (the second query's results once overlapped).
    rng = np.random.default_rng(8000)
    n, d = 20000, 4
    store, X, ids = _random_store(wctx, rng, n, d, metric)
    _check_all(store, X, ids, _rows(rng, 2, d), metric, 8000)


@pytest.mark.parametrize("k", [1, 10, 32, 33, 2048, 4100])
def test_ties_rank_by_insertion_across_kernels(monkeypatch, wctx, k):
    # Many identical rows: every kernel path must order equal scores by insertion order.
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(64 * 1024))
    rng = np.random.default_rng(k)
    d = 8
    base = _rows(rng, 4, d)
    n = 4100
    X = base[rng.integers(0, 4, n)]
    ids = make_ids(n)
    store = wctx.create_storage(d, "dot_product")
    store.add_vectors(ids, X)
    q = _rows(rng, 1, d)[0]
    ref_s, ref_rows = topk64(X, q[None], hive_gpu.GpuDistanceMetric.DOT_PRODUCT, k)
    scores, got = store.search_batch(q[None], k)
    # Equal rows give bit-identical scores, so the expected ids are exact, not approximate.
    assert list(got[0]) == [ids[r] for r in ref_rows[0]]


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_agrees_with_cpu_backend(wctx, metric):
    rng = np.random.default_rng(11)
    n, d = 3000, 96
    X = _rows(rng, n, d, scale=3.0)
    ids = make_ids(n)
    Q = _rows(rng, 20, d, scale=3.0)
    gpu = wctx.create_storage(d, metric)
    cpu = hive_gpu.CpuContext().create_storage(d, metric)
    gpu.add_vectors(ids, X)
    cpu.add_vectors(ids, X)
    for k in (1, 10, 100):
        gs, gi = gpu.search_batch(Q, k)
        cs, ci = cpu.search_batch(Q, k)
        # Same float32 inputs, different summation order: scores within float32 rounding.
        np.testing.assert_allclose(gs, cs, rtol=1e-5, atol=1e-5 * np.abs(cs).max())
        # Ids may differ only where two scores are equal to within that rounding.
        differ = np.asarray(gi) != np.asarray(ci)
        gaps = np.abs(np.diff(cs, axis=1))
        near_tie = np.zeros_like(differ)
        near_tie[:, 1:] |= gaps < 1e-4 * np.abs(cs).max()
        near_tie[:, :-1] |= gaps < 1e-4 * np.abs(cs).max()
        assert not (differ & ~near_tie).any()
        assert differ.mean() < 0.01


def test_concurrent_searches_equal_serial_results(wctx):
    rng = np.random.default_rng(5)
    n, d = 2000, 32
    X = _rows(rng, n, d)
    store = wctx.create_storage(d, "cosine")
    store.add_vectors(make_ids(n), X)
    queries = [_rows(rng, nq, d) for nq in (1, 4, 9, 1, 70, 2)]
    expected = [store.search_batch(Q, 12) for Q in queries]
    errors: list[BaseException] = []

    def worker(i):
        try:
            for _ in range(3):
                s, got = store.search_batch(queries[i], 12)
                np.testing.assert_array_equal(s, expected[i][0])
                assert np.array_equal(np.asarray(got), np.asarray(expected[i][1]))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_clear_gives_device_memory_back(wctx):
    rng = np.random.default_rng(3)
    store = wctx.create_storage(64, "euclidean")
    assert store.memory_usage() == 0
    store.add_vectors(make_ids(5000), _rows(rng, 5000, 64))
    assert store.memory_usage() >= 5000 * 64 * 4
    store.clear()
    assert store.memory_usage() == 0
    store.add_vectors(["a"], _rows(rng, 1, 64))
    assert [h.id for h in store.search(_rows(rng, 1, 64)[0], 3)] == ["a"]


def _in_subprocess(code: str, **env) -> str:
    full = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_unmatched_adapter_is_reported_unavailable():
    code = (
        "import hive_gpu\n"
        "print(hive_gpu.WgpuContext.is_available())\n"
        "print(hive_gpu.WgpuContext.unavailable_reason())\n"
        "try:\n    hive_gpu.WgpuContext()\nexcept hive_gpu.errors.NoDeviceError as e:\n    print('raised', e)\n"
    )
    out = _in_subprocess(code, HIVE_GPU_WEBGPU_ADAPTER="no-such-adapter-xyz").splitlines()
    assert out[0] == "False"
    assert "no-such-adapter-xyz" in out[1]
    assert out[2].startswith("raised")
    assert "webgpu" not in _in_subprocess(
        "import hive_gpu; print(hive_gpu.available_backends())", HIVE_GPU_WEBGPU_ADAPTER="no-such-adapter-xyz"
    )


def test_missing_library_is_reported_unavailable(tmp_path):
    # A file that is no shared library stands in for a broken install; the search goes on to
    # the next candidates, so the reason is only checked when nothing loads at all.
    bogus = tmp_path / "libwgpu_native.so"
    bogus.write_text("not a library")
    out = _in_subprocess(
        "import hive_gpu; r = hive_gpu.WgpuContext.unavailable_reason(); print(repr(r))",
        HIVE_GPU_WEBGPU_LIBRARY=str(bogus),
    )
    assert out.strip() == "''", "the wheel's library should still be found after a bad override"


# ---- storage dtypes: float16 and bfloat16 rows, 2 bytes each on the device ----------------

DTYPES16 = ("float16", "bfloat16")


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16, ties to even (dtype.hpp's float_to_bf16), as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def _stored(X: np.ndarray, dtype: str) -> np.ndarray:
    """The values a store of `dtype` holds for float32 rows X: rounded once, to nearest even."""
    return X.astype(np.float16).astype(np.float32) if dtype == "float16" else _bf16(X)


def _dtype_storage(ctx, d, metric, dtype):
    """A store of `dtype` on ctx (the core's create_storage takes the dtype by name)."""
    if "dtype" in inspect.signature(ctx.create_storage).parameters:
        return ctx.create_storage(d, metric, dtype=dtype)
    core_metric = _METRIC_TO_CORE[hive_gpu.GpuDistanceMetric.parse(metric)]
    return VectorStorage(ctx._ctx.create_storage(d, core_metric, dtype))


def _dtype_of(store) -> str:
    return store.dtype if hasattr(store, "dtype") else store._s.dtype


@functools.lru_cache(maxsize=None)
def _core_rounds_rows() -> bool:
    """True when add_vectors rounds float32 rows to the store's dtype before the engine."""
    s = _dtype_storage(hive_gpu.create_context("webgpu"), 4, "dot_product", "float16")
    x = np.array([[1 / 3, 2 / 3, 1e-5, 3.0]], np.float32)
    s.add_vectors(["probe"], x)
    rounds = np.array_equal(s.get_vector("probe").data, _stored(x, "float16")[0])
    s.close()
    return rounds


@pytest.fixture
def rounding_core():
    if not _core_rounds_rows():
        pytest.skip(
            "add_vectors does not round float32 rows to a 16-bit store's dtype in this build; "
            "tests/cpp/engine_dtype_webgpu.cpp checks the engine with rows rounded by dtype.hpp"
        )


@pytest.fixture(params=["shader-f16", "u32"])
def f16_path_ctx(request, monkeypatch):
    """A fresh WebGPU context on each float16 path: f16 loads (shader-f16) or u32 pairs."""
    if request.param == "u32":
        monkeypatch.setenv("HIVE_GPU_WEBGPU_NO_F16", "1")
    else:
        monkeypatch.delenv("HIVE_GPU_WEBGPU_NO_F16", raising=False)
    ctx = hive_gpu.create_context("webgpu")
    native = ctx.device_info().compute_capability.endswith("shader-f16")
    if request.param == "shader-f16" and not native:
        pytest.skip("the adapter has no shader-f16")
    assert native == (request.param == "shader-f16")
    return ctx


@pytest.mark.parametrize("dtype", DTYPES16)
def test_16_bit_rows_take_half_the_memory(wctx, dtype):
    # Needs no rounding by the core: the bytes held depend on the row count only.
    rng = np.random.default_rng(1)
    X = _rows(rng, 3000, 64)
    full = wctx.create_storage(64, "cosine")
    half = _dtype_storage(wctx, 64, "cosine", dtype)
    assert _dtype_of(half) == dtype and _dtype_of(full) == "float32"
    for s in (full, half):
        s.add_vectors(make_ids(3000), X)
    # Same pages (1024 + 2048 rows); per row 64 elements plus a norm and an ordinal.
    assert full.memory_usage() == 3072 * (64 * 4 + 8)
    assert half.memory_usage() == 3072 * (64 * 2 + 8)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("dtype", DTYPES16)
def test_16_bit_store_matches_reference_on_rounded_rows(rounding_core, monkeypatch, wctx, dtype, metric):
    # 48-element rows on 6 KiB pages: 64 rows a page, so 900 rows span 15 pages.
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(6 * 1024))
    rng = np.random.default_rng(len(dtype) * 7 + len(metric.value))
    n, d = 900, 48
    X = _rows(rng, n, d, scale=4.0)
    X[::9] = X[1::9][: len(X[::9])]  # equal rows: ties broken by insertion order
    ids = make_ids(n)
    store = _dtype_storage(wctx, d, metric, dtype)
    store.add_vectors(ids, X)
    S = _stored(X, dtype)
    vecs, _ = store.get_vectors(ids)
    np.testing.assert_array_equal(vecs, S)  # bit for bit: float32 copies of the stored values
    Q = _rows(rng, 11, d)
    Q[0] = X[5]
    for k in (1, 10, 40):
        _check_all(store, S, ids, Q[:3], metric, k)
        _check_all(store, S, ids, Q, metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_float16_paths_agree_with_reference(rounding_core, f16_path_ctx, metric):
    rng = np.random.default_rng(29)
    n, d = 1500, 37
    X = _rows(rng, n, d)
    X[::5] *= 1e-5  # whole rows of float16 subnormals: a path that flushed them would fail
    ids = make_ids(n)
    store = _dtype_storage(f16_path_ctx, d, metric, "float16")
    store.add_vectors(ids, X)
    S = _stored(X, "float16")
    _check_all(store, S, ids, _rows(rng, 4, d), metric, 25)
    _check_all(store, S, ids, np.ascontiguousarray(S[::5][:3] * 3), metric, 5)
    np.testing.assert_array_equal(store.get_vectors(ids[:50])[0], S[:50])


@pytest.mark.parametrize("dtype", DTYPES16)
def test_16_bit_filtered_search_sparse_and_dense(rounding_core, wctx, dtype):
    rng = np.random.default_rng(41)
    n, d = 2400, 20
    X = _rows(rng, n, d)
    ids = make_ids(n)
    store = _dtype_storage(wctx, d, "dot_product", dtype)
    store.add_vectors(ids, X, metadata=[{"g": i % 60} for i in range(n)])
    S = _stored(X, dtype)
    Q = _rows(rng, 3, d)
    for f, keep in (({"g": 7}, np.arange(n) % 60 == 7), ({"g": {"$lt": 30}}, np.arange(n) % 60 < 30)):
        sub = [ids[i] for i in np.flatnonzero(keep)]
        scores, got = store.search_batch(Q, 15, filter=f)
        for i in range(len(Q)):
            assert_matches(got[i], scores[i], S[keep], sub, Q[i : i + 1], hive_gpu.GpuDistanceMetric.DOT_PRODUCT, 15)


@pytest.mark.parametrize("dtype", DTYPES16)
def test_16_bit_paged_store_survives_removes_and_updates(rounding_core, monkeypatch, wctx, dtype):
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(2 * 1024))  # 64 rows of 16 halves
    rng = np.random.default_rng(3)
    d = 16
    store = _dtype_storage(wctx, d, "euclidean", dtype)
    model = _grow_remove_update(store, rng, d, 150, lambda X: _stored(X, dtype))
    order = list(model)
    S = np.stack([model[r] for r in order])
    np.testing.assert_array_equal(store.get_vectors(order)[0], S)
    _check_all(store, S, order, _rows(rng, 3, d), hive_gpu.GpuDistanceMetric.EUCLIDEAN, 30)
