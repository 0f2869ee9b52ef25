"""Wall-clock timing shared by the benchmark scripts (imported as ``_timing``: each script runs
as ``python benchmarks/bench_x.py``, which puts this folder first on sys.path)."""

from __future__ import annotations

import statistics
import time


def median_wall(fn, runs: int, warmup: int = 3) -> float:
    """Median wall seconds of ``runs`` calls of fn, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)
