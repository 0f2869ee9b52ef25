"""The Metal backend's kernels, run on the CPU: tests/metal_sim compiles csrc/metal/kernels.metal
as C++ (csrc/metal/msl_shim.hpp), plays the engine's dispatch plan (csrc/metal/search_plan.hpp)
with every threadgroup simulated (barriers included), and the results are checked here against
the float64 NumPy oracle. Runs wherever a C++17 compiler and <ucontext.h> exist (Linux, macOS);
the real GPU run is the macOS workflow's.

Shapes cover one row, dimensions that are odd or not multiples of 4/32, row counts around the
threadgroup size (256) and the sorted segment (2048), k = 1, k = n, several merge levels with an
odd number of lists, query chunking, both scoring paths (direct kernel and the MPS product path,
whose product is a float32 loop here), exact ties ranked by ordinal, cosine zero vectors and
vectors whose squared norm is below FLT_MIN (zero for cosine). Every row dtype (float32, float16,
bfloat16) is checked against the oracle on the rounded rows, and stores of several pages (the
engine's page layout, with page starts not aligned to 32 or 64 rows) against one page.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hive_gpu import GpuDistanceMetric
from reference import METRICS, assert_matches

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "tests" / "metal_sim"
METRIC_ID = {GpuDistanceMetric.COSINE: 0, GpuDistanceMetric.DOT_PRODUCT: 1, GpuDistanceMetric.EUCLIDEAN: 2}
PATHS = {"direct": 0, "product": 1}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the grid simulator needs <ucontext.h>")


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    cxx = _compiler()
    # A missing compiler fails rather than skips: these are the only checks the Metal kernels
    # get outside macOS, and a silent skip would look like a pass.
    assert cxx is not None, "tests/test_metal_kernels.py needs a C++17 compiler (c++, g++ or clang++; or set CXX)"
    exe = tmp_path_factory.mktemp("metal_sim") / "metal_sim"
    cmd = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}", f"-I{SIM}",
           str(SIM / "harness.cpp"), str(SIM / "grid_sim.cpp"), "-o", str(exe)]
    if sys.platform == "darwin":
        cmd[1:1] = ["-D_XOPEN_SOURCE=600", "-Wno-deprecated-declarations"]  # ucontext on macOS
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return exe


SELECTIONS = {"mask": 1, "list": 2}
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
# 16-bit rows always take the direct path (the MPS product is float32 only), so their
# "product" runs would repeat the direct ones; the plan's fallback is checked in its own test.
DTYPE_PATHS = [("float32", "direct"), ("float32", "product"), ("float16", "direct"), ("bfloat16", "direct")]


def bf16_bits(X) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even (finite inputs)."""
    u = np.ascontiguousarray(X, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def stored(X, dtype: str):
    """(the rows as the engine stores them, those values widened to float32)."""
    X = np.ascontiguousarray(X, np.float32)
    if dtype == "float16":
        h = X.astype(np.float16)
        return h, h.astype(np.float32)
    if dtype == "bfloat16":
        b = bf16_bits(X)
        return b, (b.astype(np.uint32) << 16).view(np.float32)
    return X, X


def run_sim(exe: Path, tmp: Path, X, ordinals, Q, k, metric, path="direct", budget=0, passing=None, sel="mask",
            dtype="float32", pages=(0, 0)):
    """(scores[nq, k] in engine units, slots[nq, k]) from the simulated GPU search over X
    stored in `dtype` (rounded here); with `passing` (ascending rows), a filtered search
    through the mask or the list selection. pages = (first page rows, rows per page), or
    (0, 0) for one page."""
    rows, _ = stored(X, dtype)
    Q = np.ascontiguousarray(np.atleast_2d(Q), np.float32)
    n, d = rows.shape
    nq = len(Q)
    src, dst = tmp / "in.bin", tmp / "out.bin"
    mode = 0 if passing is None else SELECTIONS[sel]
    header = np.array([n, d, nq, k, METRIC_ID[metric], PATHS[path], budget, mode, DTYPES[dtype], *pages], np.uint64)
    tail = b""
    if passing is not None:
        tail = np.array([len(passing)], np.uint64).tobytes() + np.asarray(passing, np.uint32).tobytes()
    src.write_bytes(header.tobytes() + rows.tobytes() + np.asarray(ordinals, np.uint32).tobytes() + Q.tobytes() + tail)
    done = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    raw = dst.read_bytes()
    assert len(raw) == nq * k * 12
    scores = np.frombuffer(raw[: nq * k * 4], np.float32).reshape(nq, k)
    slots = np.frombuffer(raw[nq * k * 4 :], np.int64).reshape(nq, k)
    return scores, slots


def check_against_reference(X, ordinals, Q, k, metric, scores, slots):
    """Every query's hits against the oracle, rows ranked by ordinal (the insertion order)."""
    order = np.argsort(ordinals, kind="stable")
    X_ref = X[order]
    ids_ref = [f"o{o}" for o in np.asarray(ordinals)[order]]
    for q in range(len(Q)):
        assert (slots[q] >= 0).all() and (slots[q] < len(X)).all(), slots[q]
        got_ids = [f"o{ordinals[s]}" for s in slots[q]]
        got = scores[q].astype(np.float64)
        if metric is GpuDistanceMetric.EUCLIDEAN:
            assert (got >= 0).all()
            got = np.sqrt(got)  # the engine reports squared distances; the core takes the root
        assert_matches(got_ids, got, X_ref, ids_ref, Q[q : q + 1], metric, k)


def check_key_order(scores, slots, ordinals, metric):
    """Within each query: better score first, equal scores by the smaller ordinal, no repeats."""
    for q in range(len(scores)):
        s = scores[q].astype(np.float64)
        o = np.asarray(ordinals, np.int64)[slots[q]]
        assert len(set(slots[q].tolist())) == len(slots[q])
        s_key = -s if metric.higher_is_better else s
        for i in range(len(s) - 1):
            assert (s_key[i], o[i]) < (s_key[i + 1], o[i + 1]), (q, i, s[i], s[i + 1], o[i], o[i + 1])


# (n, dim): n around the threadgroup (256) and the segment (2048); dims 1, odd, not multiples
# of 4 or 32, and one large.
SHAPES = [(1, 1), (2, 3), (255, 17), (256, 5), (257, 33), (2047, 7), (2048, 1), (2049, 13), (5003, 31), (300, 768)]


@pytest.mark.parametrize("dtype,path", DTYPE_PATHS, ids=lambda v: v)
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("n,d", SHAPES)
def test_kernels_match_float64_reference(sim, tmp_path, n, d, metric, path, dtype):
    rng = np.random.default_rng(n * 1009 + d)
    X = rng.standard_normal((n, d)).astype(np.float32)
    # Ordinals unrelated to slots and spread over 32 bits, as after swap-removes.
    ordinals = rng.choice(2**32 - 1, size=n, replace=False).astype(np.uint32)
    Q = rng.standard_normal((3, d)).astype(np.float32)
    _, X_stored = stored(X, dtype)
    for k in sorted({1, min(10, n), n}):
        scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path, dtype=dtype)
        check_against_reference(X_stored, ordinals, Q, k, metric, scores, slots)
        check_key_order(scores, slots, ordinals, metric)


# (first page rows, rows per page): pages double from the first size to the full one, page
# starts fall off 32- and 64-row boundaries (7, 21, 49, ...), and full pages follow.
PAGE_LAYOUTS = [(7, 40), (1, 1), (100, 256), (1024, 2048)]


@pytest.mark.parametrize("dtype,path", DTYPE_PATHS, ids=lambda v: v)
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("pages", PAGE_LAYOUTS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_pages_match_one_page_and_the_reference(sim, tmp_path, pages, metric, path, dtype):
    # Every page is searched by its own plan and the host keeps each query's k best of all
    # pages' lists: the answer equals the one-page search bit for bit, ties by ordinal.
    n = 40 if pages == (1, 1) else 5003 if pages[1] == 2048 else 500
    rng = np.random.default_rng(n + pages[0])
    d = 11
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[3::17] = X[2]  # exact ties across pages
    ordinals = rng.choice(2**32 - 1, size=n, replace=False).astype(np.uint32)
    Q = rng.standard_normal((4, d)).astype(np.float32)
    _, X_stored = stored(X, dtype)
    for k in sorted({1, 9, n}):
        one = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path, dtype=dtype)
        paged = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path, dtype=dtype, pages=pages)
        np.testing.assert_array_equal(paged[1], one[1])
        np.testing.assert_array_equal(paged[0], one[0])
        check_against_reference(X_stored, ordinals, Q, k, metric, *paged)
        check_key_order(*paged, ordinals, metric)
        if k == 9:
            # Query tiles over pages: one query per tile.
            tiled = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path, budget=1, dtype=dtype, pages=pages)
            np.testing.assert_array_equal(tiled[1], one[1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_16bit_rows_at_the_ends_of_their_range(sim, tmp_path, metric, dtype):
    # float16: values near its largest finite value, its smallest normal and subnormals;
    # bfloat16: a wide exponent range. Both: values halfway between two neighbours, which
    # round to the even one. Widened exactly and scored in float32. (Squared norms stay above
    # FLT_MIN and float32 sums stay finite, so the oracle needs no special case.)
    rng = np.random.default_rng(77)
    n, d = 400, 6
    if dtype == "float16":
        scale = rng.choice([6.0e4, 1.0, 6.1e-5, 3.0e-7], size=(n, 1))
    else:
        scale = rng.choice([1.0e15, 1.0, 1.0e-15], size=(n, 1))
    X = (rng.uniform(-1, 1, (n, d)) * scale).astype(np.float32)
    X[:5] = np.float32(1.0 + 2.0**-11 if dtype == "float16" else 1.0 + 2.0**-8)  # exact halfway: rounds to 1
    Q = rng.standard_normal((3, d)).astype(np.float32)
    ordinals = rng.permutation(n).astype(np.uint32)
    _, X_stored = stored(X, dtype)
    assert (X_stored[:5] == 1.0).all()
    for k in (1, 50, n):
        scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, dtype=dtype, pages=(16, 128))
        check_against_reference(X_stored, ordinals, Q, k, metric, scores, slots)
        check_key_order(scores, slots, ordinals, metric)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_rows_skip_the_float32_product(sim, tmp_path, dtype):
    # A batch that takes the MPS product for float32 rows is scored by score_rows for 16-bit
    # rows, with the same results as a direct search.
    rng = np.random.default_rng(8)
    X = rng.standard_normal((600, 9)).astype(np.float32)
    ordinals = rng.permutation(600).astype(np.uint32)
    Q = rng.standard_normal((9, 9)).astype(np.float32)
    for metric in METRICS:
        direct = run_sim(sim, tmp_path, X, ordinals, Q, 20, metric, "direct", dtype=dtype)
        product = run_sim(sim, tmp_path, X, ordinals, Q, 20, metric, "product", dtype=dtype)
        np.testing.assert_array_equal(product[0], direct[0])
        np.testing.assert_array_equal(product[1], direct[1])


@pytest.mark.parametrize("first,full,n", [(1024, 699050, 1_800_000), (7, 40, 500), (1, 1, 5), (5, 5, 23), (3, 1000, 1)])
def test_page_layout(sim, first, full, n):
    # Pages double from `first` rows to `full` rows and stay there; they tile the slots with
    # no gap, and page_of (which the engine addresses every row with) agrees with them.
    out = subprocess.run([str(sim), "--pages", str(first), str(full), str(n)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    pages = int(lines[0])
    table = np.array(lines[1 : 1 + 2 * pages], np.int64).reshape(pages, 2)
    page_of = np.array(lines[1 + 2 * pages :], np.int64)
    starts, caps = table[:, 0], table[:, 1]
    want_caps = []
    while sum(want_caps) < n:
        want_caps.append(min(first << len(want_caps), full))
    np.testing.assert_array_equal(caps, want_caps)
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(caps)[:-1]]))
    np.testing.assert_array_equal(page_of, np.repeat(np.arange(pages), caps)[:n])


def test_bf16_rounding_helper_is_nearest_even():
    # The test's own bfloat16 rounding, checked against the definition: the nearer of the two
    # neighbouring bfloat16 values, the even one on a tie.
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 20000),
                        np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 0.0, -0.0], np.float32)])
    x = x.astype(np.float32)
    got = bf16_bits(x)
    lo = (x.view(np.uint32) >> 16).astype(np.uint16)
    hi = lo + np.uint16(1)
    val = lambda b: (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    dlo, dhi = np.abs(x - val(lo)), np.abs(val(hi) - x)
    want = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    np.testing.assert_array_equal(got, want)
    assert bf16_bits(np.float32([1.0 + 2.0**-8]))[0] == 0x3F80
    assert bf16_bits(np.float32([1.0 + 3 * 2.0**-8]))[0] == 0x3F82


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_deep_merge_tree_with_odd_list_counts(sim, tmp_path, metric):
    # 11 segments of 2048: merge levels with 11, 6, 3 and 2 lists; k above one segment.
    rng = np.random.default_rng(5)
    n, d = 2048 * 10 + 77, 9
    X = rng.standard_normal((n, d)).astype(np.float32)
    ordinals = rng.permutation(n).astype(np.uint32)
    Q = rng.standard_normal((2, d)).astype(np.float32)
    for k in (3, 2500, n):
        scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, k, metric)
        check_against_reference(X, ordinals, Q, k, metric, scores, slots)
        check_key_order(scores, slots, ordinals, metric)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_query_chunks_give_the_same_results(sim, tmp_path, metric, path):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((700, 19)).astype(np.float32)
    ordinals = rng.permutation(700).astype(np.uint32)
    Q = rng.standard_normal((7, 19)).astype(np.float32)
    whole = run_sim(sim, tmp_path, X, ordinals, Q, 25, metric, path)
    # A 1-byte budget forces one query per chunk.
    chunked = run_sim(sim, tmp_path, X, ordinals, Q, 25, metric, path, budget=1)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
    check_against_reference(X, ordinals, Q, 25, metric, *whole)


@pytest.mark.parametrize("dtype,path", DTYPE_PATHS, ids=lambda v: v)
@pytest.mark.parametrize("metric", [GpuDistanceMetric.DOT_PRODUCT, GpuDistanceMetric.EUCLIDEAN], ids=lambda m: m.value)
def test_exact_ties_rank_by_ordinal(sim, tmp_path, metric, path, dtype):
    # Small integers: exact in every dtype and in float32 arithmetic, so the expected ranking
    # is exact too, and many rows share each score across segments, merge levels and pages.
    rng = np.random.default_rng(21)
    n, d = 4500, 6
    X = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    ordinals = rng.permutation(n).astype(np.uint32)
    Q = rng.integers(-2, 3, size=(4, d)).astype(np.float32)
    Q[0] = 0  # every row ties for this query (dot) or ties by norm (Euclidean)
    X64, Q64 = X.astype(np.float64), Q.astype(np.float64)
    for k in (1, 100, n):
        scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path, dtype=dtype, pages=(100, 1000))
        for q in range(len(Q)):
            if metric is GpuDistanceMetric.EUCLIDEAN:
                key = ((X64 - Q64[q]) ** 2).sum(1)
            else:
                key = -(X64 @ Q64[q])
            want = np.lexsort((ordinals, key))[:k]
            np.testing.assert_array_equal(slots[q], want)
            np.testing.assert_array_equal(scores[q], np.abs(key[want]) if metric is GpuDistanceMetric.EUCLIDEAN else -key[want])


@pytest.mark.parametrize("path", list(PATHS))
def test_cosine_copies_and_zero_vectors(sim, tmp_path, path):
    # Copies of a few vectors score bit-identically: each group ranks by ordinal. Zero rows
    # and a zero query score 0.
    rng = np.random.default_rng(33)
    n, d = 3000, 10
    base = rng.standard_normal((6, d)).astype(np.float32)
    base[5] = 0.0
    which = rng.integers(0, 6, n)
    X = base[which]
    ordinals = rng.permutation(n).astype(np.uint32)
    Q = rng.standard_normal((3, d)).astype(np.float32)
    Q[2] = 0.0
    metric = GpuDistanceMetric.COSINE
    for k in (7, 1500, n):
        scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path)
        check_key_order(scores, slots, ordinals, metric)
        check_against_reference(X, ordinals, Q, k, metric, scores, slots)
        assert (scores[2] == 0).all()
        zero_rows = which[slots[0]] == 5
        assert (scores[0][zero_rows] == 0).all()
        # Whole groups in order: a group appears after every member of a better group.
        for q in range(2):
            groups = which[slots[q]]
            for g in np.unique(groups[:-1]):
                members = np.flatnonzero(which == g)
                taken = ordinals[slots[q]][groups == g]
                if len(taken) < len(members) and g != groups[-1]:
                    pytest.fail(f"group {g} cut before the last rank")
                np.testing.assert_array_equal(taken, np.sort(ordinals[members])[: len(taken)])


@pytest.mark.parametrize("path", list(PATHS))
def test_cosine_tiny_norms_count_as_zero(sim, tmp_path, path):
    # Squared norm below FLT_MIN (in float64): the vector is the zero vector for cosine, so
    # it scores 0 against everything; just above FLT_MIN it is an ordinary direction.
    flt_min = float(np.finfo(np.float32).tiny)
    d = 4
    X = np.zeros((6, d), np.float32)
    X[0] = [1e-20, 0, 0, 0]            # |x|^2 = 1e-40 < FLT_MIN
    X[1] = [3e-42, -2e-42, 1e-42, 0]   # denormal components
    X[2] = [2e-19, 0, 0, 0]            # |x|^2 = 4e-38 > FLT_MIN: parallel to the query
    X[3] = [0, 1, 0, 0]
    X[4] = [-1, 0, 0, 0]
    X[5] = [1, 1, 0, 0]
    assert float(X[0].astype(np.float64) @ X[0]) < flt_min < float(X[2].astype(np.float64) @ X[2])
    ordinals = np.arange(6, dtype=np.uint32)
    Q = np.array([[2, 0, 0, 0], [1e-20, 0, 0, 0]], np.float32)
    scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, 6, GpuDistanceMetric.COSINE, path)
    by_slot = dict(zip(slots[0].tolist(), scores[0].tolist()))
    assert by_slot[0] == 0 and by_slot[1] == 0 and by_slot[3] == 0
    assert by_slot[2] == pytest.approx(1.0, abs=1e-6)
    assert by_slot[4] == pytest.approx(-1.0, abs=1e-6)
    assert by_slot[5] == pytest.approx(2**-0.5, abs=1e-6)
    np.testing.assert_array_equal(slots[0], [2, 5, 0, 1, 3, 4])
    # A tiny query is a zero query: every score 0, ranked by ordinal.
    assert (scores[1] == 0).all()
    np.testing.assert_array_equal(slots[1], np.arange(6))


@pytest.mark.parametrize("pages", [(0, 0), (13, 400)], ids=["one_page", "pages"])
@pytest.mark.parametrize("sel", list(SELECTIONS))
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
@pytest.mark.parametrize("n,d,share,dtype", [(1, 3, 1.0, "float32"), (300, 17, 0.5, "float16"), (2049, 13, 0.02, "bfloat16"),
                                             (5003, 7, 0.3, "float32"), (700, 5, 1.0, "float16")])
def test_filtered_selection_matches_reference(sim, tmp_path, n, d, share, dtype, metric, path, sel, pages):
    # Only passing rows may appear; the answer is the exact top k among them. With pages, the
    # mask is re-based at every page's start (13, 39, 91, ...: not word-aligned) and the list
    # is split by page, as the engine does; pages with no passing row are skipped.
    rng = np.random.default_rng(n * 31 + d)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[1::5] = X[0]  # exact ties
    ordinals = rng.choice(2**32 - 1, size=n, replace=False).astype(np.uint32)
    passing = np.sort(rng.choice(n, size=max(1, int(share * n)), replace=False))
    Q = rng.standard_normal((3, d)).astype(np.float32)
    _, X_stored = stored(X, dtype)
    for k in sorted({1, min(7, len(passing)), len(passing)}):
        scores, slots = run_sim(sim, tmp_path, X, ordinals, Q, k, metric, path, passing=passing, sel=sel,
                                dtype=dtype, pages=pages)
        assert np.isin(slots, passing).all(), "a filtered-out row was returned"
        check_against_reference(X_stored[passing], ordinals[passing], Q, k, metric, scores,
                                np.searchsorted(passing, slots))
        check_key_order(scores, slots, ordinals, metric)


def expand_kernel_macros(source: str) -> str:
    """The source with its function-like macros that define kernels expanded (one kernel per
    row element type comes from one macro), so every kernel's signature can be read."""
    source = source.replace("\\\n", " ")
    for m in list(re.finditer(r"^#define\s+(\w+)\(([\w\s,]+)\)(.*kernel\s+void.*)$", source, re.M)):
        name, params, body = m.group(1), [p.strip() for p in m.group(2).split(",")], m.group(3)
        source = source.replace(m.group(0), "")

        def expand(call, params=params, body=body):
            args = [a.strip() for a in call.group(1).split(",")]
            out = body
            for p, a in zip(params, args):
                out = re.sub(rf"\b{p}\b", a, out)
            return out

        source = re.sub(rf"\b{name}\(([^()]*)\)", expand, source)
    return source


def test_kernel_names_and_buffer_indices_match_the_engine(sim):
    # The engine binds a step's buffers at indices 0..m-1 in plan order and the Params at m
    # (metal_engine.mm); the simulator passes them positionally and ignores [[buffer(i)]],
    # so the attributes are checked here against the plans' bindings.
    out = subprocess.run([str(sim), "--bindings"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bound = {}
    for line in out.stdout.split("\n"):
        if line:
            name, count = line.split()
            assert bound.setdefault(name, int(count)) == int(count), name
    assert set(bound) == {"score_rows", "score_rows_f16", "score_rows_bf16", "finish_products", "select_segments",
                          "merge_lists", "write_results"}
    source = expand_kernel_macros((ROOT / "csrc" / "metal" / "kernels.metal").read_text())
    declared = {}
    for m in re.finditer(r"kernel\s+void\s+(\w+)\s*\((.*?)\)\s*\{", source, re.S):
        params = [p.strip() for p in m.group(2).split(",")]
        buffers = [p for p in params if "[[buffer(" in p]
        indices = [int(re.search(r"\[\[buffer\((\d+)\)\]\]", p).group(1)) for p in buffers]
        assert indices == list(range(len(buffers))), (m.group(1), indices)
        assert re.match(r"constant\s+Params\s*&\s*p\b", buffers[-1]), (m.group(1), buffers[-1])
        assert all(p.startswith("device ") for p in buffers[:-1]), (m.group(1), buffers)
        declared[m.group(1)] = len(buffers) - 1
    assert declared == bound
