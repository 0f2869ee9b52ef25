// Row elements as the kernels read them: float32, or float16 / bfloat16 bit patterns, loaded
// 16 bytes at a time and widened to float32 before any arithmetic. The widening is exact; the
// narrowing (device adds of another dtype, the 16-bit query of the tensor-core screen) rounds
// to nearest even, bit for bit as hive_gpu/dtype.hpp does on the host.
#pragma once

#include "kernels/compat.cuh"

#include <cstdint>

namespace hive_gpu::kernels {

// The values of hive_gpu::Dtype.
enum DtypeId : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

template <int kDtype>
struct Elem {
    using T = std::uint16_t;              // the bit pattern
    static constexpr int kPerUnit = 8;    // elements per 16-byte unit
};
template <>
struct Elem<kF32> {
    using T = float;
    static constexpr int kPerUnit = 4;
};

__device__ __forceinline__ float f16_to_float(std::uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_to_float(std::uint16_t h) {
    return __uint_as_float(static_cast<std::uint32_t>(h) << 16);
}
__device__ __forceinline__ std::uint16_t float_to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }
// Finite input whose magnitude fits (the callers check first).
__device__ __forceinline__ std::uint16_t float_to_bf16(float f) {
    const std::uint32_t u = __float_as_uint(f);
    return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <int kDtype>
__device__ __forceinline__ float to_float(typename Elem<kDtype>::T v) {
    if constexpr (kDtype == kF32) return v;
    else if constexpr (kDtype == kF16) return f16_to_float(v);
    else return bf16_to_float(v);
}

template <int kDtype>
__device__ __forceinline__ typename Elem<kDtype>::T from_float(float f) {
    if constexpr (kDtype == kF32) return f;
    else if constexpr (kDtype == kF16) return float_to_f16(f);
    else return float_to_bf16(f);
}

// The two elements of a 32-bit word of 16-bit elements, low one first.
template <int kDtype>
__device__ __forceinline__ float2 widen_pair(std::uint32_t w) {
    if constexpr (kDtype == kBF16) return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
    else return make_float2(f16_to_float(static_cast<std::uint16_t>(w & 0xFFFFu)), f16_to_float(static_cast<std::uint16_t>(w >> 16)));
}

template <int kMetric>
__device__ __forceinline__ float four_term(const float4& a, const float4& b) {
    if (kMetric == 2) {  // kEuclidean (keys.cuh)
        const float dx = b.x - a.x, dy = b.y - a.y, dz = b.z - a.z, dw = b.w - a.w;
        return dx * dx + dy * dy + dz * dz + dw * dw;
    }
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// One 16-byte unit of a row against the matching query floats (kPerUnit of them, 16-byte
// aligned at q): the dot product, or for Euclidean the squared distance, of the unit.
template <int kMetric, int kDtype>
__device__ __forceinline__ float unit_term(const uint4& raw, const float4* q) {
    if constexpr (kDtype == kF32) {
        return four_term<kMetric>(make_float4(__uint_as_float(raw.x), __uint_as_float(raw.y), __uint_as_float(raw.z),
                                              __uint_as_float(raw.w)),
                                  q[0]);
    } else {
        const float2 p0 = widen_pair<kDtype>(raw.x), p1 = widen_pair<kDtype>(raw.y), p2 = widen_pair<kDtype>(raw.z),
                     p3 = widen_pair<kDtype>(raw.w);
        return four_term<kMetric>(make_float4(p0.x, p0.y, p1.x, p1.y), q[0]) +
               four_term<kMetric>(make_float4(p2.x, p2.y, p3.x, p3.y), q[1]);
    }
}

}  // namespace hive_gpu::kernels
