"""The Python face of a vector storage: thin, typed, NumPy in and out."""

from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import _core
from . import aio
from . import _device_arrays as _dev
from ._arrays import (
    as_float32,
    as_rows,
    as_path,
    check_id,
    check_ids,
    check_k,
    check_metadata,
    native_call,
    storable,
)
from ._filter import Filter, compile_filter
from ._types import GpuDistanceMetric, GpuSearchResult, GpuVector, metadata_given, search_results
from .errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidDeviceIdError,
    NoDeviceError,
    VectorNotFoundError,
)

__all__ = ["VectorStorage"]

_METRIC_TO_CORE = {
    GpuDistanceMetric.COSINE: _core.Metric.COSINE,
    GpuDistanceMetric.DOT_PRODUCT: _core.Metric.DOT_PRODUCT,
    GpuDistanceMetric.EUCLIDEAN: _core.Metric.EUCLIDEAN,
}
_METRIC_FROM_CORE = {v: k for k, v in _METRIC_TO_CORE.items()}


# Guards the making of each storage's async queue.
_queue_lock = threading.Lock()


class VectorStorage:
    """Vectors of one dimension and metric on one device, addressed by string ids.

    Made by ``ctx.create_storage(dimension, metric, dtype)`` or ``ctx.load_storage(path)``.
    Rows are kept in the store's ``dtype`` ("float32", "float16" or "bfloat16"): rounded
    once, at insert, to nearest even; scores are float32 over the stored values, and
    ``get_vector(s)`` return float32 copies of the stored values.
    Thread-safe: searches run concurrently, writes are exclusive, and every write is
    all-or-nothing. The GIL is released while the device works. Iterating yields the ids in
    insertion order.

    The ``*_async`` methods take the same arguments, run the same checks and raise the same
    exceptions as their synchronous namesakes (host arrays only). They run on this storage's
    worker threads, in issue order: a request sees every async write issued before it, and
    concurrent ``search_async`` calls share engine batches (see docs/async.md).
    """

    __slots__ = ("_s", "_aq", "__weakref__")

    def __init__(self, core_storage: "_core.Storage") -> None:
        if not isinstance(core_storage, _core.Storage):
            raise InvalidArgumentTypeError(
                f"VectorStorage is made by ctx.create_storage(dimension, metric) or ctx.load_storage(path), "
                f"not from {type(core_storage).__name__}"
            )
        self._s = core_storage
        self._aq: "_core.AsyncStorage | None" = None  # the async queue, made on first use

    def _async_queue(self) -> "_core.AsyncStorage":
        """This storage's one async queue, made on first use: one queue keeps one order."""
        q = self._aq
        if q is None:
            with _queue_lock:
                q = self._aq
                if q is None:
                    q = self._aq = aio.make_queue(self._s)
        return q

    @property
    def dimension(self) -> int:
        """Components per vector."""
        return self._s.dimension

    @property
    def metric(self) -> GpuDistanceMetric:
        """How vectors are compared (see GpuDistanceMetric)."""
        return _METRIC_FROM_CORE[self._s.metric]

    @property
    def dtype(self) -> str:
        """How the rows are stored: "float32", "float16" or "bfloat16" (see the class docstring)."""
        return self._s.dtype

    @property
    def backend(self) -> str:
        """The backend whose device holds the rows: "cpu", "cuda", "rocm", "metal" or "webgpu"."""
        return self._s.backend

    def vector_count(self) -> int:
        """How many vectors are stored (as ``len(store)``)."""
        return self._s.size()

    def __len__(self) -> int:
        """How many vectors are stored."""
        return self._s.size()

    def __contains__(self, id: object) -> bool:
        """Whether ``id`` is stored (False for anything that is not a str)."""
        return isinstance(id, str) and storable(id) and self._s.contains(id)

    def __iter__(self) -> Iterator[str]:
        """The ids in insertion order, as they were when the iteration began."""
        return iter(self._s.ids())

    def ids(self, filter: dict[str, Any] | Filter | None = None) -> list[str]:
        """Every id, in insertion order (an update keeps an id's place; a removed id that is
        added again goes last); with ``filter``, those it passes."""
        f = compile_filter(filter)
        return self._s.ids() if f is None else self._s.ids_filtered(f)

    def count(self, filter: dict[str, Any] | Filter | None = None) -> int:
        """How many vectors ``filter`` passes (all of them without one)."""
        f = compile_filter(filter)
        return self._s.size() if f is None else self._s.count(f)

    def memory_usage(self) -> int:
        """Bytes of device memory held for rows and per-row data."""
        return self._s.memory_bytes()

    def add_vector(self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Add one vector: ``add_vector(GpuVector(...))`` or ``add_vector(id, data, metadata)``.
        DuplicateIdError when the id is stored already."""
        native_call(self._s.add_vector, *_add_vector_args(vector, data, metadata, as_rows))

    def add_vectors(
        self,
        ids: Sequence[str] | Sequence[GpuVector],
        data: Any = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Add a batch, all or nothing: ``add_vectors(ids, array[n, dim], metadata=None)`` or
        ``add_vectors([GpuVector, ...])``. A float32, float16 or bfloat16 (ml_dtypes, PyTorch)
        C-contiguous array is read in its own dtype, without a copy, and rounded once to the
        store's dtype (a value beyond a float16 store's range raises NonFiniteValueError); on
        CUDA storages a CUDA array (PyTorch, CuPy, JAX) is read in place."""
        if data is not None and _dev.is_device_array(data):
            if self._s.backend in _dev.DEVICE_BACKENDS:
                id_list, md = _ids_and_metadata(ids, metadata)
                v = _dev.device_view(data, 2, "vectors")
                if v.shape[0] != len(id_list):
                    raise InvalidArgumentError(f"got {len(id_list)} ids for {v.shape[0]} vectors")
                native_call(
                    self._s.add_vectors_device, id_list, v.ptr, v.shape[0], v.shape[1], v.ld, v.stream, md, v.dtype
                )
                return
            data = _dev.to_host(data)
        args = _add_vectors_args(ids, data, metadata, as_rows)
        if args is not None:
            native_call(self._s.add_vectors, *args)

    def upsert_vectors(
        self, ids: Sequence[str], data: Any, metadata: Sequence[dict[str, str] | None] | None = None
    ) -> None:
        """Add the ids not stored and replace the vectors of those stored, all or nothing.

        ``metadata`` None keeps a stored id's metadata and gives a new id none; a list holds
        one dict (which replaces) or None (which keeps) per id. Stored ids keep their place in
        insertion order. An id given twice raises DuplicateIdError."""
        id_list = check_ids(ids, elements=False)
        md: list[dict[str, str] | None] = []
        if metadata is not None:
            md = [None if m is None else check_metadata(m) for m in _as_list(metadata, "metadata")]
        if _dev.is_device_array(data):
            data = _dev.to_host(data)
        native_call(self._s.upsert_vectors, id_list, as_rows(data, 2, "vectors"), md)

    def update_vector(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None
    ) -> bool:
        """Replace a vector's data, and its metadata when given (``{}`` clears it; None, or a
        GpuVector made without metadata, keeps it). False if the id is unknown."""
        args = _update_vector_args(vector, data, metadata, as_rows)
        return args is not None and native_call(self._s.update_vector, *args)

    def update_metadata(self, id: str, metadata: dict[str, Any]) -> bool:
        """Replace a vector's metadata (``{}`` clears it). False if the id is unknown."""
        md = check_metadata(metadata)
        if not _known_id(id):
            return False
        return native_call(self._s.update_metadata, id, md)

    def remove_vector(self, id: str) -> bool:
        """Remove a vector in O(1); False if the id is unknown."""
        return _known_id(id) and self._s.remove_vector(id)

    def remove_vectors(
        self, ids: Iterable[str] | None = None, *, filter: dict[str, Any] | Filter | None = None
    ) -> int:
        """Remove the vectors named by ``ids``, or those ``filter`` passes (give exactly one);
        returns how many were removed."""
        if (ids is None) == (filter is None):
            raise InvalidArgumentTypeError("remove_vectors takes either ids or filter=, not both or neither")
        if filter is not None:
            return self._s.remove_filtered(compile_filter(filter))
        id_list = check_ids(ids)
        try:
            return self._s.remove_vectors(id_list)
        except TypeError:  # the str ids include one with no UTF-8 form, which cannot be stored
            return self._s.remove_vectors([i for i in id_list if storable(i)])

    def clear(self) -> None:
        """Remove every vector."""
        self._s.clear()

    def get_vector(self, id: str) -> GpuVector | None:
        """The vector of ``id`` and its metadata, or None. The data is a float32 copy of the
        stored values: bit for bit as given in a float32 store, the values as rounded at
        insert (widened exactly) in a float16 or bfloat16 one."""
        if not _known_id(id):
            return None
        got = self._s.get_vector(id)
        if got is None:
            return None
        data, md = got
        return GpuVector(id, data, md)

    def get_vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The vectors of ``ids`` as ``(array[len(ids), dimension] float32, metadata list)``,
        in the order given, from one consistent read; float32 copies of the stored values
        (see get_vector). VectorNotFoundError (a KeyError) names
        the first unknown id."""
        id_list = check_ids(ids, elements=False)
        try:
            return native_call(self._s.get_vectors, id_list)
        except InvalidArgumentError as e:
            unstorable = next((i for i in id_list if type(i) is str and not storable(i)), None)
            if unstorable is None or isinstance(e, TypeError):
                raise
            raise VectorNotFoundError(f"no vector has id {unstorable!r}") from None

    def get_metadata(self, id: str) -> dict[str, Any] | None:
        """The metadata of ``id`` (a copy), or None when the id is unknown."""
        return self._s.get_metadata(id) if _known_id(id) else None

    def search(
        self, query: Any, k: int = 10, *, filter: dict[str, Any] | Filter | None = None
    ) -> list[GpuSearchResult]:
        """The ``min(k, len(self))`` nearest vectors to ``query``, best first (any k >= 1 is
        taken: a k above the count returns every vector). ``query`` may be
        a CUDA array (PyTorch, CuPy, JAX), read in place on CUDA storages. With ``filter``
        (see :class:`hive_gpu.Filter`), only vectors it passes: ``min(k, matches)`` hits. A
        device-array query with a filter is copied to the host first (one row, small)."""
        f = compile_filter(filter)
        if f is not None:
            if _dev.is_device_array(query):
                query = _dev.to_host(query)
            return search_results(self._s.search_filtered(as_float32(query, 1, "query"), check_k(k), f))
        if _dev.is_device_array(query):
            if self._s.backend in _dev.DEVICE_BACKENDS:
                v = _dev.device_view(query, 1, "query")
                hits = self._s.search_device(v.ptr, v.shape[0], check_k(k), v.stream, v.dtype)
                return search_results(hits)
            query = _dev.to_host(query)
        q = as_float32(query, 1, "query")
        return search_results(self._s.search(q, check_k(k)))

    def search_batch(
        self,
        queries: Any,
        k: int = 10,
        *,
        device_output: bool = False,
        filter: dict[str, Any] | Filter | None = None,
    ) -> tuple[Any, np.ndarray]:
        """FAISS-style batch search: ``(distances[nq, k'], ids[nq, k'])`` with
        ``k' = min(k, len(self))``; ids is an object array of str. ``queries`` may be a CUDA
        array (read in place on CUDA storages); ``device_output=True`` returns the distances
        as a CUDA array (PyTorch or CuPy, the queries' own framework when they are one).
        With ``filter``, one filter for every query: ``k' = min(k, matches)`` (0 columns when
        nothing matches); device-array queries are then copied to the host first."""
        k = check_k(k)
        f = compile_filter(filter)
        if f is not None:
            if _dev.is_device_array(queries):
                queries = _dev.to_host(queries)
            q = as_float32(queries, 2, "queries")
            scores, flat_ids, kk = self._s.search_batch_filtered(q, k, f)
            if device_output:
                scores = _dev.to_device(scores)
            return scores, _id_matrix(flat_ids, q.shape[0], kk)
        if _dev.is_device_array(queries):
            if self._s.backend in _dev.DEVICE_BACKENDS:
                v = _dev.device_view(queries, 2, "queries")
                out, out_ptr = _dev.alloc_scores(queries, (v.shape[0] * k,)) if device_output else (None, 0)
                scores, flat_ids, kk = self._s.search_batch_device(
                    v.ptr, v.shape[0], v.shape[1], v.ld, k, v.stream, out_ptr, v.dtype
                )
                if out is not None:
                    scores = out[: v.shape[0] * kk].reshape(v.shape[0], kk)
                return scores, _id_matrix(flat_ids, v.shape[0], kk)
            queries = _dev.to_host(queries)
        if device_output:
            scores, ids = self.search_batch(queries, k)
            return _dev.to_device(scores), ids
        q = as_float32(queries, 2, "queries")
        scores, flat_ids, kk = self._s.search_batch(q, k)
        return scores, _id_matrix(flat_ids, q.shape[0], kk)

    async def search_async(
        self, query: Any, k: int = 10, *, filter: dict[str, Any] | Filter | None = None
    ) -> list[GpuSearchResult]:
        """Like search; concurrent calls share engine batches. A filtered search runs as one
        storage call of its own (no coalescing)."""
        q = as_float32(query, 1, "query")
        f = compile_filter(filter)
        if f is not None:
            return search_results(await aio.run(self._async_queue().search_filtered, q, check_k(k), f))
        return search_results(await aio.run(self._async_queue().search, q, check_k(k)))

    async def search_batch_async(
        self, queries: Any, k: int = 10, *, filter: dict[str, Any] | Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like search_batch (host arrays), with the same ``filter``."""
        q = as_float32(queries, 2, "queries")
        f = compile_filter(filter)
        if f is not None:
            scores, flat_ids, kk = await aio.run(self._async_queue().search_batch_filtered, q, check_k(k), f)
        else:
            scores, flat_ids, kk = await aio.run(self._async_queue().search_batch, q, check_k(k))
        return scores, _id_matrix(flat_ids, q.shape[0], kk)

    async def add_vector_async(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None
    ) -> None:
        """Like add_vector. Cancelling the awaiting task does not withdraw the write."""
        await aio.run(self._async_queue().add_vector, *_add_vector_args(vector, data, metadata))

    async def add_vectors_async(
        self,
        ids: Sequence[str] | Sequence[GpuVector],
        data: Any = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Like add_vectors. The array is read in place: leave it unchanged until this returns."""
        args = _add_vectors_args(ids, data, metadata)
        if args is not None:
            await aio.run(self._async_queue().add_vectors, *args)

    async def update_vector_async(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, str] | None = None
    ) -> bool:
        """Like update_vector. Cancelling the awaiting task does not withdraw the write."""
        args = _update_vector_args(vector, data, metadata)
        return args is not None and await aio.run(self._async_queue().update_vector, *args)

    async def remove_vector_async(self, id: str) -> bool:
        """Like remove_vector. Cancelling the awaiting task does not withdraw the write."""
        return _known_id(id) and await aio.run(self._async_queue().remove_vector, id)

    async def remove_vectors_async(self, ids: Iterable[str]) -> int:
        """Like remove_vectors. Cancelling the awaiting task does not withdraw the write."""
        return await aio.run(self._async_queue().remove_vectors, check_ids(ids, elements=False))

    async def save_async(self, path: str | os.PathLike[str]) -> None:
        """Like save, ordered as a write: the file holds every async write issued before it
        and none issued after it. Cancelling the awaiting task does not withdraw the save."""
        await aio.run(self._async_queue().save, as_path(path))

    async def update_metadata_async(self, id: str, metadata: dict[str, Any]) -> bool:
        """Like update_metadata, ordered with the other async writes."""
        md = check_metadata(metadata)
        if not _known_id(id):
            return False
        return await aio.run(self._async_queue().update_metadata, id, md)

    def set_batching(self, max_wait_us: float | None = None, max_batch: int | None = None) -> None:
        """Tune how concurrent search_async calls are coalesced (defaults 200 us, 256);
        ``max_batch=1`` turns coalescing off."""
        aio.set_batching(self._async_queue(), max_wait_us, max_batch)

    def batching(self) -> aio.BatchingConfig:
        """How concurrent search_async calls are coalesced (see set_batching)."""
        return aio.batching(self._async_queue())

    def async_stats(self) -> aio.AsyncStats:
        """Counters of this storage's async queue."""
        return aio.stats(self._async_queue())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the storage to ``path`` atomically (see docs/format.md)."""
        self._s.save(as_path(path))

    # The in-memory form, pickle and copy: the file format through memory.
    def to_bytes(self) -> bytes:
        """The store in the file format of docs/format.md: the bytes ``save()`` writes.

        The store's reader lock is held while they are written, so the bytes are one
        consistent snapshot. Holds the store's size twice in host memory for a moment.
        """
        return self._s.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, context: Any = None) -> "VectorStorage":
        """A store rebuilt from ``to_bytes()`` output (or a saved file's content), checked as
        ``load`` checks a file (CorruptFileError when damaged), on ``context``: a Context, or
        None for the default one of this process (``create_context("auto")``, made once)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
        return cls(_core_context(context).storage_from_bytes(data))

    @classmethod
    def load(cls, path: str | os.PathLike[str], context: Any = None) -> "VectorStorage":
        """Load a file written by ``save`` onto ``context`` (a Context, or None for the default
        one of this process: ``create_context("auto")``, made once); the same as
        ``context.load_storage(path)``."""
        return cls(_core_context(context).load_storage(os.fspath(path)))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the file format; unpickling rebuilds on the same backend and device
        # when this process has them, else on the default context.
        device = self._s.context.device_info()["device_id"]
        return (_unpickle, (self.to_bytes(), self.backend, device))

    def __copy__(self) -> "VectorStorage":
        """An independent store with the same contents on the same context (rows are never
        shared, so a copy is always deep)."""
        return VectorStorage(self._s.context.storage_from_bytes(self._s.to_bytes()))

    def __deepcopy__(self, memo: dict[int, Any]) -> "VectorStorage":
        """The same as ``copy.copy``: an independent store on the same context."""
        return self.__copy__()

    def close(self) -> None:
        """Free the device memory now; later calls raise StorageClosedError."""
        if self._aq is not None:
            self._aq.shutdown()  # async requests already issued run first
        self._s.close()

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._s.closed

    def __enter__(self) -> "VectorStorage":
        """The storage itself; leaving the ``with`` block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the storage."""
        self.close()

    def __repr__(self) -> str:
        if self._s.closed:
            return f"<VectorStorage closed backend={self.backend}>"
        return (
            f"<VectorStorage backend={self.backend} dimension={self.dimension} "
            f"metric={self.metric.value} dtype={self.dtype} count={len(self)}>"
        )


def _core_context(context: Any) -> "_core.Context":
    """The core context of a Context, or of the process's default one for None."""
    # _contexts imports this module, so it is imported here, when first needed.
    from ._contexts import Context, default_context

    if context is None:
        return default_context()._ctx
    if not isinstance(context, Context):
        raise InvalidArgumentTypeError(f"context must be a hive_gpu Context or None, got {type(context).__name__}")
    return context._ctx


def _unpickle(data: bytes, backend: str, device_id: int) -> VectorStorage:
    """The inverse of VectorStorage.__reduce__."""
    from ._contexts import default_context

    try:
        ctx = default_context(backend, device_id)
    except (NoDeviceError, InvalidDeviceIdError, InvalidArgumentError):
        ctx = default_context()
    return VectorStorage(ctx._ctx.storage_from_bytes(data))


# Argument checks shared by the synchronous and async forms (host arrays).
def _id_matrix(flat_ids: list[str], rows: int, cols: int) -> np.ndarray:
    """The ids of a batch search as a rows x cols object array (filled by assignment: np.array
    would make a fixed-width string array)."""
    ids = np.empty(len(flat_ids), dtype=object)
    ids[:] = flat_ids
    return ids.reshape(rows, cols)


def _add_vector_args(
    vector: GpuVector | str, data: Any, metadata: Any, rows: Any = as_float32
) -> tuple[str, np.ndarray, dict[str, Any]]:
    """The checked arguments; ``rows`` makes the array (as_rows keeps 16-bit input as it is,
    for the calls whose binding reads it; the async queue takes float32)."""
    if isinstance(vector, GpuVector):
        id, data, metadata = vector.id, vector.data, vector.metadata
    else:
        id = vector
    check_id(id)
    return id, rows(data, 1, "vector"), check_metadata(metadata)


def _update_vector_args(
    vector: GpuVector | str, data: Any, metadata: Any, rows: Any = as_float32
) -> tuple[str, np.ndarray, dict[str, str] | None] | None:
    """The checked arguments; None when the id cannot be stored (so the update finds nothing)."""
    if isinstance(vector, GpuVector):
        id, data, metadata = vector.id, vector.data, vector.metadata
    else:
        id = vector
    if not _known_id(id):
        return None
    return id, rows(data, 1, "vector"), check_metadata(metadata) if metadata_given(metadata) else None


def _known_id(id: Any) -> bool:
    """Whether ``id`` could be stored; a TypeError of ours when it is not a str."""
    if type(id) is not str:
        raise InvalidArgumentTypeError(f"id must be a string, got {type(id).__name__}")
    return storable(id)


def _as_list(values: Any, what: str) -> list:
    if isinstance(values, (str, bytes, dict)):
        raise InvalidArgumentTypeError(f"{what} must be a sequence, got {type(values).__name__}")
    try:
        return list(values)
    except TypeError:
        raise InvalidArgumentTypeError(f"{what} must be a sequence, got {type(values).__name__}") from None


def _ids_and_metadata(ids: Any, metadata: Any) -> tuple[list[str], list[dict[str, str]]]:
    """Checked ids and metadata of a batch add ([] for metadata when no row has any)."""
    id_list = check_ids(ids, elements=False)
    md: list[dict[str, str]] = []
    if metadata is not None:
        md = [check_metadata(m) for m in _as_list(metadata, "metadata")]
        if len(md) != len(id_list):
            raise InvalidArgumentError(f"got {len(md)} metadata entries for {len(id_list)} vectors")
        if not any(md):
            md = []
    return id_list, md


def _add_vectors_args(
    ids: Any, data: Any, metadata: Any, rows: Any = as_float32
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]] | None:
    """The checked arguments; None when a list of GpuVector is empty (nothing to add)."""
    if data is None:
        vectors = check_ids(ids, elements=False)
        if not all(isinstance(v, GpuVector) for v in vectors):
            raise InvalidArgumentError("add_vectors(ids, data): data is missing")
        if not vectors:
            return None
        ids = [v.id for v in vectors]
        data = np.stack([rows(v.data, 1, "vector") for v in vectors])
        metadata = [v.metadata for v in vectors]
    id_list, md = _ids_and_metadata(ids, metadata)
    arr = rows(data, 2, "vectors")
    if arr.shape[0] != len(id_list):
        raise InvalidArgumentError(f"got {len(id_list)} ids for {arr.shape[0]} vectors")
    return id_list, arr, md
