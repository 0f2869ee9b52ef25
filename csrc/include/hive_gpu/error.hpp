// The exception hierarchy. The Python module maps each class to the matching class of
// hive_gpu.errors, so C++ and Python users see the same taxonomy.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

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
// A storage dtype that is not float32, float16 or bfloat16.
class InvalidDtypeError : public InvalidArgumentError {
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

// Reading or writing a file failed (permissions, disk full, missing file). error_number()
// is the errno of the failing call (0 when no system call failed), path() the path the
// caller named ("" when none).
class IoError : public Error {
   public:
    using Error::Error;
    IoError(const std::string& what, int error_number, std::string path)
        : Error(what), error_number_(error_number), path_(std::move(path)) {}
    int error_number() const noexcept { return error_number_; }
    const std::string& path() const noexcept { return path_; }

   private:
    int error_number_ = 0;
    std::string path_;
};

// A call on a VectorStorage after close().
class StorageClosedError : public Error {
   public:
    using Error::Error;
};

}  // namespace hive_gpu
