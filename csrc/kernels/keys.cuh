// Ranking keys: (score, ordinal) packed into one 64-bit integer whose ascending order is
// the engine contract's order (better score first, then the smaller ordinal).
#pragma once

#include "kernels/compat.cuh"

namespace hive_gpu::kernels {

constexpr std::uint64_t kEmptyKey = ~std::uint64_t{0};  // ranks after every real key

enum MetricId : int { kCosine = 0, kDotProduct = 1, kEuclidean = 2 };

template <int kMetric>
struct MetricTraits {
    static constexpr bool kHigherFirst = kMetric != kEuclidean;
};

// Monotone map float -> uint32: a larger float gives a larger integer.
__device__ __forceinline__ std::uint32_t float_order_bits(float s) {
    const std::uint32_t b = __float_as_uint(s);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float float_from_order_bits(std::uint32_t u) {
    const std::uint32_t b = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    return __uint_as_float(b);
}

template <bool kHigherFirst>
__device__ __forceinline__ std::uint64_t make_key(float score, std::uint32_t ordinal) {
    if (score == 0.0f) score = 0.0f;  // -0 and +0 compare equal, so they must tie
    std::uint32_t o = float_order_bits(score);
    if (kHigherFirst) o = ~o;
    return (static_cast<std::uint64_t>(o) << 32) | ordinal;
}

template <bool kHigherFirst>
__device__ __forceinline__ float key_score(std::uint64_t key) {
    std::uint32_t o = static_cast<std::uint32_t>(key >> 32);
    if (kHigherFirst) o = ~o;
    return float_from_order_bits(o);
}

// The engine score of a row from its raw accumulation. `acc` is q.x for Cosine and
// DotProduct; for Euclidean it is q.x on the GEMM path (kFromDot) or |q-x|^2 directly.
template <int kMetric, bool kFromDot>
__device__ __forceinline__ float finish_score(float acc, float row_factor, float query_factor) {
    if (kMetric == kCosine) return acc * row_factor * query_factor;
    if (kMetric == kDotProduct) return acc;
    if (kFromDot) return fmaxf(query_factor + row_factor - 2.0f * acc, 0.0f);
    return acc;
}

// A filtered search's slot bitset (SlotFilter::bits): bit s % 64 of word s / 64. No mask
// passes every slot.
__device__ __forceinline__ bool slot_passes(const std::uint64_t* __restrict__ mask, std::size_t slot) {
    return mask == nullptr || ((mask[slot >> 6] >> (slot & 63)) & 1u) != 0;
}

}  // namespace hive_gpu::kernels
