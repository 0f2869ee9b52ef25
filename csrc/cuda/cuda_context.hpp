// The CUDA context: one device, its stream-ordered memory pool for scratch, and the
// pinned staging buffers that bulk uploads stream through. The ROCm build compiles the same
// class with HIP (csrc/rocm/rocm_context.hip), which supplies device_info() and the backend
// entry; backend() names the backend being built.
#pragma once

#include "kernels/compat.cuh"

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "hive_gpu/context.hpp"

namespace hive_gpu::cuda {

class CudaContext final : public Context {
   public:
    explicit CudaContext(int device);
    ~CudaContext() override;

    std::string backend() const override { return HIVE_GPU_BACKEND_NAME; }
    DeviceInfo device_info() const override;
    std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric, Dtype dtype) override;
    PoolStats pool_stats() const override;
    void set_pool_config(const PoolConfig& config) override;
    // Into pool memory (counted against max_bytes).
    std::unique_ptr<StagedRows> stage_rows(const float* rows, std::size_t n, std::size_t dim) override;

    int device() const { return device_; }
    const cudaDeviceProp& props() const { return props_; }

    // Stream-ordered scratch from the pool: no cudaMalloc on the hot path once warm.
    void* allocate(std::size_t bytes, cudaStream_t stream);
    void release(void* p, std::size_t bytes, cudaStream_t stream);
    // Gives cached pool memory back to the device (before retrying a failed cudaMalloc).
    void trim_pool();

    // The pool's max_bytes caps the context's device memory as a whole: scratch from the
    // pool plus the rows engines hold. Engines charge row buffers before allocating them.
    // try_charge returns false when the cap would be passed; charge throws OutOfMemoryError.
    bool try_charge(std::uint64_t bytes);
    void charge(std::uint64_t bytes, const char* what);
    void uncharge(std::uint64_t bytes) { rows_bytes_.fetch_sub(bytes); }
    std::uint64_t max_bytes() const;  // the cap; 0: none

    // Pinned host buffers of staging_bytes() each, kept for the context's life.
    std::size_t staging_bytes() const { return kStagingBytes; }
    std::vector<void*> acquire_staging(std::size_t count);
    void return_staging(std::vector<void*>& buffers);

   private:
    // Adds `bytes` to `counter` (used_ or rows_bytes_) unless the two together would pass
    // the cap; false, and nothing added, when they would.
    bool take_under_cap(std::atomic<std::uint64_t>& counter, std::uint64_t bytes);

    static constexpr std::size_t kStagingBytes = std::size_t{8} << 20;
    // Below this a batch's ids take too little time to be worth hiding behind its upload.
    static constexpr std::size_t kStageMinBytes = std::size_t{32} << 20;

    int device_;
    cudaDeviceProp props_{};
    cudaMemPool_t pool_ = nullptr;

    mutable std::mutex mutex_;
    PoolConfig config_;
    std::atomic<std::uint64_t> used_{0};        // pool scratch handed out
    std::atomic<std::uint64_t> rows_bytes_{0};  // row buffers of this context's engines
    std::atomic<std::uint64_t> allocations_{0};
    std::atomic<std::uint64_t> device_allocations_{0};
    std::uint64_t reserved_seen_ = 0;  // guarded by mutex_
    std::vector<void*> staging_free_;  // guarded by mutex_
    std::vector<void*> staging_all_;   // guarded by mutex_
};

// Scratch memory from the context's pool, returned on scope exit (stream ordered).
class Scratch {
   public:
    Scratch() = default;
    Scratch(CudaContext& ctx, std::size_t bytes, cudaStream_t stream)
        : ctx_(&ctx), bytes_(bytes), stream_(stream), p_(bytes ? ctx.allocate(bytes, stream) : nullptr) {}
    ~Scratch() { reset(); }
    Scratch(Scratch&& o) noexcept { *this = std::move(o); }
    Scratch& operator=(Scratch&& o) noexcept {
        if (this != &o) {
            reset();
            ctx_ = o.ctx_;
            bytes_ = o.bytes_;
            stream_ = o.stream_;
            p_ = o.p_;
            o.p_ = nullptr;
        }
        return *this;
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;

    template <typename T>
    T* as() const { return static_cast<T*>(p_); }
    std::size_t bytes() const { return bytes_; }
    void reset() {
        if (p_) ctx_->release(p_, bytes_, stream_);
        p_ = nullptr;
    }

   private:
    CudaContext* ctx_ = nullptr;
    std::size_t bytes_ = 0;
    cudaStream_t stream_ = nullptr;
    void* p_ = nullptr;
};

}  // namespace hive_gpu::cuda
