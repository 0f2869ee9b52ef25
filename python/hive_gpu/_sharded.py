"""One logical store over several contexts: every GPU of a host, or several CPU contexts.

Each shard is an ordinary VectorStorage. This module keeps what only the whole store knows:
which shard holds an id, and the global insertion sequence that breaks ties across shards
the way one store breaks them (older first). ``_ShardedBase`` is shared with
``hive_gpu.distributed.RayStorage``, which runs the same ``_Shard`` operations in Ray actors.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import socket
import threading
import time
import uuid
import zlib
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ._arrays import as_float32, check_id, check_ids, check_k, check_metadata, storage_dtype
from ._contexts import Context, create_context
from ._filter import Filter, compile_filter
from ._merge import merge_order
from ._routing import split_rows
from ._storage import VectorStorage, _add_vector_args, _add_vectors_args, _as_list, _known_id
from ._types import GpuDistanceMetric, GpuSearchResult, GpuVector, metadata_given
from .errors import (
    CorruptFileError,
    DimensionMismatchError,
    DuplicateIdError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NonFiniteValueError,
    PersistenceError,
    StorageClosedError,
    VectorNotFoundError,
)

__all__ = ["ShardedStorage", "create_sharded_storage"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_MAX_ID_BYTES = 4096  # the core's kMaxIdBytes
_MAX_SQUARED_NORM = 3.4028234663852886e38 / 4.0  # the core's kMaxSquaredNorm
_SHARD_BITS = 16  # an id's entry is (sequence << 16) | shard: one int per id
_SHARD_MASK = (1 << _SHARD_BITS) - 1
_ROOM_TTL_S = 1.0
_THREADED_WORK = 1 << 20  # free memory is re-read at most this often when routing
MANIFEST = "manifest.json"
_FORMAT = "hive_gpu.sharded"
_FORMAT_VERSION = 1


def check_dtype(dtype: Any) -> str:
    """The storage dtype's name (see hive_gpu._arrays.storage_dtype); InvalidDtypeError otherwise."""
    return storage_dtype(dtype)


def _file_digest(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            size += len(chunk)
            h.update(chunk)
    return size, h.hexdigest()


def _ids_crc(ids: Sequence[str]) -> int:
    return zlib.crc32("\0".join(ids).encode("utf-8", "surrogatepass"))


class _Shard:
    """One shard: a context and its store, and every operation the sharded forms run on it.

    Local shards run these on threads; Ray actors run the very same methods."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.store: VectorStorage | None = None
        self.dtype = "float32"

    def _new_store(self, dimension: int, metric: Any) -> VectorStorage:
        kw = {} if self.dtype == "float32" else {"dtype": self.dtype}
        return self.context.create_storage(dimension, metric, **kw)

    def create(self, dimension: int, metric: Any, dtype: str) -> None:
        self.dtype = dtype
        self.store = self._new_store(dimension, metric)

    def load(self, path: str, dtype: str) -> list[str]:
        """Load a shard file; its ids in slot order, the order of the saved sequences."""
        self.dtype = dtype
        self.store = self.context.load_storage(path)
        return self.store.ids()

    def rank(self, tasks: list[tuple[np.ndarray, np.ndarray]], batch: bool) -> list[list[int]]:
        """For each (query, rows), the order this engine gives the rows (oldest first): a
        store of just those rows ranks them by the engine's own scores, as one holding every
        row would."""
        tmp = self._new_store(self.store.dimension, self.store.metric)
        out = []
        try:
            for query, rows in tasks:
                tmp.clear()
                tmp.add_vectors([str(j) for j in range(len(rows))], rows)
                if batch:
                    got = tmp.search_batch(query.reshape(1, -1), len(rows))[1][0]
                else:
                    got = [h.id for h in tmp.search(query, len(rows))]
                out.append([int(i) for i in got])
            return out
        finally:
            tmp.close()

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The rows of ``ids``, as stored."""
        return self.store.get_vectors(ids)[0]

    def get_vectors(self, ids: list[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        return self.store.get_vectors(ids)

    def ids_filtered(self, filter: Any) -> list[str]:
        return self.store.ids(filter)

    def count(self, filter: Any) -> int:
        return self.store.count(filter)

    def upsert_vectors(self, ids: list[str], data: np.ndarray, metadata: list[dict[str, Any] | None]) -> None:
        self.store.upsert_vectors(ids, data, metadata or None)

    def update_metadata(self, id: str, metadata: dict[str, Any]) -> bool:
        return self.store.update_metadata(id, metadata)

    def add_vectors(self, ids: list[str], data: np.ndarray, metadata: list[dict[str, str]]) -> None:
        self.store.add_vectors(ids, data, metadata or None)

    def remove_vectors(self, ids: list[str]) -> int:
        return self.store.remove_vectors(ids)

    def update_vector(self, id: str, data: np.ndarray, metadata: dict[str, str] | None) -> bool:
        return self.store.update_vector(id, data, metadata)

    def get_vector(self, id: str) -> GpuVector | None:
        return self.store.get_vector(id)

    def get_metadata(self, id: str) -> dict[str, str] | None:
        return self.store.get_metadata(id)

    def search(self, query: np.ndarray, k: int, filter: Any) -> list[GpuSearchResult]:
        return self.store.search(query, k) if filter is None else self.store.search(query, k, filter=filter)

    def search_batch(self, queries: np.ndarray, k: int, filter: Any) -> tuple[np.ndarray, np.ndarray]:
        if filter is None:
            return self.store.search_batch(queries, k)
        return self.store.search_batch(queries, k, filter=filter)

    def clear(self) -> None:
        self.store.clear()

    def memory_usage(self) -> int:
        return self.store.memory_usage()

    def save(self, path: str) -> tuple[int, str, int]:
        """Save; (size, sha256, crc of the ids in slot order) of what was written."""
        self.store.save(path)
        size, digest = _file_digest(path)
        return size, digest, _ids_crc(self.store.ids())

    def ids(self) -> list[str]:
        return self.store.ids()

    def export(self) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
        """Every row in slot order: (ids, vectors, metadata)."""
        ids = self.store.ids()
        if not ids:
            return ids, np.empty((0, self.store.dimension), np.float32), []
        rows, mds = self.store.get_vectors(ids)
        return ids, rows, mds

    def room(self) -> tuple[tuple, int | None]:
        """(device key, free bytes) for routing; free is None where the context has no
        device memory of its own (CPU) or does not report it."""
        info = self.context.device_info()
        key = (socket.gethostname(), info.backend, info.pci_bus_id or info.device_id)
        if self.context.backend == "cpu" or "vram_available" in info.unknown:
            return key, None
        free = info.vram_available
        pool = self.context.pool_stats()
        if pool.max_bytes > 0:
            free = min(free, max(0, pool.max_bytes - pool.rows_bytes - pool.used_bytes))
        return key, free

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


class _RWLock:
    """Shared for reads, exclusive for writes; a waiting writer stops new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _check_rows(arr: np.ndarray, what: str) -> None:
    """The core's row checks (finite, squared norm <= FLT_MAX/4, summed in float64), done
    before any shard is touched."""
    step = max(1, (1 << 21) // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], step):
        block = arr[start : start + step].astype(np.float64)
        ss = np.einsum("ij,ij->i", block, block)
        bad = np.flatnonzero(~(ss <= _MAX_SQUARED_NORM))
        if bad.size:
            row = start + int(bad[0])
            if not np.isfinite(arr[row]).all():
                raise NonFiniteValueError(f"{what}: row {row} contains NaN or infinity")
            raise InvalidArgumentError(f"{what}: row {row} has a squared norm beyond FLT_MAX/4")


def dir_path(path: Any) -> str:
    """A save directory argument as a str; the TypeError of ours for anything else."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise InvalidArgumentTypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def _filter_arg(filter: Any) -> dict[str, Any] | None:
    """A ``filter=`` argument checked here (the errors VectorStorage raises), as the plain
    dict the shards compile again: a dict crosses to a Ray actor, a compiled filter does not."""
    if compile_filter(filter) is None:
        return None
    return filter._expr if isinstance(filter, Filter) else filter


def _check_new_ids(ids: list[str]) -> None:
    for i in ids:
        check_id(i)  # the TypeError of ours for a non-str, as VectorStorage raises
        size = len(i) if i.isascii() else len(i.encode("utf-8"))
        if size == 0:
            raise InvalidArgumentError("vector id must not be empty")
        if size > _MAX_ID_BYTES:
            raise InvalidArgumentError(f"vector id is {size} bytes long; the limit is {_MAX_ID_BYTES}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DuplicateIdError(f"id '{dup}' appears twice in the batch")


class _ShardedBase(ABC):
    """Everything a sharded store does above its shards. A subclass provides ``_run``: run
    a list of (shard, operation, args) at once and return each result or exception."""

    def _init_state(self, n_shards: int, dimension: int, metric: GpuDistanceMetric, dtype: str) -> None:
        if n_shards < 1:
            raise InvalidArgumentError("a sharded storage needs at least one shard")
        if n_shards > _SHARD_MASK + 1:
            raise InvalidArgumentError(f"at most {_SHARD_MASK + 1} shards")
        self._n = n_shards
        self._dimension = dimension
        self._metric = metric
        self._dtype = dtype
        # id -> (sequence << 16) | shard, in insertion order (dict order): 132 bytes per id
        # measured with 13-character ids, the string included (benchmarks/bench_sharded.py).
        self._where: dict[str, int] = {}
        self._counts = [0] * n_shards
        self._next_seq = 0
        self._lock = _RWLock()
        self._closed = False
        self._room: tuple[float, list[float] | None] = (-1e9, None)

    # The primitive.
    @abstractmethod
    def _run(self, calls: list[tuple[int, str, tuple]], parallel: bool = True) -> list[Any]:
        """Run (shard, operation, args) calls at once; each call's result or exception."""

    def _all(self, calls: list[tuple[int, str, tuple]], parallel: bool = True) -> list[Any]:
        out = self._run(calls, parallel)
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError("the storage is closed")

    # Properties.
    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def metric(self) -> GpuDistanceMetric:
        return self._metric

    @property
    def dtype(self) -> str:
        """How every shard stores its rows: "float32", "float16" or "bfloat16" (see
        VectorStorage); get_vectors returns float32 copies of the stored values."""
        return self._dtype

    @property
    def shard_count(self) -> int:
        return self._n

    def shard_sizes(self) -> list[int]:
        """Rows held by each shard."""
        with self._lock.read():
            self._check_open()
            return list(self._counts)

    def vector_count(self) -> int:
        self._check_open()
        return len(self._where)

    def __len__(self) -> int:
        return self.vector_count()

    def __contains__(self, id: object) -> bool:
        self._check_open()
        return isinstance(id, str) and id in self._where

    def __iter__(self) -> Iterator[str]:
        """The ids in insertion order, as they were when the iteration began."""
        return iter(self.ids())

    def ids(self, filter: dict[str, Any] | Filter | None = None) -> list[str]:
        """Every id in insertion order (an update keeps an id's place; a removed id that is
        added again goes last); with ``filter``, those it passes."""
        f = _filter_arg(filter)
        with self._lock.read():
            self._check_open()
            if f is None:
                return list(self._where)
            live = [i for i in range(self._n) if self._counts[i]]
            passed = {i for ids in self._all([(s, "ids_filtered", (f,)) for s in live]) for i in ids}
            return [i for i in self._where if i in passed]

    def count(self, filter: dict[str, Any] | Filter | None = None) -> int:
        """How many vectors ``filter`` passes (all of them without one)."""
        f = _filter_arg(filter)
        with self._lock.read():
            self._check_open()
            if f is None:
                return len(self._where)
            return sum(self._all([(i, "count", (f,)) for i in range(self._n) if self._counts[i]]))

    def memory_usage(self) -> int:
        """Bytes of device memory held by all shards."""
        with self._lock.read():
            self._check_open()
            return sum(self._all([(i, "memory_usage", ()) for i in range(self._n)]))

    # Writes.
    def add_vector(self, vector: GpuVector | str, data: Any = None, metadata: dict[str, str] | None = None) -> None:
        """Add one vector: ``add_vector(GpuVector(...))`` or ``add_vector(id, data, metadata)``."""
        id, row, md = _add_vector_args(vector, data, metadata)
        self._add([id], row.reshape(1, -1), [md] if md else [], "vector")

    def add_vectors(
        self,
        ids: Sequence[str] | Sequence[GpuVector],
        data: Any = None,
        metadata: Sequence[dict[str, str] | None] | None = None,
    ) -> None:
        """Add a batch, all or nothing, split over the shards (see ``hive_gpu._routing``):
        ``add_vectors(ids, array[n, dim], metadata=None)`` or ``add_vectors([GpuVector, ...])``."""
        args = _add_vectors_args(ids, data, metadata)
        if args is None:
            return
        id_list, arr, md = args
        self._add(id_list, arr, md, "vectors")

    def _add(self, ids: list[str], arr: np.ndarray, md: list[dict[str, str]], what: str) -> None:
        """Validate completely, then write each shard's contiguous slice in one call; if a
        shard fails, undo the others."""
        if arr.shape[1] != self._dimension:
            raise DimensionMismatchError(
                f"{what} {'has' if what == 'vector' else 'have'} dimension {arr.shape[1]}, "
                f"the storage has dimension {self._dimension}"
            )
        _check_new_ids(ids)
        _check_rows(arr, what)
        with self._lock.write():
            self._check_open()
            self._add_checked(ids, arr, md, None)

    def _add_checked(self, ids: list[str], arr: np.ndarray, md: list[dict[str, str]], seqs: np.ndarray | None) -> None:
        """The part of ``_add`` that needs the write lock (or a store nobody else sees yet).
        ``seqs``: the rows' sequences (a load), else new ones."""
        n = len(ids)
        if not self._where.keys().isdisjoint(ids):
            dup = next(i for i in ids if i in self._where)
            raise DuplicateIdError(f"id '{dup}' already exists")
        if n == 0:
            return
        take = split_rows(self._counts, self._capacities(), n)
        calls, bounds, start = [], [], 0
        for shard, t in enumerate(take):
            if t:
                s = slice(start, start + t)
                calls.append((shard, "add_vectors", (ids[s], arr[s], md[s] if md else [])))
                bounds.append((shard, start, start + t))
                start += t
        out = self._run(calls)
        failed = [r for r in out if isinstance(r, BaseException)]
        if failed:
            undo = [(c[0], "remove_vectors", (c[2][0],)) for c, r in zip(calls, out) if not isinstance(r, BaseException)]
            self._run(undo)
            raise failed[0]
        if seqs is None:
            seqs = np.arange(self._next_seq, self._next_seq + n, dtype=np.int64)
        keys = seqs << _SHARD_BITS
        for shard, b, e in bounds:
            keys[b:e] |= shard
            self._counts[shard] += e - b
        self._where.update(zip(ids, keys.tolist()))
        self._next_seq = max(self._next_seq, int(seqs.max()) + 1)

    def _capacities(self) -> list[float] | None:
        """Each shard's capacity in rows (see ``hive_gpu._routing``), re-read at most once per
        ``_ROOM_TTL_S``; shards on one device share its free memory."""
        at, free = self._room
        now = time.monotonic()
        if now - at > _ROOM_TTL_S:
            rooms = self._all([(i, "room", ()) for i in range(self._n)])
            first: dict[tuple, int | None] = {}
            free = [first.setdefault(key, f) for key, f in rooms]
            self._room = (now, free)
        if free is None or any(f is None for f in free):
            return None
        row_bytes = self._dimension * DTYPE_BYTES[self._dtype] + 16
        return [c + f / row_bytes for c, f in zip(self._counts, free)]

    def update_vector(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, str] | None = None
    ) -> bool:
        """Replace a vector's data (and its metadata when given); it keeps its age for ties.
        False if the id is unknown."""
        if isinstance(vector, GpuVector):
            id, data, metadata = vector.id, vector.data, vector.metadata
        else:
            id = vector
        if not _known_id(id):
            return False
        row = self._check_queries(data, 1, "vector")  # checked even for an unknown id, as one store does
        md = check_metadata(metadata) if metadata_given(metadata) else None
        with self._lock.write():
            self._check_open()
            where = self._where.get(id)
            if where is None:
                return False
            return self._all([(where & _SHARD_MASK, "update_vector", (id, row, md))])[0]

    def update_metadata(self, id: str, metadata: dict[str, Any]) -> bool:
        """Replace a vector's metadata (``{}`` clears it). False if the id is unknown."""
        md = check_metadata(metadata)
        if not _known_id(id):
            return False
        with self._lock.write():
            self._check_open()
            shard = self._shard_of(id)
            return shard is not None and self._all([(shard, "update_metadata", (id, md))])[0]

    def upsert_vectors(
        self, ids: Sequence[str], data: Any, metadata: Sequence[dict[str, Any] | None] | None = None
    ) -> None:
        """Add the ids not stored and replace the vectors of those stored, all or nothing
        across shards: everything is checked first, and if a shard still fails, the shards
        already written get their old rows and metadata back. ``metadata`` as in
        ``VectorStorage.upsert_vectors`` (None keeps a stored id's metadata)."""
        id_list = check_ids(ids)
        md: list[dict[str, Any] | None] = []
        if metadata is not None:
            md = [None if m is None else check_metadata(m) for m in _as_list(metadata, "metadata")]
            if len(md) != len(id_list):
                raise InvalidArgumentError(f"got {len(md)} metadata entries for {len(id_list)} vectors")
        arr = as_float32(data, 2, "vectors")
        if arr.shape[0] != len(id_list):
            raise InvalidArgumentError(f"got {len(id_list)} ids for {arr.shape[0]} vectors")
        if arr.shape[1] != self._dimension:
            raise DimensionMismatchError(
                f"vectors have dimension {arr.shape[1]}, the storage has dimension {self._dimension}"
            )
        _check_new_ids(id_list)
        _check_rows(arr, "vectors")
        with self._lock.write():
            self._check_open()
            old_at = [j for j, i in enumerate(id_list) if i in self._where]
            new_at = [j for j, i in enumerate(id_list) if i not in self._where]
            by_shard: dict[int, list[int]] = {}
            for j in old_at:
                by_shard.setdefault(self._where[id_list[j]] & _SHARD_MASK, []).append(j)
            groups = [(shard, [id_list[j] for j in js], js) for shard, js in by_shard.items()]
            # The rows and metadata to put back if a later step fails.
            saved = self._all([(shard, "get_vectors", (g,)) for shard, g, _ in groups])
            calls = [(shard, "upsert_vectors", (g, arr[js], [md[j] for j in js] if md else [])) for shard, g, js in groups]
            out = self._run(calls)
            failed = [r for r in out if isinstance(r, BaseException)]
            if not failed and new_at:
                new_md = [md[j] or {} for j in new_at] if md else []
                try:
                    self._add_checked([id_list[j] for j in new_at], np.ascontiguousarray(arr[new_at]), new_md if any(new_md) else [], None)
                except BaseException as e:
                    failed = [e]
            if failed:
                undo = [
                    (shard, "upsert_vectors", (g, rows, mds))
                    for (shard, g, _), (rows, mds), r in zip(groups, saved, out)
                    if not isinstance(r, BaseException)
                ]
                self._run(undo)
                raise failed[0]

    def remove_vector(self, id: str) -> bool:
        """Remove a vector; False if the id is unknown."""
        return _known_id(id) and self.remove_vectors([id]) == 1

    def remove_vectors(
        self, ids: Iterable[str] | None = None, *, filter: dict[str, Any] | Filter | None = None
    ) -> int:
        """Remove the vectors named by ``ids``, or those ``filter`` passes (give exactly one),
        one call per shard; returns how many were removed. A filter is evaluated on every
        shard before any row is removed, so a filter a shard refuses removes nothing; only a
        shard failing during the removal itself (a dead Ray actor) leaves the other shards'
        removals done, and the error is raised."""
        if (ids is None) == (filter is None):
            raise InvalidArgumentTypeError("remove_vectors takes either ids or filter=, not both or neither")
        if filter is not None:
            f = _filter_arg(filter)
            with self._lock.write():
                self._check_open()
                live = [i for i in range(self._n) if self._counts[i]]
                matched = self._all([(i, "ids_filtered", (f,)) for i in live])
                return self._remove_known([i for ids in matched for i in ids])
        id_list = check_ids(ids)
        with self._lock.write():
            self._check_open()
            return self._remove_known(id_list)

    def _remove_known(self, id_list: list[str]) -> int:
        """Remove ``id_list`` (unknown ids are skipped); the caller holds the write lock."""
        by_shard: dict[int, list[str]] = {}
        for i in dict.fromkeys(id_list):
            where = self._where.get(i)
            if where is not None:
                by_shard.setdefault(where & _SHARD_MASK, []).append(i)
        calls = [(shard, "remove_vectors", (group,)) for shard, group in by_shard.items()]
        out = self._run(calls)
        removed = 0
        for (shard, _, (group,)), r in zip(calls, out):
            if not isinstance(r, BaseException):
                for i in group:
                    del self._where[i]
                self._counts[shard] -= len(group)
                removed += len(group)
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return removed

    def clear(self) -> None:
        """Remove every vector from every shard."""
        with self._lock.write():
            self._check_open()
            self._all([(i, "clear", ()) for i in range(self._n)])
            self._where.clear()
            self._counts = [0] * self._n

    # Reads.
    def _shard_of(self, id: Any) -> int | None:
        where = self._where.get(id) if type(id) is str else None
        return None if where is None else where & _SHARD_MASK

    def get_vector(self, id: str) -> GpuVector | None:
        """The vector of ``id`` (its data and metadata), or None."""
        if not _known_id(id):
            return None
        with self._lock.read():
            self._check_open()
            shard = self._shard_of(id)
            return None if shard is None else self._all([(shard, "get_vector", (id,))])[0]

    def get_vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The vectors of ``ids`` as ``(array[len(ids), dimension] float32, metadata list)``,
        in the order given, one call per shard. VectorNotFoundError (a KeyError) names the
        first unknown id."""
        id_list = check_ids(ids)
        with self._lock.read():
            self._check_open()
            by_shard: dict[int, list[int]] = {}
            for j, i in enumerate(id_list):
                shard = self._shard_of(i)
                if shard is None:
                    raise VectorNotFoundError(f"no vector has id {i!r}")
                by_shard.setdefault(shard, []).append(j)
            got = self._all([(shard, "get_vectors", ([id_list[j] for j in js],)) for shard, js in by_shard.items()])
        rows = np.empty((len(id_list), self._dimension), np.float32)
        mds: list[Any] = [None] * len(id_list)
        for js, (r, m) in zip(by_shard.values(), got):
            rows[js] = r
            for j, d in zip(js, m):
                mds[j] = d
        return rows, mds

    def get_metadata(self, id: str) -> dict[str, str] | None:
        """The metadata of ``id`` (a copy), or None when the id is unknown."""
        if not _known_id(id):
            return None
        with self._lock.read():
            self._check_open()
            shard = self._shard_of(id)
            return None if shard is None else self._all([(shard, "get_metadata", (id,))])[0]

    def _check_queries(self, queries: Any, ndim: int, what: str, values: bool = True) -> np.ndarray:
        """``queries`` (or a row) as float32 of the store's dimension; ``values``: also
        finite and within the norm limit (searches leave that to the shards, which check
        before they read anything, unless no shard has rows)."""
        q = as_float32(queries, ndim, what)
        if q.shape[-1] != self._dimension:
            raise DimensionMismatchError(
                f"{what} {'has' if ndim == 1 else 'have'} dimension {q.shape[-1]}, "
                f"the storage has dimension {self._dimension}"
            )
        if values:
            _check_rows(q.reshape(-1, self._dimension), what)
        return q

    def _seqs(self, ids: Iterable[str]) -> np.ndarray:
        where = self._where
        return np.fromiter((where[i] >> _SHARD_BITS for i in ids), np.int64)

    def search(self, query: Any, k: int = 10, *, filter: Any = None) -> list[GpuSearchResult]:
        """The ``min(k, len(self))`` nearest vectors to ``query``, best first, exactly as one
        store holding every row would answer: every shard searches at once, then one merge."""
        q = self._check_queries(query, 1, "query", values=False)
        k = check_k(k)
        filter = _filter_arg(filter)
        with self._lock.read():
            self._check_open()
            live = [i for i in range(self._n) if self._counts[i]]
            if len(live) <= 1:  # one shard's list is already the answer
                if not live:
                    _check_rows(q.reshape(1, -1), "query")
                return self._all([(i, "search", (q, k, filter)) for i in live])[0] if live else []
            hits = self._all([(i, "search", (q, k, filter)) for i in live], self._worth_threads(live, 1))
            lists = [
                (i, np.array([h.distance for h in hs], np.float32).reshape(1, -1), np.array([h.id for h in hs], object).reshape(1, -1))
                for i, hs in zip(live, hits)
            ]
            order = self._merge(q.reshape(1, -1), k, lists, batch=False)[0]
        flat = [h for hs in hits for h in hs]
        return [flat[j] for j in order]

    def search_batch(self, queries: Any, k: int = 10, *, filter: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS-style batch search: ``(distances[nq, k'], ids[nq, k'])``, ``k' = min(k, len(self))``,
        equal to one store's answer. The batch is sent once to every shard."""
        q = self._check_queries(queries, 2, "queries", values=False)
        k = check_k(k)
        filter = _filter_arg(filter)
        nq = q.shape[0]
        with self._lock.read():
            self._check_open()
            live = [i for i in range(self._n) if self._counts[i]]
            if nq == 0 or not live:
                _check_rows(q, "queries")
                kk = min(k, len(self._where) if filter is None else self._count_matches(live, filter))
                return np.empty((nq, kk), np.float32), np.empty((nq, kk), object)
            if len(live) == 1:
                return self._all([(live[0], "search_batch", (q, k, filter))])[0]
            got = self._all([(i, "search_batch", (q, k, filter)) for i in live], self._worth_threads(live, nq))
            lists = [(i, scores, ids) for i, (scores, ids) in zip(live, got)]
            order = self._merge(q, k, lists, batch=True)
        all_scores = np.concatenate([s for _, s, _ in lists], axis=1)
        all_ids = np.concatenate([ids for _, _, ids in lists], axis=1)
        return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)

    def _count_matches(self, live: list[int], filter: Any) -> int:
        return sum(self._all([(i, "count", (filter,)) for i in live]))

    def _worth_threads(self, live: list[int], nq: int) -> bool:
        """Whether a search is worth a thread per shard: below about a million multiply-adds
        per shard, handing work to another thread costs more than the work."""
        return max(self._counts[i] for i in live) * self._dimension * nq >= _THREADED_WORK

    def _merge(self, q: np.ndarray, k: int, lists: list[tuple[int, np.ndarray, np.ndarray]], batch: bool) -> np.ndarray:
        """The merged order of the shards' (shard, scores[nq, k_s], ids[nq, k_s]) lists."""
        if not lists:
            return np.empty((q.shape[0], 0), np.intp)
        seqs = [self._seqs(ids.ravel()).reshape(ids.shape) for _, _, ids in lists]
        scores = [s for _, s, _ in lists]
        total = sum(s.shape[1] for s in scores)
        order = merge_order(scores, seqs, total, self._metric.higher_is_better)
        kk = min(k, total)
        if self._metric is GpuDistanceMetric.EUCLIDEAN and len(lists) > 1:
            self._order_root_ties(q, lists, order, kk, batch)
        return order[:, :kk]

    def _order_root_ties(
        self, q: np.ndarray, lists: list[tuple[int, np.ndarray, np.ndarray]], order: np.ndarray, kk: int, batch: bool
    ) -> None:
        """Euclidean distances are the float32 roots of the engines' squared distances, and
        two different squares can round to one root. A shard orders such rows by the square,
        which the merge cannot see: a run of equal roots within the top k keeps its shard's
        order, or, when it spans shards, is re-ranked by the engine (``_Shard.rank``), in
        place in ``order``. A root of 0 has the one square 0: a true tie, already in order."""
        all_scores = np.concatenate([s for _, s, _ in lists], axis=1)
        all_ids = np.concatenate([ids for _, _, ids in lists], axis=1)
        shard_of = np.concatenate([np.full(s.shape[1], i) for i, s, _ in lists])
        spans = []  # (query, begin, end) of runs that span shards
        for r in range(order.shape[0]):
            sc = all_scores[r, order[r]]
            tie = sc[1:] == sc[:-1]  # position p ties with p + 1
            if not tie[: kk].any():
                continue
            b = 0
            for p in range(1, len(sc) + 1):
                if p < len(sc) and tie[p - 1]:
                    continue
                if p - b > 1 and sc[b] != 0:  # the run [b, p)
                    cols = order[r, b:p]
                    if len(set(shard_of[cols].tolist())) < 2:
                        order[r, b:p] = np.sort(cols)  # one shard's rows: its list order
                    else:
                        spans.append((r, b, p))
                if p >= kk:
                    break
                b = p
        if not spans:
            return
        # One call per shard for the rows, one per shard for the rankings.
        wanted = {str(all_ids[r, c]) for r, b, e in spans for c in order[r, b:e]}
        by_shard: dict[int, list[str]] = {}
        for id in wanted:
            by_shard.setdefault(self._shard_of(id), []).append(id)
        got = self._all([(shard, "vectors", (group,)) for shard, group in by_shard.items()])
        row_of = {id: row for group, rows in zip(by_shard.values(), got) for id, row in zip(group, rows)}
        tasks: dict[int, list[tuple[int, int, int]]] = {}
        for r, b, e in spans:
            tasks.setdefault(int(shard_of[order[r, b]]), []).append((r, b, e))
        calls = [
            (shard, "rank", ([(q[r], np.stack([row_of[str(all_ids[r, c])] for c in order[r, b:e]])) for r, b, e in ts], batch))
            for shard, ts in tasks.items()
        ]
        for ts, perms in zip(tasks.values(), self._all(calls)):
            for (r, b, e), perm in zip(ts, perms):
                order[r, b:e] = order[r, b:e][perm]

    # -- asyncio: the synchronous calls on the loop's executor, so the loop never blocks --
    async def _in_executor(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def search_async(self, query: Any, k: int = 10, *, filter: Any = None) -> list[GpuSearchResult]:
        """Like search, without blocking the event loop."""
        return await self._in_executor(self.search, query, k, filter=filter)

    async def search_batch_async(
        self, queries: Any, k: int = 10, *, filter: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like search_batch, without blocking the event loop."""
        return await self._in_executor(self.search_batch, queries, k, filter=filter)

    async def add_vector_async(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, str] | None = None
    ) -> None:
        """Like add_vector, without blocking the event loop."""
        await self._in_executor(self.add_vector, vector, data, metadata)

    async def add_vectors_async(self, ids: Any, data: Any = None, metadata: Any = None) -> None:
        """Like add_vectors, without blocking the event loop. Leave the array unchanged until
        this returns."""
        await self._in_executor(self.add_vectors, ids, data, metadata)

    async def update_vector_async(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None
    ) -> bool:
        """Like update_vector, without blocking the event loop."""
        return await self._in_executor(self.update_vector, vector, data, metadata)

    async def update_metadata_async(self, id: str, metadata: dict[str, Any]) -> bool:
        """Like update_metadata, without blocking the event loop."""
        return await self._in_executor(self.update_metadata, id, metadata)

    async def remove_vector_async(self, id: str) -> bool:
        """Like remove_vector, without blocking the event loop."""
        return await self._in_executor(self.remove_vector, id)

    async def remove_vectors_async(
        self, ids: Iterable[str] | None = None, *, filter: dict[str, Any] | Filter | None = None
    ) -> int:
        """Like remove_vectors, without blocking the event loop."""
        return await self._in_executor(self.remove_vectors, ids, filter=filter)

    async def save_async(self, path: str | os.PathLike[str]) -> None:
        """Like save, without blocking the event loop."""
        await self._in_executor(self.save, path)

    # Persistence.
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the store to the directory ``path``: one file per shard, the global
        sequences, and ``manifest.json``, whose atomic rename commits the save. Files of the
        previous save are removed afterwards (see docs/scale.md)."""
        path = dir_path(path)
        with self._lock.read():
            self._check_open()
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise PersistenceError(f"cannot create directory {path!r}: {e}") from None
            gen = uuid.uuid4().hex[:16]
            names = [f"shard-{gen}-{i}.hgv" for i in range(self._n)]
            seq_name = f"seqs-{gen}.bin"
            written = [os.path.join(path, n) for n in names + [seq_name]]
            try:
                saved = self._all([(i, "save", (written[i],)) for i in range(self._n)])
                shard_ids = self._all([(i, "ids", ()) for i in range(self._n)])
                for ids, (_, _, crc) in zip(shard_ids, saved):
                    if _ids_crc(ids) != crc:
                        raise PersistenceError("a shard changed while it was being saved")
                seqs = self._seqs(i for ids in shard_ids for i in ids).astype("<i8")
                _write_synced(written[-1], seqs.tobytes())
                seq_size, seq_digest = _file_digest(written[-1])
                manifest = {
                    "format": _FORMAT,
                    "version": _FORMAT_VERSION,
                    "dimension": self._dimension,
                    "metric": self._metric.value,
                    "dtype": self._dtype,
                    "next_sequence": self._next_seq,
                    "shards": [
                        {"file": n, "rows": len(ids), "bytes": size, "sha256": digest, "ids_crc32": crc}
                        for n, ids, (size, digest, crc) in zip(names, shard_ids, saved)
                    ],
                    "sequences": {"file": seq_name, "bytes": seq_size, "sha256": seq_digest},
                }
                tmp = os.path.join(path, f"{MANIFEST}.{gen}.tmp")
                written.append(tmp)
                _write_synced(tmp, json.dumps(manifest, indent=1).encode())
                os.replace(tmp, os.path.join(path, MANIFEST))  # the commit
            except BaseException as e:
                for f in written:
                    try:
                        os.unlink(f)
                    except OSError:
                        pass
                if isinstance(e, OSError) and not isinstance(e, PersistenceError):
                    raise PersistenceError(f"cannot save to {path!r}: {e}") from e
                raise
            _fsync_dir(path)
            keep = set(names) | {seq_name, MANIFEST}
            for f in os.listdir(path):  # the previous generation, and leftovers of failed saves
                if f not in keep and (f.startswith(("shard-", "seqs-")) or f.startswith(MANIFEST + ".")):
                    try:
                        os.unlink(os.path.join(path, f))
                    except OSError:
                        pass

    def _restore_from(self, path: str) -> None:
        """Fill this empty store (same dimension, metric and dtype) from a save, loading the
        shard files directly when the shard count matches, re-balancing otherwise. The
        caller holds the write lock, or no one else sees the store yet."""
        manifest = read_manifest(path)
        for field, mine in (("dimension", self._dimension), ("metric", self._metric.value), ("dtype", self._dtype)):
            if manifest[field] != mine:
                raise InvalidArgumentError(f"the save has {field} {manifest[field]!r}, this store {mine!r}")
        files = [os.path.join(path, s["file"]) for s in manifest["shards"]]
        seqs = _read_sequences(path, manifest)
        if len(files) == self._n:
            loaded = self._all([(i, "load", (f, self._dtype)) for i, f in enumerate(files)])
            for ids, s in zip(loaded, manifest["shards"]):
                if len(ids) != s["rows"] or _ids_crc(ids) != s["ids_crc32"]:
                    raise CorruptFileError(f"{s['file']} does not hold the ids the manifest lists")
            keys, at = [], 0
            for shard, ids in enumerate(loaded):
                keys.append((seqs[at : at + len(ids)] << _SHARD_BITS) | shard)
                at += len(ids)
                self._counts[shard] = len(ids)
            all_ids = [i for ids in loaded for i in ids]
            self._where = dict(zip(all_ids, np.concatenate(keys).tolist()))
            if len(self._where) != len(all_ids):
                raise CorruptFileError(f"{path}: an id appears in two shards")
            # dict order is insertion order: oldest first, as ids() promises
            self._where = dict(sorted(self._where.items(), key=lambda kv: kv[1] >> _SHARD_BITS))
        else:
            ids, rows, mds = _read_all_rows(files, manifest)
            order = np.argsort(seqs, kind="stable")
            ids = [ids[j] for j in order]
            mds = [mds[j] for j in order]
            md = mds if any(mds) else []
            self._add_checked(ids, np.ascontiguousarray(rows[order]), md, seqs[order])
        self._next_seq = max(self._next_seq, int(manifest["next_sequence"]))

    def _filled_from(self, path: str) -> Any:
        """This new store, filled from a save; closed again if the save cannot be read."""
        try:
            self._restore_from(path)
        except BaseException:
            self.close()
            raise
        return self

    # Lifetime.
    @abstractmethod
    def _release(self) -> None:
        """Free every shard (a subclass's resources)."""

    def close(self) -> None:
        """Free every shard's memory now; later calls raise StorageClosedError."""
        with self._lock.write():
            if self._closed:
                return
            self._closed = True
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "_ShardedBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._closed:
            return f"<{name} closed shards={self._n}>"
        return (
            f"<{name} shards={self._n} dimension={self._dimension} metric={self._metric.value} "
            f"dtype={self._dtype} count={len(self._where)}>"
        )


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(path: str) -> dict:
    """The checked manifest of a sharded save; every file it names exists with its size and
    sha256 (PersistenceError when missing, CorruptFileError when damaged)."""
    mpath = os.path.join(os.fspath(path), MANIFEST)
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PersistenceError(f"cannot read {mpath!r}: {e}") from None
    try:
        m = json.loads(raw)
        ok = (
            m["format"] == _FORMAT
            and isinstance(m["dimension"], int)
            and isinstance(m["next_sequence"], int)
            and m["metric"] in [x.value for x in GpuDistanceMetric]
            and m["dtype"] in DTYPE_BYTES
            and isinstance(m["shards"], list)
            and m["shards"]
            and all(isinstance(s["file"], str) and isinstance(s["rows"], int) for s in m["shards"])
        )
        version = m["version"]
        entries = [*m["shards"], m["sequences"]]
        for e in entries:
            if os.path.basename(e["file"]) != e["file"]:
                ok = False
            int(e["bytes"]), str(e["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"{mpath}: not a sharded hive_gpu manifest ({e})") from None
    if not ok:
        raise CorruptFileError(f"{mpath}: not a sharded hive_gpu manifest")
    if version != _FORMAT_VERSION:
        raise CorruptFileError(f"{mpath}: format version {version!r} is not supported")
    for e in entries:
        fpath = os.path.join(os.fspath(path), e["file"])
        try:
            size, digest = _file_digest(fpath)
        except OSError as err:
            raise PersistenceError(f"cannot read {fpath!r}: {err}") from None
        if size != e["bytes"] or digest != e["sha256"]:
            raise CorruptFileError(f"{fpath}: size or checksum differs from the manifest")
    return m


def _read_sequences(path: str, manifest: dict) -> np.ndarray:
    with open(os.path.join(path, manifest["sequences"]["file"]), "rb") as f:
        seqs = np.frombuffer(f.read(), "<i8").astype(np.int64)
    if seqs.size != sum(s["rows"] for s in manifest["shards"]) or (seqs.size and seqs.min() < 0):
        raise CorruptFileError(f"{path}: the sequences do not match the shards")
    if np.unique(seqs).size != seqs.size:
        raise CorruptFileError(f"{path}: two rows share a sequence")
    return seqs


def _read_all_rows(files: list[str], manifest: dict) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """Every saved row, shard after shard in slot order (the sequences' order), read through
    a CPU context so that re-balancing needs no device memory beyond the new shards'."""
    reader = _Shard(create_context("cpu"))
    ids: list[str] = []
    rows, mds = [], []
    for f, s in zip(files, manifest["shards"]):
        got = reader.load(f, manifest["dtype"])
        if len(got) != s["rows"] or _ids_crc(got) != s["ids_crc32"]:
            raise CorruptFileError(f"{f} does not hold the ids the manifest lists")
        i, r, m = reader.export()
        reader.close()
        ids += i
        rows.append(r)
        mds += m
    return ids, np.concatenate(rows), mds


class ShardedStorage(_ShardedBase):
    """One store over several contexts (every GPU of a host, or several CPU contexts), with
    the API of :class:`VectorStorage` and exactly its answers.

    New rows go to the shard with the most free room (``hive_gpu._routing``); a search runs
    on every shard at once, one host thread each (the core releases the GIL), and the lists
    are merged by score, ties by global insertion order. Writes are all or nothing across
    shards. The caller keeps an id -> (shard, sequence) map: about 130 bytes per id with
    short ids, the id string included. ``dtype`` ("float32", "float16", "bfloat16", as
    ``Context.create_storage`` takes it) is every shard's storage dtype.
    """

    def __init__(
        self,
        contexts: Sequence[Context],
        dimension: int,
        metric: GpuDistanceMetric | str = GpuDistanceMetric.COSINE,
        *,
        dtype: str = "float32",
    ) -> None:
        contexts = list(contexts)
        if not all(isinstance(c, Context) for c in contexts):
            raise InvalidArgumentError("contexts must be hive_gpu contexts (CpuContext(), CudaContext(i), ...)")
        m = GpuDistanceMetric.parse(metric)
        self._init_state(len(contexts), dimension, m, check_dtype(dtype))
        self._shards = [_Shard(c) for c in contexts]
        # The caller's thread runs one shard's part; these threads run the others.
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(contexts) - 1), thread_name_prefix="hive_gpu-shard")
        try:
            for s in self._shards:
                s.create(dimension, m, self._dtype)
        except BaseException:
            self._release()
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], contexts: Sequence[Context]) -> "ShardedStorage":
        """Load a directory written by ``save`` onto ``contexts``, any number of them; rows
        are re-balanced when the number differs, keeping their order for ties."""
        path = dir_path(path)
        m = read_manifest(path)
        return cls(contexts, m["dimension"], m["metric"], dtype=m["dtype"])._filled_from(path)

    @property
    def backend(self) -> str:
        """The shards' backend names, joined by "+" when they differ (e.g. "cuda")."""
        return "+".join(dict.fromkeys(s.context.backend for s in self._shards))

    @property
    def contexts(self) -> list[Context]:
        """The context of each shard, in shard order."""
        return [s.context for s in self._shards]

    def _run(self, calls: list[tuple[int, str, tuple]], parallel: bool = True) -> list[Any]:
        def call(c: tuple[int, str, tuple]) -> Any:
            shard, op, args = c
            try:
                return getattr(self._shards[shard], op)(*args)
            except Exception as e:  # returned, so that the caller can undo the others
                return e

        if len(calls) <= 1 or not parallel:
            return [call(c) for c in calls]
        futures = [self._pool.submit(call, c) for c in calls[1:]]
        first = call(calls[0])
        return [first] + [f.result() for f in futures]

    def _release(self) -> None:
        for s in self._shards:
            s.close()
        self._pool.shutdown(wait=True)


def create_sharded_storage(
    dimension: int,
    metric: GpuDistanceMetric | str = GpuDistanceMetric.COSINE,
    backend: str = "auto",
    devices: str | int | Sequence[int] = "all",
    *,
    dtype: str = "float32",
) -> ShardedStorage:
    """A ShardedStorage with one shard per device of ``backend`` ("auto": the first of
    available_backends()). ``devices``: "all", a list of device ids, or, for "cpu", a number
    of CPU contexts (the cores are divided between them)."""
    ctx0 = create_context(backend)
    name = ctx0.backend
    if name == "cpu":
        count = 1 if devices == "all" else devices if isinstance(devices, int) else len(list(devices))
        if isinstance(count, bool) or count < 1:
            raise InvalidArgumentError(f"devices must be 'all' or a count >= 1 for the cpu backend, got {devices!r}")
        contexts = [ctx0] if count == 1 else cpu_contexts(count)
    else:
        ids = range(type(ctx0).device_count()) if devices == "all" else [devices] if isinstance(devices, int) else devices
        contexts = [ctx0 if i == 0 else create_context(name, i) for i in ids]
    return ShardedStorage(contexts, dimension, metric, dtype=dtype)


_env_lock = threading.Lock()


def cpu_contexts(count: int, threads: int | None = None) -> list[Context]:
    """``count`` CPU contexts of ``threads`` threads each (default: the cores divided
    between them, or HIVE_GPU_CPU_THREADS when set)."""
    # The CPU context reads its thread count from HIVE_GPU_CPU_THREADS when it is created.
    if threads is None:
        env = os.environ.get("HIVE_GPU_CPU_THREADS")
        threads = int(env) if env and env.isdigit() and int(env) > 0 else max(1, (os.cpu_count() or 1) // count)
    with _env_lock:
        old = os.environ.get("HIVE_GPU_CPU_THREADS")
        os.environ["HIVE_GPU_CPU_THREADS"] = str(threads)
        try:
            return [create_context("cpu") for _ in range(count)]
        finally:
            if old is None:
                del os.environ["HIVE_GPU_CPU_THREADS"]
            else:
                os.environ["HIVE_GPU_CPU_THREADS"] = old
