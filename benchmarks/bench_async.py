"""Serving throughput of search_async: many concurrent asyncio clients, one query each per request.

Each client awaits one search_async at a time (a closed loop, like a server answering one
request per query) for a fixed time. The same clients run twice: with the micro-batcher
(concurrent searches coalesced into one engine batch) and with it off (max_batch=1).
Reports throughput and p50/p99 latency per mode, plus one search_batch of `clients` queries
as the engine's own ceiling. Writes JSON to benchmarks/results/.

    python benchmarks/bench_async.py --backend cpu --n 100000 --dim 128
    python benchmarks/bench_async.py --backend cuda --n 1000000 --dim 768
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import hive_gpu


def build_store(ctx, n: int, dim: int, metric: str, seed: int):
    store = ctx.create_storage(dim, metric)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n, (1 << 26) // dim))  # 256 MiB of float32 per add
    for first in range(0, n, chunk):
        m = min(chunk, n - first)
        rows = rng.standard_normal((m, dim), dtype=np.float32)
        store.add_vectors([f"v{i}" for i in range(first, first + m)], rows)
    return store


async def serve(store, queries: np.ndarray, clients: int, seconds: float, k: int) -> list[float]:
    """Latencies (s) of every request completed within `seconds` by `clients` closed-loop clients."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(c: int) -> None:
        i = c
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            await store.search_async(queries[i % len(queries)], k)
            latencies.append(time.perf_counter() - t0)
            i += clients

    await asyncio.gather(*(client(c) for c in range(clients)))
    return latencies


def run_mode(store, queries, args, max_batch: int) -> dict:
    store.set_batching(max_wait_us=args.max_wait_us, max_batch=max_batch)
    # Warm-up: threads, caches, device pools.
    asyncio.run(serve(store, queries, args.clients, args.warmup, args.k))
    before = store.async_stats()
    t0 = time.perf_counter()
    lat = asyncio.run(serve(store, queries, args.clients, args.seconds, args.k))
    wall = time.perf_counter() - t0
    after = store.async_stats()
    lat_ms = np.array(lat) * 1e3
    searches = after.searches - before.searches
    batches = after.search_batches - before.search_batches
    return {
        "max_batch": max_batch,
        "max_wait_us": args.max_wait_us,
        "requests": len(lat),
        "wall_s": round(wall, 3),
        "throughput_qps": round(len(lat) / wall, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(lat_ms, 50)), 3),
            "p90": round(float(np.percentile(lat_ms, 90)), 3),
            "p99": round(float(np.percentile(lat_ms, 99)), 3),
            "max": round(float(lat_ms.max()), 3),
        },
        "engine_batches": batches,
        "mean_batch": round(searches / batches, 1) if batches else 0.0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cpu", help="cpu, cuda, rocm, metal, webgpu or auto")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--n", type=int, default=100_000, help="vectors in the store")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--metric", default="cosine")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per mode")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per mode")
    p.add_argument("--max-wait-us", type=float, default=200.0)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/async_<backend>_<n>x<dim>.json)")
    args = p.parse_args()

    ctx = hive_gpu.create_context(args.backend, args.device)
    info = ctx.device_info()
    print(f"{ctx.backend}: {info.name}; building {args.n} x {args.dim} ({args.metric})", flush=True)
    t0 = time.perf_counter()
    store = build_store(ctx, args.n, args.dim, args.metric, args.seed)
    print(f"  built in {time.perf_counter() - t0:.1f} s", flush=True)
    queries = np.random.default_rng(args.seed + 1).standard_normal((4096, args.dim), dtype=np.float32)

    # The engine's ceiling: one batch of `clients` queries, no asyncio in the way.
    store.search_batch(queries[: args.clients], args.k)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        store.search_batch(queries[: args.clients], args.k)
    ceiling = args.clients * reps / (time.perf_counter() - t0)

    load_before = os.getloadavg()
    batched = run_mode(store, queries, args, args.max_batch)
    print(f"  batched:   {batched['throughput_qps']:>10.1f} q/s  p50 {batched['latency_ms']['p50']} ms  "
          f"p99 {batched['latency_ms']['p99']} ms  mean batch {batched['mean_batch']}", flush=True)
    unbatched = run_mode(store, queries, args, 1)
    print(f"  unbatched: {unbatched['throughput_qps']:>10.1f} q/s  p50 {unbatched['latency_ms']['p50']} ms  "
          f"p99 {unbatched['latency_ms']['p99']} ms", flush=True)
    speedup = batched["throughput_qps"] / unbatched["throughput_qps"] if unbatched["throughput_qps"] else float("inf")
    print(f"  speed-up {speedup:.2f}x; engine ceiling (search_batch of {args.clients}) {ceiling:.1f} q/s")

    result = {
        "benchmark": "async_serving",
        "backend": ctx.backend,
        "device": info.name,
        "n": args.n,
        "dim": args.dim,
        "metric": args.metric,
        "k": args.k,
        "clients": args.clients,
        "seconds_per_mode": args.seconds,
        "batched": batched,
        "unbatched": unbatched,
        "speedup": round(speedup, 2),
        "search_batch_ceiling_qps": round(ceiling, 1),
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "python": platform.python_version(),
            "hive_gpu": hive_gpu.__version__,
        },
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    out = args.out or Path(__file__).parent / "results" / f"async_{ctx.backend}_{args.n}x{args.dim}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
