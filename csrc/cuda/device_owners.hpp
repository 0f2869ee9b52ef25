// Owners of runtime handles and allocations: what a constructor has made so far is freed
// when a later step throws, and a destructor needs no list of frees.
#pragma once

#include "kernels/compat.cuh"

#include <memory>
#include <type_traits>

#include "cuda/cuda_check.hpp"

namespace hive_gpu::cuda {

struct StreamDestroy {
    void operator()(cudaStream_t s) const {
        cudaStreamSynchronize(s);
        cudaStreamDestroy(s);
    }
};
struct EventDestroy {
    void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
struct DeviceFree {
    void operator()(void* p) const { cudaFree(p); }
};
struct HostFree {
    void operator()(void* p) const { cudaFreeHost(p); }
};

using StreamPtr = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDestroy>;
using EventPtr = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDestroy>;
using DevicePtr = std::unique_ptr<void, DeviceFree>;
using PinnedPtr = std::unique_ptr<void, HostFree>;

inline StreamPtr make_stream() {
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    return StreamPtr(s);
}

inline EventPtr make_event() {
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    return EventPtr(e);
}

inline DevicePtr device_alloc(std::size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    return DevicePtr(p);
}

inline PinnedPtr pinned_alloc(std::size_t bytes, unsigned flags) {
    void* p = nullptr;
    check(cudaHostAlloc(&p, bytes, flags), "cudaHostAlloc");
    return PinnedPtr(p);
}

}  // namespace hive_gpu::cuda
