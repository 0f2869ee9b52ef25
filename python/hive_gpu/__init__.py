"""hive_gpu: exact k-nearest-neighbour search over vectors kept in GPU (or CPU) memory."""

from __future__ import annotations

from . import _contexts, aio, errors
from ._contexts import (
    _BY_NAME,
    Context,
    available_backends,
    backend_status,
    compiled_backends,
    create_context,
)
from ._core import __version__
from ._filter import Filter
from ._storage import VectorStorage
from ._sharded import ShardedStorage, create_sharded_storage
from .aio import AsyncStats, BatchingConfig
from ._types import GpuDeviceInfo, GpuDistanceMetric, GpuSearchResult, GpuVector, PoolStats
from .errors import (
    BackendError,
    CorruptFileError,
    DimensionMismatchError,
    DuplicateIdError,
    HiveGpuError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidDeviceIdError,
    InvalidDtypeError,
    InvalidMetadataError,
    NoDeviceError,
    NonFiniteValueError,
    OutOfMemoryError,
    PersistenceError,
    StorageClosedError,
    VectorNotFoundError,
)

__all__ = [
    "__version__",
    "errors",
    "aio",
    "AsyncStats",
    "BatchingConfig",
    "VectorStorage",
    "ShardedStorage",
    "create_sharded_storage",
    "Filter",
    "GpuDeviceInfo",
    "GpuDistanceMetric",
    "GpuSearchResult",
    "GpuVector",
    "PoolStats",
]

# One context class per backend (CpuContext, CudaContext, RocmContext, MetalContext,
# WgpuContext, ...), made from the core's list of backends.
globals().update({cls.__name__: cls for cls in _BY_NAME.values()})
# Contexts and errors: what this module takes of theirs (the errno-specific PersistenceError
# subclasses stay in hive_gpu.errors).
__all__ += [name for module in (_contexts, errors) for name in module.__all__ if name in globals()]
