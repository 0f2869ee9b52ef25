"""The Python face of a vector storage: thin, typed, NumPy in and out."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from . import _core
from . import aio
from . import _device_arrays as _dev
from ._arrays import as_float32, check_id, check_ids, check_k, check_metadata, storable
from ._filter import Filter, compile_filter
from ._types import GpuDistanceMetric, GpuSearchResult, GpuVector, metadata_given, search_results
from .errors import InvalidArgumentError

__all__ = ["VectorStorage"]

_METRIC_TO_CORE = {
    GpuDistanceMetric.COSINE: _core.Metric.COSINE,
    GpuDistanceMetric.DOT_PRODUCT: _core.Metric.DOT_PRODUCT,
    GpuDistanceMetric.EUCLIDEAN: _core.Metric.EUCLIDEAN,
}
_METRIC_FROM_CORE = {v: k for k, v in _METRIC_TO_CORE.items()}


class VectorStorage:
    """Vectors of one dimension and metric on one device, addressed by string ids.

    Thread-safe: searches run concurrently, writes are exclusive, and every write is
    all-or-nothing. The GIL is released while the device works.
    """

    __slots__ = ("_s", "_aq", "__weakref__")

    def __init__(self, core_storage: "_core.Storage") -> None:
        self._s = core_storage
        self._aq: "_core.AsyncStorage | None" = None  # the async queue, made on first use (aio.queue)

    # -- properties -------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return self._s.dimension

    @property
    def metric(self) -> GpuDistanceMetric:
        return _METRIC_FROM_CORE[self._s.metric]

    @property
    def backend(self) -> str:
        return self._s.backend

    def vector_count(self) -> int:
        return self._s.size()

    def __len__(self) -> int:
        return self._s.size()

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and storable(id) and self._s.contains(id)

    def ids(self, filter: dict[str, Any] | Filter | None = None) -> list[str]:
        """Every id, in slot order (which removals change); with ``filter``, those it passes."""
        f = compile_filter(filter)
        return self._s.ids() if f is None else self._s.ids_filtered(f)

    def count(self, filter: dict[str, Any] | Filter | None = None) -> int:
        """How many vectors ``filter`` passes (all of them without one)."""
        f = compile_filter(filter)
        return self._s.size() if f is None else self._s.count(f)

    def memory_usage(self) -> int:
        """Bytes of device memory held for rows and per-row data."""
        return self._s.memory_bytes()

    # -- writes -----------------------------------------------------------------------
    def add_vector(self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Add one vector: ``add_vector(GpuVector(...))`` or ``add_vector(id, data, metadata)``."""
        if isinstance(vector, GpuVector):
            id, data, metadata = vector.id, vector.data, vector.metadata
        else:
            id = vector
        check_id(id)
        self._s.add_vector(id, as_float32(data, 1, "vector"), check_metadata(metadata))

    def add_vectors(
        self,
        ids: Sequence[str] | Sequence[GpuVector],
        data: Any = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Add a batch, all or nothing: ``add_vectors(ids, array[n, dim], metadata=None)`` or
        ``add_vectors([GpuVector, ...])``. A float32 C-contiguous array is read without a copy."""
        if data is None:
            vectors = list(ids)
            if not all(isinstance(v, GpuVector) for v in vectors):
                raise InvalidArgumentError("add_vectors(ids, data): data is missing")
            if not vectors:
                return
            ids = [v.id for v in vectors]
            data = np.stack([as_float32(v.data, 1, "vector") for v in vectors]) if vectors else None
            metadata = [v.metadata for v in vectors]
        id_list = check_ids(ids, elements=False)
        md: list[dict[str, Any]] = []
        if metadata is not None:
            md = [check_metadata(m) for m in metadata]
            if len(md) != len(id_list):
                raise InvalidArgumentError(f"got {len(md)} metadata entries for {len(id_list)} vectors")
            if not any(md):
                md = []
        if _dev.is_device_array(data):
            if self._s.backend in _dev.DEVICE_BACKENDS:
                v = _dev.device_view(data, 2, "vectors")
                if v.shape[0] != len(id_list):
                    raise InvalidArgumentError(f"got {len(id_list)} ids for {v.shape[0]} vectors")
                self._s.add_vectors_device(id_list, v.ptr, v.shape[0], v.shape[1], v.ld, v.stream, md)
                return
            data = _dev.to_host(data)
        arr = as_float32(data, 2, "vectors")
        if arr.shape[0] != len(id_list):
            raise InvalidArgumentError(f"got {len(id_list)} ids for {arr.shape[0]} vectors")
        self._s.add_vectors(id_list, arr, md)

    def update_vector(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None
    ) -> bool:
        """Replace a vector's data, and its metadata when given (``{}`` clears it; None, or a
        GpuVector made without metadata, keeps it). False if the id is unknown."""
        if isinstance(vector, GpuVector):
            id, data, metadata = vector.id, vector.data, vector.metadata
        else:
            id = vector
        if type(id) is not str:
            raise InvalidArgumentError(f"id must be a string, got {type(id).__name__}")
        if not storable(id):
            return False
        md = check_metadata(metadata) if metadata_given(metadata) else None
        return self._s.update_vector(id, as_float32(data, 1, "vector"), md)

    def update_metadata(self, id: str, metadata: dict[str, Any]) -> bool:
        """Replace a vector's metadata (``{}`` clears it). False if the id is unknown."""
        md = check_metadata(metadata)
        if type(id) is not str:
            raise InvalidArgumentError(f"id must be a string, got {type(id).__name__}")
        if not storable(id):
            return False
        return self._s.update_metadata(id, md)

    def remove_vector(self, id: str) -> bool:
        """Remove a vector in O(1); False if the id is unknown."""
        if type(id) is not str or not storable(id):
            return False
        return self._s.remove_vector(id)

    def remove_vectors(
        self, ids: Iterable[str] | None = None, *, filter: dict[str, Any] | Filter | None = None
    ) -> int:
        """Remove the vectors named by ``ids``, or those ``filter`` passes (give exactly one);
        returns how many were removed."""
        if (ids is None) == (filter is None):
            raise InvalidArgumentError("remove_vectors takes either ids or filter=, not both or neither")
        if filter is not None:
            return self._s.remove_filtered(compile_filter(filter))
        id_list = check_ids(ids)
        try:
            return self._s.remove_vectors(id_list)
        except TypeError:  # the str ids include one with no UTF-8 form, which cannot be stored
            return self._s.remove_vectors([i for i in id_list if storable(i)])

    def clear(self) -> None:
        self._s.clear()

    # -- reads ------------------------------------------------------------------------
    def get_vector(self, id: str) -> GpuVector | None:
        if type(id) is not str or not storable(id):
            return None
        got = self._s.get_vector(id)
        if got is None:
            return None
        data, md = got
        return GpuVector(id, data, md)

    def get_metadata(self, id: str) -> dict[str, Any] | None:
        return self._s.get_metadata(id) if type(id) is str else None

    def search(
        self, query: Any, k: int = 10, *, filter: dict[str, Any] | Filter | None = None
    ) -> list[GpuSearchResult]:
        """The ``min(k, len(self))`` nearest vectors to ``query``, best first. ``query`` may be
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
                hits = self._s.search_device(v.ptr, v.shape[0], check_k(k), v.stream)
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
            ids = np.empty(len(flat_ids), dtype=object)
            ids[:] = flat_ids
            if device_output:
                scores = _dev.to_device(scores)
            return scores, ids.reshape(q.shape[0], kk)
        if _dev.is_device_array(queries):
            if self._s.backend in _dev.DEVICE_BACKENDS:
                v = _dev.device_view(queries, 2, "queries")
                out, out_ptr = _dev.alloc_scores(queries, (v.shape[0] * k,)) if device_output else (None, 0)
                scores, flat_ids, kk = self._s.search_batch_device(
                    v.ptr, v.shape[0], v.shape[1], v.ld, k, v.stream, out_ptr
                )
                ids = np.empty(len(flat_ids), dtype=object)
                ids[:] = flat_ids
                if out is not None:
                    scores = out[: v.shape[0] * kk].reshape(v.shape[0], kk)
                return scores, ids.reshape(v.shape[0], kk)
            queries = _dev.to_host(queries)
        if device_output:
            scores, ids = self.search_batch(queries, k)
            return _dev.to_device(scores), ids
        q = as_float32(queries, 2, "queries")
        scores, flat_ids, kk = self._s.search_batch(q, k)
        ids = np.empty(len(flat_ids), dtype=object)
        ids[:] = flat_ids
        return scores, ids.reshape(q.shape[0], kk)

    # -- asyncio (see docs/async.md) --------------------------------------------------
    # Same arguments, validation, results and exceptions as the synchronous methods (host
    # arrays); the work runs on this storage's worker threads and concurrent search_async
    # calls share engine batches. A request sees every async write issued before it.
    async def search_async(
        self, query: Any, k: int = 10, *, filter: dict[str, Any] | Filter | None = None
    ) -> list[GpuSearchResult]:
        """Like search, on the storage's worker threads; concurrent calls share engine batches.
        A filtered search runs as one storage call of its own (no coalescing)."""
        q = as_float32(query, 1, "query")
        f = compile_filter(filter)
        if f is not None:
            return search_results(await aio.search_filtered(self, q, check_k(k), f))
        return search_results(await aio.search(self, q, check_k(k)))

    async def search_batch_async(
        self, queries: Any, k: int = 10, *, filter: dict[str, Any] | Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like search_batch (host arrays), on the storage's worker threads."""
        q = as_float32(queries, 2, "queries")
        f = compile_filter(filter)
        if f is not None:
            scores, flat_ids, kk = await aio.search_batch_filtered(self, q, check_k(k), f)
        else:
            scores, flat_ids, kk = await aio.search_batch(self, q, check_k(k))
        ids = np.empty(len(flat_ids), dtype=object)
        ids[:] = flat_ids
        return scores, ids.reshape(q.shape[0], kk)

    async def add_vector_async(
        self, vector: GpuVector | str, data: Any = None, metadata: dict[str, Any] | None = None
    ) -> None:
        """Like add_vector. Cancelling the awaiting task does not withdraw the write."""
        await aio.add_vector(self, *_add_vector_args(vector, data, metadata))

    async def add_vectors_async(
        self,
        ids: Sequence[str] | Sequence[GpuVector],
        data: Any = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Like add_vectors. The array is read in place: leave it unchanged until this returns."""
        args = _add_vectors_args(ids, data, metadata)
        if args is not None:
            await aio.add_vectors(self, *args)

    async def update_metadata_async(self, id: str, metadata: dict[str, Any]) -> bool:
        """Like update_metadata, ordered with the other async writes."""
        md = check_metadata(metadata)
        if type(id) is not str:
            raise InvalidArgumentError(f"id must be a string, got {type(id).__name__}")
        if not storable(id):
            return False
        return await aio.update_metadata(self, id, md)

    def set_batching(self, max_wait_us: float | None = None, max_batch: int | None = None) -> None:
        """Tune how concurrent search_async calls are coalesced (defaults 200 us, 256);
        ``max_batch=1`` turns coalescing off."""
        aio.set_batching(self, max_wait_us, max_batch)

    def batching(self) -> aio.BatchingConfig:
        return aio.batching(self)

    def async_stats(self) -> aio.AsyncStats:
        return aio.stats(self)

    # -- persistence and lifetime -----------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the storage to ``path`` atomically (see docs/format.md)."""
        self._s.save(os.fspath(path))

    def close(self) -> None:
        """Free the device memory now; later calls raise StorageClosedError."""
        if self._aq is not None:
            self._aq.shutdown()  # async requests already issued run first
        self._s.close()

    @property
    def closed(self) -> bool:
        return self._s.closed

    def __enter__(self) -> "VectorStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._s.closed:
            return f"<VectorStorage closed backend={self.backend}>"
        return (
            f"<VectorStorage backend={self.backend} dimension={self.dimension} "
            f"metric={self.metric.value} count={len(self)}>"
        )


# Argument checks of add_vector / add_vectors (host arrays), shared with the async forms.
def _add_vector_args(vector: GpuVector | str, data: Any, metadata: Any) -> tuple[str, np.ndarray, dict[str, Any]]:
    if isinstance(vector, GpuVector):
        id, data, metadata = vector.id, vector.data, vector.metadata
    else:
        id = vector
    check_id(id)
    return id, as_float32(data, 1, "vector"), check_metadata(metadata)


def _add_vectors_args(
    ids: Any, data: Any, metadata: Any
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]] | None:
    """The checked arguments; None when a list of GpuVector is empty (nothing to add)."""
    if data is None:
        vectors = list(ids)
        if not all(isinstance(v, GpuVector) for v in vectors):
            raise InvalidArgumentError("add_vectors(ids, data): data is missing")
        if not vectors:
            return None
        ids = [v.id for v in vectors]
        data = np.stack([as_float32(v.data, 1, "vector") for v in vectors])
        metadata = [v.metadata for v in vectors]
    id_list = check_ids(ids, elements=False)
    md: list[dict[str, Any]] = []
    if metadata is not None:
        md = [check_metadata(m) for m in metadata]
        if len(md) != len(id_list):
            raise InvalidArgumentError(f"got {len(md)} metadata entries for {len(id_list)} vectors")
        if not any(md):
            md = []
    arr = as_float32(data, 2, "vectors")
    if arr.shape[0] != len(id_list):
        raise InvalidArgumentError(f"got {len(id_list)} ids for {arr.shape[0]} vectors")
    return id_list, arr, md
