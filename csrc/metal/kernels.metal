// The Metal kernels of hive_gpu: scoring, per-segment top-k and the merge tree.
// The library compiles this source at run time (CMake embeds it, params.h pasted in); on
// other hosts tests/metal_sim compiles it as C++ through msl_shim.hpp and runs the grid on
// the CPU, so the arithmetic and indexing below are tested without a Mac.
#if defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;
#endif

#include "params.h"

// ---- Ranking keys ----------------------------------------------------------------------
// (score, ordinal) packed into one 64-bit key whose ascending order is the engine order:
// better score first, then the smaller ordinal. Padding is the largest key of all.
constant ulong kEmptyKey = 0xffffffffffffffffUL;

// Monotone float -> uint map: a larger float gives a larger integer.
inline uint order_bits(float s) {
    uint b = as_type<uint>(s);
    return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

inline float from_order_bits(uint u) {
    uint b = (u & 0x80000000u) != 0u ? (u & 0x7fffffffu) : ~u;
    return as_type<float>(b);
}

inline ulong make_key(float score, uint ordinal, uint metric) {
    if (score == 0.0f) score = 0.0f;  // -0 and +0 compare equal, so they must tie
    uint o = order_bits(score);
    if (metric != kEuclidean) o = ~o;  // higher first
    return (ulong(o) << 32) | ulong(ordinal);
}

inline float key_score(ulong key, uint metric) {
    uint o = uint(key >> 32);
    if (metric != kEuclidean) o = ~o;
    return from_order_bits(o);
}

// Engine score from a raw product q.x and the per-row / per-query factors
// (1/|v| for cosine, |v|^2 for Euclidean, unused for the dot product).
inline float score_from_product(float dot, float row_factor, float query_factor, uint metric) {
    if (metric == kCosine) return dot * row_factor * query_factor;
    if (metric == kEuclidean) return max(query_factor + row_factor - 2.0f * dot, 0.0f);
    return dot;
}

// ---- Row elements ----------------------------------------------------------------------
// Rows are stored as float, half or bfloat16 and widened to float exactly on load; scores
// accumulate in float. bfloat16 rows are read as ushort (their bits) and widened by a shift
// (a bfloat16 is the top half of a float), which needs no MSL 3.1 `bfloat` and so runs on
// every device. No other ushort data passes through widen().
inline float widen(float v) { return v; }
inline float widen(half v) { return float(v); }
inline float widen(ushort bf16) { return as_type<float>(uint(bf16) << 16); }

// ---- Scoring ---------------------------------------------------------------------------
// One thread per (row, query): grid x = rows, y = queries. Used for small batches and for
// 16-bit rows; the Euclidean distance is computed directly, which is exact near zero.
template <typename T>
inline void score_rows_of(device const T* rows, device const float* row_factors, device const float* queries,
                          device const float* query_factors, device float* scores, device const uint* rowsel,
                          constant Params& p, uint3 gid) {
    const uint r = gid.x;
    const uint q = gid.y;
    if (r >= p.n_rows || q >= p.nq) return;
    // A filter's sparse path scores only the listed rows (score r belongs to rowsel[r]).
    const uint row = p.sel == kSelList ? rowsel[r] : r;
    device const T* x = rows + ulong(row) * p.dim;
    device const float* y = queries + ulong(q) * p.dim;
    // Two accumulators halve the dependency chain of the loop.
    float a0 = 0.0f;
    float a1 = 0.0f;
    uint j = 0;
    if (p.metric == kEuclidean) {
        for (; j + 1 < p.dim; j += 2) {
            const float d0 = y[j] - widen(x[j]);
            const float d1 = y[j + 1] - widen(x[j + 1]);
            a0 = fma(d0, d0, a0);
            a1 = fma(d1, d1, a1);
        }
        if (j < p.dim) {
            const float d0 = y[j] - widen(x[j]);
            a0 = fma(d0, d0, a0);
        }
        scores[ulong(q) * p.stride + r] = a0 + a1;
        return;
    }
    for (; j + 1 < p.dim; j += 2) {
        a0 = fma(y[j], widen(x[j]), a0);
        a1 = fma(y[j + 1], widen(x[j + 1]), a1);
    }
    if (j < p.dim) a0 = fma(y[j], widen(x[j]), a0);
    const float dot = a0 + a1;
    scores[ulong(q) * p.stride + r] =
        p.metric == kCosine ? dot * row_factors[row] * query_factors[q] : dot;
}

// One kernel per row element type, all with the buffers of score_rows.
#define HIVE_SCORE_ROWS_KERNEL(NAME, T)                                                             \
    kernel void NAME(device const T* rows [[buffer(0)]], device const float* row_factors [[buffer(1)]], \
                     device const float* queries [[buffer(2)]],                                     \
                     device const float* query_factors [[buffer(3)]], device float* scores [[buffer(4)]], \
                     device const uint* rowsel [[buffer(5)]], constant Params& p [[buffer(6)]],     \
                     uint3 gid [[thread_position_in_grid]]) {                                       \
        score_rows_of(rows, row_factors, queries, query_factors, scores, rowsel, p, gid);          \
    }

HIVE_SCORE_ROWS_KERNEL(score_rows, float)
HIVE_SCORE_ROWS_KERNEL(score_rows_f16, half)
HIVE_SCORE_ROWS_KERNEL(score_rows_bf16, ushort)

// Turns the products q.x of a matrix multiply (MPS) into scores, in place.
// Grid x = rows, y = queries.
kernel void finish_products(device float* scores [[buffer(0)]],
                            device const float* row_factors [[buffer(1)]],
                            device const float* query_factors [[buffer(2)]],
                            constant Params& p [[buffer(3)]],
                            uint3 gid [[thread_position_in_grid]]) {
    const uint r = gid.x;
    const uint q = gid.y;
    if (r >= p.n_rows || q >= p.nq) return;
    const ulong i = ulong(q) * p.stride + r;
    scores[i] = score_from_product(scores[i], row_factors[r], query_factors[q], p.metric);
}

// ---- Selection -------------------------------------------------------------------------
// One threadgroup sorts one segment of p.seg scores of one query by key with a bitonic
// network in threadgroup memory and keeps the best p.len_in. Threadgroups: x = segment,
// y = query. Output lists: [query][segment][p.len_in].
kernel void select_segments(device const float* scores [[buffer(0)]],
                            device const uint* ordinals [[buffer(1)]],
                            device ulong* out_keys [[buffer(2)]],
                            device uint* out_slots [[buffer(3)]],
                            device const uint* rowsel [[buffer(4)]],
                            constant Params& p [[buffer(5)]],
                            uint lid [[thread_index_in_threadgroup]],
                            uint3 group [[threadgroup_position_in_grid]]) {
    threadgroup ulong s_key[kMaxSegment];
    threadgroup uint s_slot[kMaxSegment];
    const uint seg = p.seg;
    const uint q = group.y;
    const uint first = group.x * seg;
    for (uint i = lid; i < seg; i += kThreads) {
        const uint r = first + i;
        // A row the filter drops is padding, so it never enters the top k.
        const bool live = r < p.n_rows && (p.sel != kSelMask || ((rowsel[r / 32] >> (r % 32)) & 1u) != 0u);
        if (live) {
            const uint row = p.sel == kSelList ? rowsel[r] : r;
            s_key[i] = make_key(scores[ulong(q) * p.stride + r], ordinals[row], p.metric);
            s_slot[i] = row;
        } else {
            s_key[i] = kEmptyKey;
            s_slot[i] = kNoSlot;
        }
    }
    for (uint size = 2; size <= seg; size <<= 1) {
        for (uint stride = size >> 1; stride > 0; stride >>= 1) {
            threadgroup_barrier(mem_flags::mem_threadgroup);
            for (uint t = lid; t < seg / 2; t += kThreads) {
                const uint i = 2 * t - (t & (stride - 1));
                const uint j = i + stride;
                // Ascending where bit `size` of i is clear; the last stage sorts all ascending.
                const bool ascending = (i & size) == 0u;
                const ulong ki = s_key[i];
                const ulong kj = s_key[j];
                if ((kj < ki) == ascending) {
                    s_key[i] = kj;
                    s_key[j] = ki;
                    const uint si = s_slot[i];
                    s_slot[i] = s_slot[j];
                    s_slot[j] = si;
                }
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const ulong base = (ulong(q) * p.lists_in + group.x) * p.len_in;
    for (uint i = lid; i < p.len_in; i += kThreads) {
        out_keys[base + i] = s_key[i];
        out_slots[base + i] = s_slot[i];
    }
}

// Merges sorted lists pairwise (2o with 2o+1) and keeps the best p.len_out of each pair.
// Each thread places one input entry by binary search in the partner list, so any k works
// without threadgroup memory. Keys are unique except padding; "A before B when equal" keeps
// equal padding keys in distinct places. Grid x = entry (< 2 * len_in), y = o, z = query.
kernel void merge_lists(device const ulong* in_keys [[buffer(0)]],
                        device const uint* in_slots [[buffer(1)]],
                        device ulong* out_keys [[buffer(2)]],
                        device uint* out_slots [[buffer(3)]],
                        constant Params& p [[buffer(4)]],
                        uint3 gid [[thread_position_in_grid]]) {
    const uint e = gid.x;
    const uint o = gid.y;
    const uint q = gid.z;
    const uint len = p.len_in;
    if (e >= 2 * len || o >= p.lists_out || q >= p.nq) return;
    const uint la = 2 * o;
    const uint lb = la + 1;
    const ulong a_base = (ulong(q) * p.lists_in + la) * len;
    const ulong b_base = (ulong(q) * p.lists_in + lb) * len;
    const ulong out_base = (ulong(q) * p.lists_out + o) * p.len_out;
    if (e < len) {
        const ulong key = in_keys[a_base + e];
        uint lo = 0;
        if (lb < p.lists_in) {
            // Entries of B strictly before this one.
            uint hi = len;
            while (lo < hi) {
                const uint mid = (lo + hi) / 2;
                if (in_keys[b_base + mid] < key) lo = mid + 1; else hi = mid;
            }
        }
        const uint rank = e + lo;
        if (rank < p.len_out) {
            out_keys[out_base + rank] = key;
            out_slots[out_base + rank] = in_slots[a_base + e];
        }
    } else if (lb >= p.lists_in) {
        // A has no partner: pad the rest of the output list.
        if (e < p.len_out) {
            out_keys[out_base + e] = kEmptyKey;
            out_slots[out_base + e] = kNoSlot;
        }
    } else {
        const uint j = e - len;
        const ulong key = in_keys[b_base + j];
        // Entries of A not after this one.
        uint lo = 0;
        uint hi = len;
        while (lo < hi) {
            const uint mid = (lo + hi) / 2;
            if (in_keys[a_base + mid] <= key) lo = mid + 1; else hi = mid;
        }
        const uint rank = j + lo;
        if (rank < p.len_out) {
            out_keys[out_base + rank] = key;
            out_slots[out_base + rank] = in_slots[b_base + j];
        }
    }
}

// The first p.k entries of each query's final list (length p.len_in) as scores and slots.
// Grid x = rank, y = query.
kernel void write_results(device const ulong* keys [[buffer(0)]],
                          device const uint* slots [[buffer(1)]],
                          device float* out_scores [[buffer(2)]],
                          device uint* out_slots [[buffer(3)]],
                          constant Params& p [[buffer(4)]],
                          uint3 gid [[thread_position_in_grid]]) {
    const uint i = gid.x;
    const uint q = gid.y;
    if (i >= p.k || q >= p.nq) return;
    const ulong src = ulong(q) * p.len_in + i;
    out_scores[ulong(q) * p.k + i] = key_score(keys[src], p.metric);
    out_slots[ulong(q) * p.k + i] = slots[src];
}
