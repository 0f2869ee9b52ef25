"""ShardedStorage and RayStorage against one store over the same rows.

    python benchmarks/bench_sharded.py [--rows 1000000 --dim 128 --queries 64 --k 10]
    python benchmarks/bench_sharded.py --ray [--ray-batch 256]
    python benchmarks/bench_sharded.py --backend cuda --shards 2 [--rows 1000000 --dim 768 --queries 1024]

CPU (the default): one store whose context has every core, against a ShardedStorage of
``--shards`` CPU contexts that share the same cores (cores / shards threads each), so that
the difference is the cost of sharding, not of more threads. Times a batch of ``--queries``
queries and single queries, median of ``--repeats``, the contenders alternating in blocks.

``--ray``: RayStorage (``--shards`` CPU actors, one thread each) against one local store:
queries per second for batches of ``--ray-batch``.

``--backend cuda``: ``--shards`` shards on GPU 0 against one store on GPU 0 (results must be
equal); with several GPUs also one shard per GPU holding ``--rows`` rows each, against one
GPU holding ``--rows``: batch throughput and single-query latency.

Every sharded answer is compared with the single store's (ids and distance bits); the run
fails on any difference. Results go to benchmarks/results/sharded_<backend>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import hive_gpu
from hive_gpu import ShardedStorage
from hive_gpu._sharded import cpu_contexts


def race(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each contender; blocks of calls in order, then in reverse order, so
    that drifting load from the other users of the machine hits all of them alike."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    half = max(1, (repeats + 1) // 2)
    for order in (list(fns), list(fns)[::-1]):
        for name in order:
            fns[name]()  # warm
            for _ in range(half):
                t = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def check_equal(one, other, queries: np.ndarray, k: int, singles: int = 8) -> None:
    s1, i1 = one.search_batch(queries, k)
    s2, i2 = other.search_batch(queries, k)
    if not (np.array_equal(i1, i2) and np.array_equal(s1.view(np.uint32), s2.view(np.uint32))):
        sys.exit(f"FAIL: {type(other).__name__} batch answers differ from one store's")
    for q in queries[:singles]:
        if one.search(q, k) != other.search(q, k):
            sys.exit(f"FAIL: {type(other).__name__} single answers differ from one store's")


def data(rows: int, dim: int, nq: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    return [f"v{i}" for i in range(rows)], x, q


def map_bytes_per_id(n: int = 200_000) -> float:
    """What the id -> (shard, sequence) map of a sharded store costs per id, id included."""
    tracemalloc.start()
    ids = [f"doc-{i:09d}" for i in range(n)]  # 13-character ids
    where = dict(zip(ids, ((j << 16) | (j % 3) for j in range(n))))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size -= sys.getsizeof(ids)  # the list is the caller's, not the map's
    del where
    return size / n


def bench_cpu(a: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    ids, x, q = data(a.rows, a.dim, a.queries)
    one = cpu_contexts(1, threads=cores)[0].create_storage(a.dim, a.metric)
    one.add_vectors(ids, x)
    per = max(1, cores // a.shards)
    sharded = ShardedStorage(cpu_contexts(a.shards, threads=per), a.dim, a.metric)
    sharded.add_vectors(ids, x)
    check_equal(one, sharded, q, a.k)
    t = race(
        {
            "one_batch": lambda: one.search_batch(q, a.k),
            "sharded_batch": lambda: sharded.search_batch(q, a.k),
        },
        a.repeats,
    )
    singles = q[:8]
    t1 = race(
        {
            "one_single": lambda: [one.search(v, a.k) for v in singles],
            "sharded_single": lambda: [sharded.search(v, a.k) for v in singles],
        },
        a.repeats,
    )
    out = {
        "threads": {"one": cores, "per_shard": per},
        "batch_ms": {"one": t["one_batch"] * 1e3, "sharded": t["sharded_batch"] * 1e3},
        "batch_overhead": t["sharded_batch"] / t["one_batch"] - 1,
        "single_ms": {"one": t1["one_single"] / len(singles) * 1e3, "sharded": t1["sharded_single"] / len(singles) * 1e3},
        "single_overhead": t1["sharded_single"] / t1["one_single"] - 1,
        "map_bytes_per_id": map_bytes_per_id(),
    }
    print(json.dumps(out, indent=1))
    return out


def bench_ray(a: argparse.Namespace) -> dict:
    import ray

    from hive_gpu.distributed import RayStorage

    cores = os.cpu_count() or 1
    ids, x, q = data(a.rows, a.dim, a.ray_batch)
    one = cpu_contexts(1, threads=cores)[0].create_storage(a.dim, a.metric)
    one.add_vectors(ids, x)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    env = {"env_vars": {"HIVE_GPU_CPU_THREADS": str(max(1, cores // a.shards))}}
    store = RayStorage(
        a.dim, a.metric, shards=a.shards, backend="cpu", cpus_per_shard=cores / a.shards, actor_options={"runtime_env": env}
    )
    t0 = time.perf_counter()
    store.add_vectors(ids, x)
    add_s = time.perf_counter() - t0
    check_equal(one, store, q, a.k, singles=2)
    t = race({"one": lambda: one.search_batch(q, a.k), "ray": lambda: store.search_batch(q, a.k)}, a.repeats)
    out = {
        "shards": a.shards,
        "batch": a.ray_batch,
        "queries_per_s": {"one": a.ray_batch / t["one"], "ray": a.ray_batch / t["ray"]},
        "ray_over_one": t["one"] / t["ray"],
        "ray_add_s": add_s,
    }
    store.close()
    ray.shutdown()
    print(json.dumps(out, indent=1))
    return out


def bench_gpu(a: argparse.Namespace) -> dict:
    ctx_class = type(hive_gpu.create_context(a.backend))
    gpus = ctx_class.device_count()
    ids, x, q = data(a.rows, a.dim, a.queries)
    out: dict = {"gpus": gpus, "device": hive_gpu.create_context(a.backend).device_info().name}
    one = hive_gpu.create_context(a.backend, 0).create_storage(a.dim, a.metric)
    one.add_vectors(ids, x)
    same_gpu = ShardedStorage([hive_gpu.create_context(a.backend, 0) for _ in range(a.shards)], a.dim, a.metric)
    same_gpu.add_vectors(ids, x)
    check_equal(one, same_gpu, q, a.k)
    out["same_gpu_equal"] = True
    single = q[0]
    t = race(
        {
            "one_batch": lambda: one.search_batch(q, a.k),
            "same_gpu_batch": lambda: same_gpu.search_batch(q, a.k),
            "one_single": lambda: one.search(single, a.k),
            "same_gpu_single": lambda: same_gpu.search(single, a.k),
        },
        a.repeats,
    )
    out["same_gpu_ms"] = {n: v * 1e3 for n, v in t.items()}
    same_gpu.close()
    if gpus >= 2:
        # One shard per GPU, --rows each: twice the rows on two GPUs, against one GPU's --rows.
        all_ids, all_x, _ = data(a.rows * gpus, a.dim, 0, seed=1)
        per_gpu = ShardedStorage([hive_gpu.create_context(a.backend, g) for g in range(gpus)], a.dim, a.metric)
        per_gpu.add_vectors(all_ids, all_x)
        big = hive_gpu.create_context(a.backend, 0).create_storage(a.dim, a.metric)
        try:
            big.add_vectors(all_ids, all_x)
            check_equal(big, per_gpu, q, a.k)
            out["per_gpu_equal"] = True
        except hive_gpu.OutOfMemoryError:
            out["per_gpu_equal"] = "not checked: the rows do not fit one GPU"
        big.close()
        t = race(
            {
                "one_gpu_batch": lambda: one.search_batch(q, a.k),
                "all_gpus_batch": lambda: per_gpu.search_batch(q, a.k),
                "one_gpu_single": lambda: one.search(single, a.k),
                "all_gpus_single": lambda: per_gpu.search(single, a.k),
            },
            a.repeats,
        )
        out["per_gpu_ms"] = {n: v * 1e3 for n, v in t.items()}
        out["rows"] = {"one_gpu": a.rows, "all_gpus": a.rows * gpus}
        out["batch_throughput_ratio"] = gpus * t["one_gpu_batch"] / t["all_gpus_batch"]
        out["single_latency_ratio"] = t["all_gpus_single"] / t["one_gpu_single"]
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--rows", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--metric", default="dot_product")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--ray", action="store_true", help="RayStorage throughput instead")
    p.add_argument("--ray-batch", type=int, default=256)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    gpu = a.backend != "cpu"
    a.rows = a.rows or 1_000_000
    a.dim = a.dim or (768 if gpu else 128)
    a.queries = a.queries or (1024 if gpu else 64)
    name = "ray" if a.ray else a.backend
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load": [round(v, 2) for v in os.getloadavg()],
        "rows": a.rows,
        "dim": a.dim,
        "k": a.k,
        "metric": a.metric,
        "shards": a.shards,
        "queries": a.queries,
    }
    result["results"] = bench_ray(a) if a.ray else bench_gpu(a) if gpu else bench_cpu(a)
    out = a.out or Path(__file__).parent / "results" / f"sharded_{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
