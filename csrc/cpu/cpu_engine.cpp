#include "cpu/cpu_engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "core/topk.hpp"
#include "cpu/cpu_context.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::cpu {

CpuEngine::CpuEngine(std::shared_ptr<CpuContext> context, std::size_t dimension, Metric metric)
    : context_(std::move(context)), dim_(dimension), metric_(metric) {}

float CpuEngine::row_factor(const float* row) const {
    double s = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) s += static_cast<double>(row[j]) * row[j];
    if (metric_ == Metric::Cosine) return s > 0.0 ? static_cast<float>(1.0 / std::sqrt(s)) : 0.0f;
    return static_cast<float>(s);
}

void CpuEngine::reserve(std::size_t rows) {
    try {
        rows_.reserve(rows * dim_);
        factors_.reserve(rows);
        ordinals_.reserve(rows);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    } catch (const std::length_error&) {
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    }
}

void CpuEngine::append(const float* rows, const std::uint32_t* ordinals, std::size_t n) {
    const std::size_t need = size() + n;
    if (need > ordinals_.capacity()) reserve(std::max(need, ordinals_.capacity() * 2));
    rows_.insert(rows_.end(), rows, rows + n * dim_);
    for (std::size_t i = 0; i < n; ++i) factors_.push_back(row_factor(rows + i * dim_));
    ordinals_.insert(ordinals_.end(), ordinals, ordinals + n);
}

void CpuEngine::write(std::size_t slot, const float* row) {
    std::memcpy(rows_.data() + slot * dim_, row, dim_ * sizeof(float));
    factors_[slot] = row_factor(row);
}

void CpuEngine::move(std::size_t src, std::size_t dst) {
    std::memcpy(rows_.data() + dst * dim_, rows_.data() + src * dim_, dim_ * sizeof(float));
    factors_[dst] = factors_[src];
    ordinals_[dst] = ordinals_[src];
}

void CpuEngine::truncate(std::size_t n) {
    rows_.resize(n * dim_);
    factors_.resize(n);
    ordinals_.resize(n);
    if (n == 0) {
        rows_.shrink_to_fit();
        factors_.shrink_to_fit();
        ordinals_.shrink_to_fit();
    }
}

void CpuEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    std::copy(ordinals, ordinals + n, ordinals_.begin());
}

void CpuEngine::read(std::size_t first, std::size_t n, float* out) const {
    std::memcpy(out, rows_.data() + first * dim_, n * dim_ * sizeof(float));
}

std::size_t CpuEngine::memory_bytes() const {
    return rows_.capacity() * sizeof(float) + factors_.capacity() * sizeof(float) +
           ordinals_.capacity() * sizeof(std::uint32_t);
}

namespace {

template <bool kHigherFirst, typename ScoreFn>
void select(std::size_t n, std::size_t k, const std::uint32_t* ordinals, ScoreFn score,
            float* out_scores, std::int64_t* out_slots) {
    TopK<kHigherFirst> top(k);
    for (std::size_t i = 0; i < n; ++i) {
        float s = score(i);
        if (top.may_enter(s)) top.push(s, ordinals[i], static_cast<std::int64_t>(i));
    }
    top.write_sorted(out_scores, out_slots);
}

}  // namespace

void CpuEngine::search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                       std::int64_t* slots) const {
    const std::size_t n = size();
    const float* X = rows_.data();
    for (std::size_t q = 0; q < nq; ++q) {
        const float* Q = queries + q * dim_;
        auto dot = [&](std::size_t i) {
            const float* x = X + i * dim_;
            float s = 0.0f;
            for (std::size_t j = 0; j < dim_; ++j) s += Q[j] * x[j];
            return s;
        };
        float* out_s = scores + q * k;
        std::int64_t* out_i = slots + q * k;
        if (metric_ == Metric::DotProduct) {
            select<true>(n, k, ordinals_.data(), dot, out_s, out_i);
        } else if (metric_ == Metric::Cosine) {
            double qq = 0.0;
            for (std::size_t j = 0; j < dim_; ++j) qq += static_cast<double>(Q[j]) * Q[j];
            const float qinv = qq > 0.0 ? static_cast<float>(1.0 / std::sqrt(qq)) : 0.0f;
            select<true>(n, k, ordinals_.data(), [&](std::size_t i) { return dot(i) * factors_[i] * qinv; },
                         out_s, out_i);
        } else {
            select<false>(n, k, ordinals_.data(),
                          [&](std::size_t i) {
                              const float* x = X + i * dim_;
                              float s = 0.0f;
                              for (std::size_t j = 0; j < dim_; ++j) {
                                  float d = Q[j] - x[j];
                                  s += d * d;
                              }
                              return s;
                          },
                          out_s, out_i);
        }
    }
}

}  // namespace hive_gpu::cpu
