#include "metal/metal_engine.hpp"

#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "hive_gpu/error.hpp"
#include "core/chunk_plan.hpp"
#include "core/numeric.hpp"

namespace hive_gpu::metal {

namespace {

constexpr std::uint64_t kChunkCap = 1ull << 30;       // bytes of rows per chunk: bounds regrowth copies
constexpr std::size_t kMaxChunkRows = 1u << 24;        // keeps one query's scores and grids modest
constexpr std::size_t kTileBudget = std::size_t{256} << 20;  // scratch bytes of one query tile
constexpr std::size_t kMinRows = 1024;                 // first allocation of a store
constexpr std::size_t kProductMinQueries = 8;          // from here on, scores come from MPS
constexpr std::size_t kIdleScratch = 2;                // scratch sets kept between searches
// Filters passing at most 1/kSparseRatio of the rows score only the listed rows (given the
// slot list); denser ones score every row and mask the selection. As on CUDA (docs/cuda.md).
constexpr std::size_t kSparseRatio = 32;


uint metric_id(Metric m) {
    switch (m) {
        case Metric::Cosine: return kCosine;
        case Metric::DotProduct: return kDotProduct;
        case Metric::Euclidean: return kEuclidean;
    }
    throw InvalidArgumentError("metal: unknown metric");
}

}  // namespace

MetalEngine::MetalEngine(std::shared_ptr<MetalContext> context, std::size_t dimension, Metric metric)
    : ctx_(std::move(context)), dim_(dimension), metric_(metric), metric_id_(metric_id(metric)) {
    std::uint64_t cap = std::min<std::uint64_t>(ctx_->max_buffer_bytes(), kChunkCap);
    if (const char* env = std::getenv("HIVE_GPU_METAL_CHUNK_BYTES"); env && *env)
        cap = std::min<std::uint64_t>(cap, std::strtoull(env, nullptr, 10));
    const std::uint64_t row_bytes = std::uint64_t{dim_} * sizeof(float);
    if (row_bytes > cap)
        throw InvalidArgumentError("metal: a row of dimension " + std::to_string(dim_) +
                                   " exceeds the device's largest buffer");
    rows_per_chunk_ = static_cast<std::size_t>(std::min<std::uint64_t>(cap / row_bytes, kMaxChunkRows));
}

MetalEngine::~MetalEngine() = default;

std::size_t MetalEngine::capacity() const { return chunk_capacity(chunks_); }

std::size_t MetalEngine::memory_bytes() const {
    std::size_t b = 0;
    for (const auto& ch : chunks_) b += ch.rows.length + ch.factors.length + ch.ordinals.length;
    return b;
}

float* MetalEngine::rows_at(std::size_t slot) const {
    const Chunk& ch = chunks_[slot / rows_per_chunk_];
    return static_cast<float*>(ch.rows.contents) + (slot % rows_per_chunk_) * dim_;
}

float* MetalEngine::factor_at(std::size_t slot) const {
    return static_cast<float*>(chunks_[slot / rows_per_chunk_].factors.contents) + slot % rows_per_chunk_;
}

std::uint32_t* MetalEngine::ordinal_at(std::size_t slot) const {
    return static_cast<std::uint32_t*>(chunks_[slot / rows_per_chunk_].ordinals.contents) + slot % rows_per_chunk_;
}

MetalEngine::Chunk MetalEngine::make_chunk(std::size_t cap) const {
    Chunk c;
    c.rows = ctx_->new_buffer(cap * dim_ * sizeof(float), "rows");
    c.factors = ctx_->new_buffer(cap * sizeof(float), "row norms");
    c.ordinals = ctx_->new_buffer(cap * sizeof(std::uint32_t), "ordinals");
    c.capacity = cap;
    return c;
}

void MetalEngine::reserve(std::size_t rows) {
    const std::size_t have = capacity();
    if (rows <= have) return;
    const std::size_t per_row = dim_ * sizeof(float) + sizeof(float) + sizeof(std::uint32_t);
    if (rows > std::numeric_limits<std::size_t>::max() / per_row)
        throw OutOfMemoryError("metal: cannot reserve " + std::to_string(rows) + " rows");
    with_pool([&] {
        ctx_->check_working_set(std::uint64_t{rows - have} * per_row, "reserving rows");
        const std::size_t rpc = rows_per_chunk_;
        // Everything is allocated before anything changes: a failure leaves the engine as it was.
        const ChunkGrowth plan =
            plan_chunks(chunks_.size(), chunks_.empty() ? 0 : chunks_.back().capacity, rpc, rows);
        Chunk grown;
        std::vector<Chunk> fresh;
        if (plan.last_to) grown = make_chunk(plan.last_to);
        for (std::size_t cap : plan.fresh) fresh.push_back(make_chunk(cap));
        chunks_.reserve(chunks_.size() + fresh.size());
        if (grown.capacity) {
            // Shared storage and no search in flight (the core holds the writer lock): a memcpy.
            const Chunk& old = chunks_.back();
            const std::size_t first = (chunks_.size() - 1) * rpc;
            const std::size_t used = size_ > first ? std::min(size_ - first, old.capacity) : 0;
            std::memcpy(grown.rows.contents, old.rows.contents, used * dim_ * sizeof(float));
            std::memcpy(grown.factors.contents, old.factors.contents, used * sizeof(float));
            std::memcpy(grown.ordinals.contents, old.ordinals.contents, used * sizeof(std::uint32_t));
            chunks_.back() = grown;
        }
        for (auto& c : fresh) chunks_.push_back(c);
    });
}

void MetalEngine::append_f32(const float* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    const std::size_t need = size_ + n;
    const std::size_t cap = capacity();
    if (need > cap) {
        try {
            reserve(std::max({need, cap + std::min(cap, rows_per_chunk_), kMinRows}));
        } catch (const OutOfMemoryError&) {
            reserve(need);  // no room for the geometric step: exactly what this batch needs
        }
    }
    const std::size_t rpc = rows_per_chunk_;
    for (std::size_t done = 0; done < n;) {
        const std::size_t slot = size_ + done;
        const std::size_t cnt = std::min(n - done, rpc - slot % rpc);
        std::memcpy(rows_at(slot), rows + done * dim_, cnt * dim_ * sizeof(float));
        std::memcpy(ordinal_at(slot), ordinals + done, cnt * sizeof(std::uint32_t));
        float* f = factor_at(slot);
        for (std::size_t i = 0; i < cnt; ++i) f[i] = vector_factor(rows + (done + i) * dim_, dim_, metric_id_);
        done += cnt;
    }
    size_ = need;
}

void MetalEngine::write_f32(std::size_t slot, const float* row) {
    std::memcpy(rows_at(slot), row, dim_ * sizeof(float));
    *factor_at(slot) = vector_factor(row, dim_, metric_id_);
}

void MetalEngine::move(std::size_t src, std::size_t dst) {
    if (src == dst) return;
    std::memcpy(rows_at(dst), rows_at(src), dim_ * sizeof(float));
    *factor_at(dst) = *factor_at(src);
    *ordinal_at(dst) = *ordinal_at(src);
}

void MetalEngine::truncate(std::size_t n) {
    size_ = std::min(n, size_);
    // Whole chunks past the end go back; an empty store holds no device memory.
    const std::size_t keep = ceil_div(size_, rows_per_chunk_);
    if (keep < chunks_.size()) with_pool([&] { chunks_.resize(keep); });
    if (size_ == 0) {
        std::lock_guard<std::mutex> lock(scratch_mutex_);
        with_pool([&] { idle_.clear(); });
    }
}

void MetalEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    for (std::size_t first = 0; first < n; first += rows_per_chunk_)
        std::memcpy(ordinal_at(first), ordinals + first, std::min(rows_per_chunk_, n - first) * sizeof(std::uint32_t));
}

void MetalEngine::read(std::size_t first, std::size_t n, float* out) const {
    const std::size_t rpc = rows_per_chunk_;
    for (std::size_t done = 0; done < n;) {
        const std::size_t slot = first + done;
        const std::size_t cnt = std::min(n - done, rpc - slot % rpc);
        std::memcpy(out + done * dim_, rows_at(slot), cnt * dim_ * sizeof(float));
        done += cnt;
    }
}

std::unique_ptr<MetalEngine::Scratch> MetalEngine::take_scratch() const {
    {
        std::lock_guard<std::mutex> lock(scratch_mutex_);
        if (!idle_.empty()) {
            std::unique_ptr<Scratch> s = std::move(idle_.back());
            idle_.pop_back();
            return s;
        }
    }
    return std::make_unique<Scratch>();
}

void MetalEngine::give_back(std::unique_ptr<Scratch> scratch) const {
    std::lock_guard<std::mutex> lock(scratch_mutex_);
    if (idle_.size() < kIdleScratch) idle_.push_back(std::move(scratch));
}

void MetalEngine::search_chunk(std::size_t chunk, std::size_t nq, std::size_t k, Scratch& scratch,
                               const ChunkSelection* sel, std::vector<float>& out_scores,
                               std::vector<std::int64_t>& out_slots) const {
    const std::size_t base = chunk * rows_per_chunk_;
    const std::size_t rows = std::min(rows_per_chunk_, size_ - base);
    const uint mode = sel ? sel->sel : kSelAll;
    const std::size_t n = mode == kSelList ? sel->passing : rows;  // rows scored
    const std::size_t kc = std::min(k, sel ? sel->passing : rows);
    out_scores.clear();
    out_slots.clear();
    if (kc == 0) return;  // no row of this chunk passes the filter
    const bool product = ctx_->has_mps() && nq >= kProductMinQueries;
    const ChunkShape shape{n, dim_, nq, kc, metric_id_, product, mode};
    const Plan plan = plan_chunk(shape);
    const Chunk& ch = chunks_[chunk];
    if (mode != kSelAll)
        std::memcpy(scratch.buffers[static_cast<int>(Buf::RowSel)].contents, sel->rowsel.data(),
                    sel->rowsel.size() * sizeof(uint));
    auto buffer = [&](Buf b) -> id<MTLBuffer> {
        switch (b) {
            case Buf::Rows: return ch.rows;
            case Buf::RowFactors: return ch.factors;
            case Buf::Ordinals: return ch.ordinals;
            default: return scratch.buffers[static_cast<int>(b)];
        }
    };

    id<MTLCommandBuffer> commands = [ctx_->queue() commandBuffer];
    if (!commands) throw BackendError("metal: cannot create a command buffer");
    id<MTLComputeCommandEncoder> enc = nil;
    for (const Step& step : plan.steps) {
        if (step.product) {
            // scores[nq][n] = queries[nq][dim] x rows[n][dim]^T, MPS in its own encoder.
            if (enc) {
                [enc endEncoding];
                enc = nil;
            }
            const NSUInteger row_bytes = dim_ * sizeof(float);
            MPSMatrixDescriptor* qd = [MPSMatrixDescriptor matrixDescriptorWithRows:nq columns:dim_
                                                                           rowBytes:row_bytes
                                                                           dataType:MPSDataTypeFloat32];
            MPSMatrixDescriptor* xd = [MPSMatrixDescriptor matrixDescriptorWithRows:n columns:dim_
                                                                           rowBytes:row_bytes
                                                                           dataType:MPSDataTypeFloat32];
            MPSMatrixDescriptor* sd = [MPSMatrixDescriptor matrixDescriptorWithRows:nq columns:n
                                                                           rowBytes:n * sizeof(float)
                                                                           dataType:MPSDataTypeFloat32];
            MPSMatrix* q = [[MPSMatrix alloc] initWithBuffer:buffer(Buf::Queries) descriptor:qd];
            MPSMatrix* x = [[MPSMatrix alloc] initWithBuffer:ch.rows descriptor:xd];
            MPSMatrix* s = [[MPSMatrix alloc] initWithBuffer:buffer(Buf::Scores) descriptor:sd];
            MPSMatrixMultiplication* mm = [[MPSMatrixMultiplication alloc] initWithDevice:ctx_->device()
                                                                            transposeLeft:NO
                                                                           transposeRight:YES
                                                                               resultRows:nq
                                                                            resultColumns:n
                                                                          interiorColumns:dim_
                                                                                    alpha:1.0
                                                                                     beta:0.0];
            [mm encodeToCommandBuffer:commands leftMatrix:q rightMatrix:x resultMatrix:s];
            continue;
        }
        if (!enc) {
            enc = [commands computeCommandEncoder];
            if (!enc) throw BackendError("metal: cannot create a compute encoder");
        }
        [enc setComputePipelineState:ctx_->pipeline(step.function)];
        // Buffers at [[buffer(0 .. n-1)]] in the order of step.args, Params right after:
        // the layout every kernel of kernels.metal declares.
        for (std::size_t i = 0; i < step.args.size(); ++i)
            [enc setBuffer:buffer(step.args[i]) offset:0 atIndex:i];
        [enc setBytes:&step.params length:sizeof(Params) atIndex:step.args.size()];
        [enc dispatchThreadgroups:MTLSizeMake(step.groups[0], step.groups[1], step.groups[2])
            threadsPerThreadgroup:MTLSizeMake(kThreads, 1, 1)];
    }
    if (enc) [enc endEncoding];
    ctx_->run(commands, "search");

    const auto* s = static_cast<const float*>(scratch.buffers[static_cast<int>(Buf::OutScores)].contents);
    const auto* sl = static_cast<const std::uint32_t*>(scratch.buffers[static_cast<int>(Buf::OutSlots)].contents);
    out_scores.assign(s, s + nq * kc);
    out_slots.resize(nq * kc);
    for (std::size_t i = 0; i < nq * kc; ++i) {
        if (sl[i] >= rows) throw BackendError("metal: internal error: a search returned slot " + std::to_string(sl[i]));
        out_slots[i] = static_cast<std::int64_t>(base + sl[i]);
    }
}

void MetalEngine::search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                         std::int64_t* slots) const {
    search_rows(queries, nq, k, nullptr, scores, slots);
}

std::vector<MetalEngine::ChunkSelection> MetalEngine::select_chunks(const SlotFilter& filter) const {
    const std::size_t rpc = rows_per_chunk_;
    std::vector<ChunkSelection> out(ceil_div(size_, rpc));
    const bool sparse = filter.slots != nullptr && filter.count * kSparseRatio <= size_;
    const std::uint32_t* at = filter.slots;
    for (std::size_t c = 0; c < out.size(); ++c) {
        const std::size_t first = c * rpc, rows = std::min(rpc, size_ - first);
        ChunkSelection& s = out[c];
        if (sparse) {
            // The ascending list's run inside this chunk, as chunk rows.
            s.sel = kSelList;
            for (; at != filter.slots + filter.count && *at < first + rows; ++at)
                s.rowsel.push_back(static_cast<uint>(*at - first));
            s.passing = s.rowsel.size();
        } else {
            s.sel = kSelMask;
            s.rowsel.resize(ceil_div(rows, 32));
            chunk_mask(filter.bits, first, rows, s.rowsel.data());
            for (uint w : s.rowsel) s.passing += static_cast<std::size_t>(__builtin_popcount(w));
        }
    }
    return out;
}

void MetalEngine::search_filtered(const float* queries, std::size_t nq, std::size_t k, const SlotFilter& filter,
                                  float* scores, std::int64_t* slots) const {
    if (nq == 0 || k == 0 || size_ == 0) return;
    const std::vector<ChunkSelection> sel = select_chunks(filter);
    search_rows(queries, nq, k, &sel, scores, slots);
}

void MetalEngine::search_rows(const float* queries, std::size_t nq, std::size_t k,
                              const std::vector<ChunkSelection>* chunk_sel, float* scores,
                              std::int64_t* slots) const {
    if (nq == 0 || k == 0 || size_ == 0) return;
    with_pool([&] {
        const std::size_t rpc = rows_per_chunk_;
        const std::size_t nchunks = ceil_div(size_, rpc);
        const std::size_t largest = std::min(size_, rpc);
        const std::size_t budget = std::min(kTileBudget, ctx_->max_buffer_bytes());
        const std::size_t tile = query_chunk(largest, dim_, std::min(k, largest), nq, budget);
        std::unique_ptr<Scratch> scratch = take_scratch();

        // Scratch sized for the largest chunk plan of a full tile (the buffers only grow).
        for (std::size_t c = 0; c < nchunks; ++c) {
            const std::size_t n = std::min(rpc, size_ - c * rpc);
            const ChunkShape shape{n, dim_, std::min(tile, nq), std::min(k, n), metric_id_, false};
            const Plan plan = plan_chunk(shape);
            for (int b = static_cast<int>(Buf::Queries); b < kBufCount; ++b) {
                const std::size_t bytes = chunk_buffer_bytes(static_cast<Buf>(b), shape, plan);
                __strong id<MTLBuffer>& buf = scratch->buffers[b];
                if (!buf || buf.length < bytes) {
                    buf = nil;
                    buf = ctx_->new_buffer(bytes, "search scratch");
                }
            }
        }

        struct Hit {
            float score;
            std::uint32_t ordinal;
            std::int64_t slot;
        };
        const bool higher = higher_is_better(metric_);
        auto better = [higher](const Hit& a, const Hit& b) {
            if (a.score != b.score) return higher ? a.score > b.score : a.score < b.score;
            return a.ordinal < b.ordinal;
        };
        std::vector<float> part_scores;
        std::vector<std::int64_t> part_slots;
        std::vector<std::vector<Hit>> hits;
        for (std::size_t q0 = 0; q0 < nq; q0 += tile) {
            const std::size_t t = std::min(tile, nq - q0);
            auto* qbuf = static_cast<float*>(scratch->buffers[static_cast<int>(Buf::Queries)].contents);
            auto* qf = static_cast<float*>(scratch->buffers[static_cast<int>(Buf::QueryFactors)].contents);
            std::memcpy(qbuf, queries + q0 * dim_, t * dim_ * sizeof(float));
            for (std::size_t q = 0; q < t; ++q) qf[q] = vector_factor(queries + (q0 + q) * dim_, dim_, metric_id_);

            if (nchunks == 1) {
                // k <= size_ rows, all in this chunk: its lists are the answer.
                search_chunk(0, t, k, *scratch, chunk_sel ? &(*chunk_sel)[0] : nullptr, part_scores, part_slots);
                for (std::size_t i = 0; i < t * k; ++i) {
                    scores[q0 * k + i] = part_scores[i];
                    slots[q0 * k + i] = part_slots[i];
                }
                continue;
            }
            // Several chunks: each gives its min(k, rows) best per query; the k best of
            // those are the answer, ranked by the kernels' order (score, then ordinal).
            hits.assign(t, {});
            for (std::size_t c = 0; c < nchunks; ++c) {
                search_chunk(c, t, k, *scratch, chunk_sel ? &(*chunk_sel)[c] : nullptr, part_scores, part_slots);
                const std::size_t kc = part_scores.size() / t;
                for (std::size_t q = 0; q < t; ++q)
                    for (std::size_t i = 0; i < kc; ++i) {
                        const std::int64_t slot = part_slots[q * kc + i];
                        hits[q].push_back({part_scores[q * kc + i], *ordinal_at(static_cast<std::size_t>(slot)), slot});
                    }
            }
            for (std::size_t q = 0; q < t; ++q) {
                std::vector<Hit>& h = hits[q];
                std::partial_sort(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(k), h.end(), better);
                for (std::size_t i = 0; i < k; ++i) {
                    scores[(q0 + q) * k + i] = h[i].score;
                    slots[(q0 + q) * k + i] = h[i].slot;
                }
            }
        }
        give_back(std::move(scratch));
    });
}

}  // namespace hive_gpu::metal
