"""Typed value objects of the public API."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["GpuDistanceMetric", "GpuDeviceInfo", "GpuVector", "GpuSearchResult", "PoolStats"]


class GpuDistanceMetric(enum.Enum):
    """How vectors are compared. ``distance`` in results is the cosine similarity, the inner
    product, or the true (not squared) Euclidean distance."""

    COSINE = "cosine"
    DOT_PRODUCT = "dot_product"
    EUCLIDEAN = "euclidean"

    @classmethod
    def parse(cls, value: "GpuDistanceMetric | str") -> "GpuDistanceMetric":
        """A metric from itself or its name ("cosine", "dot_product", "euclidean"; also
        "dot", "ip", "inner_product", "l2"), in any case."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            aliases = {"dot": "dot_product", "ip": "dot_product", "inner_product": "dot_product", "l2": "euclidean"}
            key = aliases.get(key, key)
            for m in cls:
                if m.value == key:
                    return m
        from .errors import InvalidArgumentError, InvalidArgumentTypeError

        error = InvalidArgumentError if isinstance(value, str) else InvalidArgumentTypeError
        raise error(f"unknown metric {value!r}; use one of {[m.value for m in cls]}")

    @property
    def higher_is_better(self) -> bool:
        """True when a larger ``distance`` is a closer match (cosine, dot product)."""
        return self is not GpuDistanceMetric.EUCLIDEAN


@dataclass(frozen=True)
class GpuDeviceInfo:
    """What a context knows of its device. Fields the backend's API does not expose are 0 or
    empty and named in ``unknown``."""

    name: str
    backend: str
    vram_total: int
    vram_available: int
    vram_used: int
    driver_version: str
    compute_capability: str
    max_threads_per_block: int
    max_shared_memory: int
    device_id: int
    pci_bus_id: str
    unknown: tuple[str, ...] = ()

    def vram_usage_percent(self) -> float:
        """Used memory as a percentage of the total (0.0 when the total is unknown)."""
        if self.vram_total <= 0:
            return 0.0
        return 100.0 * self.vram_used / self.vram_total

    def has_available_vram(self, required_bytes: int) -> bool:
        """Whether at least ``required_bytes`` were free when the snapshot was taken."""
        return self.vram_available >= required_bytes

    @classmethod
    def _from_core(cls, d: Mapping[str, object]) -> "GpuDeviceInfo":
        d = dict(d)
        d["unknown"] = tuple(d.get("unknown", ()))  # type: ignore[arg-type]
        return cls(**d)  # type: ignore[arg-type]


class _MetadataNotGiven(dict):
    """GpuVector's metadata when none was given: reads as an empty dict, and tells
    update_vector to keep the stored metadata. Immutable, since it is shared."""

    __slots__ = ()
    __hash__ = object.__hash__

    def _immutable(self, *args: object, **kwargs: object) -> None:
        raise TypeError("this GpuVector has no metadata of its own; pass a dict to set one")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable  # type: ignore[assignment]
    __ior__ = _immutable  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "{}"


METADATA_NOT_GIVEN: dict[str, Any] = _MetadataNotGiven()


def metadata_given(md: Any) -> bool:
    """Whether an update should replace the stored metadata with ``md``."""
    return md is not None and md is not METADATA_NOT_GIVEN


@dataclass(frozen=True)
class GpuVector:
    """A vector with its id and metadata. Metadata values are str, int, float, bool or
    list of str. ``update_vector`` keeps the stored metadata when this one was not given
    (or is None) and replaces it otherwise (``{}`` clears it)."""

    id: str
    data: np.ndarray
    metadata: dict[str, Any] | None = METADATA_NOT_GIVEN


@dataclass(frozen=True)
class GpuSearchResult:
    """One hit: ``distance`` follows the storage's metric (see :class:`GpuDistanceMetric`)."""

    id: str
    distance: float
    metadata: dict[str, Any] = field(default_factory=dict)


_new = object.__new__
_set = object.__setattr__


def search_results(hits: list[tuple[str, float, dict[str, Any]]]) -> list[GpuSearchResult]:
    """GpuSearchResult objects for (id, distance, metadata) hits. Equal to constructing them,
    without the frozen ``__init__``'s one ``object.__setattr__`` per field: a single-query
    search on a small store spends a measurable part of its time there."""
    out = []
    for i, d, m in hits:
        r = _new(GpuSearchResult)
        _set(r, "__dict__", {"id": i, "distance": d, "metadata": m})
        out.append(r)
    return out


@dataclass(frozen=True)
class PoolStats:
    """Counters of a context's device memory.

    ``reserved_bytes`` / ``used_bytes`` / ``peak_bytes`` describe the scratch pool,
    ``rows_bytes`` the memory that holds stored rows. ``max_bytes`` (0 = no cap) caps pool
    scratch in use plus ``rows_bytes``: a request beyond it raises ``OutOfMemoryError``.
    """

    reserved_bytes: int
    used_bytes: int
    peak_bytes: int
    allocations: int
    device_allocations: int
    release_threshold: int
    max_bytes: int
    rows_bytes: int = 0
