// Metal context: one MTLDevice, one command queue shared by its engines (command buffers
// are made per call, so concurrent searches need no lock) and the compiled kernels.
// Objective-C++ only (included from the .mm files); compiled with ARC.
#pragma once

#import <Metal/Metal.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "hive_gpu/context.hpp"
#include "metal/search_plan.hpp"

namespace hive_gpu::metal {

// Runs f inside an autorelease pool (callers' threads may have none) and rethrows its C++
// exception after the pool is drained.
template <typename F>
void with_pool(F&& f) {
    std::exception_ptr error;
    @autoreleasepool {
        try {
            f();
        } catch (...) {
            error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

class MetalContext final : public Context {
   public:
    // Compiles the kernels; throws BackendError when the device cannot run them.
    explicit MetalContext(id<MTLDevice> device);

    std::string backend() const override { return "metal"; }
    DeviceInfo device_info() const override;
    std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric, Dtype dtype) override;

    id<MTLDevice> device() const { return device_; }
    id<MTLCommandQueue> queue() const { return queue_; }
    id<MTLComputePipelineState> pipeline(Kernel kernel) const { return pipelines_[static_cast<int>(kernel)]; }
    // MetalPerformanceShaders supports this device (the batched product path).
    bool has_mps() const { return mps_; }
    // Largest single buffer the device allows.
    std::size_t max_buffer_bytes() const { return max_buffer_; }

    // A shared-storage buffer of at least `bytes` (>= 16) bytes; OutOfMemoryError when the
    // device refuses it or it exceeds maxBufferLength.
    id<MTLBuffer> new_buffer(std::size_t bytes, const char* what) const;
    // OutOfMemoryError when `bytes` more would take this process past the device's
    // recommended working set (beyond it, macOS pages GPU memory instead of failing).
    void check_working_set(std::uint64_t bytes, const char* what) const;
    // Commits, waits, and turns a failed command buffer into BackendError
    // (OutOfMemoryError when the driver ran out of memory).
    void run(id<MTLCommandBuffer> commands, const char* what) const;

   private:
    id<MTLDevice> device_;
    id<MTLCommandQueue> queue_;
    id<MTLComputePipelineState> pipelines_[kKernelCount];
    bool mps_ = false;
    std::size_t max_buffer_ = 0;
};

}  // namespace hive_gpu::metal
