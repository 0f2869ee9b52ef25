"""Per-call and per-row host costs through the Python API, on the CPU backend: the latency of
one query against a small store (where the call, not the scan, dominates), the same with a
filter passing every row and one passing 1% of them, and bulk adds of 1M rows with string ids
from NumPy, with and without metadata.

    python benchmarks/bench_hotpath.py [--small 1000] [--dim 128] [--bulk 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

import hive_gpu
from _timing import median_wall


def small_store(n: int, dim: int, rng: np.random.Generator) -> dict[str, float]:
    ctx = hive_gpu.create_context("cpu")
    s = ctx.create_storage(dim, "cosine")
    s.add_vectors([f"id{i}" for i in range(n)], rng.standard_normal((n, dim), dtype=np.float32),
                  [{"g": "b" if i % 100 == 0 else "a"} for i in range(n)])
    q = rng.standard_normal(dim, dtype=np.float32)
    one_pct = hive_gpu.Filter({"g": "b"})
    everything = hive_gpu.Filter({"g": {"$in": ["a", "b"]}})
    runs, warm = 3000, 300
    out = {
        "search_us": median_wall(lambda: s.search(q, 10), runs, warm),
        "search_batch_1_us": median_wall(lambda: s.search_batch(q[None], 10), runs, warm),
        "search_filter_all_us": median_wall(lambda: s.search(q, 10, filter=everything), runs, warm),
        "search_filter_1pct_us": median_wall(lambda: s.search(q, 10, filter=one_pct), runs, warm),
    }
    s.close()
    return {k: v * 1e6 for k, v in out.items()}


def bulk_add(n: int, dim: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    ctx = hive_gpu.create_context("cpu")
    X = rng.standard_normal((n, dim), dtype=np.float32)
    ids = [f"id{i}" for i in range(n)]
    md = [{"g": "b" if i % 100 == 0 else "a"} for i in range(n)]
    res: dict[str, list[float]] = {"add_s": [], "add_metadata_s": []}
    gc.disable()
    try:
        for _ in range(repeats):
            for key, meta in (("add_s", None), ("add_metadata_s", md)):
                s = ctx.create_storage(dim, "cosine")
                t0 = time.perf_counter()
                s.add_vectors(ids, X, meta)
                res[key].append(time.perf_counter() - t0)
                s.close()
                del s
    finally:
        gc.enable()
    out = {k: statistics.median(v) for k, v in res.items()}
    out["add_GBps"] = X.nbytes / out["add_s"] / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--bulk", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    small = small_store(a.small, a.dim, rng)
    print(f"small store {a.small} x {a.dim}, cosine, k=10 (median us):")
    for k, v in small.items():
        print(f"  {k:24s} {v:8.2f}")
    if a.bulk:
        bulk = bulk_add(a.bulk, a.dim, a.repeats, rng)
        print(f"bulk add {a.bulk} x {a.dim} with str ids from NumPy (median of {a.repeats}):")
        print(f"  without metadata         {bulk['add_s'] * 1e3:8.1f} ms ({bulk['add_GBps']:.2f} GB/s)")
        print(f"  with metadata            {bulk['add_metadata_s'] * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
