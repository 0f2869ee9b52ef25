"""Turning user input into the float32 C-contiguous arrays the core reads without a copy."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from .errors import (
    HiveGpuError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidDtypeError,
    InvalidMetadataError,
)

# The largest k the core takes (int64); a larger k means "every vector", as any k > len does.
_MAX_K = 2**63 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def as_float32(x: Any, ndim: int, what: str) -> np.ndarray:
    """``x`` as a float32, C-contiguous array of ``ndim`` dimensions.

    float32 C-contiguous arrays pass through untouched; other floating dtypes and
    non-contiguous arrays are converted (bfloat16 too, from PyTorch or ml_dtypes/JAX); integer,
    bool, complex and object data are rejected.
    """
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == ndim:
        return x  # the hot path: no copy, no checks beyond these
    if x is None:
        raise InvalidArgumentTypeError(f"{what} must be an array of numbers, got None")
    x = plain_array(x)
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        a = np.asarray(x)
        if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
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


def plain_array(x: Any, widen_bfloat16: bool = True) -> Any:
    """``x`` in a form NumPy and the array interfaces take: a PyTorch tensor detached from
    autograd and, when bfloat16 (which NumPy lacks) and ``widen_bfloat16``, widened to float32
    by PyTorch, on its own device; anything else as it is. ml_dtypes' bfloat16 arrays (JAX's)
    need nothing: NumPy converts them."""
    if type(x).__module__.split(".")[0] != "torch" or not hasattr(x, "detach"):
        return x
    x = x.detach()
    return x.float() if widen_bfloat16 and str(x.dtype) == "torch.bfloat16" else x


# The storage dtypes, and the names each is also known by (the core's dtype_from_name).
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


def storage_dtype(dtype: Any) -> str:
    """The storage dtype ``dtype`` names, as "float32", "float16" or "bfloat16": one of these
    names (also "fp16", "half", "bf16"...), a NumPy dtype or scalar type (``np.float16``),
    ml_dtypes' ``bfloat16`` or a PyTorch dtype. Anything else raises InvalidDtypeError (a
    ValueError and a TypeError)."""
    if isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype.lower())
    else:
        name = str(dtype).lower()
        name = name[len("torch.") :] if name.startswith("torch.") else None
        if name is None:
            try:
                name = np.dtype(dtype).name
            except (TypeError, ValueError):
                name = None
        name = name if name in STORAGE_DTYPES else None
    if name is None:
        raise InvalidDtypeError(f"unknown storage dtype {dtype!r}: expected one of {', '.join(STORAGE_DTYPES)}")
    return name


def _is_bfloat16(a: np.ndarray) -> bool:
    return a.dtype.itemsize == 2 and a.dtype.name == "bfloat16"


def as_rows(x: Any, ndim: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous array of ``ndim`` dimensions that the core reads in its own
    dtype: float32, float16 and bfloat16 (ml_dtypes, or a PyTorch tensor viewed as one) stay
    as they are, so that a store of their dtype takes them without a float32 detour; other
    floating dtypes become float32. Checks as :func:`as_float32`."""
    if type(x) is np.ndarray and x.ndim == ndim and x.flags.c_contiguous and x.dtype in _TYPED:
        return x
    if type(x).__module__.split(".")[0] == "torch" and str(getattr(x, "dtype", "")) == "torch.bfloat16":
        x = _torch_bfloat16_rows(x)
    if isinstance(x, np.ndarray) and (x.dtype == np.float16 or _is_bfloat16(x)):
        if x.ndim != ndim:
            shape = "(dimension,)" if ndim == 1 else "(n, dimension)"
            raise InvalidArgumentError(f"{what} must have shape {shape}, got shape {x.shape}")
        return np.ascontiguousarray(x)
    return as_float32(x, ndim, what)


_TYPED = (np.dtype(np.float32), np.dtype(np.float16))


def _torch_bfloat16_rows(x: Any) -> Any:
    """A PyTorch bfloat16 tensor's bits as an ml_dtypes bfloat16 array, when ml_dtypes is
    installed; else the tensor, which as_float32 widens (exactly)."""
    try:
        import ml_dtypes
    except ImportError:
        return x
    import torch

    return x.detach().cpu().contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)


def storable(id: str) -> bool:
    """Whether ``id`` has a UTF-8 form (a lone surrogate has none): such an id can never be
    added, so lookups of it find nothing."""
    try:
        id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_id(id: Any) -> None:
    """Refuses an id that cannot be stored: not a str (a TypeError), or a str with no UTF-8 form."""
    if type(id) is not str:
        raise InvalidArgumentTypeError(f"id must be a string, got {type(id).__name__}")
    if not storable(id):
        raise InvalidArgumentError(f"ids must be valid Unicode text, got {id!r}")


def check_ids(ids: Any, *, elements: bool = True) -> list[str]:
    """``ids`` as a list. ``elements=False``: the native call, which checks that every id is
    a str while converting it, does the per-element check (one pass instead of two)."""
    if isinstance(ids, (str, bytes)):
        raise InvalidArgumentTypeError("ids must be a sequence of strings, not one string")
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if type(ids) is not list:
        try:
            ids = list(ids)
        except TypeError:
            raise InvalidArgumentTypeError(f"ids must be a sequence of strings, got {type(ids).__name__}") from None
    if elements:
        for i in ids:
            if type(i) is not str:
                raise InvalidArgumentTypeError(f"ids must be strings, got {type(i).__name__} {i!r}")
    return ids


def check_metadata(md: Any) -> dict[str, Any]:
    """``md`` checked for the core: str keys; values str, int (64-bit), float (not NaN), bool,
    or a list of str (a tuple becomes a list). A value of another type raises
    InvalidMetadataError (also a TypeError) naming its key."""
    if md is None:
        return {}
    if not isinstance(md, dict):
        raise InvalidArgumentTypeError(f"metadata must be a dict, got {type(md).__name__}")
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
    """``k`` as an int the core takes: an int or NumPy integer (not a bool) >= 1. Any larger k
    than the store holds returns every vector, so one beyond int64 is taken as the largest."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise InvalidArgumentTypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if k <= 0:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    return min(k, _MAX_K)


def check_count(value: Any, what: str, *, bits: int = 64) -> int:
    """``value`` as an int in [0, 2**bits): a TypeError when it is not an int, a ValueError
    when it is out of range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentTypeError(f"{what} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 2**bits:
        raise InvalidArgumentError(f"{what} must be in [0, 2**{bits}), got {value}")
    return value


def as_path(path: Any) -> bytes:
    """A file path in the form the core opens: str, bytes or os.PathLike, encoded as the
    file system does (so names that are not UTF-8 work too)."""
    try:
        return os.fsencode(path)
    except TypeError:
        raise InvalidArgumentTypeError(f"path must be str, bytes or os.PathLike, got {type(path).__name__}") from None


def native_call(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` for a native function, with what its argument conversion refuses (the
    TypeError or OverflowError of pybind11) raised as this package's errors: text with no
    UTF-8 form (a lone surrogate) as an InvalidArgumentError naming it, anything else as an
    InvalidArgumentTypeError."""
    try:
        return fn(*args)
    except HiveGpuError:
        raise
    except (TypeError, OverflowError) as e:
        bad = _unstorable_text(args)
        if bad is not None:
            raise InvalidArgumentError(f"text must be valid Unicode, got {bad!r}") from None
        raise InvalidArgumentTypeError(str(e).splitlines()[0]) from None


def _unstorable_text(value: Any, depth: int = 0) -> str | None:
    # Arguments nest at most as a tuple of lists of dicts of str.
    if type(value) is str:
        return None if storable(value) else value
    if depth < 3 and isinstance(value, (list, tuple, dict)):
        for v in itertools.chain.from_iterable(value.items()) if isinstance(value, dict) else value:
            bad = _unstorable_text(v, depth + 1)
            if bad is not None:
                return bad
    return None
