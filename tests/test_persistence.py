"""save / load: the format of docs/format.md, atomic replacement, corrupt and lying files,
and files moving between backends."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ALL_BACKENDS, HEADER, TAGS, assert_same_store, backend_skip_reason, build, child_program, crc32c, endless_saver, make_ids, parse, run_child, scrambled_store, small_store
from reference import METRICS, assert_matches

import hive_gpu
from hive_gpu import CorruptFileError, PersistenceError

HERE = os.path.dirname(os.path.abspath(__file__))

# -- the format itself ---------------------------------------------------------------------


def test_crc32c_is_the_documented_one(ctx, tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the check value of docs/format.md
    s, _ = small_store(ctx)
    p = tmp_path / "s.hgv"
    s.save(p)
    raw = p.read_bytes()
    fields, sections = parse(raw)
    # The library's CRCs equal the reference ones: rebuilding changes no byte.
    assert build(fields, sections) == raw
    assert fields[-1] == crc32c(raw[:60])
    assert all(crc == crc32c(payload) for _, _, payload, crc in sections)


def test_layout_matches_the_format_document(ctx, tmp_path):
    s, X = small_store(ctx, "euclidean", n=7, d=3)
    p = tmp_path / "s.hgv"
    s.save(p)
    fields, sections = parse(p.read_bytes())
    magic, version, metric, dim, count, next_ord, dtype, reserved, _ = fields
    assert (magic, version, metric, dim, count, dtype) == (b"HIVEGPU\0", 3, 2, 3, 7, 0)
    assert next_ord == 7 and reserved == bytes(16)
    assert [t for t, *_ in sections] == TAGS
    assert all(flags == 0 for _, flags, *_ in sections)
    ids, meta, ords, vecs = (payload for _, _, payload, _ in sections)
    assert ids == b"".join(struct.pack("<I", len(i)) + i.encode() for i in make_ids(7))
    assert struct.unpack("<7I", ords) == tuple(range(7))
    np.testing.assert_array_equal(np.frombuffer(vecs, "<f4").reshape(7, 3), X)
    # Metadata keys are written sorted ("i" < "tag"), each value after its type byte (0: str).
    first = struct.pack("<I", 2) + struct.pack("<I1sBI1s", 1, b"i", 0, 1, b"0") + struct.pack("<I3sBI", 3, b"tag", 0, 0)
    assert meta.startswith(first)


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_roundtrip_is_exact(ctx, rng, tmp_path, metric):
    # swap-removes scramble the slots; the file keeps them
    s, X, ids = scrambled_store(ctx, rng, metric, n=300, d=16, metadata_every=2, remove_every=7)
    s.update_vector("v1", X[2], {"updated": "yes"})
    p = tmp_path / "s.hgv"
    s.save(p)
    t = ctx.load_storage(p)
    assert_same_store(s, t)
    Q = rng.standard_normal((8, 16)).astype(np.float32)
    a_scores, a_ids = s.search_batch(Q, 20)
    b_scores, b_ids = t.search_batch(Q, 20)
    # Same backend, same rows, same ordinals: the same answer bit for bit.
    np.testing.assert_array_equal(a_scores, b_scores)
    assert (a_ids == b_ids).all()


def test_ties_keep_insertion_order_across_save(ctx, tmp_path):
    # Five copies of one vector; removals move the newest copies into older slots.
    s = ctx.create_storage(4, "dot")
    v = np.array([1, 2, 3, 4], np.float32)
    s.add_vectors([f"c{i}" for i in range(5)], np.tile(v, (5, 1)))
    s.add_vector("other", -v)
    s.remove_vector("c1")
    p = tmp_path / "s.hgv"
    s.save(p)
    t = ctx.load_storage(p)
    t.add_vector("c9", v)  # newer than every loaded copy
    assert [h.id for h in t.search(v, 10)] == ["c0", "c2", "c3", "c4", "c9", "other"]


def test_empty_store_roundtrip(ctx, tmp_path):
    s = ctx.create_storage(9, "euclidean")
    p = tmp_path / "e.hgv"
    s.save(p)
    t = ctx.load_storage(p)
    assert len(t) == 0 and t.dimension == 9 and t.metric.value == "euclidean"
    t.add_vector("a", np.ones(9, np.float32))
    assert t.search(np.ones(9, np.float32), 3)[0].id == "a"


def test_save_replaces_and_leaves_no_temporary_file(ctx, tmp_path):
    s, _ = small_store(ctx, n=3)
    p = tmp_path / "s.hgv"
    s.save(p)
    s.add_vector("new", np.ones(5, np.float32))
    s.save(p)
    assert os.listdir(tmp_path) == ["s.hgv"]
    assert "new" in ctx.load_storage(p)


def test_multi_chunk_rows_and_dimension_4096(ctx, rng, tmp_path):
    # 34 MiB of rows: more than one 32 MiB streaming chunk each way.
    d, n = 4096, 2100
    s = ctx.create_storage(d, "cosine")
    X = rng.standard_normal((n, d)).astype(np.float32)
    s.add_vectors(make_ids(n), X)
    p = tmp_path / "big.hgv"
    s.save(p)
    t = ctx.load_storage(p)
    assert len(t) == n
    for i in (0, 2047, 2048, n - 1):  # both sides of the chunk boundary
        np.testing.assert_array_equal(t.get_vector(f"v{i}").data, X[i])
    q = X[2049] + 0.01 * rng.standard_normal(d).astype(np.float32)
    assert t.search(q, 1)[0].id == "v2049"
    # A flip in the second chunk is caught by the vectors CRC after streaming.
    raw = bytearray(p.read_bytes())
    raw[-4 - 8 * d] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        ctx.load_storage(p)


# -- files moving between backends -----------------------------------------------------------


def _pairs():
    out = []
    for a in ALL_BACKENDS:
        for b in ALL_BACKENDS:
            if a != b:
                out.append(pytest.param(a, b, id=f"{a}-to-{b}"))
    return out


@pytest.mark.parametrize("src,dst", _pairs())
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_file_moves_between_backends(src, dst, metric, tmp_path, context_for):
    for b in (src, dst):
        reason = backend_skip_reason(b)
        if reason:
            pytest.skip(reason)
    ctxs = [context_for(src), context_for(dst)]
    r = np.random.default_rng(42)
    X = r.standard_normal((400, 24)).astype(np.float32)
    X[5] = X[9]  # a tie that must resolve the same way on both sides
    ids = make_ids(400)
    a = ctxs[0].create_storage(24, metric)
    a.add_vectors(ids, X)
    a.remove_vector("v3")
    p = tmp_path / "s.hgv"
    a.save(p)
    b = ctxs[1].load_storage(p)
    assert b.backend == dst
    assert_same_store(a, b)
    # Loaded equals built: the destination answers exactly as a store built there would.
    built = ctxs[1].create_storage(24, metric)
    built.add_vectors(ids, X)
    built.remove_vector("v3")
    Q = np.vstack([r.standard_normal((6, 24)), X[9:10]]).astype(np.float32)
    bs, bi = b.search_batch(Q, 15)
    cs, ci = built.search_batch(Q, 15)
    np.testing.assert_array_equal(bs, cs)
    assert (bi == ci).all()
    # And both backends agree with the float64 reference (hence with each other).
    rows = a.ids()
    Xs = np.stack([a.get_vector(i).data for i in rows])
    as_, ai = a.search_batch(Q, 15)
    for j in range(len(Q)):
        assert_matches(ai[j], as_[j], Xs, rows, Q[j], metric, 15)
        assert_matches(bi[j], bs[j], Xs, rows, Q[j], metric, 15)
    assert list(bi[-1][:2]) == ["v5", "v9"] == list(ai[-1][:2])


# -- corrupt, foreign and lying files --------------------------------------------------------


@pytest.fixture
def saved(ctx, tmp_path):
    s, _ = small_store(ctx, "dot", n=6, d=3)
    p = tmp_path / "s.hgv"
    s.save(p)
    return p, p.read_bytes()


def _load_raw(ctx, tmp_path, raw: bytes):
    q = tmp_path / "x.hgv"
    q.write_bytes(raw)
    return ctx.load_storage(q)


def test_every_single_bit_flip_is_detected(ctx, tmp_path, saved):
    # Every byte is under a CRC or a structural check, so no flip may load.
    _, raw = saved
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(CorruptFileError):
            _load_raw(ctx, tmp_path, bytes(bad))


def test_every_truncation_is_detected(ctx, tmp_path, saved):
    _, raw = saved
    for cut in range(len(raw)):
        with pytest.raises(CorruptFileError):
            _load_raw(ctx, tmp_path, raw[:cut])
    with pytest.raises(CorruptFileError, match="trailing"):
        _load_raw(ctx, tmp_path, raw + b"\0")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"HIVEGPU",
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"hello, this is a text file and not a vector store at all\n" * 4,
        bytes(range(256)) * 8,
    ],
    ids=["empty", "magic-only", "png", "text", "random"],
)
def test_foreign_files_are_refused(ctx, tmp_path, raw):
    with pytest.raises(CorruptFileError):
        _load_raw(ctx, tmp_path, raw)


def _lie(ctx, tmp_path, raw, field=None, value=None, section=None, payload=None, flags=None):
    fields, sections = parse(raw)
    if field is not None:
        fields[field] = value
    if section is not None:
        if payload is not None:
            sections[section][2] = payload
        if flags is not None:
            sections[section][1] = flags
    return _load_raw(ctx, tmp_path, build(fields, sections))


@pytest.mark.parametrize(
    "field,value,match",
    [
        (4, 2**60, "shorter than its header"),  # count: 2^60 vectors, valid header CRC
        (4, 2**64 - 1, "shorter than its header"),
        (4, 7, None),  # one more than the file holds
        (4, 5, None),  # one fewer
        (3, 0, "dimension"),
        (3, 2**20 + 1, "dimension"),
        (3, 2**40, "dimension"),
        (3, 4, None),  # a plausible but wrong dimension
        (2, 3, "metric"),
        (1, 4, "version 4"),
        (6, 3, "unknown dtype"),
        (5, 2**32, "ordinal"),
        (7, b"\x01" + bytes(15), "header fields"),
    ],
)
def test_header_lies_are_refused(ctx, tmp_path, saved, field, value, match):
    _, raw = saved
    t0 = time.perf_counter()
    with pytest.raises(CorruptFileError, match=match):
        _lie(ctx, tmp_path, raw, field=field, value=value)
    assert time.perf_counter() - t0 < 5  # refused up front, not after reading or allocating


def test_sections_with_valid_crcs_but_bad_content_are_refused(ctx, tmp_path, saved):
    _, raw = saved
    _, sections = parse(raw)
    ids, meta, ords, vecs = (s[2] for s in sections)
    dup_ids = ids.replace(b"v1", b"v0")
    empty_id = struct.pack("<I", 0) + ids[4 + 2 :]
    huge_id = struct.pack("<I", 5000) + b"a" * 5000 + ids[6:]
    dup_ord = ords[:4] + ords[:4] + ords[8:]
    bad_rows = np.frombuffer(vecs, "<f4").copy()
    nan_rows = bad_rows.copy()
    nan_rows[4] = np.nan
    inf_rows = bad_rows.copy()
    inf_rows[0] = np.inf
    big_rows = bad_rows.copy()
    big_rows[:3] = 3e19  # norm beyond the write limit
    # The first vector's metadata {"i": "0", "tag": ""} replaced by a repeated key.
    first_md = struct.pack("<I", 2) + struct.pack("<I1sBI1s", 1, b"i", 0, 1, b"0") + struct.pack("<I3sBI", 3, b"tag", 0, 0)
    assert meta.startswith(first_md)
    dup_key = struct.pack("<I", 2) + (struct.pack("<I1sBI1s", 1, b"k", 0, 1, b"v") * 2) + meta[len(first_md) :]
    bad_type = struct.pack("<I", 1) + struct.pack("<I1sBq", 1, b"k", 9, 0) + meta[len(first_md) :]
    bad_bool = struct.pack("<I", 1) + struct.pack("<I1sBB", 1, b"k", 3, 2) + meta[len(first_md) :]
    cases = [
        (0, dup_ids, "ids"),
        (0, empty_id, "ids"),
        (0, huge_id, "ids"),
        (0, ids + struct.pack("<I", 1) + b"z", "ids"),
        (1, meta[: -1], "metadata"),
        (1, dup_key, "repeated metadata key"),
        (1, bad_type, "type"),
        (1, bad_bool, "bool"),
        (1, struct.pack("<I", 0xFFFFFFFF) + meta[4:], "metadata"),
        (2, dup_ord, "ordinal"),
        (2, ords[:-4], "ordinals"),
        (3, nan_rows.tobytes(), "NaN"),
        (3, inf_rows.tobytes(), "NaN"),
        (3, big_rows.tobytes(), "norm"),
    ]
    for section, payload, match in cases:
        with pytest.raises(CorruptFileError, match=match):
            _lie(ctx, tmp_path, raw, section=section, payload=payload)
    for section in range(4):
        with pytest.raises(CorruptFileError, match="flags"):
            _lie(ctx, tmp_path, raw, section=section, flags=1)


def test_section_lengths_that_lie_are_refused(ctx, tmp_path, saved):
    _, raw = saved
    pos = HEADER.size + 8  # the IDS section's length field (not under a CRC)
    for length in (0, 1, 2**31, 2**62, 2**64 - 1):
        bad = bytearray(raw)
        bad[pos : pos + 8] = struct.pack("<Q", length)
        with pytest.raises(CorruptFileError):
            _load_raw(ctx, tmp_path, bytes(bad))
    # Sections out of order.
    fields, sections = parse(raw)
    sections[0], sections[1] = sections[1], sections[0]
    with pytest.raises(CorruptFileError, match="expected the ids section"):
        _load_raw(ctx, tmp_path, build(fields, sections))


def test_io_failures_raise_persistence_error(ctx, tmp_path):
    with pytest.raises(PersistenceError):
        ctx.load_storage(tmp_path / "missing.hgv")
    with pytest.raises(PersistenceError, match="regular file"):
        ctx.load_storage(tmp_path)
    s, _ = small_store(ctx, n=2)
    with pytest.raises(PersistenceError):
        s.save(tmp_path / "no" / "such" / "dir" / "s.hgv")
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(PersistenceError):
        s.save(tmp_path / "afile" / "s.hgv")
    assert isinstance(PersistenceError("x"), OSError)
    assert isinstance(CorruptFileError("x"), ValueError)


# -- atomicity: a save that fails or dies half way leaves the previous file ------------------


def test_failed_rename_keeps_previous_target_and_removes_temp(ctx, tmp_path):
    # The whole file is written and synced; only the final rename fails (the target is a
    # non-empty directory), so the error path after a complete write is the one exercised.
    target = tmp_path / "s.hgv"
    target.mkdir()
    (target / "keep").write_bytes(b"precious")
    s, _ = small_store(ctx)
    with pytest.raises(PersistenceError):
        s.save(target)
    assert (target / "keep").read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["s.hgv"]


def test_save_failing_mid_write_keeps_previous_file(ctx, backend, tmp_path):
    # A file size limit makes write() fail with EFBIG inside the vectors section: the real
    # error path of a disk filling up half way through.
    old, _ = small_store(ctx)
    target = tmp_path / "s.hgv"
    old.save(target)
    before = target.read_bytes()
    code = child_program(
        backend,
        f"""
        s = ctx.create_storage(128, "cosine")
        s.add_vectors([f"n{{i}}" for i in range(8192)], np.ones((8192, 128), np.float32))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            s.save({str(target)!r})
        except hive_gpu.PersistenceError as e:
            print("PersistenceError", e)
        else:
            print("saved")
        """,
    )
    out = run_child(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PersistenceError"), out.stdout
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.hgv"]
    assert_same_store(old, ctx.load_storage(target))


def test_process_killed_mid_save_keeps_a_complete_file(ctx, backend, tmp_path):
    # A child saves a large store over and over; it is killed at a few moments. Whatever
    # the moment, the target is one complete store: the old one or the new one.
    old, _ = small_store(ctx)
    target = tmp_path / "s.hgv"
    old.save(target)
    code = endless_saver(backend, target)
    saw_new = False
    for delay in (0.0, 0.05, 0.13, 0.31, 2.0):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        got = ctx.load_storage(target)
        if len(got) == len(old):
            assert_same_store(old, got)
        else:
            saw_new = True
            assert len(got) == 60000
            np.testing.assert_array_equal(got.get_vector("n59999").data, np.full(64, 0.5, np.float32))
        for name in os.listdir(tmp_path):  # a killed writer may leave its temporary file
            if name != "s.hgv":
                assert name.startswith("s.hgv.tmp.")
                os.remove(tmp_path / name)
    assert saw_new, "no save completed within 2 s: the kill points above tested nothing new"


def test_load_streams_rows_without_a_second_host_copy(backend, tmp_path):
    # Peak host memory of a fresh process loading 160 MiB of rows: one copy of the rows at
    # most (the CPU engine's own), plus a 32 MiB chunk and the ids, never two copies.
    d, n = 320, 131072
    rows_bytes = d * n * 4
    code = child_program(
        backend,
        f"""
        s = ctx.create_storage({d}, "dot")
        for b in range(0, {n}, 16384):
            s.add_vectors([f"r{{i}}" for i in range(b, b + 16384)], np.ones((16384, {d}), np.float32))
        s.save({str(tmp_path / "big.hgv")!r})
        """,
    )
    out = run_child(code)
    assert out.returncode == 0, out.stderr
    code = child_program(
        backend,
        f"""
        import gc
        gc.collect()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        s = ctx.load_storage({str(tmp_path / "big.hgv")!r})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert len(s) == {n}
        print(peak - base)
        """,
    )
    out = run_child(code)
    assert out.returncode == 0, out.stderr
    grew = int(out.stdout.split()[-1])
    assert grew < rows_bytes + rows_bytes // 2, (grew, rows_bytes)
