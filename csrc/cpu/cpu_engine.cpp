#include "cpu/cpu_engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <vector>

#include "core/topk.hpp"
#include "cpu/cpu_context.hpp"
#include "cpu/kernels.hpp"
#include "core/numeric.hpp"
#include "cpu/screen.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::cpu {


CpuEngine::CpuEngine(std::shared_ptr<CpuContext> context, std::size_t dimension, Metric metric, Dtype dtype)
    : context_(std::move(context)), dim_(dimension), metric_(metric), dtype_(dtype) {}

CpuEngine::~CpuEngine() { context_->uncharge(charged_); }

std::uint64_t CpuEngine::footprint(std::size_t rows) const {
    const std::uint64_t per_row_floats = keeps_norms() ? 3 : 2;  // factors_, ordinals_ (and norms_)
    const std::uint64_t plane_count = planes() ? 2 : 1;
    return (plane_count * rows * dim_ + kPlaneSlack) * sizeof(std::uint16_t) +
           rows * per_row_floats * sizeof(float);
}

std::vector<float> CpuEngine::row_scratch() const {
    try {
        return std::vector<float>(dim_);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("cpu: host memory exhausted");
    }
}

void CpuEngine::set_row_data(std::size_t slot, float* row) {
    read(slot, 1, row);
    double s = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) s += static_cast<double>(row[j]) * row[j];
    factors_[slot] = metric_ == Metric::Cosine ? cosine_factor(s) : static_cast<float>(s);
    if (keeps_norms()) {
        // Rounded up: the screen's bound needs |x| from above.
        const double r = std::sqrt(s) * (1.0 + 0x1p-30);  // covers the sum's own error
        float f = static_cast<float>(r);
        if (static_cast<double>(f) < r) f = std::nextafter(f, std::numeric_limits<float>::infinity());
        norms_[slot] = f;
    }
}

void CpuEngine::reserve(std::size_t rows) {
    if (rows > (std::numeric_limits<std::size_t>::max() - kPlaneSlack) / (dim_ * sizeof(float)))
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    // Charged before anything is allocated: a growth beyond the context's cap changes nothing.
    const std::uint64_t charged_before = charged_;
    if (footprint(rows) > charged_) {
        context_->charge(footprint(rows) - charged_, "rows");
        charged_ = footprint(rows);
    }
    try {
        reserve_charged(rows);
    } catch (...) {
        context_->uncharge(charged_ - charged_before);
        charged_ = charged_before;
        throw;
    }
}

void CpuEngine::reserve_charged(std::size_t rows) {
    // The vectors first, then both planes before either is committed: whatever throws, the
    // store is as it was.
    try {
        factors_.reserve(rows);
        if (keeps_norms()) norms_.reserve(rows);
        ordinals_.reserve(rows);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    } catch (const std::length_error&) {
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    }
    if (rows <= row_capacity() && hi_.data()) return;
    const std::size_t keep = size() * dim_, want = rows * dim_;
    HostBuffer<std::uint16_t> hi = hi_.grown(want + kPlaneSlack, keep);
    HostBuffer<std::uint16_t> lo = planes() ? lo_.grown(want, keep) : HostBuffer<std::uint16_t>();
    std::memset(hi.data() + keep, 0, kPlaneSlack * sizeof(std::uint16_t));
    hi_ = std::move(hi);
    lo_ = std::move(lo);
}

void CpuEngine::store_rows(std::size_t slot, const void* rows, std::size_t n) {
    if (planes())
        kernels().split(static_cast<const float*>(rows), n * dim_, hi_.data() + slot * dim_, lo_.data() + slot * dim_);
    else
        std::memcpy(hi_.data() + slot * dim_, rows, n * dim_ * sizeof(std::uint16_t));
}

void CpuEngine::point_at(TileArgs& a, std::size_t slot) const {
    a.hi = hi_.data() + slot * dim_;
    a.lo = planes() ? lo_.data() + slot * dim_ : nullptr;
    a.packing = packing();
}

void CpuEngine::append(const void* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    std::vector<float> scratch = row_scratch();
    const std::size_t old = size(), need = old + n;
    if (need > row_capacity() || !hi_.data() || need > ordinals_.capacity() ||
        need > factors_.capacity() || (keeps_norms() && need > norms_.capacity())) {
        try {
            reserve(std::max(need, old * 2));
        } catch (const OutOfMemoryError&) {
            if (old * 2 <= need) throw;
            reserve(need);  // room for the rows themselves may still be there (or under the cap)
        }
    }
    store_rows(old, rows, n);
    std::memset(hi_.data() + need * dim_, 0, kPlaneSlack * sizeof(std::uint16_t));
    factors_.resize(need);
    if (keeps_norms()) norms_.resize(need);
    for (std::size_t i = 0; i < n; ++i) set_row_data(old + i, scratch.data());
    ordinals_.insert(ordinals_.end(), ordinals, ordinals + n);
}

void CpuEngine::write(std::size_t slot, const void* row) {
    std::vector<float> scratch = row_scratch();
    store_rows(slot, row, 1);
    set_row_data(slot, scratch.data());
}

void CpuEngine::move(std::size_t src, std::size_t dst) {
    const std::size_t bytes = dim_ * sizeof(std::uint16_t);
    std::memcpy(hi_.data() + dst * dim_, hi_.data() + src * dim_, bytes);
    if (planes()) std::memcpy(lo_.data() + dst * dim_, lo_.data() + src * dim_, bytes);
    factors_[dst] = factors_[src];
    if (keeps_norms()) norms_[dst] = norms_[src];
    ordinals_[dst] = ordinals_[src];
}

void CpuEngine::truncate(std::size_t n) {
    factors_.resize(n);
    if (keeps_norms()) norms_.resize(n);
    ordinals_.resize(n);
    if (n == 0) {
        hi_.release();
        lo_.release();
        factors_.shrink_to_fit();
        norms_.shrink_to_fit();
        ordinals_.shrink_to_fit();
        context_->uncharge(charged_);
        charged_ = 0;
    } else {
        // The screen may read past the last row: what follows it must be zeros again.
        std::memset(hi_.data() + n * dim_, 0, kPlaneSlack * sizeof(std::uint16_t));
    }
}

void CpuEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    std::copy(ordinals, ordinals + n, ordinals_.begin());
}

void CpuEngine::read(std::size_t first, std::size_t n, float* out) const {
    if (n == 0) return;
    if (planes())
        kernels().widen(hi_.data() + first * dim_, lo_.data() + first * dim_, n * dim_, out);
    else
        kernels().widen16(hi_.data() + first * dim_, n * dim_, packing(), out);
}

std::size_t CpuEngine::memory_bytes() const {
    return (hi_.capacity() + lo_.capacity()) * sizeof(std::uint16_t) +
           (factors_.capacity() + norms_.capacity()) * sizeof(float) +
           ordinals_.capacity() * sizeof(std::uint32_t);
}

namespace {

// Queries scored together against one tile of rows (and the unit of query parallelism).
constexpr std::size_t kQueryBlock = 64;
// A tile of rows, widened to float32 from the two planes, stays in L2 while every query of
// the block is scored against it; it is widened in pieces that fit L1.
constexpr std::size_t kTileBytes = std::size_t{256} << 10;
constexpr std::size_t kPieceBytes = std::size_t{16} << 10;
constexpr std::size_t kMaxTileRows = 1024;
// Up to this many queries, Euclidean runs the direct (x - q)^2 kernel: the scan is bound by
// memory bandwidth there, and the direct form needs no correction.
constexpr std::size_t kDirectL2MaxQueries = 3;
static_assert(kScreenMaxQueries <= kDirectL2MaxQueries, "screened Euclidean re-scores with the direct kernel");
// Below this many multiply-adds a search runs on the calling thread alone.
constexpr std::size_t kParallelWork = std::size_t{1} << 18;
constexpr std::size_t kChunksPerThread = 4;
constexpr std::size_t kMinChunkRows = 64;

std::size_t tile_rows(std::size_t d) {
    std::size_t r = kTileBytes / (d * sizeof(float));
    r = std::min(r, kMaxTileRows) / 3 * 3;
    return std::max<std::size_t>(r, 3);
}

// A multiple of the kernel's blocks of rows (8 for one query, else 3) where it fits.
std::size_t piece_rows(std::size_t d) {
    const std::size_t r = kPieceBytes / (d * sizeof(float));
    return r >= 24 ? r / 24 * 24 : std::max<std::size_t>(r / 3 * 3, 3);
}

float inverse_norm(const float* v, std::size_t d) {
    double s = 0.0;
    for (std::size_t j = 0; j < d; ++j) s += static_cast<double>(v[j]) * v[j];
    return cosine_factor(s);
}

// How the exact kernel scores a search of nq queries, and whether the Euclidean winners
// are re-scored with the direct kernel.
struct Plan {
    Form form = Form::Dot;
    Epilogue epilogue = Epilogue::None;
    bool rerank = false;  // Euclidean through |x|^2 - 2 q.x: exact distances for the winners
};

Plan plan_for(Metric metric, std::size_t nq) {
    Plan p;
    if (metric == Metric::Euclidean) {
        if (nq <= kDirectL2MaxQueries) {
            p.form = Form::L2;
        } else {
            p.epilogue = Epilogue::L2Expanded;
            p.rerank = true;
        }
    } else if (metric == Metric::Cosine) {
        p.epilogue = Epilogue::Cosine;
    }
    return p;
}

// Uninitialised scratch for widened rows, 64-byte aligned like the planes: rows of a
// multiple of 16 floats then never straddle cache lines.
HostBuffer<float> scratch(std::size_t n) { return HostBuffer<float>::allocate(n); }

}  // namespace

void CpuEngine::search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                       std::int64_t* slots) const {
    try {
        if (higher_is_better(metric_))
            search_impl<true>(queries, nq, k, scores, slots);
        else
            search_impl<false>(queries, nq, k, scores, slots);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("cpu: host memory exhausted during a search");
    }
}

// The screen (screen.hpp) names the rows that can be in each query's top k; they are
// scored by the same kernel, with the same operations, as a full scan, and selected by
// (score, ordinal): the answer is bit for bit the full scan's.
template <bool kHigherFirst>
bool CpuEngine::search_screened(const float* queries, const float* query_factor, std::size_t nq,
                                std::size_t k, float* scores, std::int64_t* slots,
                                const std::uint64_t* mask) const {
    const std::size_t d = dim_;
    std::vector<std::vector<std::size_t>> candidates;
    const ScreenRows view{hi_.data(), size(), d, metric_, factors_.data(),
                          keeps_norms() ? norms_.data() : nullptr, mask};
    if (!screen(view, context_->pool(), queries, query_factor, nq, k, candidates)) return false;

    const KernelTable& kern = kernels();
    const Plan plan = plan_for(metric_, nq);
    const bool factored = plan.epilogue != Epilogue::None;
    for (std::size_t q = 0; q < nq; ++q) {
        TopK<kHigherFirst> top(k);
        for (const std::size_t r : candidates[q]) {
            if (mask && !(mask[r / 64] >> (r % 64) & 1)) continue;
            float v;
            TileArgs a{queries + q * d, 1, d, nullptr, 1, d, plan.form, plan.epilogue,
                       factored ? &factors_[r] : nullptr, query_factor ? query_factor + q : nullptr,
                       &v, 1};
            point_at(a, r);
            kern.score_tile(a);
            if (top.may_enter(v)) top.push(v, ordinals_[r], static_cast<std::int64_t>(r));
        }
        top.write_sorted(scores + q * k, slots + q * k);
    }
    return true;
}

// Rows are cut into chunks and queries into blocks; each (block, chunk) task scores its
// rows tile by tile and keeps a top-k per query, filtered by the current k-th score so that
// only the rare candidates touch the heap. The per-chunk top-ks are merged per query.
template <bool kHigherFirst>
void CpuEngine::search_impl(const float* queries, std::size_t nq, std::size_t k, float* scores,
                            std::int64_t* slots, const RowSet& rows) const {
    // n: the rows ranked; position i is slot i, or list[i] on the sparse path.
    const std::uint32_t* list = rows.list;
    const std::uint64_t* mask = rows.mask;
    const std::size_t n = list ? rows.list_size : size(), d = dim_;
    if (nq == 0 || n == 0 || k == 0) return;
    const KernelTable& kern = kernels();
    ThreadPool& pool = context_->pool();
    const Plan plan = plan_for(metric_, nq);
    const Form form = plan.form;
    const Epilogue epilogue = plan.epilogue;
    const bool rerank = plan.rerank;

    std::vector<float> query_factor;
    if (epilogue == Epilogue::Cosine) {
        query_factor.resize(nq);
        for (std::size_t q = 0; q < nq; ++q) query_factor[q] = inverse_norm(queries + q * d, d);
    }
    // A zero cosine query ties every row at 0: the screen could not drop any.
    const bool zero_query = std::find(query_factor.begin(), query_factor.end(), 0.0f) != query_factor.end();
    // The screen reads the hi plane to save reading lo; a 16-bit store has no lo to save.
    if (!list && !zero_query && planes() && screen_wanted(n, d, nq, k) &&
        search_screened<kHigherFirst>(queries, query_factor.empty() ? nullptr : query_factor.data(), nq, k,
                                      scores, slots, mask))
        return;

    const std::size_t tile = tile_rows(d), piece = piece_rows(d);
    const std::size_t blocks = ceil_div(nq, kQueryBlock);
    const std::size_t threads = pool.threads();
    std::size_t chunks = 1;
    if (threads > 1 && n * d * nq >= kParallelWork) {
        chunks = threads * kChunksPerThread;
        chunks = std::min(chunks, std::max<std::size_t>(1, n / kMinChunkRows));
        // Each chunk keeps k candidates per query; a large k takes fewer, longer chunks.
        chunks = std::min(chunks, std::max<std::size_t>(1, n / (2 * k)));
        if (blocks >= threads * kChunksPerThread) chunks = 1;
    }
    const std::size_t chunk_rows = ceil_div(n, chunks);
    chunks = ceil_div(n, chunk_rows);
    const std::size_t tasks = blocks * chunks;

    std::vector<TopK<kHigherFirst>> heaps;  // [chunk][query]
    std::vector<float> strips;
    std::vector<std::uint32_t> picks;
    heaps.reserve(chunks * nq);
    for (std::size_t i = 0; i < chunks * nq; ++i) heaps.emplace_back(k);
    strips.resize(tasks * 4 * tile);
    picks.resize(tasks * tile);

    const float* row_factor = epilogue == Epilogue::None ? nullptr : factors_.data();
    const float* qf = query_factor.empty() ? nullptr : query_factor.data();
    constexpr float kNone = kHigherFirst ? -std::numeric_limits<float>::infinity()
                                         : std::numeric_limits<float>::infinity();

    auto scan = [&](std::size_t t) {
        const std::size_t b = t / chunks, c = t % chunks;
        const std::size_t qa = b * kQueryBlock, qn = std::min(kQueryBlock, nq - qa);
        const std::size_t ra = c * chunk_rows, rb = std::min(n, ra + chunk_rows);
        float* strip = strips.data() + t * 4 * tile;
        std::uint32_t* pick = picks.data() + t * tile;
        // The kernels read the queries from L1 at every step: when rows of them straddle
        // cache lines, the block's copy on 64 bytes keeps those loads whole (split loads
        // cost a batch up to a third of its time).
        const float* Q = queries + qa * d;
        HostBuffer<float> aligned;
        if (d % 16 == 0 && reinterpret_cast<std::uintptr_t>(Q) % 64 != 0) {
            aligned = scratch(qn * d);
            std::memcpy(aligned.data(), Q, qn * d * sizeof(float));
            Q = aligned.data();
        }
        // One group of queries reads the planes directly; more groups share a tile widened
        // to floats once. The sparse path gathers its rows into the tile first.
        const bool direct = qn <= 4 && !list;
        HostBuffer<float> X = direct ? HostBuffer<float>() : scratch(std::min(tile, rb - ra) * d);
        std::vector<float> gathered_factor(list && row_factor ? std::min(tile, rb - ra) : 0);
        for (std::size_t x0 = ra; x0 < rb; x0 += tile) {
            const std::size_t nx = std::min(tile, rb - x0);
            const float* tile_factor = row_factor ? row_factor + x0 : nullptr;
            if (list) {
                for (std::size_t i = 0; i < nx; ++i) {
                    const std::size_t r = list[x0 + i];
                    read(r, 1, X.data() + i * d);
                    if (row_factor) gathered_factor[i] = row_factor[r];
                }
                tile_factor = row_factor ? gathered_factor.data() : nullptr;
            }
            for (std::size_t g = 0; g < qn; g += 4) {
                const std::size_t q0 = qa + g, gn = std::min<std::size_t>(4, qn - g);
                TileArgs a{Q + g * d, gn, d, X.data(), nx, d, form, epilogue,
                           tile_factor, qf ? qf + q0 : nullptr,
                           strip, tile};
                if (direct) {
                    point_at(a, x0);
                    kern.score_tile(a);
                } else if (g == 0 && !list) {
                    // The first group widens the tile a piece at a time, each just before
                    // scoring it: the reads from memory then overlap the arithmetic as
                    // they would reading float rows (a separate widening pass would wait
                    // on memory alone), and each piece is still in L1 when it is scored.
                    for (std::size_t p = 0; p < nx; p += piece) {
                        TileArgs b = a;
                        b.nx = std::min(piece, nx - p);
                        b.rows = X.data() + p * d;
                        if (b.row_factor) b.row_factor += p;
                        b.out += p;
                        read(x0 + p, b.nx, X.data() + p * d);
                        kern.score_tile(b);
                    }
                } else {
                    kern.score_tile(a);
                }
                for (std::size_t i = 0; i < gn; ++i) {
                    TopK<kHigherFirst>& top = heaps[c * nq + q0 + i];
                    const float* s = strip + i * tile;
                    const float thr = top.size() < k ? kNone : top.items().front().score;
                    const std::size_t m = kern.filter(s, nx, thr, kHigherFirst, pick);
                    for (std::size_t j = 0; j < m; ++j) {
                        const std::size_t r = list ? list[x0 + pick[j]] : x0 + pick[j];
                        if (mask && !(mask[r / 64] >> (r % 64) & 1)) continue;
                        const float v = s[pick[j]];
                        if (top.may_enter(v)) top.push(v, ordinals_[r], static_cast<std::int64_t>(r));
                    }
                }
            }
        }
    };
    if (tasks == 1)
        scan(0);
    else
        pool.run(tasks, scan);

    auto finish = [&](std::size_t q) {
        TopK<kHigherFirst>* top = &heaps[q];
        std::optional<TopK<kHigherFirst>> merged;
        if (chunks > 1) {
            merged.emplace(k);
            for (std::size_t c = 0; c < chunks; ++c)
                for (const Candidate& x : heaps[c * nq + q].items())
                    if (merged->may_enter(x.score)) merged->push(x.score, x.ordinal, x.slot);
            top = &*merged;
        }
        float* out_s = scores + q * k;
        std::int64_t* out_i = slots + q * k;
        if (!rerank) {
            top->write_sorted(out_s, out_i);
            return;
        }
        // The expanded form cancels badly near zero; the direct kernel gives the winners
        // their exact squared distance (identical vectors: 0) and the final order.
        std::vector<Candidate> c = top->items();
        for (Candidate& x : c) {
            const std::size_t r = static_cast<std::size_t>(x.slot);
            TileArgs a{queries + q * d, 1, d, nullptr, 1, d, Form::L2, Epilogue::None,
                       nullptr, nullptr, &x.score, 1};
            point_at(a, r);
            kern.score_tile(a);
        }
        std::sort(c.begin(), c.end(), ranks_before<false>);
        for (std::size_t i = 0; i < c.size(); ++i) {
            out_s[i] = c[i].score;
            out_i[i] = c[i].slot;
        }
    };
    if (threads > 1 && nq > 1 && nq * k * chunks >= (std::size_t{1} << 15))
        pool.run(nq, finish);
    else
        for (std::size_t q = 0; q < nq; ++q) finish(q);
}

namespace {
// The sparse path gathers the passing rows from both planes at random; the dense one streams
// every row (the hi plane only, through the screen, for up to three queries). Measured at
// 1M x 128 on this project's 2-core CPU (docs/design.md): a single query gathers a row for
// about 2.5 times what the screened scan pays per row; a batch is bound by arithmetic
// either way, so a gathered row costs what a scanned one does. The sparse path runs up to
// one row in kSparseRowsPerScreened (up to kScreenMaxQueries queries) or
// kSparseRowsPerBatch passing.
constexpr std::size_t kSparseRowsPerScreened = 4;
constexpr std::size_t kSparseRowsPerBatch = 2;

enum class FilterPath { Auto, Dense, Sparse };

// HIVE_GPU_CPU_FILTER=dense|sparse forces a path, for the tests and for measuring the
// thresholds; read once.
FilterPath filter_path() {
    static const FilterPath p = [] {
        const char* v = std::getenv("HIVE_GPU_CPU_FILTER");
        if (v && std::strcmp(v, "dense") == 0) return FilterPath::Dense;
        if (v && std::strcmp(v, "sparse") == 0) return FilterPath::Sparse;
        return FilterPath::Auto;
    }();
    return p;
}
}  // namespace

void CpuEngine::search_filtered(const float* queries, std::size_t nq, std::size_t k, const SlotFilter& filter,
                                float* scores, std::int64_t* slots) const {
    const std::size_t per = nq <= kScreenMaxQueries ? kSparseRowsPerScreened : kSparseRowsPerBatch;
    const FilterPath path = filter_path();
    const bool sparse = path == FilterPath::Sparse || (path == FilterPath::Auto && filter.count * per <= size());
    try {
        RowSet rows;
        std::vector<std::uint32_t> listed;  // the passing slots, when the core did not list them
        if (sparse && !filter.slots) {
            listed.reserve(filter.count);
            const std::size_t words = (size() + 63) / 64;
            for (std::size_t w = 0; w < words; ++w)
                for (std::uint64_t b = filter.bits[w]; b; b &= b - 1)
                    listed.push_back(static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(__builtin_ctzll(b))));
        }
        if (sparse) {
            rows.list = filter.slots ? filter.slots : listed.data();
            rows.list_size = filter.count;
        } else {
            rows.mask = filter.bits;
        }
        if (higher_is_better(metric_))
            search_impl<true>(queries, nq, k, scores, slots, rows);
        else
            search_impl<false>(queries, nq, k, scores, slots, rows);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("cpu: host memory exhausted during a search");
    }
}

}  // namespace hive_gpu::cpu
