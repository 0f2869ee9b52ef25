"""CUDA-specific checks: device info, the memory pool, out-of-memory atomicity, the search
paths (fused scan, SGEMM tiles, full sort) against a float64 reference, device arrays in
and out, and concurrent searches. The shared suite covers the rest."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

import hive_gpu
from hive_gpu import GpuDistanceMetric as M

pytestmark = pytest.mark.skipif(
    not hive_gpu.CudaContext.is_available(), reason=f"cuda: {hive_gpu.CudaContext.unavailable_reason()}"
)

METRICS = [M.COSINE, M.DOT_PRODUCT, M.EUCLIDEAN]


@pytest.fixture(scope="module")
def cctx() -> hive_gpu.CudaContext:
    return hive_gpu.CudaContext()


def reference(x: np.ndarray, q: np.ndarray, metric: M) -> np.ndarray:
    """float64 scores [nq, n] in the user's units (Euclidean: distance)."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == M.DOT_PRODUCT:
        return q64 @ x64.T
    if metric == M.COSINE:
        # A vector whose squared norm is below FLT_MIN counts as zero: it scores 0 with every
        # other (docs/guarantees.md).
        tiny = np.finfo(np.float32).tiny
        xs, qs = (x64 * x64).sum(1), (q64 * q64).sum(1)
        xi = np.where(xs >= tiny, 1 / np.sqrt(np.where(xs >= tiny, xs, 1)), 0)
        qi = np.where(qs >= tiny, 1 / np.sqrt(np.where(qs >= tiny, qs, 1)), 0)
        return (q64 @ x64.T) * np.outer(qi, xi)
    d = (q64 * q64).sum(1)[:, None] - 2 * q64 @ x64.T + (x64 * x64).sum(1)[None, :]
    return np.sqrt(np.maximum(d, 0))


def check_results(scores, ids, x, q, metric, k, id_index):
    """Returned scores match the reference scores of the returned ids and the reference
    k-th best, best first; every id is real and appears once per query. The float64
    reference is computed 64 queries at a time, so batches of thousands stay small."""
    higher = metric != M.EUCLIDEAN
    nq, kk = q.shape[0], min(k, x.shape[0])
    assert scores.shape == (nq, kk) and ids.shape == (nq, kk)
    cols = np.array([[id_index[s] for s in row] for row in ids], dtype=np.int64).reshape(nq, kk)
    at_cols, best, scale = np.empty((nq, kk)), np.empty((nq, kk)), 0.0
    for c in range(0, nq, 64):
        ref = reference(x, q[c : c + 64], metric)
        scale = max(scale, float(np.abs(ref).max()))
        at_cols[c : c + 64] = np.take_along_axis(ref, cols[c : c + 64], 1)
        if kk:
            order = -ref if higher else ref
            top = np.sort(np.partition(order, kk - 1, axis=1)[:, :kk], axis=1)
            best[c : c + 64] = -top if higher else top
    scale += 1e-30
    tol = 2e-5 * scale if metric != M.EUCLIDEAN else 2e-3 * scale
    for i in range(nq):
        assert len(set(cols[i].tolist())) == kk
        np.testing.assert_allclose(scores[i], at_cols[i], atol=tol, rtol=0)
        np.testing.assert_allclose(scores[i], best[i], atol=tol, rtol=0)
        d = np.diff(scores[i].astype(np.float64))
        assert (d <= 0).all() if higher else (d >= 0).all()


def stored(cctx, x: np.ndarray, metric: M):
    """A storage holding x's rows as ids r0, r1, ..., and the map from id to row."""
    s = cctx.create_storage(x.shape[1], metric)
    ids = [f"r{i}" for i in range(x.shape[0])]
    s.add_vectors(ids, x)
    return s, {v: i for i, v in enumerate(ids)}


def test_device_info_fields(cctx):
    d = cctx.device_info()
    assert d.backend == "cuda" and d.name and "unknown" not in d.name.lower()
    assert d.vram_total > 1 << 30 and 0 < d.vram_available <= d.vram_total
    assert d.vram_used == d.vram_total - d.vram_available
    assert re.fullmatch(r"\d+\.\d+", d.compute_capability)
    assert re.match(r"\d+\.\d+", d.driver_version)
    assert d.max_threads_per_block >= 512 and d.max_shared_memory >= 48 * 1024
    assert d.device_id == 0 and re.fullmatch(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d", d.pci_bus_id)
    assert not d.unknown
    assert hive_gpu.CudaContext.device_count() >= 1


def test_invalid_device_id():
    with pytest.raises(hive_gpu.InvalidDeviceIdError):
        hive_gpu.CudaContext(device_id=hive_gpu.CudaContext.device_count())


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", [3, 13, 128, 768, 1500])
@pytest.mark.parametrize("nq", [1, 3, 7, 300])
def test_search_paths_match_reference(cctx, rng, metric, dim, nq):
    n = 3000 if dim < 1000 else 1200
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    s, index = stored(cctx, x, metric)
    for k in (1, 10, 257):
        scores, got = s.search_batch(q, k)
        check_results(scores, got, x, q, metric, k, index)
    hits = s.search(q[0], 5)
    np.testing.assert_allclose([h.distance for h in hits], s.search_batch(q[:1], 5)[0][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_large_k_and_k_beyond_n(cctx, rng, metric):
    # 2048 runs the shared-memory selection at its upper range; 20000 the full-sort path.
    n, dim = 30000, 40
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((3, dim)).astype(np.float32)
    s, index = stored(cctx, x, metric)
    for k in (2048, 20000, n + 5):
        scores, got = s.search_batch(q, k)
        check_results(scores, got, x, q, metric, k, index)
        one = s.search(q[1], k)
        assert [h.id for h in one[:50]] == list(got[1][:50])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 2, 5])
def test_ties_rank_older_first_after_removals(cctx, rng, metric, nq):
    dim = 24
    base = rng.standard_normal(dim).astype(np.float32)
    other = rng.standard_normal((50, dim)).astype(np.float32) * 0.1  # far below the duplicates
    s = cctx.create_storage(dim, metric)
    s.add_vectors([f"o{i}" for i in range(25)], other[:25])
    s.add_vectors([f"d{i}" for i in range(6)], np.repeat(base[None], 6, axis=0))
    s.add_vectors([f"o{i}" for i in range(25, 50)], other[25:])
    # Swap-removes move the newest rows into old slots: slot order no longer equals age.
    for i in (0, 3, 7, 11):
        assert s.remove_vector(f"o{i}")
    assert s.remove_vector("d1")
    q = np.repeat(base[None], nq, axis=0) * (2.0 if metric != M.EUCLIDEAN else 1.0)
    _, ids = s.search_batch(q, 5)
    for row in ids:
        assert list(row) == ["d0", "d2", "d3", "d4", "d5"]
    assert [h.id for h in s.search(q[0], 3)] == ["d0", "d2", "d3"]


def clustered(rng, unsettled: int):
    """20000 x 256 rows, 3000 of them in a tight cluster, and 64 queries, the first
    `unsettled` of them inside the cluster (near-ties that the screen's bound cannot settle)."""
    n, dim, nq = 20000, 256, 64
    base = rng.standard_normal(dim).astype(np.float32)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[:3000] = base + 0.1 * x[:3000]
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    q[:unsettled] = base + 0.1 * rng.standard_normal((unsettled, dim)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("unsettled", [0, 4, 40])
def test_tensor_core_screen_returns_the_exact_answer(cctx, rng, metric, unsettled):
    # Batches are screened with TF32 and re-ranked in float32 (kernels/rerank.cuh). Queries
    # near a tight cluster have candidates closer than the TF32 error bound: those are
    # answered again in float32, one by one (a few) or as a whole batch (many).
    x, q = clustered(rng, unsettled)
    nq = len(q)
    s, index = stored(cctx, x, metric)
    for k in (1, 10, 100):
        scores, got = s.search_batch(q, k)
        check_results(scores, got, x, q, metric, k, index)
        # The single-query scan is float32 throughout: the same scores. (Ids are compared on a
        # random query only: inside the cluster, float32 rounding reorders the closest ties.)
        for i in (0, nq - 1):
            hits = s.search(q[i], k)
            tol = (2e-5 if metric != M.EUCLIDEAN else 2e-3) * np.abs(scores[i]).max()
            np.testing.assert_allclose([h.distance for h in hits], scores[i], rtol=0, atol=tol)
        assert [h.id for h in s.search(q[-1], k)] == list(got[-1])


def test_empty_store_and_removed_ids(cctx, rng):
    s = cctx.create_storage(16, M.COSINE)
    assert s.search(rng.standard_normal(16).astype(np.float32), 3) == []
    x = rng.standard_normal((40, 16)).astype(np.float32)
    s.add_vectors([f"v{i}" for i in range(40)], x)
    s.remove_vectors([f"v{i}" for i in range(0, 40, 2)])
    _, ids = s.search_batch(x, 40)
    assert ids.shape == (40, 20)
    assert all(int(v[1:]) % 2 == 1 for v in ids.ravel())
    s.clear()
    assert s.search_batch(x[:2], 3)[1].shape == (2, 0)
    s.add_vectors(["again"], x[:1])
    assert s.search(x[0], 2)[0].id == "again"


def test_bulk_add_pipeline_roundtrip(cctx, rng):
    # Beyond the small-append threshold: chunks go through several pinned buffers and threads.
    n, dim = 20000, 301
    x = rng.standard_normal((n, dim)).astype(np.float32)
    s = cctx.create_storage(dim, M.EUCLIDEAN)
    ids = [f"b{i}" for i in range(n)]
    s.add_vectors(ids, x)
    for i in (0, 1, 4097, n - 1):
        np.testing.assert_array_equal(s.get_vector(f"b{i}").data, x[i])
    _, got = s.search_batch(x[[5, 12345, n - 1]], 1)
    assert list(got[:, 0]) == ["b5", "b12345", f"b{n - 1}"]
    assert s.memory_usage() >= n * dim * 4


def test_bad_bulk_add_leaves_store_unchanged(cctx, rng):
    s = cctx.create_storage(8, M.COSINE)
    s.add_vectors(["keep"], rng.standard_normal((1, 8)).astype(np.float32))
    x = rng.standard_normal((300000, 8)).astype(np.float32)
    x[123456, 3] = np.nan
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 123456"):
        s.add_vectors([f"x{i}" for i in range(len(x))], x)
    x[123456, 3] = 0
    x[200000] = 3e38
    with pytest.raises(hive_gpu.InvalidArgumentError, match="row 200000"):
        s.add_vectors([f"x{i}" for i in range(len(x))], x)
    assert len(s) == 1 and s.ids() == ["keep"]
    assert s.search(x[0], 5)[0].id == "keep"


def test_staged_bulk_add_and_its_fallbacks(rng):
    # Batches of 32 MiB and more travel to the device while their ids are converted, through
    # pool memory that goes back when the add ends, whether it succeeds or fails.
    ctx = hive_gpu.CudaContext()  # a pool of its own: the stats below are this test's
    n, dim = 40_000, 256
    x = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"s{i}" for i in range(n)]
    md = [{"i": str(i)} if i % 3 == 0 else None for i in range(n)]
    s = ctx.create_storage(dim, M.DOT_PRODUCT)
    s.add_vectors(["keep"], x[:1])
    bad = x.copy()
    bad[31_337, 7] = np.inf
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 31337"):
        s.add_vectors(ids, bad, md)
    with pytest.raises(hive_gpu.DuplicateIdError, match="'keep' already exists"):
        s.add_vectors(ids[:-1] + ["keep"], x)
    assert s.ids() == ["keep"] and ctx.pool_stats().used_bytes == 0
    s.add_vectors(ids, x, md)
    st = ctx.pool_stats()
    assert st.peak_bytes >= x.nbytes and st.used_bytes == 0
    assert len(s) == n + 1
    for i in (0, 1, 31_337, n - 1):
        v = s.get_vector(f"s{i}")
        np.testing.assert_array_equal(v.data, x[i])
        assert v.metadata == ({"i": str(i)} if i % 3 == 0 else {})
    rows = np.vstack([x[:1], x])
    q = rng.standard_normal((3, dim)).astype(np.float32)
    scores, got = s.search_batch(q, 7)
    check_results(scores, got, rows, q, M.DOT_PRODUCT, 7, {"keep": 0, **{f"s{i}": i + 1 for i in range(n)}})

    # A cap with room for the staged copy but not for it and the new store's rows together:
    # the add gives the copy back and succeeds from host memory.
    s2 = ctx.create_storage(dim, M.EUCLIDEAN)
    try:
        ctx.configure_pool(max_bytes=ctx.pool_stats().rows_bytes + int(x.nbytes * 1.2))
        s2.add_vectors(ids, x)
        # No room for even the staged copy: the plain add reports the shortage.
        s3 = ctx.create_storage(dim, M.EUCLIDEAN)
        with pytest.raises(hive_gpu.OutOfMemoryError):
            s3.add_vectors(ids, x)
        assert len(s3) == 0
    finally:
        ctx.configure_pool(max_bytes=0)
    assert len(s2) == n and ctx.pool_stats().used_bytes == 0
    _, got = s2.search_batch(x[[2, 39_999]], 1)
    assert list(got[:, 0]) == ["s2", "s39999"]


def test_pool_config_and_stats(cctx, rng):
    s = cctx.create_storage(64, M.DOT_PRODUCT)
    s.add_vectors([f"p{i}" for i in range(5000)], rng.standard_normal((5000, 64)).astype(np.float32))
    before = cctx.pool_stats()
    s.search_batch(rng.standard_normal((64, 64)).astype(np.float32), 10)
    after = cctx.pool_stats()
    assert after.allocations > before.allocations
    assert after.device_allocations <= after.allocations
    assert after.peak_bytes >= after.used_bytes and after.reserved_bytes >= after.used_bytes
    old = (after.release_threshold, after.max_bytes)
    try:
        cctx.configure_pool(release_threshold=123 << 20, max_bytes=4096)
        st = cctx.pool_stats()
        assert (st.release_threshold, st.max_bytes) == (123 << 20, 4096)
        with pytest.raises(hive_gpu.OutOfMemoryError, match="pool cap"):
            s.search_batch(rng.standard_normal((64, 64)).astype(np.float32), 10)
        assert len(s) == 5000
    finally:
        cctx.configure_pool(release_threshold=old[0], max_bytes=old[1])
    assert s.search_batch(rng.standard_normal((2, 64)).astype(np.float32), 3)[1].shape == (2, 3)


def test_out_of_memory_leaves_store_intact(cctx, rng):
    torch = pytest.importorskip("torch")
    s = cctx.create_storage(256, M.COSINE)
    x = rng.standard_normal((1000, 256)).astype(np.float32)
    s.add_vectors([f"k{i}" for i in range(1000)], x)
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(free - (256 << 20), 0), dtype=torch.uint8, device="cuda")
    try:
        big = np.ones((1_000_000, 256), dtype=np.float32)  # 1 GiB: more than is left
        with pytest.raises(hive_gpu.OutOfMemoryError):
            s.add_vectors([f"big{i}" for i in range(len(big))], big)
    finally:
        del hog
        torch.cuda.empty_cache()
    assert len(s) == 1000 and "big0" not in s
    _, ids = s.search_batch(x[:3], 1)
    assert list(ids[:, 0]) == ["k0", "k1", "k2"]


# ---- device arrays ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_torch_arrays_in_and_out(cctx, rng, metric):
    torch = pytest.importorskip("torch")
    n, dim = 4000, 70
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((9, dim)).astype(np.float32)
    s = cctx.create_storage(dim, metric)
    ids = [f"t{i}" for i in range(n)]
    s.add_vectors(ids, torch.from_numpy(x).cuda())
    np.testing.assert_array_equal(s.get_vector("t17").data, x[17])
    host_scores, host_ids = s.search_batch(q, 10)
    tq = torch.from_numpy(q).cuda()
    scores, got = s.search_batch(tq, 10)
    assert isinstance(scores, np.ndarray)
    np.testing.assert_array_equal(got, host_ids)
    np.testing.assert_allclose(scores, host_scores, rtol=1e-6, atol=1e-6)
    dscores, got2 = s.search_batch(tq, 10, device_output=True)
    assert isinstance(dscores, torch.Tensor) and dscores.is_cuda and dscores.shape == (9, 10)
    np.testing.assert_allclose(dscores.cpu().numpy(), host_scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got2, host_ids)
    assert [h.id for h in s.search(tq[3], 4)] == list(host_ids[3, :4])
    check_results(dscores.cpu().numpy(), got2, x, q, metric, 10, {v: i for i, v in enumerate(ids)})


def test_torch_strided_and_converted_inputs(cctx, rng):
    torch = pytest.importorskip("torch")
    wide = torch.from_numpy(rng.standard_normal((100, 48)).astype(np.float32)).cuda()
    view = wide[:, :32]  # row stride 48: read in place
    s = cctx.create_storage(32, M.DOT_PRODUCT)
    s.add_vectors([f"s{i}" for i in range(100)], view)
    np.testing.assert_array_equal(s.get_vector("s42").data, view[42].cpu().numpy())
    s.add_vectors(["half"], view[:1].to(torch.float16))
    wider = torch.from_numpy(rng.standard_normal((1, 64)).astype(np.float32)).cuda()
    s.add_vectors(["col"], wider[:, ::2])  # stride 2 along the row: copied by torch first
    np.testing.assert_array_equal(s.get_vector("col").data, wider[0, ::2].cpu().numpy())
    with pytest.raises(hive_gpu.InvalidDtypeError):
        s.add_vectors(["int"], torch.ones((1, 32), dtype=torch.int32, device="cuda"))
    _, ids = s.search_batch(view[:4], 1)
    assert list(ids[:, 0]) == [s_id for s_id in _best_dot_ids(view[:4].cpu().numpy(), s)]


def _best_dot_ids(q, s):
    all_ids = s.ids()
    vecs = np.stack([s.get_vector(i).data for i in all_ids])
    return [all_ids[int(np.argmax(vecs @ qq))] for qq in q]


def test_device_rows_are_checked_on_the_device(cctx, rng):
    torch = pytest.importorskip("torch")
    s = cctx.create_storage(16, M.COSINE)
    s.add_vectors(["keep"], rng.standard_normal((1, 16)).astype(np.float32))
    bad = torch.from_numpy(rng.standard_normal((50, 16)).astype(np.float32)).cuda()
    bad[31, 2] = float("inf")
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 31"):
        s.add_vectors([f"b{i}" for i in range(50)], bad)
    assert s.ids() == ["keep"]
    with pytest.raises(hive_gpu.NonFiniteValueError):
        s.search_batch(bad[30:33], 1)
    with pytest.raises(hive_gpu.DimensionMismatchError):
        s.search(bad[0, :8], 1)
    with pytest.raises(hive_gpu.InvalidArgumentError):
        s.add_vectors(["a", "b"], bad[:3])


def test_producer_stream_is_respected(cctx, rng):
    torch = pytest.importorskip("torch")
    s = cctx.create_storage(256, M.DOT_PRODUCT)
    side = torch.cuda.Stream()
    big = torch.randn(4096, 4096, device="cuda")
    with torch.cuda.stream(side):
        # A long product queued before the rows are written on the side stream.
        for _ in range(8):
            big = big @ big / 64
        rows = torch.zeros(2000, 256, device="cuda")
        rows += torch.arange(2000, device="cuda", dtype=torch.float32)[:, None] / 1000
        s.add_vectors([f"z{i}" for i in range(2000)], rows)
        q = torch.ones(1, 256, device="cuda")
        _, ids = s.search_batch(q, 1)
    assert ids[0, 0] == "z1999"
    np.testing.assert_allclose(s.get_vector("z1000").data, np.full(256, 1.0, np.float32))


def test_cupy_and_dlpack_inputs(cctx, rng):
    cupy = pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((500, 20)).astype(np.float32)
    s = cctx.create_storage(20, M.EUCLIDEAN)
    s.add_vectors([f"c{i}" for i in range(500)], cupy.asarray(x))
    scores, ids = s.search_batch(cupy.asarray(x[:3]), 2, device_output=True)
    assert isinstance(scores, cupy.ndarray)
    assert list(ids[:, 0]) == ["c0", "c1", "c2"]
    # Each vector finds itself first. Euclidean is |x|^2 + |q|^2 - 2 x.q in float32, so a
    # self-distance is the root of a few rounding units of |x|^2, not exactly 0.
    self_tol = float(np.sqrt(8 * np.finfo(np.float32).eps * (x[:3].astype(np.float64) ** 2).sum(1).max()))
    np.testing.assert_allclose(cupy.asnumpy(scores[:, 0]), 0, atol=self_tol)

    class DLPackOnly:  # a producer without __cuda_array_interface__
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__(stream=stream)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    s.add_vectors(["dl0", "dl1"], DLPackOnly(torch.from_numpy(x[:2] + 100).cuda()))
    assert s.search(DLPackOnly(torch.from_numpy(x[1] + 100).cuda()), 1)[0].id == "dl1"


def test_concurrent_searches_from_threads(cctx, rng):
    n, dim = 50000, 96
    x = rng.standard_normal((n, dim)).astype(np.float32)
    s = cctx.create_storage(dim, M.COSINE)
    s.add_vectors([f"c{i}" for i in range(n)], x)
    queries = [rng.standard_normal((nq, dim)).astype(np.float32) for nq in (1, 3, 64, 1, 200, 1, 8, 1)]
    expected = [s.search_batch(q, 7) for q in queries]
    errors: list[BaseException] = []

    def work(t):
        try:
            for r in range(6):
                i = (t + r) % len(queries)
                sc, ids = s.search_batch(queries[i], 7)
                np.testing.assert_array_equal(ids, expected[i][1])
                np.testing.assert_array_equal(sc, expected[i][0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_update_and_swap_remove_on_device(cctx, rng):
    s = cctx.create_storage(10, M.EUCLIDEAN)
    x = rng.standard_normal((100, 10)).astype(np.float32)
    s.add_vectors([f"u{i}" for i in range(100)], x)
    y = rng.standard_normal(10).astype(np.float32) * 50
    assert s.update_vector("u3", y)
    assert s.search(y, 1)[0].id == "u3" and s.search(y, 1)[0].distance == pytest.approx(0, abs=1e-3)
    s.remove_vector("u0")  # u99 moves into slot 0
    np.testing.assert_array_equal(s.get_vector("u99").data, x[99])
    assert s.search(x[99], 1)[0].id == "u99"


# ---- paged rows ------------------------------------------------------------------------
# Rows live in fixed device pages (docs/cuda.md). HIVE_GPU_CUDA_PAGE_ROWS, read when a store
# is created, caps a page's rows, so small stores here span many pages: 768-d rows start with
# pages of 256 rows that double up to the cap, narrow rows take 64-row pages throughout.


@pytest.fixture
def page_rows(monkeypatch):
    def set_rows(n: int) -> None:
        monkeypatch.setenv("HIVE_GPU_CUDA_PAGE_ROWS", str(n))

    return set_rows


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim,cap", [(13, 64), (768, 4096)])
def test_paged_store_matches_reference(cctx, rng, page_rows, metric, dim, cap):
    page_rows(cap)
    n = 30000 if dim < 100 else 14000
    x = rng.standard_normal((n, dim)).astype(np.float32)
    s = cctx.create_storage(dim, metric)
    ids = [f"r{i}" for i in range(n)]
    for a in range(0, n, 2999):  # several adds, each ending inside a page
        s.add_vectors(ids[a : a + 2999], x[a : a + 2999])
    index = {v: i for i, v in enumerate(ids)}
    for nq in (1, 3, 7, 300):
        q = rng.standard_normal((nq, dim)).astype(np.float32)
        for k in (1, 10, 257):
            scores, got = s.search_batch(q, k)
            check_results(scores, got, x, q, metric, k, index)
    for i in (0, 63, 64, 255, 256, 511, 512, 4095, 4096, n - 1):
        np.testing.assert_array_equal(s.get_vector(f"r{i}").data, x[i])
    # k up to 20000: beyond shared memory every page's scores go into one sort
    q = rng.standard_normal((2, dim)).astype(np.float32)
    scores, got = s.search_batch(q, min(n, 20000))
    check_results(scores, got, x, q, metric, min(n, 20000), index)


@pytest.mark.parametrize("metric", METRICS)
def test_paged_filtered_search(cctx, rng, page_rows, metric):
    page_rows(64)
    n, dim = 5000, 20
    x = rng.standard_normal((n, dim)).astype(np.float32)
    s = cctx.create_storage(dim, metric)
    ids = [f"f{i}" for i in range(n)]
    s.add_vectors(ids, x, [{"g": str(i % 50)} for i in range(n)])
    q = rng.standard_normal((5, dim)).astype(np.float32)
    # dense (half the rows pass) and sparse (1 in 50: the slot list) paths
    for f, passing in (({"g": {"$in": [str(v) for v in range(25)]}}, lambda i: i % 50 < 25), ({"g": "7"}, lambda i: i % 50 == 7)):
        keep = [i for i in range(n) if passing(i)]
        sub = x[keep]
        index = {f"f{i}": j for j, i in enumerate(keep)}
        for k in (1, 10, 100):
            scores, got = s.search_batch(q, k, filter=f)
            check_results(scores, got, sub, q, metric, k, index)
            one = s.search(q[0], k, filter=f)
            assert [h.id for h in one] == list(got[0])


def test_paged_swap_remove_truncate_and_memory(cctx, rng, page_rows):
    page_rows(64)
    dim = 16
    x = rng.standard_normal((1000, dim)).astype(np.float32)
    s = cctx.create_storage(dim, M.EUCLIDEAN)
    ids = [f"m{i}" for i in range(1000)]
    s.add_vectors(ids, x)
    full = s.memory_usage()
    assert full >= 1000 * dim * 4
    # Removals move the last rows into freed slots across pages, and give emptied pages back.
    gone = set(range(0, 1000, 3)) | set(range(500, 1000))
    s.remove_vectors([ids[i] for i in sorted(gone)])
    left = [i for i in range(1000) if i not in gone]
    assert len(s) == len(left)
    assert s.memory_usage() < full
    for i in left[::17]:
        np.testing.assert_array_equal(s.get_vector(ids[i]).data, x[i])
    index = {ids[i]: j for j, i in enumerate(left)}
    q = rng.standard_normal((6, dim)).astype(np.float32)
    scores, got = s.search_batch(q, 20)
    check_results(scores, got, x[left], q, M.EUCLIDEAN, 20, index)
    assert s.update_vector(ids[left[-1]], x[0])  # row 0 itself was removed
    assert s.search(x[0], 1)[0].id == ids[left[-1]]
    # Adding again after the shrink reuses or adds pages: every row is found where it belongs.
    s.add_vectors([f"n{i}" for i in range(300)], x[:300] + 10)
    assert [h.id for h in s.search(x[299] + 10, 1)] == ["n299"]
    s.clear()
    assert s.memory_usage() == 0
    s.add_vectors(["again"], x[:1])
    assert s.search(x[0], 1)[0].id == "again"


def test_paged_bulk_add_from_host_and_device(cctx, rng, page_rows):
    # Beyond the small-append threshold and across page boundaries: staging chunks stop at
    # page ends; device rows are copied page by page.
    page_rows(1024)
    n, dim = 20000, 130
    x = rng.standard_normal((n, dim)).astype(np.float32)
    s = cctx.create_storage(dim, M.DOT_PRODUCT)
    s.add_vectors([f"h{i}" for i in range(n)], x)
    for i in (0, 1023, 1024, 1025, 16383, 16384, n - 1):
        np.testing.assert_array_equal(s.get_vector(f"h{i}").data, x[i])
    torch = pytest.importorskip("torch")
    wide = torch.from_numpy(np.hstack([x, x[:, :7]])).cuda()
    s.add_vectors([f"d{i}" for i in range(n)], wide[:, :dim])  # strided device rows
    for i in (0, 1023, 1024, n - 1):
        np.testing.assert_array_equal(s.get_vector(f"d{i}").data, x[i])
    bad = torch.from_numpy(x[:3000].copy()).cuda()
    bad[2500, 3] = float("nan")  # in the third page of this add
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 2500"):
        s.add_vectors([f"b{i}" for i in range(3000)], bad)
    assert len(s) == 2 * n


def test_rows_fill_the_memory_cap(rng, page_rows):
    # Growth adds pages and never copies, so a store fills its context's memory cap: batches
    # go in until OutOfMemoryError, and then less than one batch and one page of the cap is
    # left. The failed batch leaves the store as it was.
    page_rows(1024)
    torch = pytest.importorskip("torch")
    ctx = hive_gpu.CudaContext()
    dim, batch = 256, 5000
    row_bytes = dim * 4 + 8  # a row, its factor and its ordinal
    cap = 64 << 20
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    dx = torch.from_numpy(x).cuda()
    s = ctx.create_storage(dim, M.DOT_PRODUCT)
    added = 0
    ctx.configure_pool(max_bytes=cap)
    try:
        with pytest.raises(hive_gpu.OutOfMemoryError):
            while True:
                s.add_vectors([f"c{added + i}" for i in range(batch)], dx)
                added += batch
        held = ctx.pool_stats().rows_bytes
    finally:
        ctx.configure_pool(max_bytes=0)
    assert len(s) == added and added > 0
    assert s.memory_usage() == held <= cap
    assert cap - held < (batch + 1024) * row_bytes
    assert added * dim * 4 >= 0.8 * cap
    hits = s.search(x[7], 3)
    assert {h.id for h in hits} <= {f"c{7 + b}" for b in range(0, added, batch)}


# ---- 16-bit rows -----------------------------------------------------------------------
# float16 / bfloat16 stores keep 2-byte rows: rounded once at insert (to nearest even, on the
# device for device rows), read back widened to float32, searched exactly with respect to the
# stored values (a float64 reference on the rounded rows).

DTYPES = ["float16", "bfloat16"]


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float32, for finite values."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """What a store of `dtype` keeps of float32 rows x."""
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return bf16_round(x)
    return x


def typed_store(ctx, dim: int, metric, dtype: str):
    """A store of `dtype` rows: the Python wrapper's dtype keyword, else the core's."""
    try:
        s = ctx.create_storage(dim, metric, dtype=dtype)
    except TypeError:  # a wrapper without the keyword
        from hive_gpu._storage import _METRIC_TO_CORE, VectorStorage

        s = VectorStorage(ctx._ctx.create_storage(dim, _METRIC_TO_CORE[M.parse(metric)], dtype))
    assert s._s.dtype == dtype
    return s


def awkward_values(rng, n: int, dim: int) -> np.ndarray:
    """Random rows with components at every scale float16 rounds differently: halfway cases,
    subnormals, values that round to zero."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[::7] *= np.float32(1e-5)  # float16 subnormals
    x[1::11] *= np.float32(3e-8)  # below half the smallest float16 subnormal, or just above
    x[2::13] = (np.round(x[2::13] * 1024) + 0.5) / 1024  # halfway between float16 neighbours
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_rows_round_like_the_host(cctx, rng, dtype):
    torch = pytest.importorskip("torch")
    n, dim = 3000, 37
    x = awkward_values(rng, n, dim)
    s = typed_store(cctx, dim, M.DOT_PRODUCT, dtype)
    s.add_vectors([f"d{i}" for i in range(n)], torch.from_numpy(x).cuda())
    want = rounded(x, dtype)
    got = np.stack([s.get_vector(f"d{i}").data for i in range(n)])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # rows already in the dtype go in unchanged
    t16 = torch.from_numpy(want).cuda().to(torch.float16 if dtype == "float16" else torch.bfloat16)
    s.add_vectors([f"t{i}" for i in range(n)], t16)
    np.testing.assert_array_equal(s.get_vector("t123").data, want[123])


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_rows_round_like_numpy(cctx, rng, dtype):
    n, dim = 2000, 64
    x = awkward_values(rng, n, dim)
    s = typed_store(cctx, dim, M.EUCLIDEAN, dtype)
    s.add_vectors([f"h{i}" for i in range(n)], x)
    want = rounded(x, dtype)
    for i in (0, 1, 2, 7, 11, 13, n - 1):
        np.testing.assert_array_equal(s.get_vector(f"h{i}").data, want[i])
    assert s.update_vector("h5", x[6])
    np.testing.assert_array_equal(s.get_vector("h5").data, want[6])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 3, 16, 300])
def test_16bit_search_paths_match_reference(cctx, rng, dtype, metric, nq):
    n, dim = 6000, 200
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    s = typed_store(cctx, dim, metric, dtype)
    torch = pytest.importorskip("torch")
    s.add_vectors([f"r{i}" for i in range(n)], torch.from_numpy(x).cuda())
    xs = rounded(x, dtype)
    index = {f"r{i}": i for i in range(n)}
    for k in (1, 10, 100, 300):  # 300: beyond the tensor-core screen, widened rows and SGEMM
        scores, got = s.search_batch(q, k)
        check_results(scores, got, xs, q, metric, k, index)
    # device queries of the store's dtype
    tq = torch.from_numpy(q).cuda().to(torch.float16 if dtype == "float16" else torch.bfloat16)
    scores, got = s.search_batch(tq, 10)
    check_results(scores, got, xs, rounded(q, dtype), metric, 10, index)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("unsettled", [0, 4, 40])
def test_16bit_screen_returns_the_exact_answer(cctx, rng, page_rows, dtype, metric, unsettled):
    # The float16/bfloat16 tensor-core screen with the float32 re-rank on the stored rows;
    # queries in a tight cluster are answered again exactly. Pages of 4096 rows.
    torch = pytest.importorskip("torch")
    page_rows(4096)
    x, q = clustered(rng, unsettled)
    n, dim = x.shape
    q[-1] *= np.float32(1e-30)  # a tiny query: scaled before it is rounded to 16 bits
    s = typed_store(cctx, dim, metric, dtype)
    s.add_vectors([f"r{i}" for i in range(n)], torch.from_numpy(x).cuda())
    xs = rounded(x, dtype)
    index = {f"r{i}": i for i in range(n)}
    for k in (1, 10, 100):
        scores, got = s.search_batch(q, k)
        check_results(scores, got, xs, q, metric, k, index)
        hits = s.search(q[5], k)
        tol = (2e-5 if metric != M.EUCLIDEAN else 2e-3) * np.abs(scores[5]).max()
        np.testing.assert_allclose([h.distance for h in hits], scores[5], rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_filtered_and_removed(cctx, rng, page_rows, dtype):
    torch = pytest.importorskip("torch")
    page_rows(64)
    n, dim = 3000, 24
    x = rng.standard_normal((n, dim)).astype(np.float32)
    s = typed_store(cctx, dim, M.COSINE, dtype)
    ids = [f"f{i}" for i in range(n)]
    s.add_vectors(ids, torch.from_numpy(x).cuda(), [{"g": str(i % 40)} for i in range(n)])
    s.remove_vectors(ids[::5])
    keep = [i for i in range(n) if i % 5 and i % 40 == 3]
    q = rng.standard_normal((8, dim)).astype(np.float32)
    scores, got = s.search_batch(q, 10, filter={"g": "3"})
    check_results(scores, got, rounded(x, dtype)[keep], q, M.COSINE, 10, {f"f{i}": j for j, i in enumerate(keep)})
    hits = s.search(q[0], 10, filter={"g": "3"})
    assert [h.id for h in hits] == list(got[0])


def test_float16_overflow_is_refused(cctx, rng):
    torch = pytest.importorskip("torch")
    s = typed_store(cctx, 8, M.DOT_PRODUCT, "float16")
    s.add_vectors(["keep"], rng.standard_normal((1, 8)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((100, 8)).astype(np.float32)).cuda()
    x[42, 3] = 65520.0  # rounds to infinity in float16
    with pytest.raises(hive_gpu.NonFiniteValueError, match="row 42 .*does not fit float16"):
        s.add_vectors([f"o{i}" for i in range(100)], x)
    x[42, 3] = 65504.0  # the largest float16: fits
    s.add_vectors([f"o{i}" for i in range(100)], x)
    assert len(s) == 101 and s.get_vector("o42").data[3] == 65504.0


# ---- batch selection over several tiles --------------------------------------------------
# A few queries over 256k rows or more run in at least four GEMM tiles, ramped up from 1024
# columns and packed side by side into two score buffers; tiles after the first are filtered
# against the running k-th best and merged. With small pages a tile holds several pages, so
# its factors and ordinals are copied side by side. A single tile of many columns is
# selected in column ranges (several blocks per query) and merged (the float16 screen test).


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", METRICS)
def test_tiled_split_selection_matches_reference(cctx, rng, page_rows, dtype, metric):
    page_rows(4096)
    n, dim = 270_000, 24
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[n // 2] = x[7]  # an exact tie across tiles: the older row ranks first
    s = typed_store(cctx, dim, metric, dtype)
    ids = [f"r{i}" for i in range(n)]
    for a in range(0, n, 100_000):
        s.add_vectors(ids[a : a + 100_000], x[a : a + 100_000])
    xs = rounded(x, dtype)
    index = {v: i for i, v in enumerate(ids)}
    # 3: float32's skinny product; 7, 20, 130: the tensor-core screen (130: the first tiles
    # ramped up)
    for nq in (3, 7, 20, 130):
        q = rng.standard_normal((nq, dim)).astype(np.float32)
        q[0] = x[7]
        for k in (1, 10, 100):
            scores, got = s.search_batch(q, k)
            check_results(scores, got, xs, q, metric, k, index)
            if metric == M.COSINE and k > 1:
                assert list(got[0][:2]) == ["r7", f"r{n // 2}"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", METRICS)
def test_tiles_split_a_page_wider_than_a_tile(cctx, rng, dtype, metric):
    # Tiles hold whole pages, but a page wider than a tile is split into equal parts: 8-d
    # rows take default pages of 32k rows doubling up to 8M, and 1024 queries take tiles of
    # at most 128k columns, so the page of rows [256k, 512k) is split.
    n, dim, nq, k = 400_000, 8, 1024, 10
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[390_000] = x[260_000]  # an exact tie between two parts of one page
    s = typed_store(cctx, dim, metric, dtype)
    ids = [f"r{i}" for i in range(n)]
    s.add_vectors(ids, x)
    xs = rounded(x, dtype)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    q[0] = x[260_000]
    scores, got = s.search_batch(q, k)
    if metric == M.COSINE:
        assert list(got[0][:2]) == ["r260000", "r390000"]
    check_results(scores, got, xs, q, metric, k, {v: i for i, v in enumerate(ids)})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", METRICS)
def test_streamed_selection_reselects_a_tile_that_overflows(cctx, rng, page_rows, dtype, metric):
    # Tiles after the first are streamed: only columns that reach the running k-th are kept.
    # Here scores rise along the rows, so in every later tile each column beats the running
    # k-th, far more than the pass buffer holds, and each query's block selects the whole
    # tile again. With a filter too (its mask is checked on both paths).
    page_rows(4096)
    n, dim = 270_000, 16
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    w = rng.standard_normal(dim)
    w -= w.dot(u) * u
    w /= np.linalg.norm(w)
    t = np.arange(n, dtype=np.float64) / n
    if metric == M.DOT_PRODUCT:
        x = (1.0 + t)[:, None] * u
    else:  # the angle to u (Cosine) and the distance to u (Euclidean) fall along the rows
        x = u + (1.0 - t)[:, None] * w
    x = (x + 1e-3 * rng.standard_normal((n, dim))).astype(np.float32)
    s = typed_store(cctx, dim, metric, dtype)
    ids = [f"r{i}" for i in range(n)]
    meta = [{"g": str(i % 3)} for i in range(n)]
    for a in range(0, n, 100_000):
        s.add_vectors(ids[a : a + 100_000], x[a : a + 100_000], meta[a : a + 100_000])
    xs = rounded(x, dtype)
    # 6 queries, and 130 (the first tiles ramped up)
    q = np.stack([u + 1e-2 * rng.standard_normal(dim) for _ in range(130)]).astype(np.float32)
    keep = [i for i in range(n) if i % 3 == 1]
    for qs, k in ((q[:6], 1), (q[:6], 10), (q, 10)):
        scores, got = s.search_batch(qs, k)
        check_results(scores, got, xs, qs, metric, k, {v: i for i, v in enumerate(ids)})
        assert int(got[0][0][1:]) > 3 * n // 4  # the best rows lie in the last tile
        scores, got = s.search_batch(qs, k, filter={"g": "1"})
        check_results(scores, got, xs[keep], qs, metric, k, {f"r{i}": j for j, i in enumerate(keep)})


@pytest.mark.parametrize("spread", [1.0, 4000.0])
@pytest.mark.parametrize("metric", METRICS)
def test_float16_screen_over_rows_of_spread_norms(cctx, rng, metric, spread):
    # The float16 screen of a batch of 130 queries (ramped first tiles) over rows whose norms
    # differ 4000-fold: dot products near 1e6, far beyond float16, must stay exact.
    n, dim = 50_000, 40
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[::2] *= spread
    s = typed_store(cctx, dim, metric, "float16")
    ids = [f"r{i}" for i in range(n)]
    s.add_vectors(ids, x)
    xs = rounded(x, "float16")
    q = (3.0 * rng.standard_normal((130, dim))).astype(np.float32)
    q[5] = xs[8]
    for k in (1, 10, 50):
        scores, got = s.search_batch(q, k)
        check_results(scores, got, xs, q, metric, k, {v: i for i, v in enumerate(ids)})
        if metric != M.DOT_PRODUCT:
            assert got[5][0] == "r8"
