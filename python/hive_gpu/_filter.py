"""Filters over metadata: ``hive_gpu.Filter(expr)`` compiles one for reuse."""

from __future__ import annotations

from typing import Any

from . import _core
from .errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["Filter"]


class Filter:
    """A metadata filter, compiled once; pass it (or the dict itself) as ``filter=``.

    The language (MongoDB/Chroma-like)::

        {"lang": "pt"}                                  # {"lang": {"$eq": "pt"}}
        {"year": {"$gte": 2020, "$lt": 2024}}           # $eq $ne $gt $gte $lt $lte
        {"lang": {"$in": ["pt", "es"]}}                 # $in $nin
        {"tags": {"$contains": "news"}}                 # list-of-str values
        {"$or": [{...}, {...}]}, {"$and": [...]}, {"$not": {...}}
        {"$id": {"$in": ["a", "b"]}}                    # by vector id

    Top-level keys are ANDed. A vector that lacks a key never matches a condition on it
    ($ne and $nin included); ``$not`` is the complement over all vectors. Numbers compare
    with numbers (int and float together), str with str (by code point); ordering a str
    against stored numbers (or the reverse) raises InvalidArgumentError, and bool and list
    values never satisfy an ordering. A malformed filter raises InvalidArgumentError naming
    its path, e.g. ``filter.$and[1].year.$gt``.
    """

    __slots__ = ("_f", "_expr")

    def __init__(self, expr: dict[str, Any]) -> None:
        if isinstance(expr, Filter):
            self._f, self._expr = expr._f, expr._expr
            return
        self._f = _core.Filter(expr)
        self._expr = expr

    @property
    def matches_all(self) -> bool:
        """True for ``{}``, which every vector passes."""
        return self._f.matches_all

    def __repr__(self) -> str:
        return f"Filter({self._expr!r})"


def compile_filter(filter: Any) -> "_core.Filter | None":
    """The core filter for a ``filter=`` argument: None, a dict, or a Filter."""
    if filter is None:
        return None
    if isinstance(filter, Filter):
        return filter._f
    if isinstance(filter, dict):
        return _core.Filter(filter)
    raise InvalidArgumentTypeError(f"filter must be a dict or a hive_gpu.Filter, got {type(filter).__name__}")
