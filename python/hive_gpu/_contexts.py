"""One context class per backend; all share one implementation over hive_gpu._core."""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import numpy as np

from . import _core
from ._arrays import as_path, check_count, storage_dtype
from ._storage import _METRIC_TO_CORE, VectorStorage
from ._types import GpuDeviceInfo, GpuDistanceMetric, PoolStats
from .errors import InvalidArgumentError, InvalidArgumentTypeError, InvalidDeviceIdError, NoDeviceError

__all__ = [
    "Context",
    "available_backends",
    "backend_status",
    "compiled_backends",
    "create_context",
    "default_context",
]


class Context:
    """A device of one backend. Subclasses only name their backend."""

    BACKEND: ClassVar[str] = ""

    def __init__(self, device_id: int = 0) -> None:
        if type(self) is Context:
            raise InvalidArgumentTypeError("use CpuContext, CudaContext, ... or hive_gpu.create_context()")
        device_id = _check_device_id(device_id)
        if self.BACKEND not in _core.compiled_backends():
            raise NoDeviceError(f"the {self.BACKEND} backend is not compiled into this build of hive_gpu")
        self._ctx = _core.create_context(self.BACKEND, device_id)
        self._device_id = device_id

    @classmethod
    def is_available(cls) -> bool:
        """True when the backend is compiled in and has a usable device."""
        return _core.backend_available(cls.BACKEND)

    @classmethod
    def device_count(cls) -> int:
        """Usable devices of this backend here (0 when none, or not compiled in)."""
        return _core.device_count(cls.BACKEND)

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why the backend cannot be used here ("" when it can)."""
        return _core.backend_unavailable_reason(cls.BACKEND)

    @property
    def backend(self) -> str:
        """The backend's name: "cpu", "cuda", "rocm", "metal" or "webgpu"."""
        return self.BACKEND

    @property
    def device_id(self) -> int:
        """Which device of the backend this context uses."""
        return self._device_id

    def device_info(self) -> GpuDeviceInfo:
        """A fresh snapshot of the device: name, memory, driver (see GpuDeviceInfo)."""
        return GpuDeviceInfo._from_core(self._ctx.device_info())

    def vram_usage(self) -> float:
        """Device memory in use, as a percentage of the total (0.0 when unknown)."""
        return self.device_info().vram_usage_percent()

    def has_available_vram(self, required_bytes: int) -> bool:
        """Whether the device has at least ``required_bytes`` free now."""
        return self.device_info().has_available_vram(check_count(required_bytes, "required_bytes"))

    def create_storage(
        self,
        dimension: int,
        metric: GpuDistanceMetric | str = GpuDistanceMetric.COSINE,
        dtype: Any = "float32",
    ) -> VectorStorage:
        """An empty storage of ``dimension``-component vectors compared with ``metric``
        ("cosine", "dot_product", "euclidean" or a GpuDistanceMetric), on this device.

        ``dtype`` is how rows are kept: "float32", "float16" or "bfloat16" (also
        ``np.float16``, ml_dtypes' ``bfloat16``...). 16-bit rows take half the memory; they are
        rounded once, at insert, to nearest even, and every score is computed in float32 over
        the stored values. InvalidDtypeError for any other dtype, or one this backend does
        not store."""
        if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)):
            raise InvalidArgumentTypeError(f"dimension must be an integer, got {type(dimension).__name__}")
        if not 1 <= dimension <= _core.MAX_DIMENSION:
            raise InvalidArgumentError(f"dimension must be in [1, {_core.MAX_DIMENSION}], got {dimension}")
        m = GpuDistanceMetric.parse(metric)
        return VectorStorage(self._ctx.create_storage(int(dimension), _METRIC_TO_CORE[m], storage_dtype(dtype)))

    def load_storage(self, path: str | os.PathLike[str]) -> VectorStorage:
        """Load a file written by ``VectorStorage.save`` (from any backend) onto this device."""
        return VectorStorage(self._ctx.load_storage(as_path(path)))

    def pool_stats(self) -> PoolStats:
        """The memory pool's counters and configuration (see PoolStats)."""
        return PoolStats(**self._ctx.pool_stats())

    def configure_pool(self, release_threshold: int | None = None, max_bytes: int | None = None) -> None:
        """Set the memory pool's release threshold and cap in bytes (None keeps the current
        value). ``max_bytes`` (0: no cap) caps the memory of the stored rows of every storage
        of this context, plus pool scratch on GPUs: an add beyond it raises OutOfMemoryError
        and changes nothing."""
        cur = self._ctx.pool_stats()
        self._ctx.set_pool_config(
            cur["release_threshold"] if release_threshold is None else check_count(release_threshold, "release_threshold"),
            cur["max_bytes"] if max_bytes is None else check_count(max_bytes, "max_bytes"),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} device_id={self._device_id}>"


def _context_class(backend: str, class_name: str, description: str) -> type[Context]:
    return type(class_name, (Context,), {"BACKEND": backend, "__doc__": description, "__module__": __name__})


# One class per backend the core knows (the hive_gpu_add_backend() calls of CMakeLists.txt),
# compiled in or not: CpuContext, CudaContext, RocmContext, MetalContext, WgpuContext, ...
_BY_NAME: dict[str, type[Context]] = {
    name: _context_class(name, class_name, description)
    for name, class_name, _, description in _core.known_backends()
}
_ALIASES = {alias: name for name, _, aliases, _ in _core.known_backends() for alias in aliases}
globals().update({cls.__name__: cls for cls in _BY_NAME.values()})
__all__ += [cls.__name__ for cls in _BY_NAME.values()]


def compiled_backends() -> list[str]:
    """Backends compiled into this build, fastest first."""
    return list(_core.compiled_backends())


def available_backends() -> list[str]:
    """Backends that can create a context on this machine, fastest first: devices emulated
    in software on the CPU (a WebGPU CPU adapter such as lavapipe) come after the CPU.
    ``backend_status()`` says why each of the others cannot."""
    avail = [b for b in _core.compiled_backends() if _core.backend_available(b)]
    emulated = [b for b in avail if _core.backend_emulated(b)]
    return [b for b in avail if b not in emulated] + emulated


def backend_status() -> dict[str, str]:
    """Every backend hive_gpu knows, mapped to why it cannot be used here ("" when it can).

    A backend left out of this build says why the build left it out, for instance
    ``"backend 'cuda' is not compiled into this build of hive_gpu: nvcc found, cuBLAS not
    found: pip install nvidia-cublas"``; a compiled one says what is missing at run time (no
    driver, no device, a library that could not be loaded).
    """
    return {name: _core.backend_unavailable_reason(name) for name in _BY_NAME}


def create_context(backend: str = "auto", device_id: int = 0) -> Context:
    """A context of ``backend`` ("auto" picks the first of available_backends())."""
    if not isinstance(backend, str):
        raise InvalidArgumentTypeError(f"backend must be a string such as 'cpu' or 'auto', got {type(backend).__name__}")
    name = _ALIASES.get(backend.lower(), backend.lower())
    if name == "auto":
        avail = available_backends()
        if not avail:
            raise NoDeviceError("no backend is available")
        name = avail[0]
    if name not in _BY_NAME:
        raise InvalidArgumentError(f"unknown backend {backend!r}; known: {sorted(_BY_NAME)}")
    return _BY_NAME[name](device_id)


def _check_device_id(device_id: object) -> int:
    if isinstance(device_id, (bool, np.bool_)) or not isinstance(device_id, (int, np.integer)):
        raise InvalidArgumentTypeError(f"device_id must be an integer, got {type(device_id).__name__}")
    if not 0 <= device_id < 2**31:
        raise InvalidDeviceIdError(f"device_id must be in [0, 2**31), got {device_id}")
    return int(device_id)


_DEFAULTS: dict[tuple[str, int], Context] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_context(backend: str = "auto", device_id: int = 0) -> Context:
    """The context this process shares for ``backend`` and ``device_id``, made by
    create_context() on first use. ``VectorStorage.load``, ``from_bytes`` and unpickling use
    it when given no context, so they do not start a device per call."""
    key = (backend, device_id)
    with _DEFAULTS_LOCK:
        ctx = _DEFAULTS.get(key)
        if ctx is None:
            ctx = _DEFAULTS[key] = create_context(backend, device_id)
        return ctx
