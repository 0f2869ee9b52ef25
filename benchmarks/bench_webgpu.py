"""WebGPU backend at scale: bulk add, one query and a batch of queries against N x D random
rows (default 1M x 768, 3 GB), k=10, median wall time of timed runs after warm-up, side by
side with the CUDA backend in the same process when it is compiled in and available.

    python benchmarks/bench_webgpu.py [--n 1000000] [--dim 768] [--batch 1024] [--dtype float16] [--out DIR]

--dtype stores the rows as float32 (default), float16 or bfloat16 (2 bytes an element; the
scoring kernels read float16 as f16 where the adapter has shader-f16, else unpack u32 pairs:
set HIVE_GPU_WEBGPU_NO_F16=1 to time that path).

A single query must read every row once, so its floor is bytes / memory bandwidth; the
report gives the achieved GB/s and its fraction of the device-to-device copy rate measured
through PyTorch when CUDA is there (else of --peak-gbps, when given). The run fails when
WebGPU's ids disagree with CUDA's beyond near-ties. Writes DIR/webgpu_<device>.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time

import numpy as np

import hive_gpu
from _timing import median_wall


def copy_bandwidth_gbps() -> float | None:
    """Device-to-device copy rate (bytes read + written) through PyTorch, if CUDA is here."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / 10
    del a, b
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / dt / 1e9


def create_storage(ctx, dim, metric, dtype):
    """A store of `dtype` (the core's create_storage takes it by name where the wrapper does not)."""
    if "dtype" in inspect.signature(ctx.create_storage).parameters:
        return ctx.create_storage(dim, metric, dtype=dtype)
    from hive_gpu._storage import _METRIC_TO_CORE, VectorStorage

    core_metric = _METRIC_TO_CORE[hive_gpu.GpuDistanceMetric.parse(metric)]
    return VectorStorage(ctx._ctx.create_storage(dim, core_metric, dtype))


def run_backend(name, X, ids, Q1, QB, k, metric, runs, dtype) -> dict:
    ctx = hive_gpu.create_context(name)
    store = create_storage(ctx, X.shape[1], metric, dtype)
    t0 = time.perf_counter()
    step = 100_000
    for i in range(0, len(X), step):
        store.add_vectors(ids[i : i + step], X[i : i + step])
    add_s = time.perf_counter() - t0
    single = median_wall(lambda: store.search_batch(Q1, k), runs, warmup=2)
    batch = median_wall(lambda: store.search_batch(QB, k), max(3, runs // 5), warmup=1)
    scores, got = store.search_batch(QB[:64], k)
    info = ctx.device_info()
    out = {
        "backend": name,
        "device": info.name,
        "api": info.backend,
        "driver": info.driver_version,
        "capability": info.compute_capability,
        "dtype": dtype,
        "memory_bytes": store.memory_usage(),
        "add_seconds": add_s,
        "add_rows_per_s": len(X) / add_s,
        "single_query_ms": single * 1e3,
        "single_query_qps": 1.0 / single,
        "batch_ms": batch * 1e3,
        "batch_qps": len(QB) / batch,
    }
    store.close()
    return out, scores, np.asarray(got)


def agreement(ref_scores, ref_ids, scores, ids) -> float:
    """Fraction of ranks where the ids agree or the scores tie within float32 rounding."""
    ok = (ref_ids == ids) | np.isclose(ref_scores, scores, rtol=1e-5, atol=1e-5)
    return float(ok.mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--metric", default="cosine")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--peak-gbps", type=float, default=None, help="memory bandwidth to compare with")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rng = np.random.default_rng(0)
    X = np.empty((args.n, args.dim), np.float32)
    for i in range(0, args.n, 100_000):
        X[i : i + 100_000] = rng.standard_normal((min(100_000, args.n - i), args.dim), dtype=np.float32)
    ids = [f"v{i}" for i in range(args.n)]
    Q1 = rng.standard_normal((1, args.dim), dtype=np.float32)
    QB = rng.standard_normal((args.batch, args.dim), dtype=np.float32)

    peak = copy_bandwidth_gbps() or args.peak_gbps
    results = {}
    answers = {}
    for name in ("webgpu", "cuda"):
        if name not in hive_gpu.available_backends():
            print(f"{name}: not available ({hive_gpu.create_context.__globals__['_core'].backend_unavailable_reason(name)})")
            continue
        try:
            r, s, i = run_backend(name, X, ids, Q1, QB, args.k, args.metric, args.runs, args.dtype)
        except hive_gpu.errors.InvalidDtypeError as e:
            print(f"{name}: does not store {args.dtype} ({e})")
            continue
        results[name] = r
        answers[name] = (s, i)
        print(json.dumps(r), flush=True)

    w = results.get("webgpu")
    report = {
        "case": {"n": args.n, "dim": args.dim, "k": args.k, "batch": args.batch, "metric": args.metric,
                 "dtype": args.dtype},
        "host": platform.node(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "copy_bandwidth_gbps": peak,
        "results": results,
    }
    if w:
        elem = 4 if args.dtype == "float32" else 2
        row_bytes = ((args.dim + 3) // 4) * 4 * elem + 8  # padded row + norm + ordinal
        gbps = args.n * row_bytes / (w["single_query_ms"] / 1e3) / 1e9
        report["webgpu_single_query_gbps"] = gbps
        if peak:
            report["webgpu_bandwidth_fraction"] = gbps / peak
    if w and "cuda" in results:
        c = results["cuda"]
        report["webgpu_over_cuda_single_qps"] = w["single_query_qps"] / c["single_query_qps"]
        report["webgpu_over_cuda_batch_qps"] = w["batch_qps"] / c["batch_qps"]
        report["id_agreement_with_cuda"] = agreement(*answers["cuda"], *answers["webgpu"])
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    tag = (w["device"] if w else "none").split("(")[0].strip().replace(" ", "_").lower()
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    with open(os.path.join(args.out, f"webgpu_{tag}{suffix}.json"), "w") as f:
        json.dump(report, f, indent=1)
    if "id_agreement_with_cuda" in report and report["id_agreement_with_cuda"] < 0.99:
        raise SystemExit(f"WebGPU and CUDA disagree on {1 - report['id_agreement_with_cuda']:.1%} of ranks")


if __name__ == "__main__":
    main()
