#include "metal/metal_engine.hpp"

#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "hive_gpu/dtype.hpp"
#include "hive_gpu/error.hpp"
#include "core/numeric.hpp"

namespace hive_gpu::metal {

namespace {

constexpr std::uint64_t kPageBytes = std::uint64_t{256} << 20;  // bytes of rows in a full page
constexpr std::size_t kMaxPageRows = 1u << 24;        // keeps one query's scores and grids modest
constexpr std::size_t kFirstPageRows = 1024;          // pages double from here up to a full page
constexpr std::size_t kTileBudget = std::size_t{256} << 20;  // scratch bytes of one query tile
constexpr std::size_t kProductMinQueries = 8;          // from here on, float32 scores come from MPS
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

// Full pages of at most kPageBytes (and maxBufferLength, and kMaxPageRows rows).
PageLayout page_layout(const MetalContext& ctx, std::size_t row_bytes, std::size_t dim) {
    std::uint64_t cap = std::min<std::uint64_t>(ctx.max_buffer_bytes(), kPageBytes);
    if (const char* env = std::getenv("HIVE_GPU_METAL_PAGE_BYTES"); env && *env)
        cap = std::min<std::uint64_t>(cap, std::strtoull(env, nullptr, 10));
    if (row_bytes > cap)
        throw InvalidArgumentError("metal: a row of dimension " + std::to_string(dim) +
                                   " exceeds the device's largest buffer");
    const auto rows = static_cast<std::size_t>(std::min<std::uint64_t>(cap / row_bytes, kMaxPageRows));
    return PageLayout(kFirstPageRows, rows);
}

}  // namespace

MetalEngine::MetalEngine(std::shared_ptr<MetalContext> context, std::size_t dimension, Metric metric, Dtype dtype)
    : ctx_(std::move(context)),
      dim_(dimension),
      metric_(metric),
      metric_id_(metric_id(metric)),
      dtype_(dtype),
      row_bytes_(dimension * dtype_size(dtype)),
      layout_(page_layout(*ctx_, row_bytes_, dimension)) {}

MetalEngine::~MetalEngine() = default;

std::size_t MetalEngine::memory_bytes() const {
    std::size_t b = 0;
    for (const auto& pg : pages_) b += pg.rows.length + pg.factors.length + pg.ordinals.length;
    return b;
}

unsigned char* MetalEngine::row_at(std::size_t slot) const {
    const std::size_t p = layout_.locate(slot).page;
    return static_cast<unsigned char*>(pages_[p].rows.contents) + (slot - layout_.start(p)) * row_bytes_;
}

float* MetalEngine::factor_at(std::size_t slot) const {
    const std::size_t p = layout_.locate(slot).page;
    return static_cast<float*>(pages_[p].factors.contents) + (slot - layout_.start(p));
}

std::uint32_t* MetalEngine::ordinal_at(std::size_t slot) const {
    const std::size_t p = layout_.locate(slot).page;
    return static_cast<std::uint32_t*>(pages_[p].ordinals.contents) + (slot - layout_.start(p));
}

template <class F>
void MetalEngine::for_page_runs(std::size_t first, std::size_t n, F&& f) const {
    for (std::size_t done = 0; done < n;) {
        const std::size_t slot = first + done;
        const std::size_t p = layout_.locate(slot).page;
        const std::size_t cnt = std::min(n - done, layout_.start(p) + layout_.rows(p) - slot);
        f(slot, done, cnt);
        done += cnt;
    }
}

MetalEngine::Page MetalEngine::make_page(std::size_t cap) const {
    Page pg;
    pg.rows = ctx_->new_buffer(cap * row_bytes_, "rows");
    pg.factors = ctx_->new_buffer(cap * sizeof(float), "row norms");
    pg.ordinals = ctx_->new_buffer(cap * sizeof(std::uint32_t), "ordinals");
    return pg;
}

void MetalEngine::reserve(std::size_t rows) {
    if (rows <= capacity()) return;
    const std::size_t per_row = row_bytes_ + sizeof(float) + sizeof(std::uint32_t);
    if (rows > std::numeric_limits<std::size_t>::max() / per_row / 2)
        throw OutOfMemoryError("metal: cannot reserve " + std::to_string(rows) + " rows");
    const std::size_t want = layout_.pages_for(rows);
    with_pool([&] {
        std::uint64_t bytes = 0;
        for (std::size_t p = pages_.size(); p < want; ++p) bytes += std::uint64_t{layout_.rows(p)} * per_row;
        ctx_->check_working_set(bytes, "reserving rows");
        // New pages beside the old ones, all made before any is kept: a failure leaves the
        // engine as it was, and no row is ever copied.
        std::vector<Page> fresh;
        for (std::size_t p = pages_.size(); p < want; ++p) fresh.push_back(make_page(layout_.rows(p)));
        pages_.reserve(want);
        for (auto& pg : fresh) pages_.push_back(pg);
    });
}

void MetalEngine::append(const void* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    reserve(size_ + n);
    const auto* src = static_cast<const unsigned char*>(rows);
    for_page_runs(size_, n, [&](std::size_t slot, std::size_t done, std::size_t cnt) {
        std::memcpy(row_at(slot), src + done * row_bytes_, cnt * row_bytes_);
        std::memcpy(ordinal_at(slot), ordinals + done, cnt * sizeof(std::uint32_t));
        float* f = factor_at(slot);
        for (std::size_t i = 0; i < cnt; ++i)
            f[i] = vector_factor(src + (done + i) * row_bytes_, dtype_, dim_, metric_id_);
    });
    size_ += n;
}

void MetalEngine::write(std::size_t slot, const void* row) {
    std::memcpy(row_at(slot), row, row_bytes_);
    *factor_at(slot) = vector_factor(row, dtype_, dim_, metric_id_);
}

void MetalEngine::move(std::size_t src, std::size_t dst) {
    if (src == dst) return;
    std::memcpy(row_at(dst), row_at(src), row_bytes_);
    *factor_at(dst) = *factor_at(src);
    *ordinal_at(dst) = *ordinal_at(src);
}

void MetalEngine::truncate(std::size_t n) {
    size_ = std::min(n, size_);
    // Whole pages past the end go back; an empty store holds no device memory.
    const std::size_t keep = layout_.pages_for(size_);
    if (keep < pages_.size()) with_pool([&] { pages_.resize(keep); });
    if (size_ == 0) {
        std::lock_guard<std::mutex> lock(scratch_mutex_);
        with_pool([&] { idle_.clear(); });
    }
}

void MetalEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    for_page_runs(0, n, [&](std::size_t slot, std::size_t done, std::size_t cnt) {
        std::memcpy(ordinal_at(slot), ordinals + done, cnt * sizeof(std::uint32_t));
    });
}

void MetalEngine::read(std::size_t first, std::size_t n, float* out) const {
    for_page_runs(first, n, [&](std::size_t slot, std::size_t done, std::size_t cnt) {
        const unsigned char* src = row_at(slot);
        float* dst = out + done * dim_;
        if (dtype_ == Dtype::Float32) {
            std::memcpy(dst, src, cnt * row_bytes_);
            return;
        }
        // The stored values widened exactly (dtype.hpp).
        const std::size_t count = cnt * dim_;
        for (std::size_t i = 0; i < count; ++i) dst[i] = load_as_float(src + 2 * i, dtype_);
    });
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

void MetalEngine::search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                         std::int64_t* slots) const {
    search_rows(queries, nq, k, nullptr, scores, slots);
}

void MetalEngine::search_filtered(const float* queries, std::size_t nq, std::size_t k, const SlotFilter& filter,
                                  float* scores, std::int64_t* slots) const {
    if (nq == 0 || k == 0 || size_ == 0) return;
    const bool sparse = filter.slots != nullptr && filter.count * kSparseRatio <= size_;
    const std::vector<PageSelection> sel =
        select_pages(filter.bits, sparse ? filter.slots : nullptr, filter.count, size_, layout_);
    search_rows(queries, nq, k, &sel, scores, slots);
}

void MetalEngine::search_rows(const float* queries, std::size_t nq, std::size_t k,
                              const std::vector<PageSelection>* sel, float* scores, std::int64_t* slots) const {
    if (nq == 0 || k == 0 || size_ == 0) return;
    with_pool([&] {
        const std::size_t npages = layout_.pages_for(size_);
        std::vector<PageWork> work;
        std::size_t largest = 0;
        for (std::size_t p = 0; p < npages; ++p) {
            work.push_back(page_work(layout_, p, size_, k, sel ? &(*sel)[p] : nullptr));
            largest = std::max(largest, work.back().rows);
        }
        const bool product = ctx_->has_mps() && nq >= kProductMinQueries && dtype_ == Dtype::Float32;
        const std::size_t budget = std::min(kTileBudget, ctx_->max_buffer_bytes());
        const std::size_t tile = query_chunk(largest, dim_, std::min(k, largest), nq, budget, npages);
        auto page_shape = [&](std::size_t p, std::size_t t) {
            ChunkShape shape{work[p].scored, dim_, t, work[p].k, metric_id_, product,
                             sel ? (*sel)[p].sel : kSelAll};
            shape.dtype = dtype_;
            return shape;
        };
        std::unique_ptr<Scratch> scratch = take_scratch();
        auto ensure = [&](Buf b, std::size_t bytes) {
            __strong id<MTLBuffer>& buf = scratch->buffers[static_cast<int>(b)];
            if (!buf || buf.length < bytes) {
                buf = nil;
                buf = ctx_->new_buffer(bytes, "search scratch");
            }
        };
        // Scratch for a full tile: the largest page plan, and every page's results and
        // selection side by side (the buffers only grow).
        {
            const std::size_t t = std::min(tile, nq);
            for (int b = static_cast<int>(Buf::Queries); b <= static_cast<int>(Buf::SlotsB); ++b) {
                std::size_t bytes = 0;
                for (std::size_t p = 0; p < npages; ++p) {
                    if (work[p].k == 0) continue;
                    const ChunkShape shape = page_shape(p, t);
                    bytes = std::max(bytes, chunk_buffer_bytes(static_cast<Buf>(b), shape, plan_chunk(shape)));
                }
                ensure(static_cast<Buf>(b), bytes);
            }
            const TileLayout full = tile_layout(work, t, sel);
            ensure(Buf::OutScores, full.out_entries * sizeof(float));
            ensure(Buf::OutSlots, full.out_entries * sizeof(std::uint32_t));
            ensure(Buf::RowSel, full.sel_words * sizeof(std::uint32_t));
        }
        auto contents = [&](Buf b) { return scratch->buffers[static_cast<int>(b)].contents; };

        for (std::size_t q0 = 0; q0 < nq; q0 += tile) {
            const std::size_t t = std::min(tile, nq - q0);
            const TileLayout tl = tile_layout(work, t, sel);
            std::memcpy(contents(Buf::Queries), queries + q0 * dim_, t * dim_ * sizeof(float));
            auto* qf = static_cast<float*>(contents(Buf::QueryFactors));
            for (std::size_t q = 0; q < t; ++q)
                qf[q] = vector_factor(queries + (q0 + q) * dim_, Dtype::Float32, dim_, metric_id_);
            for (std::size_t p = 0; sel && p < npages; ++p)
                std::copy((*sel)[p].rowsel.begin(), (*sel)[p].rowsel.end(),
                          static_cast<uint*>(contents(Buf::RowSel)) + tl.sel_at[p]);

            // Every page's plan in one command buffer. Pages run one after the other (one
            // serial encoder, or MPS between encoders), so they share the scores and list
            // buffers; each writes its results at its own offset.
            id<MTLCommandBuffer> commands = [ctx_->queue() commandBuffer];
            if (!commands) throw BackendError("metal: cannot create a command buffer");
            id<MTLComputeCommandEncoder> enc = nil;
            for (std::size_t p = 0; p < npages; ++p) {
                if (work[p].k == 0) continue;  // no row of this page passes the filter
                const Page& page = pages_[p];
                const ChunkShape shape = page_shape(p, t);
                const std::size_t n = shape.n;
                auto buffer = [&](Buf b) -> id<MTLBuffer> {
                    switch (b) {
                        case Buf::Rows: return page.rows;
                        case Buf::RowFactors: return page.factors;
                        case Buf::Ordinals: return page.ordinals;
                        default: return scratch->buffers[static_cast<int>(b)];
                    }
                };
                // Byte offsets: 16-byte aligned (TileLayout), above the 4 bytes a uint/float needs.
                auto offset = [&](Buf b) -> NSUInteger {
                    switch (b) {
                        case Buf::OutScores: return tl.out_at[p] * sizeof(float);
                        case Buf::OutSlots: return tl.out_at[p] * sizeof(std::uint32_t);
                        case Buf::RowSel: return tl.sel_at[p] * sizeof(std::uint32_t);
                        default: return 0;
                    }
                };
                for (const Step& step : plan_chunk(shape).steps) {
                    if (step.product) {
                        // scores[t][n] = queries[t][dim] x rows[n][dim]^T (float32 rows), MPS in
                        // its own encoder.
                        if (enc) {
                            [enc endEncoding];
                            enc = nil;
                        }
                        const NSUInteger row_bytes = dim_ * sizeof(float);
                        MPSMatrixDescriptor* qd = [MPSMatrixDescriptor matrixDescriptorWithRows:t columns:dim_
                                                                                       rowBytes:row_bytes
                                                                                       dataType:MPSDataTypeFloat32];
                        MPSMatrixDescriptor* xd = [MPSMatrixDescriptor matrixDescriptorWithRows:n columns:dim_
                                                                                       rowBytes:row_bytes
                                                                                       dataType:MPSDataTypeFloat32];
                        MPSMatrixDescriptor* sd = [MPSMatrixDescriptor matrixDescriptorWithRows:t columns:n
                                                                                       rowBytes:n * sizeof(float)
                                                                                       dataType:MPSDataTypeFloat32];
                        MPSMatrix* q = [[MPSMatrix alloc] initWithBuffer:buffer(Buf::Queries) descriptor:qd];
                        MPSMatrix* x = [[MPSMatrix alloc] initWithBuffer:page.rows descriptor:xd];
                        MPSMatrix* s = [[MPSMatrix alloc] initWithBuffer:buffer(Buf::Scores) descriptor:sd];
                        MPSMatrixMultiplication* mm =
                            [[MPSMatrixMultiplication alloc] initWithDevice:ctx_->device()
                                                              transposeLeft:NO
                                                             transposeRight:YES
                                                                 resultRows:t
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
                    // Buffers at [[buffer(0 .. n-1)]] in the order of step.args, Params right
                    // after: the layout every kernel of kernels.metal declares.
                    for (std::size_t i = 0; i < step.args.size(); ++i)
                        [enc setBuffer:buffer(step.args[i]) offset:offset(step.args[i]) atIndex:i];
                    [enc setBytes:&step.params length:sizeof(Params) atIndex:step.args.size()];
                    [enc dispatchThreadgroups:MTLSizeMake(step.groups[0], step.groups[1], step.groups[2])
                        threadsPerThreadgroup:MTLSizeMake(kThreads, 1, 1)];
                }
            }
            if (enc) [enc endEncoding];
            ctx_->run(commands, "search");

            const bool ok = gather_tile(
                layout_, work, tl, t, k, metric_id_, static_cast<const float*>(contents(Buf::OutScores)),
                static_cast<const uint*>(contents(Buf::OutSlots)),
                [&](std::size_t p, uint row) { return static_cast<const std::uint32_t*>(pages_[p].ordinals.contents)[row]; },
                scores + q0 * k, slots + q0 * k);
            if (!ok) throw BackendError("metal: internal error: a search returned a row outside its page");
        }
        give_back(std::move(scratch));
    });
}

}  // namespace hive_gpu::metal
