#include "cpu/cpu_engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <vector>

#include "core/topk.hpp"
#include "cpu/cpu_context.hpp"
#include "cpu/kernels.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::cpu {

namespace {
// 1/|x| for cosine. A vector whose squared norm is below FLT_MIN is the zero vector
// (docs/guarantees.md): its direction is not representable in float32 arithmetic.
float cosine_factor(double squared_norm) {
    return squared_norm >= static_cast<double>(std::numeric_limits<float>::min())
               ? static_cast<float>(1.0 / std::sqrt(squared_norm))
               : 0.0f;
}
}  // namespace

CpuEngine::CpuEngine(std::shared_ptr<CpuContext> context, std::size_t dimension, Metric metric)
    : context_(std::move(context)), dim_(dimension), metric_(metric) {}

float CpuEngine::row_factor(const float* row) const {
    double s = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) s += static_cast<double>(row[j]) * row[j];
    if (metric_ == Metric::Cosine) return cosine_factor(s);
    return static_cast<float>(s);
}

void CpuEngine::reserve(std::size_t rows) {
    if (rows > std::numeric_limits<std::size_t>::max() / (dim_ * sizeof(float)))
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    // The vectors first: if they throw, the row buffer is still as it was.
    try {
        factors_.reserve(rows);
        ordinals_.reserve(rows);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    } catch (const std::length_error&) {
        throw OutOfMemoryError("cpu: cannot reserve " + std::to_string(rows) + " rows");
    }
    rows_.reserve(rows * dim_, size() * dim_);
}

void CpuEngine::append(const float* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    const std::size_t old = size(), need = old + n;
    if (need * dim_ > rows_.capacity() || need > ordinals_.capacity() || need > factors_.capacity())
        reserve(std::max(need, old * 2));
    std::memcpy(rows_.data() + old * dim_, rows, n * dim_ * sizeof(float));
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
    factors_.resize(n);
    ordinals_.resize(n);
    if (n == 0) {
        rows_.release();
        factors_.shrink_to_fit();
        ordinals_.shrink_to_fit();
    }
}

void CpuEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    std::copy(ordinals, ordinals + n, ordinals_.begin());
}

void CpuEngine::read(std::size_t first, std::size_t n, float* out) const {
    if (n == 0) return;
    std::memcpy(out, rows_.data() + first * dim_, n * dim_ * sizeof(float));
}

std::size_t CpuEngine::memory_bytes() const {
    return rows_.capacity() * sizeof(float) + factors_.capacity() * sizeof(float) +
           ordinals_.capacity() * sizeof(std::uint32_t);
}

namespace {

// Queries scored together against one tile of rows (and the unit of query parallelism).
constexpr std::size_t kQueryBlock = 64;
// A tile of rows stays in L2 while every query of the block is scored against it.
constexpr std::size_t kTileBytes = std::size_t{256} << 10;
constexpr std::size_t kMaxTileRows = 1024;
// Up to this many queries, Euclidean runs the direct (x - q)^2 kernel: the scan is bound by
// memory bandwidth there, and the direct form needs no correction.
constexpr std::size_t kDirectL2MaxQueries = 3;
// Below this many multiply-adds a search runs on the calling thread alone.
constexpr std::size_t kParallelWork = std::size_t{1} << 18;
constexpr std::size_t kChunksPerThread = 4;
constexpr std::size_t kMinChunkRows = 64;

std::size_t tile_rows(std::size_t d) {
    std::size_t r = kTileBytes / (d * sizeof(float));
    r = std::min(r, kMaxTileRows) / 3 * 3;
    return std::max<std::size_t>(r, 3);
}

float inverse_norm(const float* v, std::size_t d) {
    double s = 0.0;
    for (std::size_t j = 0; j < d; ++j) s += static_cast<double>(v[j]) * v[j];
    return cosine_factor(s);
}

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

// Rows are cut into chunks and queries into blocks; each (block, chunk) task scores its
// rows tile by tile and keeps a top-k per query, filtered by the current k-th score so that
// only the rare candidates touch the heap. The per-chunk top-ks are merged per query.
template <bool kHigherFirst>
void CpuEngine::search_impl(const float* queries, std::size_t nq, std::size_t k, float* scores,
                            std::int64_t* slots) const {
    const std::size_t n = size(), d = dim_;
    if (nq == 0 || n == 0 || k == 0) return;
    const KernelTable& kern = kernels();
    ThreadPool& pool = context_->pool();

    Form form = Form::Dot;
    Epilogue epilogue = Epilogue::None;
    bool rerank = false;  // Euclidean through |x|^2 - 2 q.x: exact distances for the winners
    if (metric_ == Metric::Euclidean) {
        if (nq <= kDirectL2MaxQueries) {
            form = Form::L2;
        } else {
            epilogue = Epilogue::L2Expanded;
            rerank = true;
        }
    } else if (metric_ == Metric::Cosine) {
        epilogue = Epilogue::Cosine;
    }

    const std::size_t tile = tile_rows(d);
    const std::size_t blocks = (nq + kQueryBlock - 1) / kQueryBlock;
    const std::size_t threads = pool.threads();
    std::size_t chunks = 1;
    if (threads > 1 && n * d * nq >= kParallelWork) {
        chunks = threads * kChunksPerThread;
        chunks = std::min(chunks, std::max<std::size_t>(1, n / kMinChunkRows));
        // Each chunk keeps k candidates per query; a large k takes fewer, longer chunks.
        chunks = std::min(chunks, std::max<std::size_t>(1, n / (2 * k)));
        if (blocks >= threads * kChunksPerThread) chunks = 1;
    }
    const std::size_t chunk_rows = (n + chunks - 1) / chunks;
    chunks = (n + chunk_rows - 1) / chunk_rows;
    const std::size_t tasks = blocks * chunks;

    std::vector<float> query_factor;
    std::vector<TopK<kHigherFirst>> heaps;  // [chunk][query]
    std::vector<float> strips;
    std::vector<std::uint32_t> picks;
    if (epilogue == Epilogue::Cosine) {
        query_factor.resize(nq);
        for (std::size_t q = 0; q < nq; ++q) query_factor[q] = inverse_norm(queries + q * d, d);
    }
    heaps.reserve(chunks * nq);
    for (std::size_t i = 0; i < chunks * nq; ++i) heaps.emplace_back(k);
    strips.resize(tasks * 4 * tile);
    picks.resize(tasks * tile);

    const float* X = rows_.data();
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
        for (std::size_t x0 = ra; x0 < rb; x0 += tile) {
            const std::size_t nx = std::min(tile, rb - x0);
            for (std::size_t g = 0; g < qn; g += 4) {
                const std::size_t q0 = qa + g, gn = std::min<std::size_t>(4, qn - g);
                TileArgs a{queries + q0 * d, gn, d, X + x0 * d, nx, d, form, epilogue,
                           row_factor ? row_factor + x0 : nullptr, qf ? qf + q0 : nullptr,
                           strip, tile};
                kern.score_tile(a);
                for (std::size_t i = 0; i < gn; ++i) {
                    TopK<kHigherFirst>& top = heaps[c * nq + q0 + i];
                    const float* s = strip + i * tile;
                    const float thr = top.size() < k ? kNone : top.items().front().score;
                    const std::size_t m = kern.filter(s, nx, thr, kHigherFirst, pick);
                    for (std::size_t j = 0; j < m; ++j) {
                        const std::size_t r = x0 + pick[j];
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
            TileArgs a{queries + q * d, 1, d, X + static_cast<std::size_t>(x.slot) * d, 1, d,
                       Form::L2, Epilogue::None, nullptr, nullptr, &x.score, 1};
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

}  // namespace hive_gpu::cpu
