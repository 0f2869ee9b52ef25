// The WebGPU engine: rows in storage buffers split into chunks that respect the device's
// binding and buffer size limits, scored and top-k selected by WGSL kernels on the GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "hive_gpu/engine.hpp"
#include "webgpu/wgpu_context.hpp"

namespace hive_gpu::webgpu {

class WgpuEngine final : public Engine {
   public:
    WgpuEngine(std::shared_ptr<WgpuContext> context, std::size_t dimension, Metric metric);

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

    // Rows one chunk holds (tests shrink it with HIVE_GPU_WEBGPU_CHUNK_BYTES).
    std::size_t rows_per_chunk() const { return rows_per_chunk_; }

   private:
    // One storage binding's worth of rows, with their per-row factor and ordinal.
    struct Chunk {
        Buffer rows;     // capacity x dim4 vec4 (zero padded past dimension)
        Buffer factors;  // capacity floats: 1/|x| for cosine, unused otherwise
        Buffer ordinals; // capacity u32
        std::size_t capacity = 0;
    };
    // Scratch reused across searches (guarded by the context's gpu mutex).
    struct Scratch {
        Buffer queries, qscale, scores, cands_a, cands_b, params, readback, rowsel;
    };
    // Which rows of each chunk a search looks at (the shaders' SEL_* modes). Dense: every
    // row, the filter's bits in `rowsel` mask them (SEL_MASK) or none (SEL_ALL). Sparse
    // (SEL_LIST): chunk c scores part_rows[c] rows listed from entry list_at[c] of `rowsel`.
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
        std::vector<Part> parts;  // one per chunk in use
        bool small;               // k <= 32: per-thread selection, else bitonic segments
        std::size_t lists;        // candidate lists per query
        std::size_t list_len;     // entries per list before merging
        std::size_t max_rows;     // rows of the largest chunk
        std::size_t passes;       // pairwise merge passes
        std::size_t max_cands;    // largest candidate array per query (entries)
    };
    Plan plan(std::size_t k, const RowSelection& sel) const;
    RowSelection all_rows() const;
    Chunk make_chunk(std::size_t capacity) const;
    std::size_t capacity() const;
    float row_factor(const float* row) const;
    void ensure(Buffer& b, std::uint64_t bytes, WGPUBufferUsage usage, const char* what) const;
    // Under the context's gpu mutex, with scratch_.rowsel filled for `sel`.
    void search_rows(const float* queries, std::size_t nq, std::size_t k, const RowSelection& sel,
                     float* scores, std::int64_t* slots) const;
    void search_tile(const float* queries, std::size_t nq, std::size_t k, const Plan& pl,
                     const RowSelection& sel, float* scores, std::int64_t* slots) const;
    std::size_t tile_queries(std::size_t nq, std::size_t k, const Plan& pl) const;

    std::shared_ptr<WgpuContext> ctx_;
    std::size_t dim_;
    std::size_t dim4_;  // vec4s per stored row
    Metric metric_;
    std::size_t rows_per_chunk_;
    std::size_t size_ = 0;
    std::vector<Chunk> chunks_;
    mutable Scratch scratch_;
};

}  // namespace hive_gpu::webgpu
