"""asyncio on top of the C++ async queue of each storage (see docs/async.md).

Requests run on the storage's worker threads with the GIL released; concurrent single
searches are coalesced there into one batch. Completions come back to the awaiting loop
through ``loop.call_soon_threadsafe``: the loop thread itself never waits on the device.
This module knows queues, not storages: each storage hands over its own queue.
"""

from __future__ import annotations

import asyncio
import atexit
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import _core
from ._arrays import check_count, native_call
from .errors import InvalidArgumentError, InvalidArgumentTypeError

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
    writes: int  # add, update, remove and save requests executed
    cancelled: int  # requests dropped before they ran

    @property
    def mean_batch(self) -> float:
        """Single searches per engine call (0.0 before the first)."""
        return self.searches / self.search_batches if self.search_batches else 0.0


_queues: "weakref.WeakSet[_core.AsyncStorage]" = weakref.WeakSet()
_sinks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _core.LoopSink]" = weakref.WeakKeyDictionary()


def make_queue(core_storage: "_core.Storage") -> "_core.AsyncStorage":
    """A new async queue over a native storage; its workers stop at interpreter exit."""
    q = _core.AsyncStorage(core_storage)
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


async def run(submit: Callable[..., "_core.Ticket"], *args: Any) -> Any:
    """Submits one request, ``submit(*args, sink, future)`` (a method of a queue such as
    ``queue.search``), and awaits its result: a request sees every write submitted before it."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return await _complete(fut, native_call(submit, *args, _sink(loop), fut))


def set_batching(q: "_core.AsyncStorage", max_wait_us: float | None, max_batch: int | None) -> None:
    """Sets the queue's coalescing; None keeps a value as it is."""
    wait, batch = q.batching()
    if max_wait_us is not None:
        if isinstance(max_wait_us, bool) or not isinstance(max_wait_us, (int, float, np.integer, np.floating)):
            raise InvalidArgumentTypeError(f"max_wait_us must be a number, got {type(max_wait_us).__name__}")
        wait = float(max_wait_us)
    if max_batch is not None:
        batch = check_count(max_batch, "max_batch")
        if batch < 1:
            raise InvalidArgumentError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    q.set_batching(wait, batch)


def batching(q: "_core.AsyncStorage") -> BatchingConfig:
    """The queue's coalescing settings."""
    wait, batch = q.batching()
    return BatchingConfig(wait, batch)


def stats(q: "_core.AsyncStorage") -> AsyncStats:
    """The queue's counters."""
    return AsyncStats(**q.stats())


@atexit.register
def _shutdown_all() -> None:
    # Workers must be stopped while the interpreter can still take their completions.
    for q in list(_queues):
        q.shutdown()
