"""Filtered search: hive_gpu unfiltered against filtered at 50%, 1% and 0.01% of rows
passing (an equality on a str key, the passing rows scattered at random), one query and a
batch of 64 with one shared filter, k = 10, Euclidean; plus the time to build the filter's
bitset (``count(filter)``: evaluate against the indexes, count the bits).

On the CPU the same searches run side by side with faiss-cpu (IndexFlatL2 with an
IDSelectorBatch and with an IDSelectorBitmap, through SearchParameters(sel=...)) and NumPy
(a masked scan: scores of every row, the others set to +inf; and a gather of the passing
rows, then their scores); ids are cross-checked against the peers (exact ties excepted).

    python benchmarks/bench_filter.py --backend cpu --n 1000000 --dim 128
    python benchmarks/bench_filter.py --backend cuda --n 10000000 --dim 128

Results go to benchmarks/results/filter_<backend>_<n>x<dim>.json; a table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import hive_gpu
from bench_cpu import agree, exact_scores, load, numpy_search, race
from _timing import median_wall

K = 10
BATCH = 64
# Share of rows passing each filter; "group" holds "a" (50%), "b" (1%), "c" (0.01%), "d".
SELECTIVITIES = {"50%": ("a", 0.5), "1%": ("b", 0.01), "0.01%": ("c", 0.0001)}


def build(backend: str, n: int, d: int, rng: np.random.Generator):
    """The store, its rows, and each row's group (rows added in chunks: 10M x 128 is 5 GB)."""
    ctx = hive_gpu.create_context(backend)
    store = ctx.create_storage(d, "euclidean")
    X = np.empty((n, d), np.float32)
    groups = np.full(n, "d", dtype=object)
    perm = rng.permutation(n)
    at = 0
    for name, (value, share) in SELECTIVITIES.items():
        m = max(K, int(round(n * share)))
        groups[perm[at : at + m]] = value
        at += m
    by_value = {v: {"group": v} for v in "abcd"}  # one dict per value: rows share them
    step = 1 << 20
    for a in range(0, n, step):
        b = min(n, a + step)
        X[a:b] = rng.standard_normal((b - a, d), dtype=np.float32)
        store.add_vectors([f"v{i}" for i in range(a, b)], X[a:b], [by_value[g] for g in groups[a:b]])
    return store, X, groups


def hive_ids(ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda s: int(s[1:]))(ids) if ids.size else ids.astype(np.int64)


def run(args) -> dict:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    store, X, groups = build(args.backend, args.n, args.dim, rng)
    build_s = time.perf_counter() - t0
    Q = rng.standard_normal((BATCH, args.dim), dtype=np.float32)
    peers = args.backend == "cpu" and not args.no_peers
    faiss = None
    if peers:
        import faiss  # noqa: PLC0415

        index = faiss.IndexFlatL2(args.dim)
        index.add(X)
        xnorm = (X.astype(np.float32) ** 2).sum(1)
    rows = []
    cases = [("none", None)] + [(name, {"group": value}) for name, (value, _) in SELECTIVITIES.items()]
    for name, f in cases:
        mask = np.ones(args.n, bool) if f is None else groups == f["group"]
        passing = np.flatnonzero(mask)
        compiled = None if f is None else hive_gpu.Filter(f)
        row = {"filter": name, "passing": int(mask.sum())}
        if compiled is not None:
            row["bitset_ms"] = 1e3 * median_wall(lambda: store.count(compiled), args.repeats)
            assert store.count(compiled) == len(passing)
        for nq in (1, BATCH):
            q = Q[:nq]
            fns = {"hive_gpu": lambda q=q: store.search_batch(q, K, filter=compiled)}
            if peers:
                if f is None:
                    fns["faiss"] = lambda q=q: index.search(q, K)
                else:
                    sel_batch = faiss.IDSelectorBatch(passing.astype(np.int64))
                    bitmap = np.packbits(mask, bitorder="little")
                    sel_bitmap = faiss.IDSelectorBitmap(args.n, faiss.swig_ptr(bitmap))
                    fns["faiss_batch"] = lambda q=q, s=sel_batch: index.search(q, K, params=faiss.SearchParameters(sel=s))
                    fns["faiss_bitmap"] = lambda q=q, s=sel_bitmap, b=bitmap: index.search(
                        q, K, params=faiss.SearchParameters(sel=s))

                    def masked(q=q, mask=mask):
                        S = xnorm[None, :] - 2.0 * (q @ X.T)
                        S[:, ~mask] = np.inf
                        part = np.argpartition(S, K - 1, axis=1)[:, :K]
                        return np.take_along_axis(part, np.argsort(np.take_along_axis(S, part, 1), 1), 1)

                    def gathered(q=q, passing=passing):
                        _, idx = numpy_search(X[passing], xnorm[passing], q, K)
                        return passing[idx]

                    fns["numpy_mask"] = masked
                    fns["numpy_gather"] = gathered
            res = race(fns, args.repeats) if peers else {"hive_gpu": (median_wall(fns["hive_gpu"], args.repeats), fns["hive_gpu"]())}
            row[f"nq{nq}"] = {name2: 1e3 * t for name2, (t, _) in res.items()}
            if peers:
                ours = hive_ids(res["hive_gpu"][1][1])
                exact = exact_scores(X[passing], q, "euclidean")
                pos = np.full(args.n, -1)
                pos[passing] = np.arange(len(passing))
                for name2, (_, out) in res.items():
                    if name2 == "hive_gpu":
                        continue
                    theirs = out[1] if isinstance(out, tuple) else out
                    rec = agree(pos[ours], None, pos[theirs], exact, False, 1e-5)
                    assert rec == 1.0, f"{name}/{nq}: {name2} disagrees with hive_gpu (recall {rec})"
            else:
                got = hive_ids(res["hive_gpu"][1][1])
                assert mask[got.ravel()].all(), f"{name}/{nq}: a hit outside the filter"
        rows.append(row)
    return {
        "backend": args.backend,
        "n": args.n,
        "dim": args.dim,
        "k": K,
        "metric": "euclidean",
        "build_s": build_s,
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load": load(),
        "device": store._s.context.device_info()["name"],
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [f"{result['backend']} {result['n']}x{result['dim']} k={K} euclidean ({result['device']}); ms, median"]
    for nq in (1, BATCH):
        names = sorted({name for r in result["rows"] for name in r[f"nq{nq}"]}, key=lambda s: (s != "hive_gpu", s))
        lines.append(f"  {nq} quer{'y' if nq == 1 else 'ies'}: " + " | ".join(f"{n:>12}" for n in names) + " | vs unfiltered")
        base = result["rows"][0][f"nq{nq}"]["hive_gpu"]
        for r in result["rows"]:
            cells = " | ".join(f"{r[f'nq{nq}'].get(n, float('nan')):12.3f}" for n in names)
            lines.append(f"  {r['filter']:>8} ({r['passing']:>9}): {cells} | {r[f'nq{nq}']['hive_gpu'] / base:6.2f}x")
    lines.append("  bitset build (count(filter)): " + ", ".join(
        f"{r['filter']} {r['bitset_ms']:.3f} ms" for r in result["rows"] if "bitset_ms" in r))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "webgpu", "rocm", "metal"])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-peers", action="store_true", help="skip faiss-cpu and NumPy on the CPU")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = run(args)
    out = args.out or Path(__file__).parent / "results" / f"filter_{args.backend}_{args.n}x{args.dim}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
