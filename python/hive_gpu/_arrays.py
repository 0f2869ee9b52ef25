"""Turning user input into the float32 C-contiguous arrays the core reads without a copy."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgumentError, InvalidDtypeError, InvalidMetadataError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def as_float32(x: Any, ndim: int, what: str) -> np.ndarray:
    """``x`` as a float32, C-contiguous array of ``ndim`` dimensions.

    float32 C-contiguous arrays pass through untouched; other floating dtypes and
    non-contiguous arrays are converted; integer, bool, complex and object data are rejected.
    """
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == ndim:
        return x  # the hot path: no copy, no checks beyond these
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        a = np.asarray(x)
        if a.dtype.kind != "f":
            raise InvalidDtypeError(f"{what} must have a floating-point dtype, got {a.dtype}")
    else:
        try:
            a = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidDtypeError(f"{what} must be numbers: {e}") from None
    if a.ndim != ndim:
        shape = "(dimension,)" if ndim == 1 else "(n, dimension)"
        raise InvalidArgumentError(f"{what} must have shape {shape}, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def storable(id: str) -> bool:
    """Whether ``id`` has a UTF-8 form (a lone surrogate has none): such an id can never be
    added, so lookups of it find nothing."""
    try:
        id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_id(id: Any) -> None:
    if type(id) is not str:
        raise InvalidArgumentError(f"id must be a string, got {type(id).__name__}")
    if not storable(id):
        raise InvalidArgumentError(f"ids must be valid Unicode text, got {id!r}")


def check_ids(ids: Any, *, elements: bool = True) -> list[str]:
    """``ids`` as a list. ``elements=False``: the native add, which checks that every id is
    a str while converting it, does the per-element check (one pass instead of two)."""
    if isinstance(ids, str):
        raise InvalidArgumentError("ids must be a sequence of strings, not one string")
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if type(ids) is not list:
        ids = list(ids)
    if elements:
        for i in ids:
            if type(i) is not str:
                raise InvalidArgumentError(f"ids must be strings, got {type(i).__name__} {i!r}")
    return ids


def check_metadata(md: Any) -> dict[str, Any]:
    """``md`` checked for the core: str keys; values str, int (64-bit), float (not NaN), bool,
    or a list of str (a tuple becomes a list). A value of another type raises
    InvalidMetadataError (also a TypeError) naming its key."""
    if md is None:
        return {}
    if not isinstance(md, dict):
        raise InvalidArgumentError(f"metadata must be a dict, got {type(md).__name__}")
    fixed: dict[str, Any] | None = None
    for k, v in md.items():
        if type(k) is not str:
            raise InvalidMetadataError(f"metadata keys must be str, got {type(k).__name__} {k!r}")
        if not storable(k):
            raise InvalidArgumentError(f"metadata key {k!r} is not valid Unicode text")
        t = type(v)
        if t is str:
            if not storable(v):
                raise InvalidArgumentError(f"metadata {k!r}: the value is not valid Unicode text")
        elif t is bool:  # before int: bool is an int subclass
            pass
        elif isinstance(v, int):
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise InvalidArgumentError(f"metadata {k!r}: {v} is outside the 64-bit integer range")
        elif isinstance(v, float):
            if v != v:
                raise InvalidArgumentError(f"metadata {k!r}: NaN cannot be stored (it equals nothing)")
        elif isinstance(v, (list, tuple)):
            for tag in v:
                if type(tag) is not str:
                    raise InvalidMetadataError(
                        f"metadata {k!r}: a list value holds only str, got {type(tag).__name__} {tag!r}"
                    )
                if not storable(tag):
                    raise InvalidArgumentError(f"metadata {k!r}: a tag is not valid Unicode text")
            if t is not list:
                fixed = dict(md) if fixed is None else fixed
                fixed[k] = list(v)
        else:
            raise InvalidMetadataError(
                f"metadata {k!r}: values are str, int, float, bool or list of str, got {t.__name__}"
            )
    if fixed is not None:
        return fixed
    return md if type(md) is dict else dict(md)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidArgumentError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if k <= 0:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    return k
