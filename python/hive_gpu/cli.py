"""The ``hive-gpu`` command: ``info`` lists the backends and devices, ``bench`` times a
synthetic workload on the best available backend."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np

from . import __version__, _core
from ._contexts import _BY_NAME, create_context
from .errors import HiveGpuError


def _backends_report() -> list[dict]:
    report = []
    for name in _core.compiled_backends():
        reason = _core.backend_unavailable_reason(name)
        entry: dict = {"backend": name, "available": not reason, "reason": reason, "devices": []}
        if not reason:
            for dev in range(_core.device_count(name)):
                try:
                    entry["devices"].append(asdict(_BY_NAME[name](dev).device_info()))
                except HiveGpuError as e:
                    entry["devices"].append({"device_id": dev, "error": str(e)})
        report.append(entry)
    return report


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    report = _backends_report()
    if args.json:
        print(json.dumps({"version": __version__, "backends": report}, indent=2))
        return 0
    print(f"hive_gpu {__version__}")
    for b in report:
        if not b["available"]:
            print(f"\n[{b['backend']}] unavailable: {b['reason']}")
            continue
        for d in b["devices"]:
            print(f"\n[{b['backend']}] device {d.get('device_id', '?')}")
            if "error" in d:
                print(f"  error: {d['error']}")
                continue
            unknown = set(d.get("unknown", ()))
            for key in ("name", "backend", "vram_total", "vram_available", "vram_used", "driver_version",
                        "compute_capability", "max_threads_per_block", "max_shared_memory", "pci_bus_id"):
                val = d[key]
                if key in unknown:
                    val = "unknown"
                elif key.startswith("vram") or key == "max_shared_memory":
                    val = _fmt_bytes(int(val))
                print(f"  {key:22} {val}")
    return 0


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.tty = sys.stderr.isatty()

    def step(self, n: int = 1) -> None:
        self.done += n
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        line = f"\r{self.label:<28} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        if self.tty or self.done == self.total:
            sys.stderr.write(line + ("\n" if self.done == self.total else ""))
            sys.stderr.flush()


def _median_ms(fn: Callable[[], object], repeats: int, progress: _Progress) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        progress.step()
    return float(np.median(times))


def cmd_bench(args: argparse.Namespace) -> int:
    ctx = create_context(args.backend)
    info = ctx.device_info()
    rng = np.random.default_rng(0)
    n, d, k = args.n, args.dim, args.k
    print(f"hive_gpu {__version__} bench on {ctx.backend}: {info.name}")
    print(f"{n} x {d} float32 vectors, cosine, k={k}, median of {args.repeats} runs\n")
    X = rng.standard_normal((n, d), dtype=np.float32)
    ids = [f"v{i}" for i in range(n)]
    Q = rng.standard_normal((args.queries, d), dtype=np.float32)
    store = ctx.create_storage(d, "cosine")

    bar = _Progress(1, "adding vectors")
    t0 = time.perf_counter()
    store.add_vectors(ids, X)
    add_s = time.perf_counter() - t0
    bar.step()

    # Warm up once, then time.
    store.search(Q[0], k)
    store.search_batch(Q, k)
    single = _median_ms(lambda: store.search(Q[0], k), args.repeats, _Progress(args.repeats, "single-query search"))
    batch = _median_ms(lambda: store.search_batch(Q, k), args.repeats, _Progress(args.repeats, f"{args.queries}-query batch"))

    # Correctness spot check against NumPy in float64.
    X64, q64 = X.astype(np.float64), Q[:4].astype(np.float64)
    ref = (q64 @ X64.T) / np.linalg.norm(X64, axis=1)[None, :]
    top = np.argsort(-ref, axis=1)[:, :k]
    _, got = store.search_batch(Q[:4], k)
    recall = np.mean([len({f"v{j}" for j in top[i]} & set(got[i])) / k for i in range(4)])

    rows = [
        ("add_vectors", f"{add_s * 1e3:.1f} ms", f"{n * d * 4 / add_s / 1e9:.2f} GB/s"),
        ("search (1 query)", f"{single:.3f} ms", f"{n * d * 4 / (single / 1e3) / 1e9:.1f} GB/s scanned"),
        (f"search_batch ({args.queries})", f"{batch:.3f} ms", f"{args.queries / (batch / 1e3):.0f} queries/s"),
        ("recall@k vs NumPy fp64", f"{recall:.3f}", ""),
    ]
    w = max(len(r[0]) for r in rows)
    print()
    print(f"{'operation':<{w}}  {'time':>12}  rate")
    print(f"{'-' * w}  {'-' * 12}  {'-' * 24}")
    for name, t, rate in rows:
        print(f"{name:<{w}}  {t:>12}  {rate}")
    return 0 if recall >= 0.99 else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hive-gpu", description=__doc__)
    p.add_argument("--version", action="version", version=f"hive_gpu {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="list compiled-in backends and their devices")
    pi.add_argument("--json", action="store_true", help="machine-readable output")
    pi.set_defaults(fn=cmd_info)
    pb = sub.add_parser("bench", help="quick synthetic benchmark on the best available backend")
    pb.add_argument("--backend", default="auto")
    pb.add_argument("--n", type=int, default=100_000, help="vectors in the store")
    pb.add_argument("--dim", type=int, default=256)
    pb.add_argument("--queries", type=int, default=64, help="queries per batch")
    pb.add_argument("--k", type=int, default=10)
    pb.add_argument("--repeats", type=int, default=20)
    pb.set_defaults(fn=cmd_bench)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except HiveGpuError as e:
        print(f"hive-gpu: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
