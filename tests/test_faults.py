"""Resource faults and lifetime: requests larger than memory, contexts dying before their
storages, storages used after close()."""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from helpers import HEADER, crc32c, make_ids

import hive_gpu
from hive_gpu import OutOfMemoryError, StorageClosedError

MAX_DIM = 1 << 20


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _memory_of(ctx) -> int:
    info = ctx.device_info()
    return max(int(info.vram_total or 0), _host_memory_bytes())


def write_sparse_store(path, rows: int, dim: int = MAX_DIM) -> None:
    """A well-formed store of `rows` zero rows whose vectors section is a hole in the file:
    it claims rows * dim * 4 bytes of disk and costs almost none."""
    ids = b"".join(struct.pack("<I", len(i)) + i for i in (f"h{r}".encode() for r in range(rows)))
    meta = bytes(4 * rows)
    ords = struct.pack(f"<{rows}I", *range(rows))
    head = HEADER.pack(b"HIVEGPU\0", 1, 1, dim, rows, rows, bytes(20), 0)[:60]
    with open(path, "wb") as f:
        f.write(head + struct.pack("<I", crc32c(head)))
        for tag, payload in ((b"IDS ", ids), (b"META", meta), (b"ORDS", ords)):
            f.write(struct.pack("<4sIQ", tag, 0, len(payload)) + payload + struct.pack("<I", crc32c(payload)))
        vec_len = rows * dim * 4
        f.write(struct.pack("<4sIQ", b"VECS", 0, vec_len))
        f.seek(vec_len, os.SEEK_CUR)
        f.write(struct.pack("<I", 0))


def _child(backend: str, body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import gc, os, sys, resource
        import numpy as np
        import hive_gpu
        ctx = hive_gpu.create_context({backend!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _assert_intact(s, ids, X):
    assert len(s) == len(ids) and sorted(s.ids()) == sorted(ids)
    for i in (0, len(ids) // 2, len(ids) - 1):
        np.testing.assert_array_equal(s.get_vector(ids[i]).data, X[i])
    assert s.search(X[3], 1)[0].id == ids[3]


# -- out of memory -----------------------------------------------------------------------------


def _oom_load_body(path: str, limit_address_space: bool) -> str:
    # On the CPU the address space is capped first: with memory overcommit a huge reservation
    # could otherwise succeed and be filled page by page.
    return f"""
        r = np.random.default_rng(0)
        X = r.standard_normal((500, 16)).astype(np.float32)
        ids = [f"k{{i}}" for i in range(500)]
        keep = ctx.create_storage(16, "cosine")
        keep.add_vectors(ids, X, [{{"i": str(i)}} for i in range(500)])
        if {limit_address_space!r}:
            vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            ctx.load_storage({path!r})
        except hive_gpu.OutOfMemoryError as e:
            print("OutOfMemoryError", e)
        else:
            print("loaded")
        # The failed request changed nothing else: the other store and the context work.
        assert len(keep) == 500 and keep.get_metadata("k7") == {{"i": "7"}}
        np.testing.assert_array_equal(keep.get_vector("k499").data, X[499])
        assert keep.search(X[3], 1)[0].id == "k3"
        fresh = ctx.create_storage(16, "dot")
        fresh.add_vectors(ids[:10], X[:10])
        assert len(fresh) == 10
        print("intact")
        """


def test_loading_more_rows_than_memory_raises_oom(ctx, backend, tmp_path):
    # Twice the device's (and the host's) memory, in the largest rows allowed.
    need = 2 * _memory_of(ctx)
    rows = -(-need // (MAX_DIM * 4))
    path = tmp_path / "huge.hgv"
    try:
        write_sparse_store(path, rows)
    except OSError as e:  # a file system without sparse files this large
        pytest.skip(f"cannot create a {need >> 30} GiB sparse file here: {e}")
    try:
        out = _child(backend, _oom_load_body(str(path), backend == "cpu"))
    finally:
        path.unlink()
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[0].startswith("OutOfMemoryError"), out.stdout
    assert out.stdout.splitlines()[-1] == "intact"


def test_add_beyond_host_memory_raises_oom_and_keeps_data(backend):
    # The CPU engine's rows live in host memory: with the address space capped just above
    # what the process holds, growing the store fails for real inside the engine.
    if backend != "cpu":
        pytest.skip("an address-space cap would stop the GPU driver itself; see the pool-cap test")
    out = _child(
        backend,
        """
        r = np.random.default_rng(1)
        X = r.standard_normal((2000, 64)).astype(np.float32)
        ids = [f"k{i}" for i in range(2000)]
        s = ctx.create_storage(64, "euclidean")
        s.add_vectors(ids, X)
        # 24 MiB batch: above the size that is validated on several threads, and far more
        # than the 16 MiB of address space left below.
        big = np.ones((96000, 64), np.float32)
        big_ids = [f"b{i}" for i in range(96000)]
        vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), hard))
        try:
            s.add_vectors(big_ids, big)
        except hive_gpu.OutOfMemoryError as e:
            print("OutOfMemoryError", e)
        else:
            print("added")
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        assert len(s) == 2000 and "b0" not in s
        for i in (0, 999, 1999):
            np.testing.assert_array_equal(s.get_vector(ids[i]).data, X[i])
        assert s.search(X[5], 1)[0].id == "k5"
        s.add_vectors(big_ids[:100], big[:100])  # and it still grows once memory is back
        assert len(s) == 2100
        print("intact")
        """,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[0].startswith("OutOfMemoryError"), out.stdout
    assert out.stdout.splitlines()[-1] == "intact"


def test_add_beyond_pool_cap_raises_oom_and_keeps_data(ctx, rng):
    # Backends with a device memory pool honour a byte cap: the same fault, on the device.
    before = ctx.pool_stats()
    s = ctx.create_storage(256, "cosine")
    X = rng.standard_normal((1000, 256)).astype(np.float32)
    ids = make_ids(1000)
    s.add_vectors(ids, X)
    st = ctx.pool_stats()
    # The cap covers the rows and the pool memory in use (cached free memory is not in use).
    used = st.used_bytes + st.rows_bytes
    ctx.configure_pool(max_bytes=used + (1 << 20))
    try:
        if ctx.pool_stats().max_bytes != used + (1 << 20):
            pytest.skip(f"{ctx.backend}: no memory cap to configure")
        big = np.ones((20000, 256), np.float32)  # 20 MiB, far beyond the 1 MiB left
        with pytest.raises(OutOfMemoryError):
            s.add_vectors(make_ids(20000, "big"), big)
        _assert_intact(s, ids, X)
    finally:
        ctx.configure_pool(max_bytes=before.max_bytes)
    s.add_vectors(make_ids(20000, "big"), np.ones((20000, 256), np.float32))
    assert len(s) == 21000


def test_oom_is_a_memory_error():
    assert issubclass(OutOfMemoryError, MemoryError)
    assert issubclass(OutOfMemoryError, hive_gpu.HiveGpuError)


# -- a context dying before its storages ----------------------------------------------------------


def test_storage_outlives_its_context_object(backend, rng):
    # Storages keep their device alive: dropping every reference to the context is safe.
    c = hive_gpu.create_context(backend)
    s = c.create_storage(8, "euclidean")
    X = rng.standard_normal((50, 8)).astype(np.float32)
    ids = make_ids(50)
    s.add_vectors(ids, X)
    del c
    gc.collect()
    _assert_intact(s, ids, X)
    s.add_vector("late", X[0])
    s.remove_vector("v0")
    assert s.search(X[0], 1)[0].id == "late"
    s.close()


@pytest.mark.parametrize("order", ["storage-first", "context-first", "interpreter-exit", "cycle"])
def test_teardown_in_any_order_exits_cleanly(backend, order):
    body = {
        "storage-first": "s.close(); del s; del ctx; gc.collect()",
        "context-first": "del ctx; gc.collect(); s.add_vector('z', np.ones(4, np.float32)); del s; gc.collect()",
        "interpreter-exit": "sys.modules['__main__'].keep = (ctx, s)",
        "cycle": "a = [s, ctx]; a.append(a); del s, ctx, a",
    }[order]
    out = _child(
        backend,
        f"""
        s = ctx.create_storage(4, "cosine")
        s.add_vectors(["a", "b"], np.eye(2, 4, dtype=np.float32))
        {body}
        print("done", flush=True)
        """,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "done"
    assert "terminate" not in out.stderr and "Segmentation" not in out.stderr


# -- use after close() --------------------------------------------------------------------------


def test_every_call_after_close_raises(ctx, tmp_path):
    s = ctx.create_storage(3, "dot")
    s.add_vectors(["a", "b"], np.eye(2, 3, dtype=np.float32), [{"k": "v"}, {}])
    assert not s.closed
    s.close()
    assert s.closed
    s.close()  # closing twice is harmless
    v = np.ones(3, np.float32)
    calls = {
        "len": lambda: len(s),
        "vector_count": s.vector_count,
        "contains": lambda: "a" in s,
        "ids": s.ids,
        "memory_usage": s.memory_usage,
        "add_vector": lambda: s.add_vector("c", v),
        "add_vectors": lambda: s.add_vectors(["c"], v[None]),
        "add_vectors_empty": lambda: s.add_vectors([], np.zeros((0, 3), np.float32)),
        "update_vector": lambda: s.update_vector("a", v),
        "remove_vector": lambda: s.remove_vector("a"),
        "remove_vectors": lambda: s.remove_vectors(["a"]),
        "clear": s.clear,
        "get_vector": lambda: s.get_vector("a"),
        "get_metadata": lambda: s.get_metadata("a"),
        "search": lambda: s.search(v, 1),
        "search_batch": lambda: s.search_batch(v[None], 1),
        "save": lambda: s.save(tmp_path / "closed.hgv"),
    }
    for name, call in calls.items():
        with pytest.raises(StorageClosedError):
            call()
            pytest.fail(f"{name} did not raise")
    assert not (tmp_path / "closed.hgv").exists()
    assert "closed" in repr(s)
    assert s.dimension == 3  # the shape stays known


def test_context_manager_closes(ctx):
    with ctx.create_storage(2, "cosine") as s:
        s.add_vector("a", np.ones(2, np.float32))
    with pytest.raises(StorageClosedError):
        s.search(np.ones(2, np.float32), 1)


def test_close_while_other_threads_use_the_storage(ctx, rng):
    # Each concurrent call either completes or raises StorageClosedError: never a crash,
    # never a result read from freed rows.
    X = rng.standard_normal((3000, 32)).astype(np.float32)
    s = ctx.create_storage(32, "cosine")
    s.add_vectors(make_ids(3000), X)
    started = threading.Barrier(5)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def user(seed):
        r = np.random.default_rng(seed)
        started.wait()
        try:
            while True:
                q = r.standard_normal((4, 32)).astype(np.float32)
                _, ids = s.search_batch(q, 5)
                assert ids.shape == (4, 5)
                s.update_vector(f"v{seed}", q[0])
        except StorageClosedError:
            outcomes.append("closed")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait()
    s.close()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert outcomes == ["closed"] * 4
