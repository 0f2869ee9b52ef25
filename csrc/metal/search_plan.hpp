// The dispatches of one search over a chunk of queries, as data: which kernel, how many
// threadgroups, which buffers at which indices, which parameters. The Metal engine encodes
// these steps; tests/metal_sim runs the same steps on the CPU, so grid sizes, bindings and
// the merge tree are tested together with the kernels.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/numeric.hpp"

namespace hive_gpu::metal {

using uint = std::uint32_t;
#include "metal/params.h"

enum class Kernel { ScoreRows, FinishProducts, SelectSegments, MergeLists, WriteResults };
inline constexpr int kKernelCount = 5;

inline const char* kernel_name(Kernel k) {
    switch (k) {
        case Kernel::ScoreRows: return "score_rows";
        case Kernel::FinishProducts: return "finish_products";
        case Kernel::SelectSegments: return "select_segments";
        case Kernel::MergeLists: return "merge_lists";
        case Kernel::WriteResults: return "write_results";
    }
    return "";
}

// The buffers of a search, by role. Candidate lists ping-pong between A and B.
enum class Buf {
    Rows, RowFactors, Ordinals,              // the engine's rows
    Queries, QueryFactors,                   // this chunk's queries
    Scores,                                  // [nq][n] floats
    KeysA, SlotsA, KeysB, SlotsB,            // candidate lists
    OutScores, OutSlots,                     // [nq][k]
    RowSel,                                  // a filter's chunk mask or row list (Params::sel)
};
inline constexpr int kBufCount = 13;

struct Step {
    // true: scores = queries x rows^T by a matrix multiply (MPS); the fields below are unused.
    bool product = false;
    Kernel function = Kernel::ScoreRows;
    uint groups[3] = {1, 1, 1};  // threadgroups of kThreads threads along x
    std::vector<Buf> args;       // bound at indices 0 .. args.size()-1, Params right after
    Params params{};
};

struct ChunkShape {
    std::size_t n;    // rows, >= 1
    std::size_t dim;  // >= 1
    std::size_t nq;   // queries in the chunk, >= 1
    std::size_t k;    // 1 <= k <= n
    uint metric;      // kCosine, kDotProduct, kEuclidean
    bool product;     // score through a matrix multiply instead of score_rows (not with kSelList)
    uint sel = kSelAll;  // kSelList: n is the number of listed rows
};

inline uint div_up(std::size_t a, std::size_t b) { return static_cast<uint>(ceil_div(a, b)); }

// Rows per sorted segment: the smallest power of two holding all rows, at most kMaxSegment.
inline uint segment_size(std::size_t n) {
    uint seg = 1;
    while (seg < n && seg < kMaxSegment) seg <<= 1;
    return seg;
}

struct Plan {
    std::vector<Step> steps;
    std::size_t entries_per_query = 0;  // candidate entries each of A and B must hold
};

inline Plan plan_chunk(const ChunkShape& s) {
    Plan plan;
    Params base{};
    base.n_rows = static_cast<uint>(s.n);
    base.dim = static_cast<uint>(s.dim);
    base.nq = static_cast<uint>(s.nq);
    base.stride = static_cast<uint>(s.n);
    base.metric = s.metric;
    base.k = static_cast<uint>(s.k);
    base.sel = s.sel;
    const uint row_groups = div_up(s.n, kThreads);
    const uint nq = static_cast<uint>(s.nq);

    if (s.product && s.sel != kSelList) {
        Step mm;
        mm.product = true;
        plan.steps.push_back(mm);
        // The dot product is the product itself.
        if (s.metric != kDotProduct)
            plan.steps.push_back({false, Kernel::FinishProducts, {row_groups, nq, 1},
                                  {Buf::Scores, Buf::RowFactors, Buf::QueryFactors}, base});
    } else {
        plan.steps.push_back({false, Kernel::ScoreRows, {row_groups, nq, 1},
                              {Buf::Rows, Buf::RowFactors, Buf::Queries, Buf::QueryFactors, Buf::Scores,
                               Buf::RowSel},
                              base});
    }

    const uint seg = segment_size(s.n);
    uint lists = div_up(s.n, seg);
    uint len = static_cast<uint>(std::min<std::size_t>(s.k, seg));
    Params sel = base;
    sel.seg = seg;
    sel.len_in = len;
    sel.lists_in = lists;
    plan.steps.push_back({false, Kernel::SelectSegments, {lists, nq, 1},
                          {Buf::Scores, Buf::Ordinals, Buf::KeysA, Buf::SlotsA, Buf::RowSel}, sel});
    plan.entries_per_query = std::size_t{lists} * len;

    bool in_a = true;
    while (lists > 1) {
        Params m = base;
        m.len_in = len;
        m.lists_in = lists;
        m.len_out = static_cast<uint>(std::min<std::size_t>(s.k, 2 * std::size_t{len}));
        m.lists_out = div_up(lists, 2);
        const Buf keys_in = in_a ? Buf::KeysA : Buf::KeysB, slots_in = in_a ? Buf::SlotsA : Buf::SlotsB;
        const Buf keys_out = in_a ? Buf::KeysB : Buf::KeysA, slots_out = in_a ? Buf::SlotsB : Buf::SlotsA;
        plan.steps.push_back({false, Kernel::MergeLists, {div_up(2 * std::size_t{len}, kThreads), m.lists_out, nq},
                              {keys_in, slots_in, keys_out, slots_out}, m});
        plan.entries_per_query = std::max(plan.entries_per_query, std::size_t{m.lists_out} * m.len_out);
        len = m.len_out;
        lists = m.lists_out;
        in_a = !in_a;
    }

    // One list of len == k entries per query remains.
    Params w = base;
    w.len_in = len;
    plan.steps.push_back({false, Kernel::WriteResults, {div_up(s.k, kThreads), nq, 1},
                          {in_a ? Buf::KeysA : Buf::KeysB, in_a ? Buf::SlotsA : Buf::SlotsB,
                           Buf::OutScores, Buf::OutSlots},
                          w});
    return plan;
}

// The per-row (and per-query) factor the kernels use, accumulated in double once at insert:
// 1/|v| for cosine (zero below FLT_MIN: cosine_factor in core/numeric.hpp), |v|^2 for
// Euclidean, unused (0) for the dot product.
inline float vector_factor(const float* v, std::size_t dim, uint metric) {
    if (metric == kDotProduct) return 0.0f;
    double s = 0.0;
    for (std::size_t j = 0; j < dim; ++j) s += static_cast<double>(v[j]) * v[j];
    if (metric == kCosine) return cosine_factor(s);
    return static_cast<float>(s);
}

// Bytes of one chunk buffer (roles from Queries on; the rows belong to the engine).
inline std::size_t chunk_buffer_bytes(Buf b, const ChunkShape& s, const Plan& plan) {
    switch (b) {
        case Buf::Queries: return s.nq * s.dim * sizeof(float);
        case Buf::QueryFactors: return s.nq * sizeof(float);
        case Buf::Scores: return s.nq * s.n * sizeof(float);
        case Buf::KeysA:
        case Buf::KeysB: return s.nq * plan.entries_per_query * sizeof(std::uint64_t);
        case Buf::SlotsA:
        case Buf::SlotsB: return s.nq * plan.entries_per_query * sizeof(uint);
        case Buf::OutScores: return s.nq * s.k * sizeof(float);
        case Buf::OutSlots: return s.nq * s.k * sizeof(uint);
        case Buf::RowSel: return (s.n + 1) * sizeof(uint);  // a list of n rows or ceil(n / 32) mask words
        default: return 0;
    }
}

// A filter's chunk-local selection for rows [first, first + n) of the store: the mask's bits
// of those rows re-based at 0 (kSelMask), written to `words` (ceil(n / 32) of them).
inline void chunk_mask(const std::uint64_t* bits, std::size_t first, std::size_t n, uint* words) {
    for (std::size_t w = 0; w * 32 < n; ++w) {
        const std::size_t at = first + w * 32;  // global bit of local bit 32w
        std::uint64_t v = bits[at / 64] >> (at % 64);
        if (at % 64 > 32 && (first + n - 1) / 64 > at / 64) v |= bits[at / 64 + 1] << (64 - at % 64);
        const std::size_t left = n - w * 32;
        words[w] = static_cast<uint>(left >= 32 ? v : v & ((std::uint64_t{1} << left) - 1));
    }
}

// Device bytes one query of a chunk needs: scores, both candidate buffers, the query and
// its results.
inline std::size_t bytes_per_query(std::size_t n, std::size_t dim, std::size_t k) {
    const Plan one = plan_chunk({n, dim, 1, k, kDotProduct, false});
    return n * sizeof(float) + 2 * one.entries_per_query * (sizeof(std::uint64_t) + sizeof(uint)) +
           dim * sizeof(float) + sizeof(float) + k * (sizeof(float) + sizeof(uint));
}

// Queries per chunk so that the scratch of one chunk stays within `budget` bytes; at least
// one, and at most 32768 (grid y/z dimensions stay small).
inline std::size_t query_chunk(std::size_t n, std::size_t dim, std::size_t k, std::size_t nq,
                               std::size_t budget) {
    const std::size_t per = bytes_per_query(n, dim, k);
    return std::max<std::size_t>(1, std::min({nq, budget / per, std::size_t{32768}}));
}

}  // namespace hive_gpu::metal
