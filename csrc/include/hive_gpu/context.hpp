// A context is one device of one backend: it reports what the device is, owns the
// resources its engines share (streams, BLAS handles, memory pool) and makes storages.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "hive_gpu/types.hpp"

namespace hive_gpu {

class Engine;  // hive_gpu/engine.hpp, for backend authors

class VectorStorage;

// Host rows on their way to device memory ahead of an add (Context::stage_rows). The copy
// runs on threads of its own from the moment the object exists; the host rows must stay
// unchanged until wait() returns or the object is destroyed (which waits for the copy). The
// memory is the context's and goes back to it with the object.
class StagedRows {
   public:
    virtual ~StagedRows() = default;
    // Blocks until the rows are on the device; throws what the copy threw (OutOfMemoryError
    // when the device had no room for them).
    virtual void wait() = 0;
    virtual const float* data() const = 0;  // after wait(): rows() rows, ld() floats apart
    virtual std::size_t rows() const = 0;
    virtual std::size_t ld() const = 0;
};

// Always held by std::shared_ptr (create_context returns one); every storage and engine
// made from a context keeps it alive, so the caller may drop its own pointer first.
class Context : public std::enable_shared_from_this<Context> {
   public:
    virtual ~Context() = default;

    // "cpu", "cuda", "rocm", "metal" or "webgpu".
    virtual std::string backend() const = 0;
    // A fresh snapshot: free/used memory are read from the driver at each call. Fields the
    // backend cannot know are 0 or empty and named in DeviceInfo::unknown.
    virtual DeviceInfo device_info() const = 0;

    // A fresh, empty engine bound to this context. Engines keep their context alive. Users
    // call create_storage() instead; this is the hook a backend implements.
    virtual std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric, Dtype dtype) = 0;

    // The device memory pool shared by this context's engines (backends without one report
    // zeros and ignore the configuration).
    virtual PoolStats pool_stats() const { return {}; }
    virtual void set_pool_config(const PoolConfig& config) { (void)config; }

    // Starts copying n host rows of `dim` floats to this device, with no storage involved,
    // for a later VectorStorage::add_vectors(..., staged), and returns at once. Backends with
    // device memory stage batches large enough to gain from it; the others and smaller
    // batches give null (the caller then adds from host memory as usual). The rows are not
    // checked here: the add checks them.
    virtual std::unique_ptr<StagedRows> stage_rows(const float* rows, std::size_t n, std::size_t dim) {
        (void)rows, (void)n, (void)dim;
        return nullptr;
    }

    // An empty store of `dimension`-element rows compared with `metric`, held on this device
    // in `dtype`. 1 <= dimension <= kMaxDimension; throws InvalidArgumentError otherwise.
    std::shared_ptr<VectorStorage> create_storage(std::size_t dimension, Metric metric,
                                                  Dtype dtype = Dtype::Float32);
};

// Backends compiled into this library, in order of preference for "auto".
std::vector<std::string> compiled_backends();
// True when `backend` is compiled in and has at least one usable device.
bool backend_available(const std::string& backend);
// Usable devices of `backend` (0 when not compiled in or no device/driver).
int device_count(const std::string& backend);
// True when `backend`'s device is a software emulation running on the CPU (such a device
// is ranked after the CPU backend by "auto").
bool backend_emulated(const std::string& backend);
// Why `backend` cannot be used here ("" when it can).
std::string backend_unavailable_reason(const std::string& backend);
// Context on device `device_id` of `backend`; "auto" picks the first available of
// compiled_backends() whose device is not emulated, else the first available. Throws NoDeviceError / InvalidDeviceIdError / InvalidArgumentError.
std::shared_ptr<Context> create_context(const std::string& backend, int device_id = 0);

}  // namespace hive_gpu
