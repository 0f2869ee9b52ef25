// The WebGPU engine: rows in pages (storage buffers that never move, within the device's
// binding and buffer size limits; core/row_pages.hpp), kept as float32, float16 or bfloat16,
// scored in float32 and top-k selected by WGSL kernels on the GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/row_pages.hpp"
#include "hive_gpu/engine.hpp"
#include "webgpu/wgpu_context.hpp"

namespace hive_gpu::webgpu {

class WgpuEngine final : public Engine {
   public:
    WgpuEngine(std::shared_ptr<WgpuContext> context, std::size_t dimension, Metric metric, Dtype dtype);

    HIVE_GPU_ENGINE_OPERATIONS;
    std::size_t size() const override { return size_; }
    std::size_t memory_bytes() const override;

    // Page capacities (the largest shrinks with HIVE_GPU_WEBGPU_CHUNK_BYTES, for tests).
    const PageLayout& pages() const { return layout_; }

   private:
    // Up to one storage binding's worth of rows, with their per-row factor and ordinal.
    struct Page {
        Buffer rows;      // capacity x row_bytes_ (groups of 4 elements, zero padded past dimension)
        Buffer factors;   // capacity floats: 1/|x| for cosine, unused otherwise
        Buffer ordinals;  // capacity u32
        std::size_t capacity = 0;
        std::size_t start = 0;  // slot of its first row
    };
    // Scratch reused across searches (guarded by the context's gpu mutex).
    struct Scratch {
        Buffer queries, qscale, scores, cands_a, cands_b, params, readback, rowsel;
    };
    // Which rows of each page a search looks at (the shaders' SEL_* modes). Dense: every
    // row, the filter's bits in `rowsel` mask them (SEL_MASK) or none (SEL_ALL). Sparse
    // (SEL_LIST): page c scores part_rows[c] rows listed from entry list_at[c] of `rowsel`.
    struct RowSelection {
        std::uint32_t mode = 0;
        std::vector<std::size_t> part_rows;
        std::vector<std::size_t> list_at;
    };

    // How a search of k splits the rows into candidate lists and merges them.
    struct Plan {
        struct Part {
            std::size_t rows, list_base, lists;
        };
        std::vector<Part> parts;  // one per page in use
        bool small;               // k <= 32: per-thread selection, else bitonic segments
        std::size_t lists;        // candidate lists per query
        std::size_t list_len;     // entries per list before merging
        std::size_t max_rows;     // rows of the largest page
        std::size_t passes;       // pairwise merge passes
        std::size_t max_cands;    // largest candidate array per query (entries)
    };
    Plan plan(std::size_t k, const RowSelection& sel) const;
    RowSelection all_rows() const;
    Page make_page(std::size_t index) const;
    std::size_t capacity() const;
    // The per-row factor of a stored row (dim_ elements of dtype_), from the stored values.
    float row_factor(const void* row) const;
    // Copies one host row (dim_ elements of dtype_) into its padded device layout at dst.
    void pack_row(const void* row, unsigned char* dst) const;
    void ensure(Buffer& b, std::uint64_t bytes, WGPUBufferUsage usage, const char* what) const;
    // Under the context's gpu mutex, with scratch_.rowsel filled for `sel`.
    void search_rows(const float* queries, std::size_t nq, std::size_t k, const RowSelection& sel,
                     float* scores, std::int64_t* slots) const;
    void search_tile(const float* queries, std::size_t nq, std::size_t k, const Plan& pl,
                     const RowSelection& sel, float* scores, std::int64_t* slots) const;
    std::size_t tile_queries(std::size_t nq, std::size_t k, const Plan& pl) const;

    std::shared_ptr<WgpuContext> ctx_;
    std::size_t dim_;
    std::size_t dim4_;  // groups of 4 elements per stored row
    Metric metric_;
    Dtype dtype_;
    RowFormat format_;
    std::size_t elem_bytes_;  // 4 or 2
    std::size_t row_bytes_;   // dim4_ * 4 * elem_bytes_
    PageLayout layout_;
    std::size_t size_ = 0;
    std::vector<Page> pages_;
    mutable Scratch scratch_;
};

}  // namespace hive_gpu::webgpu
