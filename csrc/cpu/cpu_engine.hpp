// The CPU engine: rows in host memory, scored with SIMD kernels on a thread pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/host_buffer.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/engine.hpp"

namespace hive_gpu::cpu {

class CpuContext;

class CpuEngine final : public Engine {
   public:
    CpuEngine(std::shared_ptr<CpuContext> context, std::size_t dimension, Metric metric);

    std::size_t dimension() const override { return dim_; }
    Metric metric() const override { return metric_; }
    std::size_t size() const override { return ordinals_.size(); }

    void reserve(std::size_t rows) override;
    void append(const float* rows, const std::uint32_t* ordinals, std::size_t n) override;
    void write(std::size_t slot, const float* row) override;
    void move(std::size_t src, std::size_t dst) override;
    void truncate(std::size_t n) override;
    void set_ordinals(const std::uint32_t* ordinals, std::size_t n) override;
    void read(std::size_t first, std::size_t n, float* out) const override;
    void search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                std::int64_t* slots) const override;
    std::size_t memory_bytes() const override;

   private:
    template <bool kHigherFirst>
    void search_impl(const float* queries, std::size_t nq, std::size_t k, float* scores,
                     std::int64_t* slots) const;
    // Per-row factor the kernels use: 1/|x| for Cosine, |x|^2 for Euclidean, unused for dot.
    float row_factor(const float* row) const;

    std::shared_ptr<CpuContext> context_;
    std::size_t dim_;
    Metric metric_;
    HostBuffer rows_;  // size() * dim_ floats in use
    std::vector<float> factors_;
    std::vector<std::uint32_t> ordinals_;
};

}  // namespace hive_gpu::cpu
