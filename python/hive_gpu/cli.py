"""The ``hive-gpu`` command: ``info`` lists the backends and devices (and why a backend is
missing), ``inspect`` checks a saved store, ``bench`` times a synthetic workload on the best
available backend."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np

from . import __version__, _core
from ._arrays import STORAGE_DTYPES
from ._contexts import _BY_NAME, create_context
from ._storage import _METRIC_FROM_CORE
from .errors import CorruptFileError, HiveGpuError, InvalidDtypeError

# Bytes per stored element of each dtype, and the per-row data engines keep besides the row
# (an ordinal, a norm, alignment slack), estimated high so that the rows counted do fit.
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_ROW_OVERHEAD_BYTES = 16


def _stored_dtypes(ctx) -> list[str]:
    """The storage dtypes this context's backend stores (asked by making a tiny store)."""
    stored = []
    for dtype in STORAGE_DTYPES:
        try:
            ctx.create_storage(1, "cosine", dtype).close()
        except InvalidDtypeError:
            continue
        stored.append(dtype)
    return stored


def _backends_report(dim: int | None = None) -> list[dict]:
    """Every known backend: compiled ones first (fastest first), then those left out of this
    build, each with its reason; per device the storage dtypes it stores and, with ``dim``,
    how many rows of that dimension fit in its free memory in each dtype."""
    compiled = list(_core.compiled_backends())
    report = []
    for name in compiled + [b for b in _BY_NAME if b not in compiled]:
        reason = _core.backend_unavailable_reason(name)
        entry: dict = {"backend": name, "compiled": name in compiled, "available": not reason,
                       "reason": reason, "devices": []}
        if not reason:
            for dev in range(_core.device_count(name)):
                try:
                    ctx = _BY_NAME[name](dev)
                    info = asdict(ctx.device_info())
                    info["dtypes"] = _stored_dtypes(ctx)
                except HiveGpuError as e:
                    entry["devices"].append({"device_id": dev, "error": str(e)})
                    continue
                if dim is not None:
                    known = "vram_available" not in info.get("unknown", ())
                    info["row_bytes"] = {t: dim * b + _ROW_OVERHEAD_BYTES for t, b in _DTYPE_BYTES.items()}
                    info["rows_that_fit"] = {
                        t: info["vram_available"] // row if known else None for t, row in info["row_bytes"].items()
                    }
                entry["devices"].append(info)
        report.append(entry)
    return report


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    report = _backends_report(args.dim)
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
            print(f"  {'dtypes':22} {', '.join(d['dtypes']) or 'none'}")
            if args.dim is not None:
                for dtype, fit in d["rows_that_fit"].items():
                    label = f"rows of dim {args.dim} ({dtype})"
                    shown = "unknown" if fit is None else f"{fit:,}"
                    note = "" if dtype in d["dtypes"] else " (this backend does not store it yet)"
                    print(f"  {label:22} {shown} fit in the free memory, "
                          f"{d['row_bytes'][dtype]:,} bytes a row{note}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    path = os.fspath(args.file)
    try:
        info = _core.inspect_file(path)
    except CorruptFileError as e:
        if args.json:
            print(json.dumps({"file": path, "ok": False, "error": str(e)}, indent=2))
        else:
            print(f"{path}: corrupt: {e}")
        return 1
    info["metric"] = _METRIC_FROM_CORE[info["metric"]].value
    if args.json:
        print(json.dumps({"file": path, "ok": True, "checksums_verified": True, **info}, indent=2))
        return 0
    rows = [
        ("file", path),
        ("size", f"{info['file_bytes']:,} bytes"),
        ("format version", info["format_version"]),
        ("count", f"{info['count']:,}"),
        ("dimension", info["dimension"]),
        ("metric", info["metric"]),
        ("dtype", info["dtype"]),
        ("next ordinal", info["next_ordinal"]),
        ("checksums", "verified (header and every section; every row finite)"),
    ]
    for key, val in rows:
        print(f"{key:15} {val}")
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
    store = ctx.create_storage(d, "cosine")  # refuses a dimension out of range before any allocation
    X = rng.standard_normal((n, d), dtype=np.float32)
    ids = [f"v{i}" for i in range(n)]
    Q = rng.standard_normal((args.queries, d), dtype=np.float32)

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


def _check_bench_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse sizes the benchmark cannot run with: argparse prints the message and usage and
    exits with status 2."""
    for name in ("n", "dim", "queries", "k", "repeats"):
        value = getattr(args, name)
        if value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    if args.k > args.n:
        p.error(f"--k ({args.k}) must not exceed --n ({args.n}): the recall check needs k stored vectors")


def _positive_dim(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hive-gpu`` command and its subcommands."""
    p = argparse.ArgumentParser(prog="hive-gpu", description=__doc__)
    p.add_argument("--version", action="version", version=f"hive_gpu {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="list the backends, their devices, and why a backend is unavailable",
                        description="List every backend: its devices when usable, else why not (left "
                                    "out of the build, no driver, a missing library).")
    pi.add_argument("--json", action="store_true", help="machine-readable output")
    pi.add_argument("--dim", type=_positive_dim, default=None, metavar="D",
                    help="also show, per device, how many vectors of dimension D fit in its free memory in "
                         "each storage dtype: a row takes D * 4 bytes (float32) or D * 2 (float16, "
                         "bfloat16) plus an estimated 16 bytes the engine keeps per row (ordinal, "
                         "norm, slack)")
    pi.set_defaults(fn=cmd_info)
    ps = sub.add_parser("inspect", help="check a saved store and print its header",
                        description="Read every byte of a file written by save() as a load would "
                                    "(checksums, ids, metadata, every row) without putting it on a "
                                    "device; exit status 1 when it is corrupt.")
    ps.add_argument("file", help="path of the store file")
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    ps.set_defaults(fn=cmd_inspect)
    pb = sub.add_parser("bench", help="quick synthetic benchmark on the best available backend",
                        description="Time add_vectors, search and search_batch on random float32 "
                                    "vectors (cosine) and check recall against NumPy in float64.")
    pb.add_argument("--backend", default="auto", help="backend to run on: auto, cpu, cuda, rocm, metal or webgpu (default: auto)")
    pb.add_argument("--n", type=int, default=100_000, help="vectors in the store (default: 100000)")
    pb.add_argument("--dim", type=int, default=256, help="dimension of the vectors (default: 256)")
    pb.add_argument("--queries", type=int, default=64, help="queries per batch (default: 64)")
    pb.add_argument("--k", type=int, default=10, help="neighbours per query, at most --n (default: 10)")
    pb.add_argument("--repeats", type=int, default=20, help="timed runs per operation; the median is reported (default: 20)")
    pb.set_defaults(fn=cmd_bench, check=lambda args: _check_bench_args(pb, args))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hive-gpu`` command with ``argv`` (default: sys.argv[1:]); returns the exit
    status: 0 success, 1 a failed check (bench recall, a corrupt file), 2 bad usage or an
    error."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "check"):
        args.check(args)
    try:
        return args.fn(args)
    except HiveGpuError as e:
        print(f"hive-gpu: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("hive-gpu: not enough host memory for this run", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
