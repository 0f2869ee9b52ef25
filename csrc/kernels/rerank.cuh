// Tensor-core screening with exact re-ranking, for batches of queries.
//
// A TF32 GEMM (about six times the float32 rate) scores every row approximately; each
// query keeps its kc > k best approximate candidates; rerank_kernel scores those candidates
// again in float32 and keeps the k best. The answer is the exact one whenever no row
// outside the candidates can beat the k-th: with |approximate - exact| <= B for every row,
// a row of the exact top k has an approximate score within 2B of the k-th approximate
// score, so the candidates hold the exact top k when the kc-th (the best one left out
// is no better) is more than 2B worse than the k-th. rerank_kernel checks that per query
// and flags the queries where it fails; the engine answers those again with float32 GEMM.
//
// The bound. TF32 keeps 10 mantissa bits: each operand is off by at most 2^-10 of itself
// (truncated or rounded), a product by 2^-9 + 2^-20, so a dot product by that times
// sum|q_i x_i| <= |q||x| (Cauchy-Schwarz), plus float32 accumulation, at most dim * 2^-22 |q||x|
// even with the truncating adders of tensor cores. The float32 re-rank itself is within
// dim * 2^-24. ScreenBound::rel = 2^-9 + 2^-19 + dim * 2^-21 + 2^-20 covers all of it, the
// accumulation terms twice over. Cosine scores are dot / (|q||x|), so B = rel; DotProduct
// B = rel |q| max|x|; Euclidean (squared, |q|^2 + |x|^2 - 2 q.x) B = 2 rel |q| max|x| +
// sq (|q| + max|x|)^2, sq covering the rounding of the norms and of the direct float32 sum of
// squared differences. A bound twice as wide would be as correct, but it leaves more queries
// unproven, and each of those costs a pass over every row.
#pragma once

#include "kernels/compat.cuh"
#include "kernels/elements.cuh"
#include "kernels/keys.cuh"
#include "kernels/pages.cuh"
#include "kernels/select.cuh"

namespace hive_gpu::kernels {

struct ScreenBound {
    float rel;
    float sq;
};

// The screen's bound for rows of `dtype` (hive_gpu::Dtype's value). float32 rows: a TF32
// GEMM, both operands cut to 10 bits (above). 16-bit rows: the stored rows are exact in a
// float16/bfloat16 GEMM and only the query is rounded to nearest, after a power-of-two scaling
// that keeps it clear of overflow and of underflow beyond 2^-39 of its largest component
// (quantize_queries_kernel): 2^-11 of each component for float16, 2^-8 for bfloat16. The
// products are exact in float32, so rel = 2^-10 (float16, twice its rounding) or
// 2^-8 + 2^-15 (bfloat16: its rounding, and the rounding's share of the accumulation term),
// plus the same accumulation and re-rank terms as for TF32.
inline ScreenBound screen_bound(std::size_t dim, int dtype = kF32) {
    const double d = static_cast<double>(dim);
    const double operand = dtype == kF16 ? 0x1p-10 : dtype == kBF16 ? 0x1p-8 + 0x1p-15 : 0x1p-9 + 0x1p-19;
    return ScreenBound{static_cast<float>(operand + d * 0x1p-21 + 0x1p-20),
                       static_cast<float>(d * 0x1p-21 + 0x1p-20)};
}

// *out = the largest of factor[0, n) as float bits (the factors are >= 0, so their bits
// order as they do); *out must start at 0.
[[maybe_unused]] static __global__ void max_factor_kernel(const float* __restrict__ factor, std::size_t n, unsigned int* out) {
    float m = 0.0f;
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
        m = fmaxf(m, factor[i]);
    for (int off = kWarpSize / 2; off > 0; off >>= 1) m = fmaxf(m, shfl_xor(m, off));
    if (lane_id() == 0) atomicMax(out, __float_as_uint(m));
}

// One block per query: the kc sorted approximate candidates of query blockIdx.x are scored
// in float32 (a warp per candidate, rows of kDtype widened exactly), sorted, and the k best
// written as scores and slots. ok[q] says whether the candidates provably hold the exact top
// k (see above); screen_ok (or nullptr) can mark queries the screen did not score.
// Shared memory: topk_shared_bytes(cap), cap = next power of two >= kc.
// The canonical float32 score of one (query, row) pair, the one every search path ends with
// (so a pair scores the same bits whatever the store's size or the path): lane l sums the
// row units l, l + 32, ... in order, then the warp adds its lanes. The fused scan
// (scan.cuh, warp_row_scores) sums in this same order. Every lane gets the total.
template <int kMetric, int kDtype>
__device__ __forceinline__ float canonical_acc(const uint4* __restrict__ x, const float4* __restrict__ qv,
                                               std::size_t ld4) {
    constexpr std::size_t kQ4 = Elem<kDtype>::kPerUnit / 4;
    float acc = 0.0f;
    for (std::size_t j = lane_id(); j < ld4; j += kWarpSize) acc += unit_term<kMetric, kDtype>(__ldg(x + j), qv + j * kQ4);
    return warp_sum(acc);
}

// Keys of every row for one query, from canonical scores (a warp per row): the exact path for
// k beyond shared memory and for queries whose candidates could not be proven. Rows a mask
// drops get the empty key.
template <int kMetric, int kDtype>
__global__ void canonical_keys_kernel(PagedRows rows, std::size_t n, const float4* __restrict__ query,
                                      const float* __restrict__ query_factor, const std::uint64_t* __restrict__ mask,
                                      std::uint64_t* __restrict__ keys, std::uint32_t* __restrict__ vals) {
    constexpr bool kHigher = MetricTraits<kMetric>::kHigherFirst;
    const float qf = *query_factor;
    const std::size_t warps = static_cast<std::size_t>(gridDim.x) * blockDim.x / kWarpSize;
    for (std::size_t r = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; r < n;
         r += warps) {
        const PagePlace at = place(rows.map.base_shift, rows.map.max_shift, r);
        const PageRef& page = rows.pages[at.page];
        const float acc =
            canonical_acc<kMetric, kDtype>(static_cast<const uint4*>(page.rows) + at.row * rows.ld4, query, rows.ld4);
        if (lane_id() == 0) {
            keys[r] = slot_passes(mask, r)
                          ? make_key<kHigher>(finish_score<kMetric, false>(acc, page.factors[at.row], qf),
                                              page.ordinals[at.row])
                          : kEmptyKey;
            vals[r] = static_cast<std::uint32_t>(r);
        }
    }
}

template <int kMetric, int kDtype = kF32>
__global__ void __launch_bounds__(kSelectBlock) rerank_kernel(
    const std::uint64_t* __restrict__ cand_keys, const std::uint32_t* __restrict__ cand_vals, int kc,
    int k, int cap, PagedRows rows, const float4* __restrict__ queries,
    const float* __restrict__ query_factor, const unsigned int* __restrict__ max_factor_bits,
    ScreenBound bound, const unsigned char* __restrict__ screen_ok, float* __restrict__ out_scores,
    std::int64_t* __restrict__ out_slots, unsigned char* __restrict__ ok) {
    constexpr bool kHigher = MetricTraits<kMetric>::kHigherFirst;
    extern __shared__ __align__(16) unsigned char smem[];
    auto* keys = reinterpret_cast<std::uint64_t*>(smem);
    auto* vals = reinterpret_cast<std::uint32_t*>(smem + cap * sizeof(std::uint64_t));
    const std::size_t q = blockIdx.x;
    const std::uint64_t* ck = cand_keys + q * kc;
    const std::uint32_t* cv = cand_vals + q * kc;
    const float qf = query_factor[q];
    if (threadIdx.x == 0) {
        bool proven = true;
        const std::uint64_t last = ck[kc - 1];
        if (last != kEmptyKey) {  // else every row is a candidate
            const float kth = key_score<kHigher>(ck[k - 1]), worst = key_score<kHigher>(last);
            float b = bound.rel;  // Cosine
            if (kMetric != kCosine) {
                const float qn = sqrtf(qf), xn = sqrtf(__uint_as_float(*max_factor_bits));
                b = kMetric == kDotProduct ? bound.rel * qn * xn
                                           : 2.0f * bound.rel * qn * xn + bound.sq * (qn + xn) * (qn + xn);
            }
            proven = kHigher ? worst < kth - 2.0f * b : worst > kth + 2.0f * b;
        }
        ok[q] = proven && (screen_ok == nullptr || screen_ok[q] != 0) ? 1 : 0;
    }
    const int lane = lane_id();
    const std::size_t ld4 = rows.ld4;
    constexpr std::size_t kQ4 = Elem<kDtype>::kPerUnit / 4;  // query float4s per row unit
    const int base_shift = rows.map.base_shift, max_shift = rows.map.max_shift;
    const PageRef* pages = rows.pages;
    const float4* qv = queries + q * ld4 * kQ4;
    for (int i = warp_id(); i < cap; i += blockDim.x / kWarpSize) {
        const bool real = i < kc && ck[i] != kEmptyKey;
        if (!real) {
            if (lane == 0) {
                keys[i] = kEmptyKey;
                vals[i] = 0u;
            }
            continue;
        }
        const std::uint32_t row = cv[i];
        const PagePlace at = place(base_shift, max_shift, row);
        const PageRef& page = pages[at.page];
        const float acc = canonical_acc<kMetric, kDtype>(static_cast<const uint4*>(page.rows) + at.row * ld4, qv, ld4);
        if (lane == 0) {
            keys[i] = make_key<kHigher>(finish_score<kMetric, false>(acc, page.factors[at.row], qf), page.ordinals[at.row]);
            vals[i] = row;
        }
    }
    __syncthreads();
    bitonic_sort(keys, vals, cap);
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        out_scores[q * k + i] = key_score<kHigher>(keys[i]);
        out_slots[q * k + i] = static_cast<std::int64_t>(vals[i]);
    }
}

}  // namespace hive_gpu::kernels
