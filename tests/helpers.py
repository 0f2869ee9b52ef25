"""Helpers shared by the test modules (tests import from here, never from each other)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np

import hive_gpu

# Every backend the package knows, from the core's registry: a new backend is tested (or its
# skip reason listed) without editing the tests.
ALL_BACKENDS = list(hive_gpu.backend_status())


def _selected() -> list[str]:
    env = os.environ.get("HIVE_GPU_TEST_BACKENDS")
    return [b.strip() for b in env.split(",") if b.strip()] if env else ALL_BACKENDS


_STATUS: dict[str, str] = {}


def backend_skip_reason(backend: str) -> str | None:
    if backend not in _selected():
        return f"{backend}: not selected by HIVE_GPU_TEST_BACKENDS"
    if not _STATUS:  # availability does not change during a run
        _STATUS.update(hive_gpu.backend_status())
    reason = _STATUS[backend]
    if reason:
        return f"{backend}: {reason}"
    return None


def dtype_store(ctx, dimension: int, metric, dtype: str):
    """``ctx.create_storage(dimension, metric, dtype)``, skipping the test when the backend does
    not store ``dtype`` rows yet (it says so with InvalidDtypeError "does not store"): an
    explicit capability check, so that a backend without 16-bit rows is listed as skipped."""
    import pytest

    try:
        return ctx.create_storage(dimension, metric, dtype)
    except hive_gpu.InvalidDtypeError as e:
        if "does not store" in str(e):
            pytest.skip(f"{ctx.backend}: does not store {dtype} rows yet")
        raise


def make_ids(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# -- a store's whole observable state, for "bad input leaves the store as it was" ------------


def snapshot(s):
    q = np.linspace(-1, 1, s.dimension, dtype=np.float32)
    return (
        sorted(s.ids()),
        {i: s.get_vector(i).data.tobytes() for i in s.ids()},
        {i: s.get_metadata(i) for i in s.ids()},
        [(h.id, h.distance) for h in s.search(q, 5)],
    )


def unchanged(s, before):
    assert snapshot(s) == before


# -- an independent reader/writer of the documented format (docs/format.md), for crafting files


_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


# magic, version, metric, dimension, count, next ordinal, dtype code (version 3), reserved, CRC
HEADER = struct.Struct("<8sIIQQQI16sI")
TAGS = [b"IDS ", b"META", b"ORDS", b"VECS"]


def parse(raw: bytes):
    """(header fields as a list, [(tag, flags, payload, crc)]) exactly as stored."""
    fields = list(HEADER.unpack_from(raw, 0))
    sections, pos = [], HEADER.size
    while pos < len(raw):
        tag, flags, length = struct.unpack_from("<4sIQ", raw, pos)
        payload = raw[pos + 16 : pos + 16 + length]
        (crc,) = struct.unpack_from("<I", raw, pos + 16 + length)
        sections.append([tag, flags, payload, crc])
        pos += 16 + length + 4
    return fields, sections


def build(fields, sections, fix_crcs: bool = True) -> bytes:
    """The file for these fields and sections; CRCs recomputed unless told otherwise."""
    head = HEADER.pack(*fields[:-1], 0)[:60]
    out = [head + struct.pack("<I", crc32c(head) if fix_crcs else fields[-1])]
    for tag, flags, payload, crc in sections:
        out.append(struct.pack("<4sIQ", tag, flags, len(payload)) + payload)
        out.append(struct.pack("<I", crc32c(payload) if fix_crcs else crc))
    return b"".join(out)


def small_store(ctx, metric="cosine", n=12, d=5, seed=0):
    r = np.random.default_rng(seed)
    s = ctx.create_storage(d, metric)
    X = r.standard_normal((n, d)).astype(np.float32)
    s.add_vectors(make_ids(n), X, [{"i": str(i), "tag": "x" * (i % 3)} for i in range(n)])
    return s, X


def scrambled_store(ctx, rng, metric, n, d, metadata_every, remove_every):
    """n random rows, metadata on the rows whose index metadata_every does not divide, then
    every remove_every-th id removed (swap-removes move rows between slots): (store, X, ids)."""
    s = ctx.create_storage(d, metric)
    X = rng.standard_normal((n, d)).astype(np.float32)
    ids = make_ids(n)
    s.add_vectors(ids, X, [{"n": str(i)} if i % metadata_every else {} for i in range(n)])
    s.remove_vectors(ids[::remove_every])
    return s, X, ids


def assert_same_store(a, b):
    """Same ids in the same slots, same rows bit for bit, same metadata."""
    assert a.dimension == b.dimension and a.metric == b.metric
    assert a.ids() == b.ids()
    for i in a.ids():
        va, vb = a.get_vector(i), b.get_vector(i)
        np.testing.assert_array_equal(va.data, vb.data)
        assert va.metadata == vb.metadata


# -- child processes that save, for failures no in-process test can cause -------------------


def child_program(backend: str, body: str) -> str:
    """A Python program for a child process: a context of the test's backend, then body."""
    return textwrap.dedent(
        f"""
        import os, sys, signal, resource
        import numpy as np
        import hive_gpu
        ctx = hive_gpu.create_context({backend!r})
        """
    ) + textwrap.dedent(body)


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def endless_saver(backend: str, target) -> str:
    """A child program that saves a store of 60000 x 64 floats (0.5) to target forever,
    printing "ready" first."""
    return child_program(
        backend,
        f"""
        s = ctx.create_storage(64, "euclidean")
        s.add_vectors([f"n{{i}}" for i in range(60000)], np.full((60000, 64), 0.5, np.float32))
        print("ready", flush=True)
        while True:
            s.save({str(target)!r})
        """,
    )
