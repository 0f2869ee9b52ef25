#include "webgpu/wgpu_engine.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include "hive_gpu/error.hpp"
#include "core/chunk_plan.hpp"
#include "core/numeric.hpp"

namespace hive_gpu::webgpu {

namespace {

constexpr std::size_t kSegment = 2048;               // scores one select workgroup sorts
constexpr std::size_t kSmallK = 32;                  // largest k of the per-thread select
constexpr std::size_t kSmallRows = 64 * 64;          // rows one per-thread select workgroup scans
constexpr std::size_t kSmallLists = 64;              // lists it writes (one per thread)
constexpr std::size_t kFanIn = 16;                   // lists one reduce_small thread folds
constexpr std::uint64_t kChunkCap = 1ull << 30;      // keeps regrowth copies bounded
constexpr std::uint64_t kStagingBytes = 32ull << 20;  // one upload / read-back piece
constexpr std::uint64_t kTileBudget = 256ull << 20;   // scratch bytes one query tile may use
constexpr std::size_t kMinRows = 1024;                 // first allocation of a store
// Filters passing at most 1/kSparseRatio of the rows take the sparse path (score only the
// listed rows) when the slot list is given; denser ones mask the full scan. Scoring and
// selection cost is per row either way, so the switch sits where cuVS measured its own (~3%).
constexpr std::size_t kSparseRatio = 32;

constexpr WGPUBufferUsage kStorage =
    WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst | WGPUBufferUsage_CopySrc;

struct Params {
    std::uint32_t n_rows, dim4, nq, stride, a, b, c, d;
    std::uint32_t sel = 0, list_at = 0, e = 0, f = 0;  // see common.wgsl
};

// The shaders' row selection modes (common.wgsl).
constexpr std::uint32_t kSelAll = 0, kSelMask = 1, kSelList = 2;

std::uint32_t u32(std::size_t v) { return static_cast<std::uint32_t>(v); }

}  // namespace

WgpuEngine::WgpuEngine(std::shared_ptr<WgpuContext> context, std::size_t dimension, Metric metric)
    : ctx_(std::move(context)), dim_(dimension), dim4_((dimension + 3) / 4), metric_(metric) {
    const WGPULimits& lim = ctx_->limits();
    std::uint64_t cap = std::min<std::uint64_t>({lim.maxStorageBufferBindingSize, lim.maxBufferSize, kChunkCap});
    if (const char* env = std::getenv("HIVE_GPU_WEBGPU_CHUNK_BYTES"); env && *env)
        cap = std::min<std::uint64_t>(cap, std::strtoull(env, nullptr, 10));
    const std::uint64_t row_bytes = dim4_ * 16;
    if (row_bytes > cap)
        throw InvalidArgumentError("webgpu: a row of dimension " + std::to_string(dim_) +
                                   " exceeds the device's storage binding size");
    rows_per_chunk_ = static_cast<std::size_t>(cap / row_bytes);
}

float WgpuEngine::row_factor(const float* row) const {
    double s = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) s += static_cast<double>(row[j]) * row[j];
    if (metric_ == Metric::Cosine) return cosine_factor(s);
    return static_cast<float>(s);
}

std::size_t WgpuEngine::capacity() const { return chunk_capacity(chunks_); }

std::size_t WgpuEngine::memory_bytes() const {
    std::size_t b = 0;
    for (const auto& ch : chunks_) b += ch.rows.bytes() + ch.factors.bytes() + ch.ordinals.bytes();
    return b;
}

WgpuEngine::Chunk WgpuEngine::make_chunk(std::size_t cap) const {
    Chunk c;
    c.rows = ctx_->create_buffer(std::uint64_t{cap} * dim4_ * 16, kStorage, false, "rows");
    c.factors = ctx_->create_buffer(std::uint64_t{cap} * 4, kStorage, false, "row norms");
    c.ordinals = ctx_->create_buffer(std::uint64_t{cap} * 4, kStorage, false, "ordinals");
    c.capacity = cap;
    return c;
}

void WgpuEngine::reserve(std::size_t rows) {
    if (rows <= capacity()) return;
    const std::size_t rpc = rows_per_chunk_;
    const std::uint64_t want = std::uint64_t{rows - capacity()} * (dim4_ * 16 + 8);
    if (const std::uint64_t avail = ctx_->allocatable_bytes(); avail && want > avail)
        throw OutOfMemoryError("webgpu: " + std::to_string(rows) + " rows need " + std::to_string(want) +
                               " more bytes; the adapter's memory (host memory) has " +
                               std::to_string(avail) + " available");
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    // Build everything first: a failed allocation leaves the engine untouched.
    const ChunkGrowth plan = plan_chunks(chunks_.size(), chunks_.empty() ? 0 : chunks_.back().capacity, rpc, rows);
    Chunk grown;
    std::vector<Chunk> fresh;
    if (plan.last_to) grown = make_chunk(plan.last_to);
    for (std::size_t cap : plan.fresh) fresh.push_back(make_chunk(cap));
    if (grown.capacity) {
        const Api& a = ctx_->api();
        const Chunk& old = chunks_.back();
        WGPUCommandEncoder enc = ctx_->encoder();
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, old.rows.get(), 0, grown.rows.get(), 0, old.rows.bytes());
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, old.factors.get(), 0, grown.factors.get(), 0, old.factors.bytes());
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, old.ordinals.get(), 0, grown.ordinals.get(), 0, old.ordinals.bytes());
        ctx_->submit(enc);
        ctx_->wait_idle();
        ctx_->throw_if_failed("growing the store");
        chunks_.back() = std::move(grown);
    }
    for (auto& c : fresh) chunks_.push_back(std::move(c));
}

void WgpuEngine::append_f32(const float* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    const std::size_t need = size_ + n;
    const std::size_t cap = capacity();
    if (need > cap) reserve(std::max({need, cap + std::min(cap, rows_per_chunk_), kMinRows}));
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const std::size_t rpc = rows_per_chunk_;
    const std::size_t row_bytes = dim4_ * 16;
    const std::size_t stage_rows = std::max<std::size_t>(1, kStagingBytes / (row_bytes + 8));
    // Rows go through mapped staging buffers, a piece at a time; size_ moves only at the end.
    for (std::size_t done = 0; done < n;) {
        const std::size_t slot = size_ + done;
        Chunk& ch = chunks_[slot / rpc];
        const std::size_t off = slot % rpc;
        const std::size_t cnt = std::min({n - done, rpc - off, stage_rows});
        const std::size_t rb = cnt * row_bytes, fb = cnt * 4;
        Buffer staging = ctx_->create_buffer(rb + 2 * fb, WGPUBufferUsage_MapWrite | WGPUBufferUsage_CopySrc,
                                             true, "upload staging");
        auto* p = static_cast<unsigned char*>(a.wgpuBufferGetMappedRange(staging.get(), 0, rb + 2 * fb));
        if (!p) throw BackendError("webgpu: staging buffer could not be mapped");
        auto* dst_rows = reinterpret_cast<float*>(p);
        auto* dst_f = reinterpret_cast<float*>(p + rb);
        auto* dst_o = reinterpret_cast<std::uint32_t*>(p + rb + fb);
        const float* src = rows + done * dim_;
        for (std::size_t i = 0; i < cnt; ++i) {
            float* d = dst_rows + i * dim4_ * 4;
            std::memcpy(d, src + i * dim_, dim_ * sizeof(float));
            std::fill(d + dim_, d + dim4_ * 4, 0.0f);
            dst_f[i] = row_factor(src + i * dim_);
        }
        std::memcpy(dst_o, ordinals + done, fb);
        a.wgpuBufferUnmap(staging.get());
        WGPUCommandEncoder enc = ctx_->encoder();
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, staging.get(), 0, ch.rows.get(), off * row_bytes, rb);
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, staging.get(), rb, ch.factors.get(), off * 4, fb);
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, staging.get(), rb + fb, ch.ordinals.get(), off * 4, fb);
        ctx_->submit(enc);
        ctx_->wait_idle();  // the staging buffer is released when this piece ends
        done += cnt;
    }
    ctx_->throw_if_failed("uploading rows");
    size_ = need;
}

void WgpuEngine::write_f32(std::size_t slot, const float* row) {
    std::vector<float> padded(dim4_ * 4, 0.0f);
    std::memcpy(padded.data(), row, dim_ * sizeof(float));
    const float f = row_factor(row);
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const Chunk& ch = chunks_[slot / rows_per_chunk_];
    const std::size_t off = slot % rows_per_chunk_;
    a.wgpuQueueWriteBuffer(ctx_->queue(), ch.rows.get(), off * dim4_ * 16, padded.data(), dim4_ * 16);
    a.wgpuQueueWriteBuffer(ctx_->queue(), ch.factors.get(), off * 4, &f, 4);
    ctx_->throw_if_failed("updating a row");
}

void WgpuEngine::move(std::size_t src, std::size_t dst) {
    if (src == dst) return;
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const std::size_t rpc = rows_per_chunk_, row_bytes = dim4_ * 16;
    const Chunk& s = chunks_[src / rpc];
    const Chunk& d = chunks_[dst / rpc];
    const std::size_t so = src % rpc, dof = dst % rpc;
    // WebGPU forbids copies within one buffer, so the row goes through a small bounce buffer.
    Buffer bounce = ctx_->create_buffer(row_bytes + 8, WGPUBufferUsage_CopySrc | WGPUBufferUsage_CopyDst,
                                        false, "row move");
    WGPUCommandEncoder enc = ctx_->encoder();
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, s.rows.get(), so * row_bytes, bounce.get(), 0, row_bytes);
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, s.factors.get(), so * 4, bounce.get(), row_bytes, 4);
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, s.ordinals.get(), so * 4, bounce.get(), row_bytes + 4, 4);
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, bounce.get(), 0, d.rows.get(), dof * row_bytes, row_bytes);
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, bounce.get(), row_bytes, d.factors.get(), dof * 4, 4);
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, bounce.get(), row_bytes + 4, d.ordinals.get(), dof * 4, 4);
    ctx_->submit(enc);
    ctx_->wait_idle();
    ctx_->throw_if_failed("moving a row");
}

void WgpuEngine::truncate(std::size_t n) {
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    size_ = std::min(n, size_);
    // Give back whole chunks past the end; an empty store holds no device memory.
    const std::size_t keep = ceil_div(size_, rows_per_chunk_);
    if (keep < chunks_.size()) {
        ctx_->wait_idle();
        chunks_.resize(keep);
        if (keep == 0) scratch_ = Scratch{};
    }
}

void WgpuEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    for (std::size_t first = 0, c = 0; first < n; first += rows_per_chunk_, ++c) {
        const std::size_t cnt = std::min(rows_per_chunk_, n - first);
        a.wgpuQueueWriteBuffer(ctx_->queue(), chunks_[c].ordinals.get(), 0, ordinals + first, cnt * 4);
    }
    ctx_->throw_if_failed("writing ordinals");
}

void WgpuEngine::read(std::size_t first, std::size_t n, float* out) const {
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const std::size_t rpc = rows_per_chunk_, row_bytes = dim4_ * 16;
    const std::size_t piece_rows = std::max<std::size_t>(1, kStagingBytes / row_bytes);
    for (std::size_t done = 0; done < n;) {
        const std::size_t slot = first + done;
        const Chunk& ch = chunks_[slot / rpc];
        const std::size_t off = slot % rpc;
        const std::size_t cnt = std::min({n - done, rpc - off, piece_rows});
        Buffer rb = ctx_->create_buffer(cnt * row_bytes, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst,
                                        false, "read-back");
        WGPUCommandEncoder enc = ctx_->encoder();
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, ch.rows.get(), off * row_bytes, rb.get(), 0, cnt * row_bytes);
        ctx_->submit(enc);
        const auto* p = static_cast<const float*>(ctx_->map_read(rb.get(), cnt * row_bytes));
        for (std::size_t i = 0; i < cnt; ++i)
            std::memcpy(out + (done + i) * dim_, p + i * dim4_ * 4, dim_ * sizeof(float));
        ctx_->unmap(rb.get());
        done += cnt;
    }
}

void WgpuEngine::ensure(Buffer& b, std::uint64_t bytes, WGPUBufferUsage usage, const char* what) const {
    if (b && b.bytes() >= bytes) return;
    b.reset();
    b = ctx_->create_buffer(bytes, usage, false, what);
}

WgpuEngine::RowSelection WgpuEngine::all_rows() const {
    RowSelection sel;
    for (std::size_t first = 0; first < size_; first += rows_per_chunk_)
        sel.part_rows.push_back(std::min(rows_per_chunk_, size_ - first));
    sel.list_at.assign(sel.part_rows.size(), 0);
    return sel;
}

WgpuEngine::Plan WgpuEngine::plan(std::size_t k, const RowSelection& sel) const {
    Plan pl{};
    pl.small = k <= kSmallK;
    pl.list_len = pl.small ? k : std::min(k, kSegment);
    for (const std::size_t rows : sel.part_rows) {
        const std::size_t lists = pl.small ? kSmallLists * ceil_div(rows, kSmallRows) : ceil_div(rows, kSegment);
        pl.parts.push_back({rows, pl.lists, lists});
        pl.lists += lists;
        pl.max_rows = std::max(pl.max_rows, rows);
    }
    pl.max_cands = pl.lists * pl.list_len;
    for (std::size_t mi = pl.lists, len = pl.list_len; mi > 1; ++pl.passes) {
        if (pl.small) {
            mi = ceil_div(mi, kFanIn);
            continue;
        }
        len = std::min(k, 2 * len);
        mi = ceil_div(mi, 2);
        pl.max_cands = std::max(pl.max_cands, mi * len);
    }
    return pl;
}

std::size_t WgpuEngine::tile_queries(std::size_t nq, std::size_t k, const Plan& pl) const {
    const WGPULimits& lim = ctx_->limits();
    const std::uint64_t limit = std::min<std::uint64_t>({lim.maxStorageBufferBindingSize, lim.maxBufferSize, kTileBudget});
    const std::uint64_t per_query = std::max<std::uint64_t>({std::uint64_t{pl.max_cands} * 12,
                                                             std::uint64_t{pl.max_rows} * 4,
                                                             std::uint64_t{dim4_} * 16});
    std::size_t t = static_cast<std::size_t>(std::min<std::uint64_t>(nq, limit / per_query));
    if (t == 0)
        throw OutOfMemoryError("webgpu: k = " + std::to_string(k) + " over " + std::to_string(size_) +
                               " rows needs more scratch per query than one storage binding holds");
    t = std::min<std::size_t>(t, std::min<std::size_t>(lim.maxComputeWorkgroupsPerDimension, 4096));
    if (t >= 64 && t < nq) t -= t % 64;  // whole 64-query tiles for the batched kernel
    return t;
}

void WgpuEngine::search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                        std::int64_t* slots) const {
    if (nq == 0 || k == 0) return;
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    ensure(scratch_.rowsel, 16, WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst, "row selection");
    search_rows(queries, nq, k, all_rows(), scores, slots);
}

void WgpuEngine::search_filtered(const float* queries, std::size_t nq, std::size_t k, const SlotFilter& filter,
                                 float* scores, std::int64_t* slots) const {
    if (nq == 0 || k == 0) return;
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    RowSelection sel;
    if (filter.slots != nullptr && filter.count * kSparseRatio <= size_) {
        // Sparse: the ascending slot list splits into one run per chunk; each entry becomes
        // its chunk-local row, so a dispatch reads its chunk's run from list_at[c] on.
        sel = all_rows();
        sel.mode = kSelList;
        std::vector<std::uint32_t> local(filter.count);
        std::size_t at = 0;
        for (std::size_t c = 0; c < sel.part_rows.size(); ++c) {
            const std::size_t first = c * rows_per_chunk_, end = first + sel.part_rows[c];
            sel.list_at[c] = at;
            const std::size_t begin = at;
            for (; at < filter.count && filter.slots[at] < end; ++at)
                local[at] = static_cast<std::uint32_t>(filter.slots[at] - first);
            sel.part_rows[c] = at - begin;
        }
        ensure(scratch_.rowsel, std::max<std::uint64_t>(16, local.size() * 4),
               WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst, "row selection");
        a.wgpuQueueWriteBuffer(ctx_->queue(), scratch_.rowsel.get(), 0, local.data(), local.size() * 4);
    } else {
        // Dense: every row is scored, the bits decide which may enter the top k.
        sel = all_rows();
        sel.mode = kSelMask;
        const std::size_t bytes = ceil_div(size_, 64) * 8;
        ensure(scratch_.rowsel, std::max<std::uint64_t>(16, bytes), WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst,
               "row selection");
        a.wgpuQueueWriteBuffer(ctx_->queue(), scratch_.rowsel.get(), 0, filter.bits, bytes);
    }
    search_rows(queries, nq, k, sel, scores, slots);
}

void WgpuEngine::search_rows(const float* queries, std::size_t nq, std::size_t k, const RowSelection& sel,
                             float* scores, std::int64_t* slots) const {
    const Plan pl = plan(k, sel);
    const std::size_t t = tile_queries(nq, k, pl);
    for (std::size_t q0 = 0; q0 < nq; q0 += t) {
        const std::size_t cnt = std::min(t, nq - q0);
        search_tile(queries + q0 * dim_, cnt, k, pl, sel, scores + q0 * k, slots + q0 * k);
    }
}

void WgpuEngine::search_tile(const float* queries, std::size_t nq, std::size_t k, const Plan& pl,
                             const RowSelection& sel, float* out_scores, std::int64_t* out_slots) const {
    const Api& a = ctx_->api();
    const WGPULimits& lim = ctx_->limits();
    const std::size_t rpc = rows_per_chunk_;
    const bool gemv = nq <= 8;
    const std::uint32_t qn = nq <= 1 ? 1 : nq <= 2 ? 2 : nq <= 4 ? 4 : 8;
    const std::size_t qslots = gemv ? 8 : nq;  // the small kernel reads 8 query rows

    // Queries, zero padded like the rows; cosine gets each query's 1/|q| (0 for a zero query).
    std::vector<float> q(qslots * dim4_ * 4, 0.0f), qscale(qslots, 1.0f);
    for (std::size_t i = 0; i < nq; ++i) {
        std::memcpy(q.data() + i * dim4_ * 4, queries + i * dim_, dim_ * sizeof(float));
        if (metric_ == Metric::Cosine) {
            double s = 0.0;
            for (std::size_t j = 0; j < dim_; ++j) s += static_cast<double>(queries[i * dim_ + j]) * queries[i * dim_ + j];
            qscale[i] = cosine_factor(s);
        }
    }

    const std::size_t m = pl.lists, max_rows = pl.max_rows, passes = pl.passes;
    const std::size_t L = pl.list_len;
    if (ceil_div(2 * std::max(L, k), 256) > lim.maxComputeWorkgroupsPerDimension)
        throw InvalidArgumentError("webgpu: k = " + std::to_string(k) + " is above what one merge pass can place");

    const std::uint64_t slot_bytes = std::max<std::uint64_t>(256, lim.minUniformBufferOffsetAlignment);
    const std::size_t dispatches = 2 * pl.parts.size() + passes;
    Scratch& s = scratch_;
    ensure(s.queries, q.size() * 4, WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst, "queries");
    ensure(s.qscale, qscale.size() * 4, WGPUBufferUsage_Storage | WGPUBufferUsage_CopyDst, "query norms");
    ensure(s.scores, std::uint64_t{nq} * max_rows * 4, WGPUBufferUsage_Storage, "scores");
    // Merge passes write into both buffers, and a middle pass can hold more entries than the
    // first lists (10 lists of 2048 -> 3 of 8000 for k = 8000): both take the largest.
    ensure(s.cands_a, std::uint64_t{nq} * pl.max_cands * 12, WGPUBufferUsage_Storage | WGPUBufferUsage_CopySrc, "candidates");
    ensure(s.cands_b, std::uint64_t{nq} * pl.max_cands * 12, WGPUBufferUsage_Storage | WGPUBufferUsage_CopySrc, "candidates");
    ensure(s.params, dispatches * slot_bytes, WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst, "parameters");
    ensure(s.readback, std::uint64_t{nq} * k * 12, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst, "results");

    std::vector<unsigned char> params(dispatches * slot_bytes, 0);
    std::size_t next_slot = 0;
    auto put = [&](const Params& p) {
        std::memcpy(params.data() + next_slot * slot_bytes, &p, sizeof p);
        return (next_slot++) * slot_bytes;
    };
    const Kernel score_kernel = gemv ? Kernel::ScoreGemv : Kernel::ScoreGemm;
    WGPUComputePipeline score_pipe = ctx_->pipeline(score_kernel, metric_, gemv ? qn : 1);
    const Kernel select_kernel = pl.small ? Kernel::SelectSmall : Kernel::Select;
    WGPUComputePipeline select_pipe = ctx_->pipeline(select_kernel, metric_);
    const Kernel merge_kernel = pl.small ? Kernel::ReduceSmall : Kernel::Merge;
    WGPUComputePipeline merge_pipe = ctx_->pipeline(merge_kernel, metric_);
    std::vector<WGPUBindGroup> groups;
    WGPUCommandEncoder enc = ctx_->encoder();
    WGPUComputePassDescriptor pd{};
    WGPUComputePassEncoder pass = a.wgpuCommandEncoderBeginComputePass(enc, &pd);
    auto dispatch = [&](Kernel kernel, WGPUComputePipeline pipe, const std::vector<WGPUBuffer>& bufs,
                        const Params& p, std::uint32_t x, std::uint32_t y, std::uint32_t z) {
        const std::uint64_t off = put(p);
        WGPUBindGroup g = ctx_->bind_group(kernel, bufs, s.params.get(), off, sizeof(Params));
        groups.push_back(g);
        a.wgpuComputePassEncoderSetPipeline(pass, pipe);
        a.wgpuComputePassEncoderSetBindGroup(pass, 0, g, 0, nullptr);
        a.wgpuComputePassEncoderDispatchWorkgroups(pass, x, y, z);
    };
    // Workgroup counts above the per-dimension limit fold into y.
    auto fold = [&](std::size_t blocks) {
        const std::size_t x = std::min<std::size_t>(blocks, lim.maxComputeWorkgroupsPerDimension);
        return std::array<std::uint32_t, 2>{u32(x), u32(ceil_div(blocks, x))};
    };

    for (std::size_t c = 0; c < pl.parts.size(); ++c) {
        const Chunk& ch = chunks_[c];
        const std::size_t rows = pl.parts[c].rows;
        if (rows == 0) continue;  // a chunk no listed row lives in
        Params sp{u32(rows), u32(dim4_), u32(nq), u32(rows), u32(c * rpc), 0, 0, 0};
        sp.sel = sel.mode;
        sp.list_at = u32(sel.list_at[c]);
        auto xy = fold(ceil_div(rows, gemv ? 32 : 64));
        dispatch(score_kernel, score_pipe,
                 {ch.rows.get(), ch.factors.get(), s.queries.get(), s.qscale.get(), s.scores.get(), s.rowsel.get()},
                 sp, xy[0], xy[1], gemv ? 1 : u32(ceil_div(nq, 64)));
        Params sp2{u32(rows), u32(dim4_), u32(nq), u32(rows), u32(c * rpc), u32(pl.parts[c].list_base), u32(m), u32(L)};
        sp2.sel = sel.mode;
        sp2.list_at = u32(sel.list_at[c]);
        const std::size_t groups_x = pl.small ? pl.parts[c].lists / kSmallLists : pl.parts[c].lists;
        dispatch(select_kernel, select_pipe, {s.scores.get(), ch.ordinals.get(), s.cands_a.get(), s.rowsel.get()},
                 sp2, u32(groups_x), u32(nq), 1);
    }
    WGPUBuffer src = s.cands_a.get(), dst = s.cands_b.get();
    std::size_t len = L;
    for (std::size_t mi = m; mi > 1;) {
        if (pl.small) {
            const std::size_t mo = ceil_div(mi, kFanIn);
            Params rp{0, 0, u32(nq), 0, u32(mi), u32(mo), 0, u32(k)};
            dispatch(merge_kernel, merge_pipe, {src, dst}, rp, u32(ceil_div(mo, 64)), u32(nq), 1);
            std::swap(src, dst);
            mi = mo;
            continue;
        }
        const std::size_t out_len = std::min(k, 2 * len), mo = ceil_div(mi, 2);
        Params mp{0, 0, u32(nq), 0, u32(len), u32(out_len), u32(mi), u32(mo)};
        dispatch(merge_kernel, merge_pipe, {src, dst}, mp, u32(ceil_div(2 * len, 256)), u32(mo), u32(nq));
        std::swap(src, dst);
        len = out_len;
        mi = mo;
    }
    a.wgpuComputePassEncoderEnd(pass);
    a.wgpuComputePassEncoderRelease(pass);
    if (len != k) throw BackendError("webgpu: internal error: merged lists hold " + std::to_string(len) + " entries");
    a.wgpuCommandEncoderCopyBufferToBuffer(enc, src, 0, s.readback.get(), 0, std::uint64_t{nq} * k * 12);
    a.wgpuQueueWriteBuffer(ctx_->queue(), s.queries.get(), 0, q.data(), q.size() * 4);
    a.wgpuQueueWriteBuffer(ctx_->queue(), s.qscale.get(), 0, qscale.data(), qscale.size() * 4);
    a.wgpuQueueWriteBuffer(ctx_->queue(), s.params.get(), 0, params.data(), params.size());
    ctx_->submit(enc);
    for (WGPUBindGroup g : groups) a.wgpuBindGroupRelease(g);

    struct Out {
        float score;
        std::uint32_t ordinal, slot;
    };
    const auto* r = static_cast<const Out*>(ctx_->map_read(s.readback.get(), std::uint64_t{nq} * k * 12));
    for (std::size_t i = 0; i < nq * k; ++i) {
        out_scores[i] = r[i].score;
        out_slots[i] = static_cast<std::int64_t>(r[i].slot);
    }
    ctx_->unmap(s.readback.get());
}

}  // namespace hive_gpu::webgpu
