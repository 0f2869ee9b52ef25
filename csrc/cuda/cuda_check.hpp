// CUDA runtime errors -> the project's exceptions, with the runtime's own words. Compiled by
// HIP for ROCm too (the names map through kernels/compat.cuh; messages start with "rocm:").
#pragma once

#include "kernels/compat.cuh"

#include <string>

#include "hive_gpu/error.hpp"

namespace hive_gpu::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what) {
    cudaGetLastError();  // allocation failures are not sticky: clear them for the next call
    std::string msg = std::string(HIVE_GPU_BACKEND_NAME ": ") + what + ": " + cudaGetErrorName(e) + " (" +
                      cudaGetErrorString(e) + ")";
    if (e == cudaErrorMemoryAllocation) throw OutOfMemoryError(msg);
    throw BackendError(msg);
}

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw_cuda(e, what);
}

// After a kernel launch: configuration errors surface here, not at the next sync.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// Makes `device` current for this thread while in scope (Python threads may hop).
class DeviceGuard {
   public:
    explicit DeviceGuard(int device) {
        check(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~DeviceGuard() {
        int now = previous_;
        if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

   private:
    int previous_ = 0;
};

}  // namespace hive_gpu::cuda
