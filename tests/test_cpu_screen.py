"""The CPU engine's screen of one to three queries (csrc/cpu/screen.cpp): rows are screened
on the top 16 bits of each float under a proven error bound, and only the rows the bound
cannot rule out are scored exactly. Its answers must be bit for bit those of the full scan.

Every scenario is searched in subprocesses with HIVE_GPU_CPU_SCREEN=off (the full scan),
=always (the screen on every search of up to 3 queries, however small the store) and the
default, under each instruction set and several thread counts; the answers (ids and the
bits of every score) must be identical, and they are checked against the float64 oracle.
Where the module exposes _testing.cpu_screen_counts(), the tests also check which path ran: the
screen finishing on ordinary data, and giving up on near-ties everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hive_gpu
from hive_gpu import GpuDistanceMetric, _testing
from helpers import make_ids
from reference import METRICS, assert_matches

HAS_COUNTS = _testing.cpu_screen_counts() is not None
NEEDS_COUNTS = pytest.mark.skipif(
    not HAS_COUNTS, reason="hive_gpu._core._testing has no cpu_screen_counts() (csrc/python/testing.cpp)"
)

QUERY_COUNTS = (1, 2, 3)


def _gauss(rng, n, d, scale=1.0):
    return (rng.standard_normal((n, d)) * scale).astype(np.float32)


def _with_bits(hi_of: np.ndarray, lo_bits: np.ndarray) -> np.ndarray:
    """Floats with the top 16 bits of hi_of and the given bottom 16 bits."""
    hi = hi_of.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return (hi | lo_bits.astype(np.uint32)).view(np.float32)


def scenario(name: str):
    """(rows, queries, ks, churn) of one scenario; churn is a list of store edits to apply
    after adding the rows (every process builds the same data from the same seed)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    churn: list = []
    if name.startswith("gauss"):
        # Dimensions on and off the 32/16/8-element steps; row counts around the screen's
        # tiles (512 rows) and chunks (4096 rows and up).
        _, d, n = name.split("-")
        d, n = int(d), int(n)
        X = _gauss(rng, n, d)
        Q = _gauss(rng, 3, d)
        ks = sorted({1, 10, 256, n, n + 5})
    elif name == "dups":
        # Copies of three rows scattered through the store, the queries next to them: the
        # top k hold exact ties, which rank by insertion order.
        n, d = 20000, 64
        X = _gauss(rng, n, d)
        src = rng.choice(n, 3, replace=False)
        for s in src:
            X[rng.choice(n, 12, replace=False)] = X[s]
        Q = (X[src] + 0.05 * rng.standard_normal((3, d))).astype(np.float32)
        ks = [1, 10, 40]
    elif name == "hi-twins":
        # 1500 rows with the same top 16 bits in every element, differing only in the low
        # bits: the screen sees them as one row, the exact order comes from the low bits.
        n, d = 20000, 32
        X = _gauss(rng, n, d)
        base = rng.uniform(1.0, 2.0, d).astype(np.float32)
        twins = rng.choice(n, 1500, replace=False)
        X[twins] = _with_bits(np.broadcast_to(base, (1500, d)), rng.integers(0, 1 << 16, (1500, d)))
        Q = rng.uniform(1.0, 2.0, (3, d)).astype(np.float32)
        ks = [1, 10, 256]
    elif name == "worst-bits":
        # Rows whose low bits are all 0 or all 1 (the screen's error at its largest, of
        # either sign), in near-tied pairs, and all-positive queries so that the errors add up.
        n, d = 16384, 48
        X = np.abs(_gauss(rng, n, d)) + 0.5
        lo = np.where(rng.random((n, 1)) < 0.5, 0, 0xFFFF)
        X = _with_bits(X, np.broadcast_to(lo, (n, d)))
        X[1::2] = _with_bits(X[0::2], 0xFFFF - np.broadcast_to(lo[0::2], (n // 2, d)))
        Q = rng.uniform(0.5, 1.5, (3, d)).astype(np.float32)
        ks = [1, 10, 256]
    elif name == "magnitudes":
        # Norms from 1e-30 to 1e18 (the limit is about 9e18), subnormal elements, zero and
        # negative-zero rows; queries of ordinary, tiny and huge norm.
        n, d = 9000, 40
        scale = 10.0 ** rng.uniform(-30, 17.5, (n, 1))
        X = (rng.standard_normal((n, d)) * scale).astype(np.float32)
        X[rng.choice(n, 300, replace=False), : d // 2] = 1e-41  # subnormal halves
        X[rng.choice(n, 200, replace=False)] = rng.choice([1e-45, -1e-45, 0.0], (200, d))
        X[rng.choice(n, 20, replace=False)] = 0.0
        X[rng.choice(n, 20, replace=False)] = -0.0
        # Query 1's squared norm is below FLT_MIN: cosine treats it as the zero vector.
        Q = np.stack([rng.standard_normal(d), rng.standard_normal(d) * 1e-21, rng.standard_normal(d) * 1e17])
        Q = Q.astype(np.float32)
        ks = [1, 10, 256]
    elif name == "offset":
        # A large common offset: every score within a hair of every other, nothing separable
        # by the screen's bound. The screen must give up and the full scan answer.
        n, d = 30000, 64
        X = (100.0 + 0.01 * rng.standard_normal((n, d))).astype(np.float32)
        Q = (100.0 + 0.01 * rng.standard_normal((3, d))).astype(np.float32)
        ks = [1, 10, 256]
    elif name == "clusters":
        # Eight tight clusters of near-duplicates; the queries sit on cluster centres.
        n, d = 30000, 48
        centres = _gauss(rng, 8, d)
        X = (centres[rng.integers(0, 8, n)] + 1e-5 * rng.standard_normal((n, d))).astype(np.float32)
        Q = (centres[:3] + 1e-6 * rng.standard_normal((3, d))).astype(np.float32)
        ks = [1, 10, 256]
    elif name == "churn":
        # Swap-removes move the last rows into the holes, updates rewrite rows in place,
        # then more rows arrive: slots no longer follow insertion order.
        n, d = 20000, 24
        X = _gauss(rng, n, d)
        Q = _gauss(rng, 3, d)
        gone = rng.choice(n, 3000, replace=False)
        upd = rng.choice(np.setdiff1d(np.arange(n), gone), 500, replace=False)
        churn = [
            ("remove", [f"v{i}" for i in gone]),
            ("update", [(f"v{i}", _gauss(rng, 1, d)[0]) for i in upd]),
            ("add", ([f"w{i}" for i in range(1000)], _gauss(rng, 1000, d))),
            ("update", [(f"v{i}", X[i] * np.float32(1.5)) for i in upd[:50]]),
        ]
        ks = [1, 10, 256]
    else:
        raise KeyError(name)
    return X, Q, ks, churn


GAUSS = ["gauss-1-5000", "gauss-17-4097", "gauss-31-9000", "gauss-33-4096", "gauss-100-513",
         "gauss-128-20000", "gauss-768-3001"]
SCENARIOS = GAUSS + ["dups", "hi-twins", "worst-bits", "magnitudes", "offset", "clusters", "churn"]


def live_rows(name: str):
    """(ids, rows) of the store after its churn, in insertion order."""
    X, _, _, churn = scenario(name)
    rows = dict(zip(make_ids(len(X)), X))
    for op, arg in churn:
        if op == "remove":
            for i in arg:
                del rows[i]
        elif op == "update":
            for i, v in arg:
                rows[i] = v
        else:
            rows.update(zip(arg[0], arg[1]))
    return list(rows), np.asarray(list(rows.values()), np.float32)


def build(ctx, name: str, metric):
    X, _, _, churn = scenario(name)
    s = ctx.create_storage(X.shape[1], metric)
    s.add_vectors(make_ids(len(X)), X)
    for op, arg in churn:
        if op == "remove":
            assert s.remove_vectors(arg) == len(arg)
        elif op == "update":
            for i, v in arg:
                assert s.update_vector(i, v)
        else:
            s.add_vectors(arg[0], arg[1])
    return s


def run_all(ctx, names) -> dict:
    """Every search of every scenario: key -> (ids, score bits) per query."""
    out = {}
    for name in names:
        _, Q, ks, _ = scenario(name)
        for metric in METRICS:
            s = build(ctx, name, metric)
            for nq in QUERY_COUNTS:
                for k in ks:
                    scores, ids = s.search_batch(Q[:nq], k)
                    bits = np.asarray(scores, np.float32).view(np.uint32).tolist()
                    out[f"{name}/{metric.value}/nq{nq}/k{k}"] = [[list(r) for r in ids], bits]
            s.close()
    return out


def counts():
    return _testing.cpu_screen_counts()


_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import hive_gpu, test_cpu_screen as t
ctx = hive_gpu.create_context("cpu")
info = ctx.device_info()
per = {{}}
results = {{}}
for name in {names!r}:
    before = t.counts()
    results.update(t.run_all(ctx, [name]))
    after = t.counts()
    per[name] = None if before is None else [a - b for a, b in zip(after, before)]
print(json.dumps({{"isa": info.compute_capability, "threads": info.max_threads_per_block,
                  "counts": per, "results": results}}))
"""


def run_child(names, **env_extra) -> dict:
    env = dict(os.environ, **env_extra)
    code = _CHILD.format(tests=str(Path(__file__).parent), names=list(names))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


_FULL_SCANS: dict[str, dict] = {}


def full_scan(isa: str) -> dict:
    """The unscreened answers of one instruction set (each sums in its own order), which
    every screened run on it must equal bit for bit."""
    if isa not in _FULL_SCANS:
        got = run_child(SCENARIOS, HIVE_GPU_CPU_SCREEN="off", HIVE_GPU_CPU_ISA=isa, HIVE_GPU_CPU_THREADS="2")
        if f"kernels: {isa}" not in got["isa"]:
            pytest.skip(f"this CPU cannot run the {isa} kernels ({got['isa']})")
        if HAS_COUNTS:
            assert all(c == [0, 0] for c in got["counts"].values()), got["counts"]
        _FULL_SCANS[isa] = got["results"]
    return _FULL_SCANS[isa]


def best_isa() -> str:
    return hive_gpu.create_context("cpu").device_info().compute_capability.split("kernels: ")[1].rstrip(")")


def _diff(want: dict, got: dict) -> list[str]:
    assert want.keys() == got.keys()
    return [key for key in want if want[key] != got[key]]


@pytest.mark.parametrize(
    "isa,threads", [("avx512", "2"), ("avx2", "3"), ("generic", "1"), ("avx512", "7"), ("avx2", "1")]
)
def test_screened_answers_equal_the_full_scan(isa, threads):
    want = full_scan(isa)
    got = run_child(SCENARIOS, HIVE_GPU_CPU_SCREEN="always", HIVE_GPU_CPU_ISA=isa, HIVE_GPU_CPU_THREADS=threads)
    assert got["threads"] == int(threads)
    bad = _diff(want, got["results"])
    assert not bad, f"{len(bad)} searches differ, e.g. {bad[:5]}"
    if HAS_COUNTS:
        # Every search of up to 3 queries went through the screen (a cosine query of norm
        # below FLT_MIN, which ties every row, is the one exception), and both outcomes
        # happened.
        c = got["counts"]
        searches = {n: 3 * len(QUERY_COUNTS) * len(scenario(n)[2]) for n in SCENARIOS}
        zero_cos = len(QUERY_COUNTS[1:]) * len(scenario("magnitudes")[2])  # query 1 of magnitudes
        for n in SCENARIOS:
            assert sum(c[n]) == searches[n] - (zero_cos if n == "magnitudes" else 0), (n, c[n])
        assert sum(c[n][0] for n in SCENARIOS) > 0 and sum(c[n][1] for n in SCENARIOS) > 0


def test_default_thresholds_give_the_same_answers():
    want = full_scan(best_isa())
    got = run_child(SCENARIOS, HIVE_GPU_CPU_THREADS="2")
    bad = _diff(want, got["results"])
    assert not bad, f"{len(bad)} searches differ, e.g. {bad[:5]}"


@NEEDS_COUNTS
def test_the_screen_finishes_on_ordinary_data_and_gives_up_on_near_ties():
    got = run_child(["gauss-128-20000", "hi-twins", "churn", "offset", "clusters"], HIVE_GPU_CPU_THREADS="2")
    c = got["counts"]
    # Random data: every search with k <= 256 (and n >= 64 k) is screened to the end.
    assert c["gauss-128-20000"] == [3 * 3 * 3, 0], c
    assert c["churn"][0] > 0 and c["churn"][1] == 0, c
    # 1500 rows the screen cannot tell apart still fit under its cap.
    assert c["hi-twins"][0] > 0 and c["hi-twins"][1] == 0, c
    # A common offset and tight clusters leave near-ties everywhere: the screen gives up.
    assert c["offset"][1] > 0 and c["clusters"][1] > 0, c


@pytest.mark.parametrize("name", ["gauss-17-4097", "gauss-768-3001", "gauss-128-20000", "dups", "hi-twins", "churn"])
def test_screened_answers_match_the_float64_reference(name):
    # In this process: default thresholds (the screen where it pays), every metric.
    ctx = hive_gpu.create_context("cpu")
    _, Q, ks, _ = scenario(name)
    ids, X = live_rows(name)
    for metric in METRICS:
        s = build(ctx, name, metric)
        for nq in QUERY_COUNTS:
            for k in ks:
                if k > 300:
                    continue
                scores, got = s.search_batch(Q[:nq], k)
                for q in range(nq):
                    assert_matches(got[q], scores[q], X, ids, Q[q : q + 1], metric, k)
        s.close()


@pytest.mark.parametrize("metric", METRICS)
def test_duplicates_come_back_in_insertion_order(metric):
    ctx = hive_gpu.create_context("cpu")
    rng = np.random.default_rng(21)
    n, d = 40000, 96
    X = _gauss(rng, n, d)
    target = X[123].copy()
    spots = np.sort(rng.choice(np.arange(200, n), 40, replace=False))
    X[spots] = target
    s = ctx.create_storage(d, metric)
    s.add_vectors(make_ids(n), X)
    q = (target + 0.01 * rng.standard_normal(d)).astype(np.float32)
    hits = s.search(q, 41)
    assert [h.id for h in hits] == ["v123"] + [f"v{i}" for i in spots]
    assert len({h.distance for h in hits}) == 1
    # Swap-removes move rows between slots; ties still rank by insertion.
    gone = [f"v{i}" for i in spots[::3]]
    s.remove_vectors(gone)
    keep = ["v123"] + [f"v{i}" for i in spots if f"v{i}" not in gone]
    assert [h.id for h in s.search(q, len(keep))] == keep


def test_rows_read_back_bit_for_bit_after_edits():
    # The planes split and join every float exactly: -0, subnormals, the largest values.
    ctx = hive_gpu.create_context("cpu")
    rng = np.random.default_rng(22)
    special = np.array([-0.0, 0.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38, 1e18, -1e18, 1.0, -1.5],
                       np.float32)
    for d in (1, 7, 16, 31, 33, 100):
        X = _gauss(rng, 300, d)
        X.flat[: min(X.size, 10 * d)] = np.resize(special, min(X.size, 10 * d))
        for metric in METRICS:
            s = ctx.create_storage(d, metric)
            s.add_vectors(make_ids(300), X)
            s.remove_vectors(["v0", "v5"])
            s.update_vector("v7", X[1])
            for i in (1, 2, 7, 150, 299):
                want = X[1] if i == 7 else X[i]
                assert np.asarray(s.get_vector(f"v{i}").data, np.float32).tobytes() == want.tobytes()
            s.close()
