"""The exception hierarchy of hive_gpu.

Every error the library raises derives from :class:`HiveGpuError`, and also from the
builtin a Python user would reach for (``ValueError``, ``KeyError``, ``MemoryError``...).
"""

from __future__ import annotations

__all__ = [
    "HiveGpuError",
    "InvalidArgumentError",
    "DimensionMismatchError",
    "NonFiniteValueError",
    "DuplicateIdError",
    "InvalidDtypeError",
    "InvalidMetadataError",
    "VectorNotFoundError",
    "NoDeviceError",
    "InvalidDeviceIdError",
    "OutOfMemoryError",
    "BackendError",
    "PersistenceError",
    "CorruptFileError",
    "StorageClosedError",
]


class HiveGpuError(Exception):
    """Base class of every hive_gpu error."""


class InvalidArgumentError(HiveGpuError, ValueError):
    """An argument is invalid; nothing was changed."""


class DimensionMismatchError(InvalidArgumentError):
    """A vector or query does not have the storage's dimension."""


class NonFiniteValueError(InvalidArgumentError):
    """A vector or query contains NaN or infinity."""


class DuplicateIdError(InvalidArgumentError):
    """An id already exists in the storage, or appears twice in one batch."""


class InvalidDtypeError(InvalidArgumentError, TypeError):
    """An array has a dtype that cannot hold vector components (int, bool, complex, object...)."""


class InvalidMetadataError(InvalidArgumentError, TypeError):
    """A metadata value is not a str, int, float, bool or list of str (the message names the key)."""


class VectorNotFoundError(HiveGpuError, KeyError):
    """No vector has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoDeviceError(HiveGpuError, RuntimeError):
    """The backend has no usable device (no driver, no GPU, not compiled in)."""


class InvalidDeviceIdError(HiveGpuError, ValueError):
    """The device id is out of range for this backend."""


class OutOfMemoryError(HiveGpuError, MemoryError):
    """Device or host memory is exhausted; the operation was rolled back."""


class BackendError(HiveGpuError, RuntimeError):
    """The driver or runtime reported a failure."""


class PersistenceError(HiveGpuError, OSError):
    """A file could not be read or written."""


class CorruptFileError(HiveGpuError, ValueError):
    """A file is not a hive_gpu store, or it was truncated or damaged."""


class StorageClosedError(HiveGpuError, RuntimeError):
    """The storage was closed."""
