// Lanes: what one search in flight owns (a stream, a second stream for batches, a cuBLAS
// handle with its workspace, pinned buffers for queries, results and filters). A store
// keeps a pool of them, so searches from several threads overlap on the device.
#pragma once

#include "kernels/compat.cuh"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/cuda_context.hpp"

namespace hive_gpu::cuda {

constexpr std::size_t kQueryChunk = 4096;  // queries per device pass

struct Lane {
    cudaStream_t stream = nullptr;
    std::uint64_t writes_seen = ~std::uint64_t{0};  // the store's write count when the stream last waited on it
    cudaEvent_t ingest = nullptr;  // recorded on a producer's stream
    cublasHandle_t blas = nullptr;
    void* blas_workspace = nullptr;
    void* host = nullptr;         // pinned and mapped: queries up, results down
    void* host_device = nullptr;  // the device's address of `host`
    unsigned int* done = nullptr;  // blocks finished, for the one-launch single-query scan
    Scratch work;                  // single queries' scratch, kept while the lane lives
    std::size_t host_bytes = 0;
    unsigned long long* fault_device = nullptr;
    unsigned long long* fault_host = nullptr;
    unsigned char* flags_host = nullptr;  // pinned, a flag per query of a pass
    void* filter_host = nullptr;          // pinned: a filtered search's bits or slot list
    std::size_t filter_host_bytes = 0;
    bool blas_tf32 = false;               // the cuBLAS handle's math mode
    // Batches: selection on `aux` overlaps the next GEMM tile on `stream`.
    cudaStream_t aux = nullptr;
    cudaEvent_t tile_scored[2] = {nullptr, nullptr};
    cudaEvent_t tile_free[2] = {nullptr, nullptr};
    cudaEvent_t selected = nullptr;

    // Pinned mapped memory of at least `bytes` at `host`.
    void ensure_host(std::size_t bytes);
    void ensure_filter_host(std::size_t bytes);
    // The cuBLAS handle, made on first use.
    void ensure_blas();
};

struct LaneDeleter {
    void operator()(Lane* lane) const;  // also frees a lane made only in part
};
using LanePtr = std::unique_ptr<Lane, LaneDeleter>;

class LanePool {
   public:
    // A lane borrowed for one call; back to the pool when the call ends. A call that fails
    // may leave work queued: the lane is drained first, and dropped if that fails.
    class Lease {
       public:
        explicit Lease(LanePool& pool);
        ~Lease();
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        Lane& operator*() const { return *lane_; }
        Lane* operator->() const { return lane_.get(); }

       private:
        LanePool& pool_;
        int exceptions_;  // in flight when the lease began
        LanePtr lane_;
    };

    void clear();

   private:
    std::mutex mutex_;
    std::vector<LanePtr> free_;
};

}  // namespace hive_gpu::cuda
