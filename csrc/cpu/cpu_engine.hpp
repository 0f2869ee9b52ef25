// The CPU engine: rows in host memory, scored with SIMD kernels on a thread pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/host_buffer.hpp"
#include "cpu/kernels.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/engine.hpp"

namespace hive_gpu::cpu {

class CpuContext;

class CpuEngine final : public Engine {
   public:
    CpuEngine(std::shared_ptr<CpuContext> context, std::size_t dimension, Metric metric, Dtype dtype);
    ~CpuEngine() override;

    HIVE_GPU_ENGINE_OPERATIONS;
    std::size_t size() const override { return ordinals_.size(); }
    std::size_t memory_bytes() const override;

   private:
    // Which rows a search ranks: all of them, those whose `mask` bit is set (the dense
    // filtered path: the mask is applied in the scan), or the `list` of slots (the sparse
    // path: only those rows are gathered and scored).
    struct RowSet {
        const std::uint64_t* mask = nullptr;
        const std::uint32_t* list = nullptr;
        std::size_t list_size = 0;
    };
    template <bool kHigherFirst>
    void search_impl(const float* queries, std::size_t nq, std::size_t k, float* scores,
                     std::int64_t* slots, const RowSet& rows = {}) const;
    // The screened search (screen.hpp); false when the screen gave up.
    template <bool kHigherFirst>
    bool search_screened(const float* queries, const float* query_factor, std::size_t nq,
                         std::size_t k, float* scores, std::int64_t* slots,
                         const std::uint64_t* mask) const;
    // Per-row data from one pass over a stored row (widened into `row`, dim_ floats of
    // scratch): factors_ and (DotProduct, Euclidean) norms_.
    void set_row_data(std::size_t slot, float* row);
    std::vector<float> row_scratch() const;  // dim_ floats; OutOfMemoryError, never bad_alloc
    // n rows of `rows` (dtype_) stored at slots [slot, slot + n), per-row data aside.
    void store_rows(std::size_t slot, const void* rows, std::size_t n);
    bool planes() const { return dtype_ == Dtype::Float32; }
    Packing packing() const {
        return dtype_ == Dtype::Float16 ? Packing::Float16 : dtype_ == Dtype::BFloat16 ? Packing::BFloat16 : Packing::Planes;
    }
    // Points a kernel's rows at `slot` and the rows after it, as stored.
    void point_at(TileArgs& a, std::size_t slot) const;
    bool keeps_norms() const { return metric_ != Metric::Cosine; }
    std::size_t row_capacity() const {
        return hi_.capacity() > kPlaneSlack ? (hi_.capacity() - kPlaneSlack) / dim_ : 0;
    }
    // Bytes of the buffers for `rows` rows: what reserve(rows) charges to the context's cap.
    std::uint64_t footprint(std::size_t rows) const;
    void reserve_charged(std::size_t rows);  // reserve() once the rows are charged

    std::shared_ptr<CpuContext> context_;
    std::size_t dim_;
    Metric metric_;
    Dtype dtype_;
    // float32: each float row split into two planes of its bit pattern's halves (kernels.hpp): the
    // screen reads only hi_; exact scoring widens both back. size() * dim_ elements each,
    // and hi_ has kPlaneSlack zeros after the last row. float16 and bfloat16: hi_ holds the
    // stored rows themselves (same slack) and lo_ stays empty.
    HostBuffer<std::uint16_t> hi_;
    HostBuffer<std::uint16_t> lo_;
    // Per-row factor the kernels use: 1/|x| for Cosine, |x|^2 for Euclidean, unused for dot.
    std::vector<float> factors_;
    std::vector<float> norms_;  // |x| rounded up, for the screen's bound (empty for Cosine)
    std::vector<std::uint32_t> ordinals_;
    std::uint64_t charged_ = 0;  // bytes charged to the context for the buffers above
};

}  // namespace hive_gpu::cpu
