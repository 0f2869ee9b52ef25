// The Metal engine: rows in shared-storage MTLBuffers (the CPU writes them in place; on
// Apple silicon the GPU reads the same memory), split into chunks below maxBufferLength.
// A search runs the dispatch plan of search_plan.hpp on each chunk (scoring, segment top-k,
// merge tree, all on the GPU) and merges the chunks' k best on the host.
// Objective-C++ only (included from the .mm files); compiled with ARC.
#pragma once

#import <Metal/Metal.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "hive_gpu/engine.hpp"
#include "metal/metal_context.hpp"
#include "metal/search_plan.hpp"

namespace hive_gpu::metal {

class MetalEngine final : public Engine {
   public:
    MetalEngine(std::shared_ptr<MetalContext> context, std::size_t dimension, Metric metric);
    ~MetalEngine() override;

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

    // Rows one chunk holds (tests shrink it with HIVE_GPU_METAL_CHUNK_BYTES).
    std::size_t rows_per_chunk() const { return rows_per_chunk_; }

   private:
    // Rows [i * rows_per_chunk_, ...) with their per-row factor and ordinal.
    struct Chunk {
        id<MTLBuffer> rows;      // capacity x dim floats
        id<MTLBuffer> factors;   // capacity floats: 1/|x| (cosine), |x|^2 (Euclidean)
        id<MTLBuffer> ordinals;  // capacity u32
        std::size_t capacity = 0;
    };
    // The per-search buffers of search_plan.hpp (roles Queries ... OutSlots). One search
    // owns one at a time; idle ones are kept for the next search.
    struct Scratch {
        id<MTLBuffer> buffers[kBufCount];
    };

    Chunk make_chunk(std::size_t capacity) const;
    std::size_t capacity() const;
    float* rows_at(std::size_t slot) const;
    float* factor_at(std::size_t slot) const;
    std::uint32_t* ordinal_at(std::size_t slot) const;
    std::unique_ptr<Scratch> take_scratch() const;
    void give_back(std::unique_ptr<Scratch> scratch) const;
    // What a filtered search looks at in one chunk (Params::sel): its mask re-based at the
    // chunk's first row (kSelMask) or its passing rows (kSelList), and how many pass.
    struct ChunkSelection {
        uint sel = kSelAll;
        std::vector<uint> rowsel;
        std::size_t passing = 0;
    };
    std::vector<ChunkSelection> select_chunks(const SlotFilter& filter) const;
    // search() and search_filtered(): `chunk_sel` is null, or one selection per chunk.
    void search_rows(const float* queries, std::size_t nq, std::size_t k,
                     const std::vector<ChunkSelection>* chunk_sel, float* scores, std::int64_t* slots) const;
    // One chunk of rows against queries [0, nq) of the tile already in the scratch buffers:
    // each query's min(k, rows that pass) best, as (score, global slot).
    void search_chunk(std::size_t chunk, std::size_t nq, std::size_t k, Scratch& scratch,
                      const ChunkSelection* sel, std::vector<float>& scores,
                      std::vector<std::int64_t>& slots) const;

    std::shared_ptr<MetalContext> ctx_;
    std::size_t dim_;
    Metric metric_;
    uint metric_id_;  // kCosine, kDotProduct or kEuclidean
    std::size_t rows_per_chunk_;
    std::size_t size_ = 0;
    std::vector<Chunk> chunks_;
    mutable std::mutex scratch_mutex_;
    mutable std::vector<std::unique_ptr<Scratch>> idle_;
};

}  // namespace hive_gpu::metal
