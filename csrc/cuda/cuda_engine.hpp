// The CUDA engine: rows in device memory (row stride padded to 16 bytes), norms computed
// once at insert, a fused one-pass scan for single queries, cuBLAS SGEMM tiles plus
// device top-k for batches. Each concurrent search runs on its own lane (stream, cuBLAS
// handle, pinned buffers), so searches from several threads overlap. The ROCm build compiles
// this engine with HIP (rocBLAS for the GEMM): csrc/rocm/rocm_engine.hip.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/cuda_context.hpp"
#include "hive_gpu/engine.hpp"
#include "kernels/compat.cuh"

namespace hive_gpu::cuda {

// Copies n host rows of `dim` floats to device memory `dst` with a stride of `ld` floats
// (zero padding after dim), through the context's pinned staging buffers on worker threads.
void upload_host_rows(CudaContext& ctx, const float* rows, std::size_t n, std::size_t dim,
                      std::size_t ld, float* dst);

class CudaEngine final : public Engine {
   public:
    CudaEngine(std::shared_ptr<CudaContext> context, std::size_t dimension, Metric metric);
    ~CudaEngine() override;

    std::size_t dimension() const override { return dim_; }
    Metric metric() const override { return metric_; }
    std::size_t size() const override { return size_; }

    void reserve(std::size_t rows) override;
    Dtype dtype() const override { return Dtype::Float32; }
    void append(const void* rows, const std::uint32_t* ordinals, std::size_t n) override {
        append_f32(static_cast<const float*>(rows), ordinals, n);
    }
    void write(std::size_t slot, const void* row) override { write_f32(slot, static_cast<const float*>(row)); }
    void append_f32(const float* rows, const std::uint32_t* ordinals, std::size_t n);
    void write_f32(std::size_t slot, const float* row);
    void move(std::size_t src, std::size_t dst) override;
    void truncate(std::size_t n) override;
    void set_ordinals(const std::uint32_t* ordinals, std::size_t n) override;
    void read(std::size_t first, std::size_t n, float* out) const override;
    void search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                std::int64_t* slots) const override;
    void search_filtered(const float* queries, std::size_t nq, std::size_t k, const SlotFilter& filter,
                         float* scores, std::int64_t* slots) const override;
    std::size_t memory_bytes() const override;

    bool checks_appended_rows() const override { return true; }
    void append_device(const void* rows, Dtype src, std::size_t ld, const std::uint32_t* ordinals,
                       std::size_t n, std::uintptr_t stream) override;
    void search_device(const void* queries, Dtype src, std::size_t ld, std::size_t nq, std::size_t k,
                       std::uintptr_t stream, float* scores, std::int64_t* slots,
                       float* device_scores) const override;

   private:
    // What one search in flight owns.
    struct Lane {
        cudaStream_t stream = nullptr;
        std::uint64_t writes_seen = ~std::uint64_t{0};  // writes_ when the stream last waited on written_
        cudaEvent_t ingest = nullptr;  // recorded on a producer's stream
        cublasHandle_t blas = nullptr;
        void* blas_workspace = nullptr;
        void* host = nullptr;  // pinned and mapped: queries up, results down
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
        // Batches: selection on `aux` overlaps the next SGEMM tile on `stream`.
        cudaStream_t aux = nullptr;
        cudaEvent_t tile_scored[2] = {nullptr, nullptr};
        cudaEvent_t tile_free[2] = {nullptr, nullptr};
        cudaEvent_t selected = nullptr;
    };
    // The rows one search looks at: the store's (all of them, or those a mask passes) or,
    // for sparse filtered batches, a compact copy of the listed rows.
    struct RowView {
        const float* rows;
        const float* factors;
        const std::uint32_t* ordinals;
        std::size_t n;                          // rows, or entries of `list`
        const std::uint64_t* mask = nullptr;    // dense filter: a bit per row (device)
        const std::uint32_t* list = nullptr;    // sparse single query: the fused scan reads rows list[0, n)
    };
    RowView all_rows() const { return RowView{rows_, factors_, ordinals_, size_}; }
    enum class Path { Fused, Gemm, Sorted };
    struct Plan {
        Path path = Path::Gemm;
        std::size_t blocks = 0;  // fused: scan blocks
        int cap = 0;             // fused: BlockTopK entries of a scan block
        std::size_t shared = 0;  // fused: dynamic shared bytes of a scan block
        bool short_rounds = false;  // fused: kWarpRowsSmall rows per warp and round (small stores)
        bool filtered = false;      // fused: the scan kernel that reads a mask or a list
        std::size_t workspace = 0;  // bytes of scratch the path needs beyond queries/results
    };
    struct LaneDeleter {
        void operator()(Lane* lane) const;
    };
    using LanePtr = std::unique_ptr<Lane, LaneDeleter>;
    class LeasedLane;

    LanePtr make_lane() const;
    void ensure_host(Lane& lane, std::size_t bytes) const;
    void ensure_filter_host(Lane& lane, std::size_t bytes) const;
    void ensure_blas(Lane& lane) const;

    void grow(std::size_t rows);
    // Device bytes of `rows` rows with their factors and ordinals.
    std::size_t row_bytes(std::size_t rows) const;
    void wait_producer(cudaStream_t ours, cudaEvent_t event, std::uintptr_t producer) const;
    void check_device_pointer(const void* p, const char* what) const;
    void upload_rows(const float* rows, std::size_t n, float* dst);
    void record_write();                    // ends every write: records written_
    void after_writes(Lane& lane) const;    // orders the lane's stream after the last write
    void finish_append(std::size_t n, const char* what);

    Plan plan(std::size_t nq, std::size_t k, const RowView& v) const;
    // f(kernel) with the single-query scan kernel of this metric and row width.
    template <typename F>
    void with_scan_kernel(bool short_rounds, bool filtered, F&& f) const;
    // Searches nq padded queries already on the device; results land in dscores/dslots.
    // `work` holds plan.workspace bytes; fault (device queries) gets row faults.
    void run_search(Lane& lane, const Plan& plan, const RowView& v, const float* dq, std::size_t nq, std::size_t k,
                    float* dscores, std::int64_t* dslots, void* work,
                    unsigned long long* fault) const;
    // one_launch: the scan's last block merges (Lane::done); dscores/dslots may then be
    // device addresses of mapped host memory.
    void search_fused(Lane& lane, const Plan& plan, const RowView& v, const float* dq, std::size_t k, void* work,
                      float* dscores, std::int64_t* dslots, bool one_launch = false) const;
    // One pass over queries [q0, q0 + qn): upload or copy, search, results to the host.
    void search_chunk(Lane& lane, const RowView& v, const float* host_queries, const float* device_queries,
                      std::size_t device_ld, std::size_t qn, std::size_t k, float* scores,
                      std::int64_t* slots, float* device_scores) const;
    // Batches: TF32 screening and exact re-ranking where it applies (screen_width > 0),
    // float32 GEMM otherwise and for the queries the screen cannot settle.
    void search_gemm(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq, std::size_t k,
                     float* dscores, std::int64_t* dslots) const;
    void search_gemm_exact(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                           std::size_t k, float* dscores, std::int64_t* dslots) const;
    void select_tiles(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq, std::size_t k,
                      bool tf32, std::uint64_t* rkeys, std::uint32_t* rvals) const;
    // Candidates per query kept by the TF32 screen; 0 where the screen does not apply.
    std::size_t screen_width(std::size_t nq, std::size_t k, std::size_t n) const;
    bool skinny(std::size_t nq) const;
    void search_sorted(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                       std::size_t k, float* dscores, std::int64_t* dslots) const;
    void skinny_scores(Lane& lane, const RowView& v, const float* dq, std::size_t nq, std::size_t col0,
                       std::size_t cols, float* out) const;
    void gemm_scores(Lane& lane, const RowView& v, const float* dq, std::size_t nq, std::size_t col0,
                     std::size_t cols, float* out, bool tf32) const;

    std::shared_ptr<CudaContext> ctx_;
    std::size_t dim_;
    std::size_t ld_;  // row stride in floats, a multiple of 4 (16-byte aligned rows)
    Metric metric_;
    int max_select_k_;  // largest k the shared-memory selection handles
    bool tensor_cores_;  // TF32 tensor cores (sm_80+): batches are screened with them
    // By log2(cap) (+32: short rounds, +64: filtered); 0: unknown.
    mutable std::array<std::atomic<int>, 128> scan_blocks_per_sm_{};

    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
    float* rows_ = nullptr;
    float* factors_ = nullptr;
    std::uint32_t* ordinals_ = nullptr;

    cudaStream_t write_stream_ = nullptr;
    cudaEvent_t written_ = nullptr;   // searches wait on the last write
    std::atomic<std::uint64_t> writes_{0};  // times written_ was recorded
    cudaEvent_t producer_ = nullptr;  // for append_device
    unsigned long long* fault_device_ = nullptr;
    unsigned long long* fault_host_ = nullptr;
    float* small_host_ = nullptr;  // pinned, one padded row (write) or small appends
    std::size_t small_host_bytes_ = 0;

    mutable std::mutex lanes_mutex_;
    mutable std::vector<LanePtr> free_lanes_;
};

}  // namespace hive_gpu::cuda
