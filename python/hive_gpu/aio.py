"""asyncio on top of the C++ async queue of each storage (see docs/async.md).

Requests run on the storage's worker threads with the GIL released; concurrent single
searches are coalesced there into one batch. Completions come back to the awaiting loop
through ``loop.call_soon_threadsafe``: the loop thread itself never waits on the device.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _core
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._storage import VectorStorage

__all__ = ["AsyncStats", "BatchingConfig"]


@dataclass(frozen=True)
class BatchingConfig:
    """How a storage coalesces concurrent single searches.

    ``max_wait_us``: the longest the oldest waiting search waits for company;
    ``max_batch``: the most searches per engine call (1 turns coalescing off)."""

    max_wait_us: float = 200.0
    max_batch: int = 256


@dataclass(frozen=True)
class AsyncStats:
    """Counters of a storage's async queue since its first async call."""

    searches: int  # single searches executed
    search_batches: int  # engine calls that executed them
    largest_batch: int
    batch_searches: int  # search_batch_async requests executed
    writes: int  # add_vector(s)_async requests executed
    cancelled: int  # requests dropped before they ran

    @property
    def mean_batch(self) -> float:
        return self.searches / self.search_batches if self.search_batches else 0.0


_create_lock = threading.Lock()
_queues: "weakref.WeakSet[_core.AsyncStorage]" = weakref.WeakSet()
_sinks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _core.LoopSink]" = weakref.WeakKeyDictionary()


def queue(store: "VectorStorage") -> "_core.AsyncStorage":
    """The storage's one async queue, made on first use: one queue keeps one order."""
    q = store._aq
    if q is None:
        with _create_lock:
            q = store._aq
            if q is None:
                q = _core.AsyncStorage(store._s)
                store._aq = q
                _queues.add(q)
    return q


def _scheduler(loop_ref: Callable[[], Any]) -> Callable[[Callable[[], None]], None]:
    # The sink holds the loop weakly, so a finished loop is freed with its sink.
    def schedule(fn: Callable[[], None]) -> None:
        loop = loop_ref()
        if loop is None:
            raise RuntimeError("the event loop is gone")
        loop.call_soon_threadsafe(fn)

    return schedule


def _sink(loop: asyncio.AbstractEventLoop) -> "_core.LoopSink":
    sink = _sinks.get(loop)
    if sink is None:
        try:
            sink = _core.LoopSink(_scheduler(weakref.ref(loop)))
            _sinks[loop] = sink
        except TypeError:  # a loop without weak references: one sink per request
            sink = _core.LoopSink(loop.call_soon_threadsafe)
    return sink


async def _complete(fut: asyncio.Future, ticket: "_core.Ticket") -> Any:
    try:
        out = await fut
    except asyncio.CancelledError:
        ticket.cancel()  # a search not yet started is dropped; a write still runs
        raise
    if type(out) is _core.AsyncError:
        out.raise_()  # the same exception class as the synchronous call
    return out


async def search(store: "VectorStorage", query: np.ndarray, k: int) -> list:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return await _complete(fut, queue(store).search(query, k, _sink(loop), fut))


async def search_batch(store: "VectorStorage", queries: np.ndarray, k: int) -> tuple:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return await _complete(fut, queue(store).search_batch(queries, k, _sink(loop), fut))


async def search_filtered(store: "VectorStorage", query: np.ndarray, k: int, filter: "_core.Filter") -> list:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return await _complete(fut, queue(store).search_filtered(query, k, filter, _sink(loop), fut))


async def search_batch_filtered(
    store: "VectorStorage", queries: np.ndarray, k: int, filter: "_core.Filter"
) -> tuple:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return await _complete(fut, queue(store).search_batch_filtered(queries, k, filter, _sink(loop), fut))


async def update_metadata(store: "VectorStorage", id: str, metadata: dict) -> bool:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return await _complete(fut, queue(store).update_metadata(id, metadata, _sink(loop), fut))


async def add_vector(store: "VectorStorage", id: str, data: np.ndarray, metadata: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    await _complete(fut, queue(store).add_vector(id, data, metadata, _sink(loop), fut))


async def add_vectors(
    store: "VectorStorage", ids: list[str], data: np.ndarray, metadata: list[dict[str, Any]]
) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    await _complete(fut, queue(store).add_vectors(ids, data, metadata, _sink(loop), fut))


def set_batching(store: "VectorStorage", max_wait_us: float | None, max_batch: int | None) -> None:
    q = queue(store)
    wait, batch = q.batching()
    if max_wait_us is not None:
        if isinstance(max_wait_us, bool) or not isinstance(max_wait_us, (int, float, np.integer, np.floating)):
            raise InvalidArgumentError(f"max_wait_us must be a number, got {type(max_wait_us).__name__}")
        wait = float(max_wait_us)
    if max_batch is not None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise InvalidArgumentError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        batch = int(max_batch)
    q.set_batching(wait, batch)


def batching(store: "VectorStorage") -> BatchingConfig:
    wait, batch = queue(store).batching()
    return BatchingConfig(wait, batch)


def stats(store: "VectorStorage") -> AsyncStats:
    return AsyncStats(**queue(store).stats())


@atexit.register
def _shutdown_all() -> None:
    # Workers must be stopped while the interpreter can still take their completions.
    for q in list(_queues):
        q.shutdown()
