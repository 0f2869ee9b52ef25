// Distance kernels: per-row statistics (norms and input checks), the fused one-pass scan
// of the rows for a single query, the skinny product of a few queries, and the gather of
// listed rows (batch selection over GEMM score tiles: tile_select.cuh).
#pragma once

#include "core/numeric.hpp"
#include "kernels/compat.cuh"
#include "kernels/elements.cuh"
#include "kernels/keys.cuh"
#include "kernels/pages.cuh"
#include "kernels/select.cuh"

namespace hive_gpu::kernels {

// Row fault codes, the same as core/validate.hpp's RowFault.
constexpr unsigned long long kFaultNonFinite = 1;
constexpr unsigned long long kFaultTooLarge = 2;
constexpr unsigned long long kFaultDoesNotFit = 3;

// One warp per row: the per-row factor (1/|x| for Cosine, |x|^2 otherwise, in double as the
// CPU engine does) and, for rows that break the input rules, the smallest faulty row packed
// as ((fault_row0 + row) << 2 | code) into *fault with atomicMin (rows of one call may span
// several pages, one launch each).
template <int kMetric, int kDtype = kF32>
__global__ void row_stats_kernel(const typename Elem<kDtype>::T* __restrict__ rows, std::size_t ld, std::size_t n,
                                 std::size_t dim, float* __restrict__ factor,
                                 unsigned long long* fault, double max_squared_norm,
                                 std::size_t fault_row0 = 0) {
    const std::size_t warps = (static_cast<std::size_t>(gridDim.x) * blockDim.x) / kWarpSize;
    const std::size_t first = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
    const int lane = lane_id();
    for (std::size_t r = first; r < n; r += warps) {
        const typename Elem<kDtype>::T* x = rows + r * ld;
        double s = 0.0;
        int bad = 0;
        for (std::size_t j = lane; j < dim; j += kWarpSize) {
            const float v = to_float<kDtype>(x[j]);
            bad |= !isfinite(v);
            s += static_cast<double>(v) * v;
        }
        s = warp_sum(s);
        bad = warp_sum(bad);
        if (lane == 0) {
            unsigned long long code = bad ? kFaultNonFinite : (s > max_squared_norm ? kFaultTooLarge : 0);
            if (code != 0 && fault != nullptr)
                atomicMin(fault, (static_cast<unsigned long long>(fault_row0 + r) << 2) | code);
            if (kMetric == kCosine)
                factor[r] = cosine_factor(s);
            else
                factor[r] = static_cast<float>(s);
        }
    }
}

// Raw accumulations of kWarpRows (<= kWarpSize) consecutive rows [wbase, wbase + kWarpRows)
// against the query in shared memory: the return value of lane i < kWarpRows belongs to row
// wbase + i. Those rows lie in one page (page boundaries are multiples of 64). kRows rows are
// loaded together so that several 16-byte loads per lane are in flight. kFiltered: entries
// [wbase, ...) instead, entry e being row list[e] with a list, and only those whose bit is
// set in `live` (bit i: entry wbase + i) are read; n is unused. ld4 counts 16-byte units;
// the query holds Elem<kDtype>::kPerUnit floats per unit.
template <int kMetric, int kVpl, int kRows, int kWarpRows, bool kFiltered, int kDtype>
__device__ __forceinline__ float warp_row_scores(const PagedRows& rows, std::size_t n,
                                                 const std::uint32_t* __restrict__ list,
                                                 std::uint64_t live, const float4* q, std::size_t wbase) {
    const int lane = lane_id();
    const std::size_t ld4 = rows.ld4;
    const bool listed = kFiltered && list != nullptr;
    const float4* first = nullptr;  // the warp's first row, when its rows are consecutive
    if (!listed && (kFiltered ? live != 0 : wbase < n)) first = rows.row4(wbase);
    float mine = 0.0f;
    for (int i = 0; i < kWarpRows; i += kRows) {
        float acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
        unsigned take = 0;  // kFiltered: bit r set when entry wbase + i + r is read
        if constexpr (kFiltered) {
            take = static_cast<unsigned>(live >> i) & ((1u << kRows) - 1);
            if (take == 0) continue;  // warp-uniform: no row of this step passes
        }
        for (std::size_t c0 = 0; c0 < ld4; c0 += static_cast<std::size_t>(kVpl) * kWarpSize) {
            uint4 v[kRows][kVpl];
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                const std::size_t entry = wbase + i + r;
                bool read = entry < n;
                if constexpr (kFiltered) read = ((take >> r) & 1u) != 0;
                const float4* x = !read ? nullptr
                                  : listed ? rows.row4(list[entry])
                                           : first + static_cast<std::size_t>(i + r) * ld4;
#pragma unroll
                for (int c = 0; c < kVpl; ++c) {
                    const std::size_t col = c0 + lane + static_cast<std::size_t>(c) * kWarpSize;
                    v[r][c] = (read && col < ld4) ? __ldg(reinterpret_cast<const uint4*>(x) + col) : make_uint4(0, 0, 0, 0);
                }
            }
#pragma unroll
            for (int c = 0; c < kVpl; ++c) {
                const std::size_t col = c0 + lane + static_cast<std::size_t>(c) * kWarpSize;
                if (col < ld4) {
                    const float4* b = q + col * (Elem<kDtype>::kPerUnit / 4);
#pragma unroll
                    for (int r = 0; r < kRows; ++r) acc[r] += unit_term<kMetric, kDtype>(v[r][c], b);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const float total = warp_sum(acc[r]);
            if (lane == i + r) mine = total;
        }
    }
    return mine;
}

// Rows a warp loads together: enough 16-byte loads in flight per lane to pull the chip's
// bandwidth. 16-bit rows carry half the bytes per load step, so up to 768 dimensions they
// take twice the rows (a 768-d half row is 3 of the 4 loads of kVpl 4).
template <int kVpl, int kDtype = kF32>
struct ScanShape {
    static constexpr int kFloatRows = kVpl >= 4 ? 2 : 4;
    static constexpr int kRows = kDtype == kF32 || kVpl >= 6 ? kFloatRows : 2 * kFloatRows;
};

constexpr int kScanBlock = 256;

// Rows a warp scores per round of the single-query scan: a full warp's worth, or fewer on
// small stores, so that the rows spread over every SM (one SM alone cannot pull the
// bandwidth of the chip: 10k rows of 768 floats on 40 blocks took 10 us, not 3).
constexpr int kWarpRowsSmall = 8;

// Bit i set for entry wbase + i of a warp's kWarpRows entries when it is < n and, with a
// mask, its row passes. wbase is a multiple of kWarpRows, which divides 64, so the entries'
// bits lie in one mask word.
template <int kWarpRows>
__device__ __forceinline__ std::uint64_t live_entries(std::size_t wbase, std::size_t n,
                                                      const std::uint64_t* __restrict__ mask) {
    static_assert(64 % kWarpRows == 0, "a warp's rows must share one mask word");
    if (wbase >= n) return 0;
    std::uint64_t live = kWarpRows == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << (kWarpRows % 64)) - 1;
    if (n - wbase < static_cast<std::size_t>(kWarpRows)) live &= (std::uint64_t{1} << (n - wbase)) - 1;
    if (mask != nullptr) live &= mask[wbase >> 6] >> (wbase & 63);
    return live;
}

// One query against all rows in one pass: each block scores interleaved rounds of
// (warps x kWarpRows) rows and keeps its k best in shared memory; out gets k keys per block.
// With `done` (a counter at 0), the last block also merges them into final_scores/slots.
// kFiltered (its own instantiation, so the plain scan keeps its registers): with `mask`
// (dense) a row whose bit is clear is neither read nor ranked; with `list` (sparse) the scan
// runs over entries [0, n) and entry i is row list[i]. Without kFiltered both are ignored.
// Shared memory: BlockTopK (cap entries) then the query (as floats, kPerUnit per row unit).
template <int kMetric, int kVpl, int kWarpRows = kWarpSize, bool kFiltered = false, int kDtype = kF32>
__global__ void __launch_bounds__(kScanBlock) scan_query_kernel(
    PagedRows rows, std::size_t n,
    const std::uint32_t* __restrict__ list_arg, const std::uint64_t* __restrict__ mask_arg,
    const float4* __restrict__ query, int k, int cap,
    std::uint64_t* __restrict__ out_keys, std::uint32_t* __restrict__ out_vals,
    unsigned int* done, float* __restrict__ final_scores, std::int64_t* __restrict__ final_slots) {
    constexpr bool kHigher = MetricTraits<kMetric>::kHigherFirst;
    const std::uint32_t* list = kFiltered ? list_arg : nullptr;
    const std::uint64_t* mask = kFiltered ? mask_arg : nullptr;
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int count;
    __shared__ std::uint64_t bound;
    BlockTopK top{reinterpret_cast<std::uint64_t*>(smem),
                  reinterpret_cast<std::uint32_t*>(smem + cap * sizeof(std::uint64_t)), cap, k,
                  &count, &bound};
    float4* q = reinterpret_cast<float4*>(smem + topk_shared_bytes(cap));
    const std::size_t q4 = rows.ld4 * (Elem<kDtype>::kPerUnit / 4);  // float4s of the query
    for (std::size_t i = threadIdx.x; i < q4; i += blockDim.x) q[i] = query[i];
    top.init(nullptr, nullptr);
    // The query's factor, as row_stats_kernel computes it; every warp sums for itself.
    double qq = 0.0;
    for (std::size_t i = lane_id(); i < q4; i += kWarpSize) {
        const float4 v = q[i];
        qq += static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y +
              static_cast<double>(v.z) * v.z + static_cast<double>(v.w) * v.w;
    }
    qq = warp_sum(qq);
    const float qf = kMetric == kCosine ? cosine_factor(qq)
                                        : static_cast<float>(qq);
    constexpr int kRows = ScanShape<kVpl, kDtype>::kRows < kWarpRows ? ScanShape<kVpl, kDtype>::kRows : kWarpRows;
    const std::size_t per_round = blockDim.x / kWarpSize * kWarpRows;
    for (std::size_t base = blockIdx.x * per_round; base < n; base += gridDim.x * per_round) {
        const std::size_t wbase = base + static_cast<std::size_t>(warp_id()) * kWarpRows;
        std::uint64_t live = 0;
        if constexpr (kFiltered) live = live_entries<kWarpRows>(wbase, n, mask);
        const float acc =
            warp_row_scores<kMetric, kVpl, kRows, kWarpRows, kFiltered, kDtype>(rows, n, list, live, q, wbase);
        const bool ranked = kFiltered ? ((live >> (lane_id() % 64)) & 1u) != 0 : wbase + lane_id() < n;
        if (lane_id() < kWarpRows && ranked) {
            const std::size_t entry = wbase + lane_id();
            const std::size_t row = list != nullptr ? list[entry] : entry;
            const PagePlace at = rows.map.place(row);
            const PageRef& page = rows.pages[at.page];
            const float s = finish_score<kMetric, false>(acc, page.factors[at.row], qf);
            top.push(make_key<kHigher>(s, page.ordinals[at.row]), static_cast<std::uint32_t>(row));
        }
        top.end_round(1);
    }
    top.merge();
    top.store(out_keys + static_cast<std::size_t>(blockIdx.x) * k,
              out_vals + static_cast<std::size_t>(blockIdx.x) * k);
    if (done == nullptr) return;  // merge_lists_kernel follows
    // The last block to finish merges every block's list and writes the final k (small
    // stores: one launch instead of two, where launch latency is most of the time).
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile std::uint64_t* keys = out_keys;  // written by other blocks: not through L1
    const volatile std::uint32_t* vals = out_vals;
    // Each block's k-th key bounds the overall k-th from above, so only keys at or below the
    // smallest of them can enter: a handful instead of every block's k, hence no big sorts.
    __shared__ unsigned long long limit;
    if (threadIdx.x == 0) limit = kEmptyKey;
    __syncthreads();
    for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x)
        atomicMin(&limit, static_cast<unsigned long long>(keys[static_cast<std::size_t>(b) * k + k - 1]));
    top.init(nullptr, nullptr);  // its barriers also publish `limit`
    const std::size_t total = static_cast<std::size_t>(gridDim.x) * k;
    for (std::size_t base = 0; base < total; base += blockDim.x) {
        const std::size_t i = base + threadIdx.x;
        if (i < total) {
            const std::uint64_t key = keys[i];
            if (key <= limit && key < *top.bound) top.push(key, vals[i]);
        }
        top.end_round(1);
    }
    top.merge();
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        final_scores[i] = key_score<kHigher>(top.keys[i]);
        final_slots[i] = static_cast<std::int64_t>(top.vals[i]);
    }
    if (threadIdx.x == 0) *done = 0;  // ready for the lane's next search
}

// The scores users see, for results returned in device memory (Euclidean is rooted).
template <bool kRoot>
__global__ void user_scores_kernel(const float* __restrict__ in, std::size_t n,
                                   float* __restrict__ out) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
        out[i] = kRoot ? sqrtf(fmaxf(in[i], 0.0f)) : in[i];
}

constexpr int kSkinnyBlock = 256;

// Dot products of a few queries (nq <= kQ <= 16) with rows [0, n): out[j * ld_out + r].
// A skinny matrix product that stays bound by the rows' bandwidth: each warp streams a few
// rows at a time, the queries sit in shared memory, and a lane's partial sums are reduced
// across the warp with a butterfly that leaves finished sums spread over the lanes (about
// one shuffle per sum instead of five).
template <int kQ, int kVpl>
__global__ void __launch_bounds__(kSkinnyBlock) skinny_dots_kernel(
    const float4* __restrict__ rows, std::size_t ld4, std::size_t n,
    const float4* __restrict__ queries, int nq, float* __restrict__ out, std::size_t ld_out) {
    // Four rows a step halve the shared-memory reads of the queries per row; wide rows
    // take two to stay within the registers.
    constexpr int kRowsPerStep = kVpl <= 6 ? 4 : 2;
    constexpr int kV = kRowsPerStep * kQ;                      // sums per lane before the reduction
    constexpr int kSpan = kV < kWarpSize ? kV : kWarpSize;      // lanes that finish distinct sums
    constexpr int kLeft = kV / kSpan;                           // finished sums per lane
    extern __shared__ __align__(16) unsigned char smem[];
    float4* qs = reinterpret_cast<float4*>(smem);
    for (std::size_t i = threadIdx.x; i < static_cast<std::size_t>(kQ) * ld4; i += blockDim.x)
        qs[i] = i / ld4 < static_cast<std::size_t>(nq) ? queries[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    __syncthreads();
    const int lane = lane_id();
    const std::size_t warp = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
    const std::size_t warps = static_cast<std::size_t>(gridDim.x) * blockDim.x / kWarpSize;
    for (std::size_t r0 = warp * kRowsPerStep; r0 < n; r0 += warps * kRowsPerStep) {
        float acc[kV];
#pragma unroll
        for (int i = 0; i < kV; ++i) acc[i] = 0.0f;
        for (std::size_t c0 = 0; c0 < ld4; c0 += static_cast<std::size_t>(kVpl) * kWarpSize) {
            float4 v[kRowsPerStep][kVpl];
#pragma unroll
            for (int r = 0; r < kRowsPerStep; ++r) {
#pragma unroll
                for (int c = 0; c < kVpl; ++c) {
                    const std::size_t col = c0 + lane + static_cast<std::size_t>(c) * kWarpSize;
                    v[r][c] = (r0 + r < n && col < ld4) ? __ldg(rows + (r0 + r) * ld4 + col)
                                                        : make_float4(0.f, 0.f, 0.f, 0.f);
                }
            }
#pragma unroll
            for (int c = 0; c < kVpl; ++c) {
                const std::size_t col = c0 + lane + static_cast<std::size_t>(c) * kWarpSize;
                if (col < ld4) {
#pragma unroll
                    for (int j = 0; j < kQ; ++j) {
                        const float4 b = qs[j * ld4 + col];
#pragma unroll
                        for (int r = 0; r < kRowsPerStep; ++r) {
                            const float4 a = v[r][c];
                            acc[r * kQ + j] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
                        }
                    }
                }
            }
        }
        // Lanes at least kSpan apart add all their sums; closer ones trade halves, each level
        // halving the sums a lane holds. acc[i] ends as sum number i + kLeft * (lane % kSpan).
#pragma unroll
        for (int off = kWarpSize / 2; off >= kSpan; off >>= 1) {
#pragma unroll
            for (int i = 0; i < kV; ++i) acc[i] += shfl_xor(acc[i], off);
        }
#pragma unroll
        for (int off = kSpan / 2, held = kV; off > 0; off >>= 1, held >>= 1) {
            const bool upper = (lane & off) != 0;
#pragma unroll
            for (int i = 0; i < held / 2; ++i) {
                const float send = upper ? acc[i] : acc[i + held / 2];
                const float keep = upper ? acc[i + held / 2] : acc[i];
                acc[i] = keep + shfl_xor(send, off);
            }
        }
        if (lane < kSpan) {
#pragma unroll
            for (int i = 0; i < kLeft; ++i) {
                const int idx = i + kLeft * lane;  // row idx / kQ of the step, query idx % kQ
                const int r = idx / kQ, j = idx % kQ;
                if (j < nq && r0 + r < n) out[static_cast<std::size_t>(j) * ld_out + r0 + r] = acc[i];
            }
        }
    }
}

// Sparse filtered batches: the n listed rows (with their factors and ordinals) copied into
// a compact matrix that the batch paths then search like a store of n rows. A warp per row,
// so each row is read in whole, coalesced.
[[maybe_unused]] static __global__ void gather_rows_kernel(PagedRows rows, const std::uint32_t* __restrict__ list, std::size_t n,
                                          float4* __restrict__ out_rows, float* __restrict__ out_factor,
                                          std::uint32_t* __restrict__ out_ordinals) {
    const std::size_t warps = (static_cast<std::size_t>(gridDim.x) * blockDim.x) / kWarpSize;
    const std::size_t first = (static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
    const std::size_t ld4 = rows.ld4;
    const int lane = lane_id();
    for (std::size_t i = first; i < n; i += warps) {
        const PagePlace at = rows.map.place(list[i]);
        const PageRef& page = rows.pages[at.page];
        const float4* src = static_cast<const float4*>(page.rows) + at.row * ld4;
        for (std::size_t j = lane; j < ld4; j += kWarpSize) out_rows[i * ld4 + j] = __ldg(src + j);
        if (lane == 0) {
            out_factor[i] = page.factors[at.row];
            out_ordinals[i] = page.ordinals[at.row];
        }
    }
}

}  // namespace hive_gpu::kernels
