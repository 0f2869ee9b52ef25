// The exception hierarchy. The Python module maps each class to the matching class of
// hive_gpu.errors, so C++ and Python users see the same taxonomy.
#pragma once

#include <stdexcept>
#include <string>

namespace hive_gpu {

class Error : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// Caller passed something invalid; nothing was changed.
class InvalidArgumentError : public Error {
   public:
    using Error::Error;
};
class DimensionMismatchError : public InvalidArgumentError {
   public:
    using InvalidArgumentError::InvalidArgumentError;
};
class NonFiniteValueError : public InvalidArgumentError {
   public:
    using InvalidArgumentError::InvalidArgumentError;
};
class DuplicateIdError : public InvalidArgumentError {
   public:
    using InvalidArgumentError::InvalidArgumentError;
};

// An id that had to exist does not. VectorStorage's own calls answer an unknown id with
// false or std::nullopt rather than throwing this.
class VectorNotFoundError : public Error {
   public:
    using Error::Error;
};

// The backend has no driver or no usable device here ("auto": no backend has one).
class NoDeviceError : public Error {
   public:
    using Error::Error;
};
// A device id outside [0, device_count(backend)).
class InvalidDeviceIdError : public Error {
   public:
    using Error::Error;
};

// Device or host memory exhausted; the operation was rolled back.
class OutOfMemoryError : public Error {
   public:
    using Error::Error;
};

// The driver or runtime failed; the message carries its own words.
class BackendError : public Error {
   public:
    using Error::Error;
};

// A file that is not a hive_gpu store, or one that was truncated or damaged.
class CorruptFileError : public Error {
   public:
    using Error::Error;
};

// Reading or writing a file failed (permissions, disk full, missing file).
class IoError : public Error {
   public:
    using Error::Error;
};

// A call on a VectorStorage after close().
class StorageClosedError : public Error {
   public:
    using Error::Error;
};

}  // namespace hive_gpu
