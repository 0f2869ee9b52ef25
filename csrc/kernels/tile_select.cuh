// Batch selection over GEMM score tiles: each query's running top k is updated tile by tile.
//
// The first tile of a batch goes through select_tile_kernel: blocks of a shared-memory top k
// (BlockTopK), one barrier per round of four columns a thread. Once a query's running top k
// is full, most columns of a later tile cannot enter it, and a column can be ruled out
// without a block-wide structure: filter_tile_kernel streams the tile at memory speed and
// appends only the columns whose score reaches the running k-th (a handful per tile), and
// merge_passed_kernel merges those into the running top k, one block per query. Should a
// tile pass more columns than the buffer holds (scores rising along the columns), that
// query's block selects the whole tile instead: the answer never depends on the buffer.
//
// Scores are scaled per query by acc_scale (a power of two, or nullptr for 1: the 16-bit
// screen's scaled queries).
#pragma once

#include "core/numeric.hpp"
#include "kernels/compat.cuh"
#include "kernels/keys.cuh"
#include "kernels/pages.cuh"
#include "kernels/select.cuh"

namespace hive_gpu::kernels {

// Loads run kSelectDepth rounds ahead in select_columns: each round ends in a block barrier,
// and with one round in flight the block would wait a memory latency per round.
constexpr int kSelectDepth = 4;

// Columns [c, c + 4) of p, as one load when all four lie before `end` (c a multiple of 4,
// p 16-byte aligned).
__device__ __forceinline__ float4 load_four(const float* __restrict__ p, std::size_t c, std::size_t end) {
    if (c + 4 <= end) return *reinterpret_cast<const float4*>(p + c);
    return make_float4(c < end ? p[c] : 0.0f, c + 1 < end ? p[c + 1] : 0.0f, c + 2 < end ? p[c + 2] : 0.0f, 0.0f);
}

// Columns [begin, end) of one query's score row into `top` (every thread of the block calls
// it; begin is a multiple of 4). A column's key is finish_score(score * scale) with its
// ordinal; the ordinal is read only when the score's order bits can enter.
template <int kMetric>
__device__ __forceinline__ void select_columns(BlockTopK& top, const float* __restrict__ s_row,
                                               const float* __restrict__ factor,
                                               const std::uint32_t* __restrict__ ordinal,
                                               const std::uint64_t* __restrict__ mask, std::size_t col0,
                                               std::size_t begin, std::size_t end, float scale, float qf) {
    constexpr bool kHigher = MetricTraits<kMetric>::kHigherFirst;
    constexpr bool kFactor = kMetric != kDotProduct;  // dot products need no row factor
    static_assert(kSelectItems == 4, "a round is four columns per thread");
    const std::size_t step = static_cast<std::size_t>(blockDim.x) * kSelectItems;
    auto load = [&](std::size_t base, float4& acc, float4& rf) {
        const std::size_t c = base + kSelectItems * static_cast<std::size_t>(threadIdx.x);
        acc = load_four(s_row, c, end);
        if (kFactor) rf = load_four(factor, c, end);
    };
    float4 ring_acc[kSelectDepth], ring_rf[kSelectDepth];
#pragma unroll
    for (int d = 0; d < kSelectDepth; ++d) {
        ring_rf[d] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        load(begin + d * step, ring_acc[d], ring_rf[d]);
    }
    for (std::size_t group = begin; group < end; group += kSelectDepth * step) {
#pragma unroll
        for (int d = 0; d < kSelectDepth; ++d) {
            const std::size_t base = group + d * step;
            if (base >= end) break;  // uniform across the block
            const float a[4] = {ring_acc[d].x, ring_acc[d].y, ring_acc[d].z, ring_acc[d].w};
            const float f[4] = {ring_rf[d].x, ring_rf[d].y, ring_rf[d].z, ring_rf[d].w};
            load(base + kSelectDepth * step, ring_acc[d], ring_rf[d]);
            // A key is its score's order bits above the ordinal: a score whose bits exceed
            // the bound's cannot enter, whatever its ordinal, so most columns stop here.
            const std::uint32_t bar = static_cast<std::uint32_t>(top.threshold() >> 32);
            const std::size_t c0 = base + kSelectItems * static_cast<std::size_t>(threadIdx.x);
#pragma unroll
            for (int j = 0; j < kSelectItems; ++j) {
                const std::size_t c = c0 + j;
                const float sc = finish_score<kMetric, true>(a[j] * scale, f[j], qf);
                const std::uint64_t key = make_key<kHigher>(sc, 0u);
                if (c < end && static_cast<std::uint32_t>(key >> 32) <= bar && slot_passes(mask, col0 + c))
                    top.push(key | ordinal[c], static_cast<std::uint32_t>(col0 + c));
            }
            top.end_round(kSelectItems);
        }
    }
}

// Selection over a tile of GEMM results: scores[q * ld_scores + c] = q . row(col0 + c) for
// c < cols, the rows' factors and ordinals at factor[c] and ordinal[c] (a page's arrays, or
// copies where the tile spans pages). Block (q, s) takes the s-th of gridDim.y column ranges
// and writes its k best keys to out[(q * gridDim.y + s) * k]; with one range it starts from
// seed (the running top-k), with several seed's k-th key bounds what each range keeps. Rows
// a mask drops are never candidates. The host keeps ld_scores and the addresses aligned
// and the ranges' starts multiples of 4.
template <int kMetric>
__global__ void __launch_bounds__(kSelectBlock) select_tile_kernel(
    const float* __restrict__ scores, std::size_t ld_scores, std::size_t cols, std::size_t col0,
    const float* __restrict__ factor, const std::uint32_t* __restrict__ ordinal, const std::uint64_t* __restrict__ mask,
    const float* __restrict__ query_factor, const float* __restrict__ acc_scale, int k, int cap,
    const std::uint64_t* seed_keys, const std::uint32_t* seed_vals, std::uint64_t* out_keys,
    std::uint32_t* out_vals) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int count;
    __shared__ std::uint64_t bound;
    const std::size_t q = blockIdx.x;
    const std::size_t per = (ceil_div(cols, gridDim.y) + 3) / 4 * 4;
    const std::size_t begin = per * blockIdx.y;
    const std::size_t end = begin + per < cols ? begin + per : cols;
    BlockTopK top{reinterpret_cast<std::uint64_t*>(smem),
                  reinterpret_cast<std::uint32_t*>(smem + cap * sizeof(std::uint64_t)), cap, k,
                  &count, &bound};
    // One range: the running top k is the start. Several: it only bounds what each keeps
    // (the merge that follows holds it once).
    const bool seeded = seed_keys != nullptr && gridDim.y == 1;
    top.init(seeded ? seed_keys + q * k : nullptr, seeded ? seed_vals + q * k : nullptr,
             seed_keys != nullptr && !seeded ? seed_keys[q * k + k - 1] : kEmptyKey);
    select_columns<kMetric>(top, scores + q * ld_scores, factor, ordinal, mask, col0, begin, end,
                            acc_scale != nullptr ? acc_scale[q] : 1.0f, query_factor[q]);
    top.merge();
    const std::size_t slot = q * gridDim.y + blockIdx.y;
    top.store(out_keys + slot * k, out_vals + slot * k);
}

// The factors and ordinals of slots [first, first + n), side by side (the view the
// selection kernels of this file take of a GEMM tile that spans pages).
[[maybe_unused]] static __global__ void gather_side_kernel(PagedRows rows, std::size_t first, std::size_t n,
                                                           float* __restrict__ out_factor,
                                                           std::uint32_t* __restrict__ out_ordinals) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
        const PagePlace at = rows.map.place(first + i);
        const PageRef& page = rows.pages[at.page];
        out_factor[i] = page.factors[at.row];
        out_ordinals[i] = page.ordinals[at.row];
    }
}

constexpr int kFilterBlock = 256;
constexpr int kFilterLoads = 4;  // four-column loads a thread has in flight

// Block (q, s): the s-th of gridDim.y column ranges of query q's scores. Columns whose key
// can still enter the running top k (run_keys[q * k, +k), sorted: its k-th key's order bits
// or better) are appended to the query's pass buffer: key and slot at [q * room + i] for
// i = pass_count[q]++ while i < room (the count goes on past room: the merge then reselects
// the tile). A top k that is not full yet passes every column a mask lets through.
template <int kMetric>
__global__ void __launch_bounds__(kFilterBlock) filter_tile_kernel(
    const float* __restrict__ scores, std::size_t ld_scores, std::size_t cols, std::size_t col0,
    const float* __restrict__ factor, const std::uint32_t* __restrict__ ordinal, const std::uint64_t* __restrict__ mask,
    const float* __restrict__ query_factor, const float* __restrict__ acc_scale, int k,
    const std::uint64_t* __restrict__ run_keys, std::uint64_t* __restrict__ pass_keys,
    std::uint32_t* __restrict__ pass_vals, unsigned* __restrict__ pass_count, int room) {
    constexpr bool kHigher = MetricTraits<kMetric>::kHigherFirst;
    constexpr bool kFactor = kMetric != kDotProduct;
    const std::size_t q = blockIdx.x;
    // A column passes when its key's order bits are at or under the k-th's, that is when its
    // score is at least (or, lower first, at most) the k-th's: one float comparison. The
    // empty key's bits (a top k not yet full) belong to no finite score: everything passes.
    const std::uint64_t kth = run_keys[q * k + k - 1];
    const bool open = static_cast<std::uint32_t>(kth >> 32) == 0xffffffffu;
    const float bar = open ? 0.0f : key_score<kHigher>(kth);
    const float qf = query_factor[q];
    const float scale = acc_scale != nullptr ? acc_scale[q] : 1.0f;
    const float* s_row = scores + q * ld_scores;
    const std::size_t per = (ceil_div(cols, gridDim.y) + 3) / 4 * 4;
    const std::size_t begin = per * blockIdx.y;
    const std::size_t end = begin + per < cols ? begin + per : cols;
    const std::size_t stride = static_cast<std::size_t>(kFilterBlock) * 4;
    for (std::size_t group = begin + 4 * static_cast<std::size_t>(threadIdx.x); group < end;
         group += kFilterLoads * stride) {
        float4 acc[kFilterLoads], rf[kFilterLoads];
#pragma unroll
        for (int d = 0; d < kFilterLoads; ++d) {
            const std::size_t c = group + d * stride;
            acc[d] = c < end ? load_four(s_row, c, end) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            rf[d] = kFactor && c < end ? load_four(factor, c, end) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int d = 0; d < kFilterLoads; ++d) {
            const float a[4] = {acc[d].x, acc[d].y, acc[d].z, acc[d].w};
            const float f[4] = {rf[d].x, rf[d].y, rf[d].z, rf[d].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const std::size_t c = group + d * stride + j;
                const float sc = finish_score<kMetric, true>(a[j] * scale, f[j], qf);
                const bool reaches = open || (kHigher ? sc >= bar : sc <= bar);
                if (reaches && c < end && slot_passes(mask, col0 + c)) {
                    const unsigned i = atomicAdd(pass_count + q, 1u);
                    if (i < static_cast<unsigned>(room)) {
                        pass_keys[q * room + i] = make_key<kHigher>(sc, ordinal[c]);
                        pass_vals[q * room + i] = static_cast<std::uint32_t>(col0 + c);
                    }
                }
            }
        }
    }
}

// One block per query: the columns filter_tile_kernel passed, merged into the running top k
// (run_keys/run_vals, updated in place); pass_count[q] is reset for the next tile. When more
// columns passed than the buffer holds, the block selects the whole tile (the arguments of
// select_tile_kernel) instead. Shared memory: topk_shared_bytes(cap), cap as for
// select_tile_kernel.
template <int kMetric>
__global__ void __launch_bounds__(kSelectBlock) merge_passed_kernel(
    const float* __restrict__ scores, std::size_t ld_scores, std::size_t cols, std::size_t col0,
    const float* __restrict__ factor, const std::uint32_t* __restrict__ ordinal, const std::uint64_t* __restrict__ mask,
    const float* __restrict__ query_factor, const float* __restrict__ acc_scale, int k, int cap,
    const std::uint64_t* __restrict__ pass_keys, const std::uint32_t* __restrict__ pass_vals,
    unsigned* __restrict__ pass_count, int room, std::uint64_t* run_keys, std::uint32_t* run_vals) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int count;
    __shared__ std::uint64_t bound;
    const std::size_t q = blockIdx.x;
    const unsigned passed = pass_count[q];
    BlockTopK top{reinterpret_cast<std::uint64_t*>(smem),
                  reinterpret_cast<std::uint32_t*>(smem + cap * sizeof(std::uint64_t)), cap, k,
                  &count, &bound};
    top.init(run_keys + q * k, run_vals + q * k);  // reads the seed before any thread stores
    if (passed > static_cast<unsigned>(room)) {
        select_columns<kMetric>(top, scores + q * ld_scores, factor, ordinal, mask, col0, 0, cols,
                                acc_scale != nullptr ? acc_scale[q] : 1.0f, query_factor[q]);
    } else {
        const std::uint64_t* keys = pass_keys + q * room;
        const std::uint32_t* vals = pass_vals + q * room;
        for (unsigned base = 0; base < passed; base += blockDim.x) {
            const unsigned i = base + threadIdx.x;
            if (i < passed) top.push(keys[i], vals[i]);
            top.end_round(1);
        }
    }
    top.merge();
    top.store(run_keys + q * k, run_vals + q * k);
    if (threadIdx.x == 0) pass_count[q] = 0;
}

}  // namespace hive_gpu::kernels
