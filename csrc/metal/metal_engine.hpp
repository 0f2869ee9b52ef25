// The Metal engine: rows (float32, float16 or bfloat16) in shared-storage MTLBuffers (the CPU
// writes them in place; on Apple silicon the GPU reads the same memory), split into pages that
// never move. A search encodes the dispatch plan of search_plan.hpp for every page (scoring,
// segment top-k, merge tree) into one command buffer and merges the pages' k best on the host.
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
    MetalEngine(std::shared_ptr<MetalContext> context, std::size_t dimension, Metric metric, Dtype dtype);
    ~MetalEngine() override;

    HIVE_GPU_ENGINE_OPERATIONS;
    std::size_t size() const override { return size_; }
    std::size_t memory_bytes() const override;

   private:
    // Page p holds rows [layout_.start(p), + layout_.rows(p)) with their per-row factor
    // and ordinal. Pages never move or grow.
    struct Page {
        id<MTLBuffer> rows;      // capacity x dim elements of dtype_
        id<MTLBuffer> factors;   // capacity floats: 1/|x| (cosine), |x|^2 (Euclidean)
        id<MTLBuffer> ordinals;  // capacity u32
    };
    // The per-search buffers of search_plan.hpp (roles Queries ... RowSel). One search owns
    // one at a time; idle ones are kept for the next search.
    struct Scratch {
        id<MTLBuffer> buffers[kBufCount];
    };

    Page make_page(std::size_t capacity) const;
    std::size_t capacity() const { return layout_.start(pages_.size()); }
    unsigned char* row_at(std::size_t slot) const;
    float* factor_at(std::size_t slot) const;
    std::uint32_t* ordinal_at(std::size_t slot) const;
    // Calls f(slot, done, count) for the runs of slots [first, first + n) that lie in one
    // page: `count` slots from `slot`, the run's position in the range being `done`.
    template <class F>
    void for_page_runs(std::size_t first, std::size_t n, F&& f) const;
    std::unique_ptr<Scratch> take_scratch() const;
    void give_back(std::unique_ptr<Scratch> scratch) const;
    // search() and search_filtered(): `sel` is null, or one selection per page.
    void search_rows(const float* queries, std::size_t nq, std::size_t k, const std::vector<PageSelection>* sel,
                     float* scores, std::int64_t* slots) const;

    std::shared_ptr<MetalContext> ctx_;
    std::size_t dim_;
    Metric metric_;
    uint metric_id_;  // kCosine, kDotProduct or kEuclidean
    Dtype dtype_;
    std::size_t row_bytes_;  // dim_ elements of dtype_
    PageLayout layout_;
    std::size_t size_ = 0;
    std::vector<Page> pages_;
    mutable std::mutex scratch_mutex_;
    mutable std::vector<std::unique_ptr<Scratch>> idle_;
};

}  // namespace hive_gpu::metal
