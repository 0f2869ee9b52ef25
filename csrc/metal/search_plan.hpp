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
#include "core/row_pages.hpp"
#include "hive_gpu/dtype.hpp"

namespace hive_gpu::metal {

using uint = std::uint32_t;
#include "metal/params.h"

// score_rows comes in one instance per row element type (float, half, bfloat16 bits).
enum class Kernel { ScoreRows, ScoreRowsF16, ScoreRowsBF16, FinishProducts, SelectSegments, MergeLists, WriteResults };
inline constexpr int kKernelCount = 7;

inline const char* kernel_name(Kernel k) {
    switch (k) {
        case Kernel::ScoreRows: return "score_rows";
        case Kernel::ScoreRowsF16: return "score_rows_f16";
        case Kernel::ScoreRowsBF16: return "score_rows_bf16";
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
    bool product;     // score through a matrix multiply instead of score_rows (float32 rows only, not with kSelList)
    uint sel = kSelAll;  // kSelList: n is the number of listed rows
    Dtype dtype = Dtype::Float32;  // element type of the rows
};

inline Kernel score_kernel(Dtype d) {
    return d == Dtype::Float16 ? Kernel::ScoreRowsF16 : d == Dtype::BFloat16 ? Kernel::ScoreRowsBF16 : Kernel::ScoreRows;
}

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

    if (s.product && s.sel != kSelList && s.dtype == Dtype::Float32) {
        Step mm;
        mm.product = true;
        plan.steps.push_back(mm);
        // The dot product is the product itself.
        if (s.metric != kDotProduct)
            plan.steps.push_back({false, Kernel::FinishProducts, {row_groups, nq, 1},
                                  {Buf::Scores, Buf::RowFactors, Buf::QueryFactors}, base});
    } else {
        plan.steps.push_back({false, score_kernel(s.dtype), {row_groups, nq, 1},
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

// The per-row (and per-query) factor the kernels use, accumulated in double once at insert
// from the stored values: 1/|v| for cosine (zero below FLT_MIN: cosine_factor in
// core/numeric.hpp), |v|^2 for Euclidean, unused (0) for the dot product.
template <class Widen>
float factor_of(std::size_t dim, uint metric, Widen value) {
    if (metric == kDotProduct) return 0.0f;
    double s = 0.0;
    for (std::size_t j = 0; j < dim; ++j) {
        const double x = value(j);
        s += x * x;
    }
    if (metric == kCosine) return cosine_factor(s);
    return static_cast<float>(s);
}

// `v`: dim elements of `dtype` (float32 queries and rows, or the 16-bit bit patterns of rows).
inline float vector_factor(const void* v, Dtype dtype, std::size_t dim, uint metric) {
    const auto* h = static_cast<const std::uint16_t*>(v);
    switch (dtype) {
        case Dtype::Float16: return factor_of(dim, metric, [h](std::size_t j) { return f16_to_float(h[j]); });
        case Dtype::BFloat16: return factor_of(dim, metric, [h](std::size_t j) { return bf16_to_float(h[j]); });
        default: {
            const auto* f = static_cast<const float*>(v);
            return factor_of(dim, metric, [f](std::size_t j) { return f[j]; });
        }
    }
}

// Bytes of one chunk buffer (roles Queries to SlotsB; the rows belong to the engine).
inline std::size_t chunk_buffer_bytes(Buf b, const ChunkShape& s, const Plan& plan) {
    switch (b) {
        case Buf::Queries: return s.nq * s.dim * sizeof(float);
        case Buf::QueryFactors: return s.nq * sizeof(float);
        case Buf::Scores: return s.nq * s.n * sizeof(float);
        case Buf::KeysA:
        case Buf::KeysB: return s.nq * plan.entries_per_query * sizeof(std::uint64_t);
        case Buf::SlotsA:
        case Buf::SlotsB: return s.nq * plan.entries_per_query * sizeof(uint);
        default: return 0;  // OutScores, OutSlots, RowSel: every page's share (TileLayout)
    }
}

// A filter's page-local selection for rows [first, first + n) of the store: the mask's bits
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

// Device bytes one query needs: scores and both candidate buffers of the largest page (n
// rows; pages run one after the other), the query, and the results of every page.
inline std::size_t bytes_per_query(std::size_t n, std::size_t dim, std::size_t k, std::size_t pages = 1) {
    const Plan one = plan_chunk({n, dim, 1, k, kDotProduct, false});
    return n * sizeof(float) + 2 * one.entries_per_query * (sizeof(std::uint64_t) + sizeof(uint)) +
           dim * sizeof(float) + sizeof(float) + pages * k * (sizeof(float) + sizeof(uint));
}

// Queries per tile so that the scratch of one tile stays within `budget` bytes; at least
// one, and at most 32768 (grid y/z dimensions stay small).
inline std::size_t query_chunk(std::size_t n, std::size_t dim, std::size_t k, std::size_t nq,
                               std::size_t budget, std::size_t pages = 1) {
    const std::size_t per = bytes_per_query(n, dim, k, pages);
    return std::max<std::size_t>(1, std::min({nq, budget / per, std::size_t{32768}}));
}

// ---- Pages -----------------------------------------------------------------------------
// Rows live in pages that never move (core/row_pages.hpp, the layout WebGPU uses too): page
// sizes double from a first size up to a full page and then stay there.
using PageLayout = hive_gpu::PageLayout;

// What a filtered search looks at in one page (Params::sel): the filter's mask re-based at
// the page's first row (kSelMask) or its passing rows (kSelList), and how many pass.
struct PageSelection {
    uint sel = kSelAll;
    std::vector<uint> rowsel;
    std::size_t passing = 0;
};

// One selection per page of a store of `size` rows. `slots` (ascending, `count` of them):
// score only the listed rows; null: score every row and apply the mask `bits`.
inline std::vector<PageSelection> select_pages(const std::uint64_t* bits, const std::uint32_t* slots, std::size_t count,
                                               std::size_t size, const PageLayout& layout) {
    std::vector<PageSelection> out(layout.pages_for(size));
    const std::uint32_t* at = slots;
    for (std::size_t p = 0; p < out.size(); ++p) {
        const std::size_t first = layout.start(p), rows = std::min(layout.rows(p), size - first);
        PageSelection& s = out[p];
        if (slots) {
            // The ascending list's run inside this page, as page rows.
            s.sel = kSelList;
            for (; at != slots + count && *at < first + rows; ++at) s.rowsel.push_back(static_cast<uint>(*at - first));
            s.passing = s.rowsel.size();
        } else {
            s.sel = kSelMask;
            s.rowsel.resize(ceil_div(rows, 32));
            chunk_mask(bits, first, rows, s.rowsel.data());
            for (uint w : s.rowsel) s.passing += static_cast<std::size_t>(__builtin_popcount(w));
        }
    }
    return out;
}

// The rows of page `page` a search scores and how many results it keeps per query (0: no
// row of the page passes the filter). `sel`: null, or the page's selection.
struct PageWork {
    std::size_t rows = 0;    // rows of the page in use
    std::size_t scored = 0;  // rows scored (the listed rows with kSelList)
    std::size_t k = 0;       // results per query
};
inline PageWork page_work(const PageLayout& layout, std::size_t page, std::size_t size, std::size_t k,
                          const PageSelection* sel) {
    PageWork w;
    w.rows = std::min(layout.rows(page), size - layout.start(page));
    w.scored = sel && sel->sel == kSelList ? sel->passing : w.rows;
    w.k = std::min(k, sel ? sel->passing : w.rows);
    return w;
}

// Every page of a search writes its results and reads its selection at its own place in the
// shared OutScores/OutSlots and RowSel buffers, so one command buffer searches all pages.
// Offsets in elements (4 bytes each), every page's at a 16-byte boundary.
struct TileLayout {
    std::vector<std::size_t> out_at, sel_at;
    std::size_t out_entries = 0, sel_words = 0;
};
inline TileLayout tile_layout(const std::vector<PageWork>& work, std::size_t nq, const std::vector<PageSelection>* sel) {
    TileLayout t;
    auto align4 = [](std::size_t n) { return (n + 3) & ~std::size_t{3}; };
    for (std::size_t p = 0; p < work.size(); ++p) {
        t.out_at.push_back(t.out_entries);
        t.out_entries += align4(nq * work[p].k);
        t.sel_at.push_back(t.sel_words);
        t.sel_words += align4(sel ? (*sel)[p].rowsel.size() : 0);
    }
    t.out_entries = std::max<std::size_t>(t.out_entries, 1);
    t.sel_words = std::max<std::size_t>(t.sel_words, 1);
    return t;
}

// One candidate of a query across pages.
struct Hit {
    float score;
    std::uint32_t ordinal;
    std::int64_t slot;
};

// The k best of `hits` (k <= hits.size()) in the kernels' order (better score, then the
// smaller ordinal), written to scores/slots.
inline void best_hits(std::vector<Hit>& hits, std::size_t k, uint metric, float* scores, std::int64_t* slots) {
    const bool higher = metric != kEuclidean;
    std::partial_sort(hits.begin(), hits.begin() + static_cast<std::ptrdiff_t>(k), hits.end(),
                      [higher](const Hit& a, const Hit& b) {
                          if (a.score != b.score) return higher ? a.score > b.score : a.score < b.score;
                          return a.ordinal < b.ordinal;
                      });
    for (std::size_t i = 0; i < k; ++i) {
        scores[i] = hits[i].score;
        slots[i] = hits[i].slot;
    }
}

// Scores and store slots of one tile of nq queries (row major, k each) from every page's
// results (OutScores/OutSlots at the tile layout's offsets; slots page-local). With one page
// its lists are the answer; else each query's k best of all pages' lists. ordinal_of(page,
// row) gives a row's ordinal. False when a kernel returned a row outside its page.
template <class OrdinalOf>
bool gather_tile(const PageLayout& layout, const std::vector<PageWork>& work, const TileLayout& tile, std::size_t nq,
                 std::size_t k, uint metric, const float* out_scores, const uint* out_slots, OrdinalOf ordinal_of,
                 float* scores, std::int64_t* slots) {
    std::vector<std::vector<Hit>> hits(nq);
    for (std::size_t p = 0; p < work.size(); ++p) {
        const std::size_t kp = work[p].k;
        for (std::size_t q = 0; q < nq; ++q)
            for (std::size_t i = 0; i < kp; ++i) {
                const std::size_t at = tile.out_at[p] + q * kp + i;
                if (out_slots[at] >= work[p].rows) return false;
                hits[q].push_back({out_scores[at], ordinal_of(p, out_slots[at]),
                                   static_cast<std::int64_t>(layout.start(p) + out_slots[at])});
            }
    }
    for (std::size_t q = 0; q < nq; ++q) {
        if (work.size() == 1) {  // already the kernels' order
            for (std::size_t i = 0; i < k; ++i) {
                scores[q * k + i] = hits[q][i].score;
                slots[q * k + i] = hits[q][i].slot;
            }
            continue;
        }
        best_hits(hits[q], k, metric, scores + q * k, slots + q * k);
    }
    return true;
}

}  // namespace hive_gpu::metal
