"""The float64 NumPy oracle every backend is checked against."""

from __future__ import annotations

import numpy as np

from hive_gpu import GpuDistanceMetric

METRICS = [GpuDistanceMetric.COSINE, GpuDistanceMetric.DOT_PRODUCT, GpuDistanceMetric.EUCLIDEAN]


def scores64(X: np.ndarray, Q: np.ndarray, metric: GpuDistanceMetric) -> np.ndarray:
    """[nq, n] scores in float64, in the units the API reports."""
    X = np.asarray(X, np.float64)
    Q = np.atleast_2d(np.asarray(Q, np.float64))
    if metric is GpuDistanceMetric.DOT_PRODUCT:
        return Q @ X.T
    if metric is GpuDistanceMetric.COSINE:
        xn = np.linalg.norm(X, axis=1)
        qn = np.linalg.norm(Q, axis=1)
        xi = np.divide(1.0, xn, out=np.zeros_like(xn), where=xn > 0)
        qi = np.divide(1.0, qn, out=np.zeros_like(qn), where=qn > 0)
        return (Q @ X.T) * qi[:, None] * xi[None, :]
    d2 = (Q * Q).sum(1)[:, None] - 2 * Q @ X.T + (X * X).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def topk64(X: np.ndarray, Q: np.ndarray, metric: GpuDistanceMetric, k: int):
    """(scores[nq, k'], rows[nq, k']) best first, ties by row order (= insertion order)."""
    s = scores64(X, Q, metric)
    key = -s if metric.higher_is_better else s
    order = np.argsort(key, axis=1, kind="stable")[:, : min(k, X.shape[0])]
    return np.take_along_axis(s, order, axis=1), order


def tolerance(X: np.ndarray, Q: np.ndarray, metric: GpuDistanceMetric) -> float:
    """Absolute float32 error bound for one score of this data."""
    X = np.asarray(X, np.float64)
    Q = np.atleast_2d(np.asarray(Q, np.float64))
    d = X.shape[1]
    if metric is GpuDistanceMetric.COSINE:
        return 1e-5 * np.sqrt(d) + 1e-6
    xm = np.linalg.norm(X, axis=1).max() if len(X) else 1.0
    qm = np.linalg.norm(Q, axis=1).max() if len(Q) else 1.0
    if metric is GpuDistanceMetric.DOT_PRODUCT:
        return 1e-5 * np.sqrt(d) * xm * qm + 1e-6
    # sqrt of a squared distance computed as |q|^2 - 2 q.x + |x|^2 loses precision near 0.
    return 2e-3 * (xm + qm) + 1e-5


def assert_matches(ids_got, scores_got, X, row_ids, Q, metric, k):
    """Check one query's hits: right scores at every rank, each id's own score right, and
    the exact ids wherever the reference ranks are separated by more than the tolerance."""
    ref_s, ref_rows = topk64(X, Q, metric, k)
    ref_s, ref_rows = ref_s[0], ref_rows[0]
    tol = tolerance(X, Q, metric)
    ids_got = list(ids_got)
    scores_got = np.asarray(scores_got, np.float64)
    assert len(ids_got) == len(ref_rows), (len(ids_got), len(ref_rows))
    assert len(set(ids_got)) == len(ids_got), "duplicate id in results"
    np.testing.assert_allclose(scores_got, ref_s, rtol=0, atol=tol)
    all_s = scores64(X, Q, metric)[0]
    pos = {rid: i for i, rid in enumerate(row_ids)}
    for rid, s in zip(ids_got, scores_got):
        assert abs(all_s[pos[rid]] - s) <= tol, (rid, all_s[pos[rid]], s)
    # Ranks whose reference score is well separated from every other candidate are exact.
    sorted_all = np.sort(all_s)
    for j, row in enumerate(ref_rows):
        near = np.searchsorted(sorted_all, ref_s[j] + 2 * tol) - np.searchsorted(sorted_all, ref_s[j] - 2 * tol)
        if near == 1:
            assert ids_got[j] == row_ids[row], (j, ids_got[j], row_ids[row])


# -- storage dtypes: the values a store keeps ---------------------------------------------------

DTYPES = ["float32", "float16", "bfloat16"]


def bf16_bits(X) -> np.ndarray:
    """The bfloat16 bits of float32 values, rounded to nearest even (finite input)."""
    u = np.ascontiguousarray(X, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(X) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), widened back to float32 exactly."""
    return (bf16_bits(X).astype(np.uint32) << 16).view(np.float32)


def rounded(X, dtype: str) -> np.ndarray:
    """The float32 rows ``X`` as a store of ``dtype`` keeps them, as float32: the reference
    scores are computed on these. float16 rounds with NumPy (IEEE, nearest even)."""
    X = np.asarray(X, np.float32)
    if dtype == "float16":
        return X.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return bf16_round(X)
    return X
