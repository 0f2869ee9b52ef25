"""CUDA arrays from PyTorch, CuPy, JAX (``__cuda_array_interface__`` or DLPack) handed to the
core as device pointers, with no trip through host memory, and results handed back as
device arrays on request."""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arrays import plain_array
from .errors import InvalidArgumentError, InvalidDtypeError

__all__ = ["DEVICE_BACKENDS", "DeviceArray", "alloc_scores", "device_view", "is_device_array", "to_device", "to_host"]

# Backends whose storages read device pointers in place.
DEVICE_BACKENDS = frozenset({"cuda"})
_KDL_CUDA = 2
_KDL_CUDA_MANAGED = 13


@dataclass
class DeviceArray:
    """A float32, float16 or bfloat16 array in CUDA memory: pointer, shape, row stride (in
    elements) and the producer's stream as ``__cuda_array_interface__`` v3 names it (0: no
    ordering needed, 1: legacy default stream, 2: per-thread default stream, else the stream
    handle). The engine reads it in its own dtype and converts on the device."""

    ptr: int
    shape: tuple[int, ...]
    ld: int
    stream: int
    owner: Any  # keeps the memory (and a DLPack capsule) alive while the core reads it
    dtype: str = "float32"


# Element types read in place: __cuda_array_interface__ typestrs and DLPack (code, bits).
_CAI_DTYPES = {"<f4": "float32", "<f2": "float16"}
_DLPACK_DTYPES = {(2, 32): "float32", (2, 16): "float16", (4, 16): "bfloat16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def _module_of(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def is_device_array(x: Any) -> bool:
    """True for arrays that live in CUDA device memory."""
    if isinstance(x, np.ndarray):
        return False
    if _module_of(x) == "torch":  # its interface raises for a tensor that requires grad
        return bool(getattr(x, "is_cuda", False))
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return dev()[0] in (_KDL_CUDA, _KDL_CUDA_MANAGED)
        except Exception:
            return False
    return False


def _torch_stream(x: Any) -> int:
    torch = sys.modules.get("torch")
    if torch is None:
        return 1
    s = torch.cuda.current_stream(x.device).cuda_stream
    return 1 if s == 0 else int(s)  # torch's default stream is the legacy one


def _as_float32(x: Any, what: str) -> Any:
    """The same array in float32 on the device, converted by its own framework."""
    mod = _module_of(x)
    if mod == "torch":
        if not x.dtype.is_floating_point:
            raise InvalidDtypeError(f"{what} must have a floating-point dtype, got {x.dtype}")
        import torch

        return x.to(torch.float32)
    kind = np.dtype(getattr(x, "dtype", np.float32)).kind if hasattr(x, "dtype") else "f"
    if kind != "f":
        raise InvalidDtypeError(f"{what} must have a floating-point dtype, got {x.dtype}")
    if hasattr(x, "astype"):
        return x.astype("float32")
    raise InvalidDtypeError(f"{what} must be float32")


def _contiguous(x: Any) -> Any:
    mod = _module_of(x)
    if mod == "torch":
        return x.contiguous()
    if mod == "cupy":
        import cupy

        return cupy.ascontiguousarray(x)
    raise InvalidArgumentError("device arrays must have unit stride along their last axis")


def _from_cai(x: Any, ndim: int, what: str) -> DeviceArray:
    cai = x.__cuda_array_interface__
    dtype = _CAI_DTYPES.get(np.dtype(cai["typestr"]).str)
    if dtype is None:
        return _from_cai(_as_float32(x, what), ndim, what)
    item = _ITEMSIZE[dtype]
    shape = tuple(int(s) for s in cai["shape"])
    if len(shape) != ndim:
        want = "(dimension,)" if ndim == 1 else "(n, dimension)"
        raise InvalidArgumentError(f"{what} must have shape {want}, got shape {shape}")
    strides = cai.get("strides")
    ld = shape[-1] if shape else 0
    if strides is not None and all(s > 0 for s in shape):
        if strides[-1] != item or (ndim == 2 and (strides[0] % item or strides[0] < item * shape[1])):
            return _from_cai(_contiguous(x), ndim, what)
        if ndim == 2:
            ld = strides[0] // item
    if "stream" in cai:
        stream = 0 if cai["stream"] is None else int(cai["stream"])
    elif _module_of(x) == "torch":
        stream = _torch_stream(x)
    else:
        stream = 1  # version 2 producers: their work is ordered on the legacy stream
    ptr = int(cai["data"][0])
    return DeviceArray(ptr, shape, max(ld, 1), stream, x, dtype)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _from_dlpack(x: Any, ndim: int, what: str) -> DeviceArray:
    # stream=1 asks the producer to order its work before the legacy default stream; the
    # core then waits on that stream. The capsule (kept in `owner`) frees the tensor later.
    capsule = x.__dlpack__(stream=1)
    t = _DLTensor.from_address(_capsule_get(capsule, b"dltensor"))
    dtype = _DLPACK_DTYPES.get((t.dtype.code, t.dtype.bits)) if t.dtype.lanes == 1 else None
    if dtype is None:
        raise InvalidDtypeError(
            f"{what} must be float32, float16 or bfloat16 (DLPack dtype code {t.dtype.code}, {t.dtype.bits} bits)"
        )
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if len(shape) != ndim:
        want = "(dimension,)" if ndim == 1 else "(n, dimension)"
        raise InvalidArgumentError(f"{what} must have shape {want}, got shape {shape}")
    ld = shape[-1] if shape else 0
    if t.strides and all(s > 0 for s in shape):
        strides = tuple(t.strides[i] for i in range(t.ndim))
        if strides[-1] != 1 or (ndim == 2 and strides[0] < shape[1]):
            raise InvalidArgumentError(f"{what}: a DLPack array must have unit stride along its last axis")
        if ndim == 2:
            ld = strides[0]
    ptr = int(t.data or 0) + int(t.byte_offset)
    return DeviceArray(ptr, shape, max(ld, 1), 1, (x, capsule), dtype)


def device_view(x: Any, ndim: int, what: str) -> DeviceArray:
    """``x`` (a CUDA array of ``ndim`` dimensions) as pointer, shape, stride, stream and
    dtype. bfloat16 tensors travel through DLPack (``__cuda_array_interface__`` has no
    bfloat16 type)."""
    x = plain_array(x, widen_bfloat16=False)
    if _module_of(x) == "torch" and str(x.dtype) == "torch.bfloat16":
        return _from_dlpack(x.contiguous(), ndim, what)
    if hasattr(x, "__cuda_array_interface__"):
        return _from_cai(x, ndim, what)
    return _from_dlpack(x, ndim, what)


def to_host(x: Any) -> np.ndarray:
    """A device array copied to a NumPy array (for backends without device memory)."""
    mod = _module_of(x)
    if mod == "torch":
        return plain_array(x).cpu().numpy()
    if hasattr(x, "get"):  # CuPy
        return x.get()
    return np.asarray(x)  # JAX and others that implement __array__


def alloc_scores(like: Any, shape: tuple[int, int]) -> tuple[Any, int]:
    """A float32 device array for results, from the framework of ``like`` when it is a
    CUDA array (else PyTorch, else CuPy), with its device pointer."""
    mod = _module_of(like) if like is not None else ""
    if mod not in ("torch", "cupy"):
        mod = "torch" if _importable("torch") else "cupy" if _importable("cupy") else ""
    if mod == "torch":
        import torch

        device = like.device if _module_of(like) == "torch" else torch.device("cuda", torch.cuda.current_device())
        out = torch.empty(shape, dtype=torch.float32, device=device)
        return out, int(out.data_ptr())
    if mod == "cupy":
        import cupy

        out = cupy.empty(shape, dtype=cupy.float32)
        return out, int(out.data.ptr)
    raise InvalidArgumentError("device_output=True needs PyTorch or CuPy to hold the result")


def to_device(a: np.ndarray) -> Any:
    """A host result moved to a CUDA array (PyTorch, else CuPy)."""
    out, _ = alloc_scores(None, a.shape)
    if _module_of(out) == "torch":
        import torch

        out.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    else:
        out.set(np.ascontiguousarray(a))
    return out


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        __import__(name)
    except Exception:
        return False
    return True
