"""WebGPU-specific checks: the paths of the WGSL engine the shared suite may not reach
(several storage chunks, both selection kernels, both scoring kernels, merge passes, row
padding), the CPU backend as a second oracle, and how unavailability is reported.

Runs on whatever adapter WebGPU finds: lavapipe (Mesa's Vulkan on the CPU) in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import hive_gpu
from helpers import backend_skip_reason, make_ids
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
def test_many_chunks_match_reference(monkeypatch, wctx, metric, k):
    # 16-float rows and 16 KiB chunks: 256 rows a chunk, so 2600 rows span 11 chunks.
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(16 * 1024))
    rng = np.random.default_rng(k * 10 + len(metric.value))
    n, d = 2600, 16
    store, X, ids = _random_store(wctx, rng, n, d, metric)
    Q = _rows(rng, 3, d)
    _check_all(store, X, ids, Q, metric, k)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_chunked_store_survives_removes_updates_and_growth(monkeypatch, wctx, metric):
    monkeypatch.setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", str(8 * 1024))  # 128 rows of 16 floats
    rng = np.random.default_rng(7)
    d = 16
    model: dict[str, np.ndarray] = {}
    store = wctx.create_storage(d, metric)
    # Grow in uneven batches so the last chunk is regrown and new chunks are added.
    for batch in (1, 50, 100, 300, 37):
        ids = [f"r{len(model) + i}" for i in range(batch)]
        X = _rows(rng, batch, d)
        store.add_vectors(ids, X)
        model.update(zip(ids, X))
    # Swap-removes move rows across chunk boundaries.
    for rid in map(str, rng.choice(sorted(model), 120, replace=False)):
        assert store.remove_vector(rid)
        del model[rid]
    for rid in map(str, rng.choice(sorted(model), 40, replace=False)):
        v = _rows(rng, 1, d)[0]
        store.update_vector(rid, v)
        model[rid] = v
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
