// The CUDA engine: rows in fixed device pages (row stride padded to 16 bytes; row_pages.hpp),
// norms computed once at insert, a fused one-pass scan over every page for single queries,
// cuBLAS GEMM tiles per page plus device top-k for batches. Each concurrent search runs on
// its own lane (lanes.hpp), so searches from several threads overlap. The ROCm build
// compiles these same sources with HIP (rocBLAS for the GEMM): csrc/rocm/CMakeLists.txt.
//
// Source files: cuda_engine.cu (life, writes that move rows, search entry points),
// uploads.cu (host and device adds, staging), search_scan.cu (the fused scan and its plan),
// search_gemm.cu (GEMM tiles, tensor-core screen and exact re-rank, full sort).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/cuda_context.hpp"
#include "cuda/device_owners.hpp"
#include "cuda/lanes.hpp"
#include "cuda/row_pages.hpp"
#include "hive_gpu/engine.hpp"
#include "kernels/compat.cuh"
#include "kernels/pages.cuh"

namespace hive_gpu::kernels {
struct ScreenBound;
}  // namespace hive_gpu::kernels

namespace hive_gpu::cuda {

// A run of rows that lie in one device buffer: row i of the run goes to dst + i * row bytes.
struct RowRun {
    std::size_t first;  // the run's first row among the rows being copied
    std::size_t count;
    unsigned char* dst;
};

// Rows [0, n) of `src` (src_bytes each, packed) into `dst` with dst_bytes per row, zero
// padding after the data.
void pack_rows(const void* src, std::size_t n, std::size_t src_bytes, std::size_t dst_bytes, void* dst);

// Copies n packed host rows of src_bytes each to the device runs (which cover rows [0, n) in
// order) with dst_bytes per row (zero padding), through the context's pinned staging
// buffers on worker threads.
void upload_host_rows(CudaContext& ctx, const void* rows, std::size_t n, std::size_t src_bytes, std::size_t dst_bytes,
                      const std::vector<RowRun>& runs);

class CudaEngine final : public Engine {
   public:
    CudaEngine(std::shared_ptr<CudaContext> context, std::size_t dimension, Metric metric, Dtype dtype);
    ~CudaEngine() override;

    HIVE_GPU_ENGINE_OPERATIONS;
    // Every page's bytes, rows, factors and ordinals together (row_pages.hpp).
    std::size_t memory_bytes() const override { return pages_.bytes(); }
    std::size_t size() const override { return size_; }

    bool checks_appended_rows() const override { return true; }
    void append_device(const void* rows, Dtype src, std::size_t ld, const std::uint32_t* ordinals,
                       std::size_t n, std::uintptr_t stream) override;
    void search_device(const void* queries, Dtype src, std::size_t ld, std::size_t nq, std::size_t k,
                       std::uintptr_t stream, float* scores, std::int64_t* slots,
                       float* device_scores) const override;

   private:
    // The rows one search looks at: the store's (all of them, or those a mask passes) or,
    // for sparse filtered batches, a compact copy of the listed rows (one page).
    struct RowView {
        kernels::PagedRows rows;               // page table on the device
        const kernels::PageRef* host_pages;    // the same table in host memory
        std::size_t n;                         // rows, or entries of `list`
        const std::uint64_t* mask = nullptr;   // dense filter: a bit per row (device)
        const std::uint32_t* list = nullptr;   // sparse single query: the fused scan reads rows list[0, n)

        // f(slot0, count, page) for each page holding rows of [0, n).
        template <typename F>
        void for_each_page(F&& f) const {
            for (std::size_t p = 0; rows.map.start(p) < n; ++p) {
                const std::size_t s0 = rows.map.start(p);
                f(s0, std::min(rows.map.rows(p), n - s0), host_pages[p]);
            }
        }
        // f(slot0, count, page, row) for each run of slots [first, first + count) in one page,
        // slot0 being that page's row `row`.
        template <typename F>
        void for_each_run(std::size_t first, std::size_t count, F&& f) const {
            const std::size_t end = first + count;
            while (first < end) {
                const kernels::PagePlace at = rows.map.place(first);
                const std::size_t run = std::min(end - first, rows.map.rows(at.page) - at.row);
                f(first, run, host_pages[at.page], at.row);
                first += run;
            }
        }
    };
    RowView all_rows() const;
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

    void wait_producer(cudaStream_t ours, cudaEvent_t event, std::uintptr_t producer) const;
    void check_device_pointer(const void* p, const char* what) const;
    // Runs of rows [size_, size_ + n) in the pages (grown to hold them).
    std::vector<RowRun> append_runs(std::size_t n) const;
    void upload_rows(const void* rows, std::size_t n);
    void record_write();                  // ends every write: records written_
    void after_writes(Lane& lane) const;  // orders the lane's stream after the last write
    void finish_append(std::size_t n, const std::uint32_t* ordinals, const char* what, bool fault_set = false);

    Plan plan(std::size_t nq, std::size_t k, const RowView& v) const;
    // f(kernel) with the single-query scan kernel of this metric and row width.
    template <typename F>
    void with_scan_kernel(bool short_rounds, bool filtered, F&& f) const;
    // Searches nq padded queries already on the device; results land in dscores/dslots.
    // `work` holds plan.workspace bytes; fault (device queries) gets row faults.
    void run_search(Lane& lane, const Plan& plan, const RowView& v, const float* dq, std::size_t nq, std::size_t k,
                    float* dscores, std::int64_t* dslots, void* work, unsigned long long* fault) const;
    // one_launch: the scan's last block merges (Lane::done); dscores/dslots may then be
    // device addresses of mapped host memory.
    void search_fused(Lane& lane, const Plan& plan, const RowView& v, const float* dq, std::size_t k, void* work,
                      float* dscores, std::int64_t* dslots, bool one_launch = false) const;
    // One pass over queries [q0, q0 + qn): upload or copy (device queries of dtype
    // device_dtype, widened), search, results to the host.
    void search_chunk(Lane& lane, const RowView& v, const float* host_queries, const void* device_queries,
                      Dtype device_dtype, std::size_t device_ld, std::size_t qn, std::size_t k, float* scores,
                      std::int64_t* slots, float* device_scores) const;
    // Batches: TF32 screening and exact re-ranking where it applies (screen_width > 0),
    // float32 GEMM otherwise and for the queries the screen cannot settle.
    void search_gemm(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq, std::size_t k,
                     float* dscores, std::int64_t* dslots) const;
    void search_gemm_exact(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                           std::size_t k, float* dscores, std::int64_t* dslots) const;
    // kc candidates per query (rkeys/rvals) re-scored canonically (kernels/rerank.cuh): the k
    // best into dscores/dslots; lane.flags_host[q] says whether `bound` proves them the exact
    // top k. Synchronizes the lane.
    void rerank(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq, std::size_t k,
                std::size_t kc, const std::uint64_t* rkeys, const std::uint32_t* rvals, unsigned* max_bits,
                const kernels::ScreenBound& bound, const unsigned char* screen_ok, float* dscores, std::int64_t* dslots,
                unsigned char* ok) const;
    // The 16-bit screen's queries: rounded after a power-of-two scale that inv_scale undoes.
    struct ScreenQueries {
        const std::uint16_t* queries = nullptr;
        const float* inv_scale = nullptr;
    };
    // screen: the tensor-core GEMM (TF32 for float32 rows; float16/bfloat16 with `sq` for
    // 16-bit rows); else exact float32 scores.
    void select_tiles(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq, std::size_t k,
                      bool screen, const ScreenQueries& sq, std::uint64_t* rkeys, std::uint32_t* rvals) const;
    // Candidates per query kept by the TF32 screen; 0 where the screen does not apply.
    std::size_t screen_width(std::size_t nq, std::size_t k, std::size_t n) const;
    bool skinny(std::size_t nq) const;
    void search_sorted(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                       std::size_t k, float* dscores, std::int64_t* dslots) const;
    // Scores of rows [0, cols) of one page's run starting at `rows` against the queries:
    // out[q * ldc + r] (column-major, cols x nq).
    void skinny_scores(Lane& lane, const float* rows, const float* dq, std::size_t nq, std::size_t cols, float* out,
                       std::size_t ldc) const;
    void gemm_scores(Lane& lane, const void* rows, const float* dq, std::size_t nq, std::size_t cols, float* out,
                     std::size_t ldc, bool screen, const ScreenQueries& sq) const;
    // Sets the cuBLAS handle's math mode (TF32 tensor cores or exact float32).
    void set_math(Lane& lane, bool tf32) const;

    std::shared_ptr<CudaContext> ctx_;
    std::size_t dim_;
    Dtype dtype_;
    std::size_t elem_;       // bytes of an element of dtype_
    std::size_t ld_;         // row stride in elements, padded to 16 bytes (queries use it in floats)
    std::size_t row_bytes_;  // ld_ * elem_
    Metric metric_;
    int max_select_k_;   // largest k the shared-memory selection handles
    bool tensor_cores_;  // TF32 tensor cores (sm_80+): batches are screened with them
    // By log2(cap) (+32: short rounds, +64: filtered); 0: unknown.
    mutable std::array<std::atomic<int>, 128> scan_blocks_per_sm_{};
    // Batch selection (select_tile_kernel of metric_) by log2(cap); 0: unknown.
    mutable std::array<std::atomic<int>, 32> select_blocks_per_sm_{};

    std::size_t size_ = 0;
    RowPages pages_;

    StreamPtr write_stream_;
    EventPtr written_;                      // searches wait on the last write
    std::atomic<std::uint64_t> writes_{0};  // times written_ was recorded
    EventPtr producer_;                     // for append_device
    DevicePtr fault_device_;
    PinnedPtr fault_host_;
    PinnedPtr small_host_;  // one padded row (write) or small appends
    std::size_t small_host_bytes_ = 0;

    mutable LanePool lanes_;
};

}  // namespace hive_gpu::cuda
