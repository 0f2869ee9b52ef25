"""Id bookkeeping cost on the CPU backend: bulk add of 1M string ids with tiny rows (the
floats cost little, so the figure is mostly the id index), the destructor, and a bulk remove.

    python benchmarks/bench_ids.py [--n 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

import hive_gpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    ctx = hive_gpu.create_context("cpu")
    ids = [f"vec-{i}" for i in range(a.n)]
    X = np.random.default_rng(0).standard_normal((a.n, a.dim)).astype(np.float32)
    gone = ids[::2]
    add, free, remove = [], [], []
    gc.disable()
    for _ in range(a.repeat):
        s = ctx.create_storage(a.dim, "dot")
        t = time.perf_counter()
        s.add_vectors(ids, X)
        add.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert s.remove_vectors(gone) == len(gone)
        remove.append(time.perf_counter() - t)
        s.add_vectors(gone, X[::2])
        t = time.perf_counter()
        del s
        free.append(time.perf_counter() - t)
    gc.enable()
    med = lambda v: f"{statistics.median(v) * 1e3:7.1f} ms  (min {min(v) * 1e3:.1f}, max {max(v) * 1e3:.1f})"
    print(f"n={a.n} dim={a.dim} repeat={a.repeat}")
    print(f"add_vectors          {med(add)}")
    print(f"remove half          {med(remove)}")
    print(f"del store            {med(free)}")


if __name__ == "__main__":
    main()
