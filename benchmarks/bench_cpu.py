"""CPU backend against faiss-cpu (IndexFlatIP / IndexFlatL2) and NumPy, side by side in one
process: 100k x 768 and 1M x 128, dot product and Euclidean with 1 and 64 queries, cosine
with 1 query, k = 10, median of repeats; each contender runs in blocks of its own (see
race()), in order and then in reverse order. The peers get cosine as an inner product on
rows normalised beforehand (outside the timing).

    python benchmarks/bench_cpu.py [--repeats 7] [--cases 100000x768,1000000x128] [--out PATH]

Every contender answers the same queries; the run fails when hive_gpu's ids differ from a
peer's beyond exact ties (an id counts as matching when its score equals the k-th score).
Results go to benchmarks/results/cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import hive_gpu
from hive_gpu import GpuDistanceMetric

K = 10


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def race(fns: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Median seconds and last answer of each contender. Each contender runs in a block of
    its own (after a pause, then two untimed calls), so that the worker threads another
    library leaves spinning after its call (OpenMP, OpenBLAS) do not steal the cores from
    the next one;
    the blocks run in order and then in reverse order, so that drifting load from elsewhere
    hits all of them alike."""
    outs: dict[str, object] = {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    half = max(1, (repeats + 1) // 2)
    for order in (names, names[::-1]):
        for name in order:
            fn = fns[name]
            time.sleep(0.5)  # the previous library's spinning threads go back to sleep
            for _ in range(2):
                outs[name] = fn()
            for _ in range(half):
                t = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), outs[name]) for name in fns}


def numpy_search(X: np.ndarray, xnorm: np.ndarray | None, Q: np.ndarray, k: int):
    """matmul + argpartition + sort of the k; Euclidean as |x|^2 - 2 q.x (+|q|^2). Cosine
    is the inner product of rows normalised beforehand with the normalised queries."""
    S = X @ Q[0] if len(Q) == 1 else Q @ X.T
    S = S.reshape(len(Q), -1)
    if xnorm is None:
        S = -S  # best = smallest
    else:
        S = xnorm[None, :] - 2.0 * S
    part = np.argpartition(S, k - 1, axis=1)[:, :k]
    sub = np.take_along_axis(S, part, 1)
    order = np.argsort(sub, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    sc = np.take_along_axis(sub, order, 1)
    if xnorm is None:
        return -sc, idx
    return np.sqrt(np.maximum(sc + (Q.astype(np.float32) ** 2).sum(1)[:, None], 0)), idx


def agree(ours_ids: np.ndarray, ours_d: np.ndarray, peer_ids: np.ndarray, exact: np.ndarray,
          higher: bool, tol: float) -> float:
    """Recall of the peer's ids in ours, where a missing id still counts when its exact score
    ties ours' k-th within `tol` (then either choice is a correct answer)."""
    hits = 0
    total = 0
    for q in range(len(ours_ids)):
        mine = set(ours_ids[q].tolist())
        kth = exact[q][ours_ids[q][-1]]
        for i in peer_ids[q].tolist():
            total += 1
            if i in mine or abs(exact[q][i] - kth) <= tol * max(1.0, abs(kth)):
                hits += 1
    return hits / total


def exact_scores(X: np.ndarray, Q: np.ndarray, metric: str) -> np.ndarray:
    """float64 scores of every row for every query (Euclidean: the distance)."""
    out = np.empty((len(Q), len(X)))
    Q64 = Q.astype(np.float64)
    step = 65536
    for a in range(0, len(X), step):
        xb = X[a:a + step].astype(np.float64)
        if metric == "euclidean":
            out[:, a:a + step] = np.sqrt(np.maximum(
                (xb ** 2).sum(1)[None] - 2 * Q64 @ xb.T + (Q64 ** 2).sum(1)[:, None], 0))
        elif metric == "cosine":
            out[:, a:a + step] = (Q64 @ xb.T) / np.linalg.norm(xb, axis=1)[None] / np.linalg.norm(Q64, axis=1)[:, None]
        else:
            out[:, a:a + step] = Q64 @ xb.T
    return out


def normalised(A: np.ndarray) -> np.ndarray:
    return (A / np.linalg.norm(A.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)


def run_case(n: int, d: int, repeats: int, rng: np.random.Generator, faiss) -> list[dict]:
    X = rng.standard_normal((n, d), dtype=np.float32)
    xnorm = (X.astype(np.float64) ** 2).sum(1).astype(np.float32)
    ids = [str(i) for i in range(n)]
    ctx = hive_gpu.create_context("cpu")
    rows = []
    metrics = {"dot_product": GpuDistanceMetric.DOT_PRODUCT, "euclidean": GpuDistanceMetric.EUCLIDEAN,
               "cosine": GpuDistanceMetric.COSINE}
    for metric, query_counts in (("dot_product", (1, 64)), ("euclidean", (1, 64)), ("cosine", (1,))):
        l2, cos = metric == "euclidean", metric == "cosine"
        store = ctx.create_storage(d, metrics[metric])
        store.add_vectors(ids, X)
        peer_rows = normalised(X) if cos else X
        index = None
        if faiss is not None:
            index = faiss.IndexFlatL2(d) if l2 else faiss.IndexFlatIP(d)
            index.add(peer_rows)
        for nq in query_counts:
            Q = rng.standard_normal((nq, d), dtype=np.float32)
            peer_q = normalised(Q) if cos else Q
            fns = {
                "hive_gpu": lambda: store.search_batch(Q, K),
                "numpy": lambda: numpy_search(peer_rows, xnorm if l2 else None, peer_q, K),
            }
            if index is not None:
                fns["faiss"] = lambda: index.search(peer_q, K)
            load_before = load()
            got = race(fns, repeats)
            t_hive, (hd, hi) = got["hive_gpu"]
            hive_ids = hi.astype(np.int64)
            t_np, (nd, ni) = got["numpy"]
            row = {
                "n": n, "d": d, "nq": nq, "k": K, "metric": metric,
                "hive_gpu_ms": t_hive * 1e3, "numpy_ms": t_np * 1e3, "load_before": load_before,
            }
            exact = exact_scores(X, Q, metric)
            row["recall_vs_numpy"] = agree(hive_ids, hd, ni, exact, not l2, 1e-5)
            if index is not None:
                t_fa, (fd, fi) = got["faiss"]
                row["faiss_ms"] = t_fa * 1e3
                row["recall_vs_faiss"] = agree(hive_ids, hd, fi, exact, not l2, 1e-5)
            best = min(row["numpy_ms"], row.get("faiss_ms", float("inf")))
            row["best_peer_ms"] = best
            row["speedup_vs_best_peer"] = best / row["hive_gpu_ms"]
            row["load_after"] = load()
            rows.append(row)
            print(f"{n:>8} x {d:<4} nq={nq:<3} {metric:<12} hive {row['hive_gpu_ms']:9.2f} ms"
                  f"   faiss {row.get('faiss_ms', float('nan')):9.2f} ms   numpy {row['numpy_ms']:9.2f} ms"
                  f"   x{row['speedup_vs_best_peer']:.2f} vs best   recall {row['recall_vs_numpy']:.3f}"
                  f"/{row.get('recall_vs_faiss', float('nan')):.3f}   load {row['load_after'][0]}",
                  flush=True)
        store.close()
        del index
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", default="100000x768,1000000x128")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu.json"))
    args = ap.parse_args()
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss-cpu is not installed: comparing against NumPy only", file=sys.stderr)

    ctx = hive_gpu.create_context("cpu")
    info = ctx.device_info()
    meta = {
        "machine": platform.machine(), "cpu": info.name, "isa": info.compute_capability,
        "threads": info.max_threads_per_block, "cores": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", None), "hive_gpu": hive_gpu.__version__,
        "repeats": args.repeats, "load_before": load(),
    }
    print(f"{info.name}, {info.compute_capability}, {os.cpu_count()} cores, load {meta['load_before']}")
    rng = np.random.default_rng(12345)
    rows = []
    for case in args.cases.split(","):
        n, d = (int(v) for v in case.lower().split("x"))
        rows += run_case(n, d, args.repeats, rng, faiss)
    meta["load_after"] = load()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    bad = [r for r in rows if min(r["recall_vs_numpy"], r.get("recall_vs_faiss", 1.0)) < 1.0]
    for r in bad:
        print(f"RESULTS DIFFER: {r['n']}x{r['d']} nq={r['nq']} {r['metric']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
