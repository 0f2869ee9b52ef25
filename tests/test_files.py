"""Files as users meet them: errors that are the OSError they catch, paths that are not
regular files or hold a NUL, text that is not UTF-8, temporaries of killed saves, a
directory sync that fails, sections that lie about their length; and the in-memory form
(to_bytes / from_bytes), pickle, copy and VectorStorage.load."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from reference import METRICS, assert_matches
from helpers import assert_same_store, build, child_program, endless_saver, parse, run_child, scrambled_store, small_store

import hive_gpu
from hive_gpu import CorruptFileError, InvalidArgumentError, PersistenceError, StorageClosedError, VectorStorage

LINUX = sys.platform.startswith("linux")


# -- errors that are the OSError a user catches ---------------------------------------------


def test_missing_file_is_a_file_not_found_error(ctx, tmp_path):
    path = tmp_path / "missing.hgv"
    with pytest.raises(FileNotFoundError) as info:
        ctx.load_storage(path)
    e = info.value
    assert isinstance(e, PersistenceError) and isinstance(e, hive_gpu.HiveGpuError)
    assert e.errno == errno.ENOENT and e.strerror == os.strerror(errno.ENOENT)
    assert e.filename == str(path)
    assert "cannot open" in str(e) and str(path) in str(e)


def test_save_errors_carry_errno_and_the_target_path(ctx, tmp_path):
    s, _ = small_store(ctx, n=2)
    target = tmp_path / "no" / "dir" / "s.hgv"
    with pytest.raises(FileNotFoundError) as info:
        s.save(target)
    assert isinstance(info.value, PersistenceError)
    assert info.value.errno == errno.ENOENT and info.value.filename == str(target)
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(NotADirectoryError) as info:
        s.save(tmp_path / "afile" / "s.hgv")
    assert isinstance(info.value, PersistenceError) and info.value.errno == errno.ENOTDIR
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_directory_is_an_is_a_directory_error(ctx, tmp_path):
    with pytest.raises(IsADirectoryError) as info:
        ctx.load_storage(tmp_path)
    assert isinstance(info.value, PersistenceError)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_a_permission_error(ctx, tmp_path):
    s, _ = small_store(ctx, n=2)
    p = tmp_path / "s.hgv"
    s.save(p)
    p.chmod(0)
    try:
        with pytest.raises(PermissionError) as info:
            ctx.load_storage(p)
        assert isinstance(info.value, PersistenceError) and info.value.errno == errno.EACCES
    finally:
        p.chmod(0o600)


def test_file_errors_pickle_with_their_class_and_message(ctx, tmp_path):
    with pytest.raises(PersistenceError) as info:
        ctx.load_storage(tmp_path / "missing.hgv")
    e = pickle.loads(pickle.dumps(info.value))
    assert type(e) is type(info.value) and isinstance(e, FileNotFoundError)
    assert (e.errno, e.filename, str(e)) == (info.value.errno, info.value.filename, str(info.value))


# -- paths that are not regular files never block --------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_are_refused_at_once(backend, tmp_path):
    # In a child with a deadline: a load that blocks on the FIFO fails the test, not the run.
    fifo = tmp_path / "pipe.hgv"
    os.mkfifo(fifo)
    paths = [str(fifo)] + (["/dev/zero"] if os.path.exists("/dev/zero") else [])
    code = child_program(
        backend,
        f"""
        for p in {paths!r}:
            for call in (lambda: ctx.load_storage(p), lambda: hive_gpu.VectorStorage.load(p, ctx)):
                try:
                    call()
                except hive_gpu.PersistenceError as e:
                    assert "not a regular file" in str(e) and e.filename == p, (str(e), e.filename)
                else:
                    raise SystemExit("loaded " + p)
        print("refused")
        """,
    )
    out = run_child(code, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_refused_paths_leave_no_descriptor_open(ctx, tmp_path):
    fifo = tmp_path / "pipe.hgv"
    os.mkfifo(fifo)
    (tmp_path / "short.hgv").write_bytes(b"HIVEGPU")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        for p, error in ((fifo, PersistenceError), (tmp_path, IsADirectoryError),
                         (tmp_path / "short.hgv", CorruptFileError), (tmp_path / "missing", FileNotFoundError)):
            with pytest.raises(error):
                ctx.load_storage(p)
    assert len(os.listdir("/proc/self/fd")) == before


# -- a NUL in a path -------------------------------------------------------------------------


@pytest.mark.parametrize("form", [str, os.fsencode], ids=["str", "bytes"])
def test_path_with_nul_is_refused_before_any_file_operation(ctx, tmp_path, form):
    s, _ = small_store(ctx, n=3)
    target = tmp_path / "a.hgv"
    old, _ = small_store(ctx, n=5, seed=1)
    old.save(target)
    before = target.read_bytes()
    with pytest.raises(InvalidArgumentError, match="NUL"):
        s.save(form(str(target) + "\0x"))
    with pytest.raises(InvalidArgumentError, match="NUL"):
        ctx.load_storage(form(str(target) + "\0x"))
    with pytest.raises(InvalidArgumentError, match="NUL"):
        VectorStorage.load(form(str(target) + "\0x"), ctx)
    # The cut-off path was not written, nor anything beside it; the store is as it was.
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.hgv"]
    assert len(s) == 3


# -- text that is not UTF-8 ------------------------------------------------------------------


def _with_id(raw: bytes, new_id: bytes) -> bytes:
    """A copy of a one-vector file whose id is `new_id`, CRCs recomputed."""
    fields, sections = parse(raw)
    sections[0][2] = struct.pack("<I", len(new_id)) + new_id
    return build(fields, sections)


def _with_metadata(raw: bytes, key: bytes, value: bytes) -> bytes:
    """A copy of a one-vector file whose metadata is {key: value}, a str (type byte 0)."""
    fields, sections = parse(raw)
    sections[1][2] = struct.pack("<II", 1, len(key)) + key + struct.pack("<BI", 0, len(value)) + value
    return build(fields, sections)


BAD_UTF8 = [
    b"\xff",  # never valid
    b"ab\x80",  # lone continuation byte
    b"\xc0\x80",  # overlong NUL
    b"\xe0\x80\xaf",  # overlong '/'
    b"\xed\xa0\x80",  # a surrogate (U+D800): what a lone surrogate in Python would encode to
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x82",  # cut short
]


@pytest.mark.parametrize("bad", BAD_UTF8, ids=lambda b: b.hex())
def test_ids_and_metadata_that_are_not_utf8_are_refused_at_load(ctx, tmp_path, bad):
    s = ctx.create_storage(3, "cosine")
    s.add_vector("a", np.array([1.0, 2.0, 3.0], np.float32), {"k": "v"})
    raw = s.to_bytes()
    for crafted in (_with_id(raw, bad), _with_metadata(raw, bad, b"v"), _with_metadata(raw, b"k", bad)):
        p = tmp_path / "bad.hgv"
        p.write_bytes(crafted)
        with pytest.raises(CorruptFileError, match="UTF-8"):
            ctx.load_storage(p)
        with pytest.raises(CorruptFileError, match="UTF-8"):
            VectorStorage.from_bytes(crafted, ctx)
    # The same files with valid text load and read back.
    good = "é€😀".encode()
    t = VectorStorage.from_bytes(_with_metadata(_with_id(raw, good), good, good), ctx)
    assert t.ids() == ["é€😀"] and t.get_metadata("é€😀") == {"é€😀": "é€😀"}


def test_utf8_check_agrees_with_python_on_random_bytes(tmp_path):
    # The loader accepts an id exactly when Python can decode it: every id it accepts can
    # later be returned as a str.
    ctx = hive_gpu.CpuContext()
    s = ctx.create_storage(1, "dot_product")
    s.add_vector("a", np.ones(1, np.float32))
    raw = s.to_bytes()
    r = np.random.default_rng(7)
    cases = [bytes([b]) for b in range(1, 256)]
    cases += [bytes([lead, cont]) for lead in (0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5) for cont in (0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0)]
    for n in (2, 3, 4, 5, 8):
        cases += [bytes(r.integers(0x80, 0x100, n).tolist()) for _ in range(60)]
        cases += [bytes([0xE0 | int(r.integers(0, 16)), 0x80 | int(r.integers(0, 64)), 0x80 | int(r.integers(0, 64))]) for _ in range(20)]
        cases += [bytes([0xF0 | int(r.integers(0, 5)), 0x80 | int(r.integers(0, 64)), 0x80 | int(r.integers(0, 64)), 0x80 | int(r.integers(0, 64))]) for _ in range(20)]
    for case in cases:
        try:
            text = case.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:
            with pytest.raises(CorruptFileError):
                VectorStorage.from_bytes(_with_id(raw, case), ctx)
        else:
            assert VectorStorage.from_bytes(_with_id(raw, case), ctx).ids() == [text], case


# -- temporaries of killed saves --------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_save_removes_temporaries_of_dead_processes_only(ctx, tmp_path):
    s, _ = small_store(ctx, n=4)
    target = tmp_path / "s.hgv"
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        planted = {
            f"s.hgv.tmp.{dead}.0": False,  # a killed save of this target: removed
            f"s.hgv.tmp.{dead}.17": False,
            f"s.hgv.tmp.{live.pid}.0": True,  # a live process is saving: kept
            f"s.hgv.tmp.{os.getpid()}.999": True,  # this process: kept
            f"other.hgv.tmp.{dead}.0": True,  # another target: kept
            "s.hgv.tmp.x.0": True,  # not a temporary name: kept
            f"s.hgv.tmp.{dead}": True,
            f"s.hgv.tmp.{dead}.0.bak": True,
        }
        for name in planted:
            (tmp_path / name).write_bytes(b"partial")
        s.save(target)
        left = set(os.listdir(tmp_path))
        assert left == {"s.hgv"} | {n for n, kept in planted.items() if kept}
        assert_same_store(s, ctx.load_storage(target))
    finally:
        live.kill()
        live.wait()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL here")
def test_temporaries_of_a_save_killed_mid_write_go_with_the_next_save(ctx, backend, tmp_path):
    target = tmp_path / "s.hgv"
    code = endless_saver(backend, target)
    leftovers: list[str] = []
    for attempt in range(20):  # until a kill lands while a temporary exists
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(".tmp." in n for n in os.listdir(tmp_path)):
                time.sleep(0.001)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        leftovers = [n for n in os.listdir(tmp_path) if n.startswith("s.hgv.tmp.")]
        if leftovers:
            break
    assert leftovers, "no kill landed during a write"
    assert all(n.startswith(f"s.hgv.tmp.{child.pid}.") for n in leftovers)
    s, _ = small_store(ctx, n=3)
    s.save(target)
    assert os.listdir(tmp_path) == ["s.hgv"]
    assert_same_store(s, ctx.load_storage(target))


# -- a directory sync that fails after the rename --------------------------------------------

_FSYNC_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/stat.h>
/* fsync of a directory fails with EIO; of anything else, works. */
int fsync(int fd) {
    static int (*real)(int);
    struct stat st;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) { errno = EIO; return -1; }
    return real(fd);
}
"""


@pytest.mark.skipif(not LINUX or shutil.which("cc") is None, reason="needs Linux and a C compiler for LD_PRELOAD")
def test_failed_directory_sync_is_reported_and_the_new_file_is_in_place(tmp_path):
    # The failure is injected from outside (LD_PRELOAD), so the library has no test switch.
    src = tmp_path / "shim.c"
    src.write_text(_FSYNC_SHIM)
    shim = tmp_path / "shim.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(src), "-ldl"], check=True)
    target = tmp_path / "data" / "s.hgv"
    target.parent.mkdir()
    code = child_program(
        "cpu",
        f"""
        import errno
        s = ctx.create_storage(2, "cosine")
        s.add_vector("a", np.array([1.0, 2.0], np.float32))
        try:
            s.save({str(target)!r})
        except hive_gpu.PersistenceError as e:
            assert e.errno == errno.EIO and e.filename == {str(target)!r}, (e.errno, e.filename)
            print("reported:", e)
        else:
            print("saved")
        """,
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "LD_PRELOAD": str(shim)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("reported:") and "not confirmed durable" in out.stdout, out.stdout
    # The rename happened: the new store is there, complete, and no temporary is left.
    assert os.listdir(target.parent) == ["s.hgv"]
    assert hive_gpu.CpuContext().load_storage(target).ids() == ["a"]


# -- sections that claim more than they hold -------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="peak RSS through getrusage in bytes of KiB (Linux)")
def test_sparse_section_claiming_a_gib_is_refused_without_allocating_it(tmp_path):
    # A valid header, a valid IDS section, then a META section that claims 1 GiB over a hole
    # of a sparse file: the file's size allows the claim, its content does not back it.
    s = hive_gpu.CpuContext().create_storage(1, "cosine")
    s.add_vector("a", np.ones(1, np.float32))
    fields, sections = parse(s.to_bytes())
    head = build(fields, sections[:1])
    claim = 1 << 30
    p = tmp_path / "sparse.hgv"
    with open(p, "wb") as f:
        f.write(head + struct.pack("<4sIQ", b"META", 0, claim) + struct.pack("<I", 0))
        f.truncate(len(head) + 16 + claim + 4 + 200)  # the rest: a hole
    code = child_program(
        "cpu",
        f"""
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            ctx.load_storage({str(p)!r})
        except hive_gpu.CorruptFileError as e:
            print("refused:", e)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(peak - base)
        """,
    )
    out = run_child(code)
    assert out.returncode == 0, out.stderr
    assert "checksum mismatch in the metadata section" in out.stdout, out.stdout
    grew = int(out.stdout.split()[-1])
    # One 32 MiB chunk buffer, never the claimed 1 GiB.
    assert grew < 128 << 20, grew


# -- the in-memory form ----------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.value)
def test_to_bytes_is_the_file_and_from_bytes_rebuilds_it_exactly(ctx, rng, tmp_path, metric):
    s, X, ids = scrambled_store(ctx, rng, metric, n=200, d=12, metadata_every=3, remove_every=5)
    p = tmp_path / "s.hgv"
    s.save(p)
    raw = s.to_bytes()
    assert isinstance(raw, bytes) and raw == p.read_bytes()
    for form in (raw, bytearray(raw), memoryview(raw)):
        t = VectorStorage.from_bytes(form, ctx)
        assert t.backend == ctx.backend
        assert_same_store(s, t)
    # Searches on the rebuilt store answer as the reference does.
    keep = [i for i in range(200) if i % 5]
    Q = rng.standard_normal((4, 12)).astype(np.float32)
    scores, got = t.search_batch(Q, 7)
    for i in range(len(Q)):
        assert_matches(got[i], scores[i], X[keep], [ids[j] for j in keep], Q[i : i + 1], metric, 7)


def test_from_bytes_refuses_damage_and_non_bytes(ctx):
    s, _ = small_store(ctx, n=4)
    raw = s.to_bytes()
    with pytest.raises(CorruptFileError, match="truncated|runs past|shorter"):
        VectorStorage.from_bytes(raw[:-3], ctx)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x10
    with pytest.raises(CorruptFileError):
        VectorStorage.from_bytes(bytes(flipped), ctx)
    with pytest.raises(CorruptFileError):
        VectorStorage.from_bytes(b"", ctx)
    with pytest.raises(InvalidArgumentError):
        VectorStorage.from_bytes("not bytes", ctx)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        VectorStorage.from_bytes(raw, "cpu")  # type: ignore[arg-type]


def test_empty_store_roundtrips_through_bytes(ctx):
    s = ctx.create_storage(7, "euclidean")
    t = VectorStorage.from_bytes(s.to_bytes(), ctx)
    assert len(t) == 0 and t.dimension == 7 and t.metric == s.metric


def test_pickle_rebuilds_on_the_same_backend(ctx, rng):
    s, _ = small_store(ctx, "dot_product", n=30)
    t = pickle.loads(pickle.dumps(s))
    assert t.backend == ctx.backend
    assert_same_store(s, t)
    s.add_vector("new", rng.standard_normal(5).astype(np.float32))
    assert "new" not in t


def test_unpickling_where_the_backend_is_missing_uses_the_default_context(ctx):
    s, _ = small_store(ctx, n=3)
    rebuild, (data, backend, device) = s.__reduce__()
    assert backend == ctx.backend
    t = rebuild(data, "no-such-backend", 0)
    assert t.backend == hive_gpu.create_context("auto").backend
    assert_same_store(s, t)
    t = rebuild(data, backend, 10**6)  # no such device
    assert_same_store(s, t)


def test_copy_and_deepcopy_are_independent_stores_on_the_same_context(ctx, rng):
    s, _ = small_store(ctx, n=10)
    for dup in (copy.copy(s), copy.deepcopy(s), copy.deepcopy([s, s])[0]):
        assert dup is not s and dup.backend == s.backend
        assert_same_store(s, dup)
        dup.remove_vector("v0")
        dup.update_vector("v1", rng.standard_normal(5).astype(np.float32), {"changed": "1"})
        assert "v0" in s and s.get_metadata("v1") == {"i": "1", "tag": "x"}
    s.close()
    with pytest.raises(StorageClosedError):
        copy.copy(s)
    with pytest.raises(StorageClosedError):
        pickle.dumps(s)


def test_vector_storage_load_beside_load_storage(ctx, tmp_path):
    s, _ = small_store(ctx, n=6)
    p = tmp_path / "s.hgv"
    s.save(p)
    assert_same_store(s, VectorStorage.load(p, ctx))
    assert VectorStorage.load(p, ctx).backend == ctx.backend
    default = VectorStorage.load(str(p))
    assert default.backend == hive_gpu.create_context("auto").backend
    assert_same_store(s, default)
    # The default context is made once and shared.
    from hive_gpu._contexts import default_context

    assert default_context() is default_context()
    with pytest.raises(FileNotFoundError):
        VectorStorage.load(tmp_path / "missing.hgv")
