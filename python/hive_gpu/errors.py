"""The exception hierarchy of hive_gpu.

Every error the library raises derives from :class:`HiveGpuError`, and also from the
builtin a Python user would reach for (``ValueError``, ``KeyError``, ``MemoryError``...).
"""

from __future__ import annotations

import os

__all__ = [
    "HiveGpuError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
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
    "PersistenceFileNotFoundError",
    "PersistencePermissionError",
    "PersistenceIsADirectoryError",
    "PersistenceNotADirectoryError",
    "PersistenceFileExistsError",
    "PersistenceInterruptedError",
    "PersistenceBlockingIOError",
    "PersistenceTimeoutError",
    "CorruptFileError",
    "StorageClosedError",
]


class HiveGpuError(Exception):
    """Base class of every hive_gpu error."""


class InvalidArgumentError(HiveGpuError, ValueError):
    """An argument is invalid; nothing was changed."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (an id that is not a str, a k that is not an int...);
    nothing was changed."""


class DimensionMismatchError(InvalidArgumentError):
    """A vector or query does not have the storage's dimension."""


class NonFiniteValueError(InvalidArgumentError):
    """A vector or query contains NaN or infinity, or a value its store's dtype cannot hold."""


class DuplicateIdError(InvalidArgumentError):
    """An id already exists in the storage, or appears twice in one batch."""


class InvalidDtypeError(InvalidArgumentTypeError):
    """An array has a dtype that cannot hold vector components (int, bool, complex, object...),
    or a storage dtype is not one of ``"float32"``, ``"float16"``, ``"bfloat16"``."""


class InvalidMetadataError(InvalidArgumentTypeError):
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
    """A file could not be read or written.

    When a system call failed, ``errno``, ``strerror`` and ``filename`` are set and the error
    is also the builtin subclass of OSError for that errno, so ``except FileNotFoundError``
    (or PermissionError, IsADirectoryError, ...) catches it; see PersistenceFileNotFoundError
    and its siblings.
    """

    def __str__(self) -> str:
        # The core's message names the operation ("cannot open 'x': ..."), which OSError's
        # "[Errno 2] ..." form would drop.
        message = self.__dict__.get("_message")
        return message if message else super().__str__()


class PersistenceFileNotFoundError(PersistenceError, FileNotFoundError):
    """The file (or a folder on its path) does not exist."""


class PersistencePermissionError(PersistenceError, PermissionError):
    """The file system refused access."""


class PersistenceIsADirectoryError(PersistenceError, IsADirectoryError):
    """The path names a directory."""


class PersistenceNotADirectoryError(PersistenceError, NotADirectoryError):
    """A component of the path is not a directory."""


class PersistenceFileExistsError(PersistenceError, FileExistsError):
    """The file already exists."""


class PersistenceInterruptedError(PersistenceError, InterruptedError):
    """A system call was interrupted."""


class PersistenceBlockingIOError(PersistenceError, BlockingIOError):
    """The operation would block."""


class PersistenceTimeoutError(PersistenceError, TimeoutError):
    """A system call timed out."""


_PERSISTENCE_BY_OSERROR: dict[type, type[PersistenceError]] = {
    FileNotFoundError: PersistenceFileNotFoundError,
    PermissionError: PersistencePermissionError,
    IsADirectoryError: PersistenceIsADirectoryError,
    NotADirectoryError: PersistenceNotADirectoryError,
    FileExistsError: PersistenceFileExistsError,
    InterruptedError: PersistenceInterruptedError,
    BlockingIOError: PersistenceBlockingIOError,
    TimeoutError: PersistenceTimeoutError,
}


def _persistence_error(message: str, errno: int, path: bytes) -> PersistenceError:
    """The error for a failed file operation of the core: errno 0 means no system call
    failed (a path that is not a regular file, a short write); path b"" means none."""
    filename = os.fsdecode(path) if path else None
    if errno:
        # OSError(errno, ...) picks the builtin subclass Python itself would raise.
        cls = _PERSISTENCE_BY_OSERROR.get(type(OSError(errno, "")), PersistenceError)
        err = cls(errno, os.strerror(errno), filename) if filename else cls(errno, os.strerror(errno))
    else:
        err = PersistenceError(message)
        err.filename = filename
    err._message = message
    return err


class CorruptFileError(HiveGpuError, ValueError):
    """A file is not a hive_gpu store, or it was truncated or damaged."""


class StorageClosedError(HiveGpuError, RuntimeError):
    """The storage was closed."""
