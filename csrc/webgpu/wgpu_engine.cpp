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
#include "core/numeric.hpp"

namespace hive_gpu::webgpu {

namespace {

constexpr std::size_t kSegment = 2048;               // scores one select workgroup sorts
constexpr std::size_t kSmallK = 32;                  // largest k of the per-thread select
constexpr std::size_t kSmallRows = 64 * 64;          // rows one per-thread select workgroup scans
constexpr std::size_t kSmallLists = 64;              // lists it writes (one per thread)
constexpr std::size_t kFanIn = 16;                   // lists one reduce_small thread folds
constexpr std::uint64_t kPageCap = 1ull << 30;       // largest page: allocations stay moderate
constexpr std::uint64_t kStagingBytes = 32ull << 20;  // one upload / read-back piece
constexpr std::uint64_t kTileBudget = 256ull << 20;   // scratch bytes one query tile may use
constexpr std::size_t kFirstPageRows = 1024;           // page 0; later pages double up to the cap
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

WgpuEngine::WgpuEngine(std::shared_ptr<WgpuContext> context, std::size_t dimension, Metric metric, Dtype dtype)
    : ctx_(std::move(context)),
      dim_(dimension),
      dim4_(ceil_div(dimension, 4)),
      metric_(metric),
      dtype_(dtype),
      format_(ctx_->row_format(dtype)),
      elem_bytes_(dtype_size(dtype)),
      row_bytes_(dim4_ * 4 * elem_bytes_) {
    const WGPULimits& lim = ctx_->limits();
    std::uint64_t cap = std::min<std::uint64_t>({lim.maxStorageBufferBindingSize, lim.maxBufferSize, kPageCap});
    if (const char* env = std::getenv("HIVE_GPU_WEBGPU_CHUNK_BYTES"); env && *env)
        cap = std::min<std::uint64_t>(cap, std::strtoull(env, nullptr, 10));
    if (row_bytes_ > cap)
        throw InvalidArgumentError("webgpu: a row of dimension " + std::to_string(dim_) +
                                   " exceeds the device's storage binding size");
    layout_ = PageLayout(kFirstPageRows, static_cast<std::size_t>(cap / row_bytes_));
}

float WgpuEngine::row_factor(const void* row) const {
    const auto* p = static_cast<const unsigned char*>(row);
    double s = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) {
        const double v = load_as_float(p + j * elem_bytes_, dtype_);
        s += v * v;
    }
    if (metric_ == Metric::Cosine) return cosine_factor(s);
    return static_cast<float>(s);
}

void WgpuEngine::pack_row(const void* row, unsigned char* dst) const {
    // Zero padding is +0 in every dtype, so it adds nothing to any score.
    std::memcpy(dst, row, dim_ * elem_bytes_);
    std::memset(dst + dim_ * elem_bytes_, 0, row_bytes_ - dim_ * elem_bytes_);
}

std::size_t WgpuEngine::capacity() const { return pages_.empty() ? 0 : pages_.back().start + pages_.back().capacity; }

std::size_t WgpuEngine::memory_bytes() const {
    std::size_t b = 0;
    for (const auto& pg : pages_) b += pg.rows.bytes() + pg.factors.bytes() + pg.ordinals.bytes();
    return b;
}

WgpuEngine::Page WgpuEngine::make_page(std::size_t index) const {
    Page pg;
    pg.capacity = layout_.rows(index);
    pg.start = layout_.start(index);
    pg.rows = ctx_->create_buffer(std::uint64_t{pg.capacity} * row_bytes_, kStorage, false, "rows");
    pg.factors = ctx_->create_buffer(std::uint64_t{pg.capacity} * 4, kStorage, false, "row norms");
    pg.ordinals = ctx_->create_buffer(std::uint64_t{pg.capacity} * 4, kStorage, false, "ordinals");
    return pg;
}

void WgpuEngine::reserve(std::size_t rows) {
    const std::size_t have = pages_.size(), want_pages = layout_.pages_for(rows);
    if (want_pages <= have) return;
    const std::uint64_t want = std::uint64_t{layout_.start(want_pages) - capacity()} * (row_bytes_ + 8);
    if (const std::uint64_t avail = ctx_->allocatable_bytes(); avail && want > avail)
        throw OutOfMemoryError("webgpu: " + std::to_string(rows) + " rows need " + std::to_string(want) +
                               " more bytes; the adapter's memory (host memory) has " +
                               std::to_string(avail) + " available");
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    // New pages only, the existing ones stay where they are; all are made before any is
    // kept, so a failed allocation leaves the engine untouched.
    std::vector<Page> fresh;
    for (std::size_t i = have; i < want_pages; ++i) fresh.push_back(make_page(i));
    for (auto& pg : fresh) pages_.push_back(std::move(pg));
}

void WgpuEngine::append(const void* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    const std::size_t need = size_ + n;
    reserve(need);
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const std::size_t stage_rows = std::max<std::size_t>(1, kStagingBytes / (row_bytes_ + 8));
    const auto* src = static_cast<const unsigned char*>(rows);
    const std::size_t src_row = dim_ * elem_bytes_;
    // Rows go through mapped staging buffers, a piece at a time; size_ moves only at the end.
    for (std::size_t done = 0; done < n;) {
        const auto [page, off] = layout_.locate(size_ + done);
        const Page& pg = pages_[page];
        const std::size_t cnt = std::min({n - done, pg.capacity - off, stage_rows});
        const std::size_t rb = cnt * row_bytes_, fb = cnt * 4;
        Buffer staging = ctx_->create_buffer(rb + 2 * fb, WGPUBufferUsage_MapWrite | WGPUBufferUsage_CopySrc,
                                             true, "upload staging");
        auto* p = static_cast<unsigned char*>(a.wgpuBufferGetMappedRange(staging.get(), 0, rb + 2 * fb));
        if (!p) throw BackendError("webgpu: staging buffer could not be mapped");
        auto* dst_f = reinterpret_cast<float*>(p + rb);
        auto* dst_o = reinterpret_cast<std::uint32_t*>(p + rb + fb);
        for (std::size_t i = 0; i < cnt; ++i) {
            const unsigned char* row = src + (done + i) * src_row;
            pack_row(row, p + i * row_bytes_);
            dst_f[i] = row_factor(row);
        }
        std::memcpy(dst_o, ordinals + done, fb);
        a.wgpuBufferUnmap(staging.get());
        WGPUCommandEncoder enc = ctx_->encoder();
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, staging.get(), 0, pg.rows.get(), off * row_bytes_, rb);
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, staging.get(), rb, pg.factors.get(), off * 4, fb);
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, staging.get(), rb + fb, pg.ordinals.get(), off * 4, fb);
        ctx_->submit(enc);
        ctx_->wait_idle();  // the staging buffer is released when this piece ends
        done += cnt;
    }
    ctx_->throw_if_failed("uploading rows");
    size_ = need;
}

void WgpuEngine::write(std::size_t slot, const void* row) {
    std::vector<unsigned char> padded(row_bytes_);
    pack_row(row, padded.data());
    const float f = row_factor(row);
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const auto [page, off] = layout_.locate(slot);
    const Page& pg = pages_[page];
    a.wgpuQueueWriteBuffer(ctx_->queue(), pg.rows.get(), off * row_bytes_, padded.data(), row_bytes_);
    a.wgpuQueueWriteBuffer(ctx_->queue(), pg.factors.get(), off * 4, &f, 4);
    ctx_->throw_if_failed("updating a row");
}

void WgpuEngine::move(std::size_t src, std::size_t dst) {
    if (src == dst) return;
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const std::size_t row_bytes = row_bytes_;
    const auto [sp, so] = layout_.locate(src);
    const auto [dp, dof] = layout_.locate(dst);
    const Page& s = pages_[sp];
    const Page& d = pages_[dp];
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
    // Give back whole pages past the end, but one empty page stays so that a store hovering
    // at a page boundary does not free and allocate a page on every remove and add. An
    // empty store holds no device memory.
    const std::size_t keep = size_ == 0 ? 0 : std::min(pages_.size(), layout_.pages_for(size_) + 1);
    if (keep < pages_.size()) {
        ctx_->wait_idle();
        pages_.resize(keep);
        if (keep == 0) scratch_ = Scratch{};
    }
}

void WgpuEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    for (const Page& pg : pages_) {
        if (pg.start >= n) break;
        const std::size_t cnt = std::min(pg.capacity, n - pg.start);
        a.wgpuQueueWriteBuffer(ctx_->queue(), pg.ordinals.get(), 0, ordinals + pg.start, cnt * 4);
    }
    ctx_->throw_if_failed("writing ordinals");
}

void WgpuEngine::read(std::size_t first, std::size_t n, float* out) const {
    std::lock_guard<std::mutex> lock(ctx_->gpu_mutex());
    const Api& a = ctx_->api();
    const std::size_t row_bytes = row_bytes_;
    const std::size_t piece_rows = std::max<std::size_t>(1, kStagingBytes / row_bytes);
    for (std::size_t done = 0; done < n;) {
        const auto [page, off] = layout_.locate(first + done);
        const Page& pg = pages_[page];
        const std::size_t cnt = std::min({n - done, pg.capacity - off, piece_rows});
        Buffer rb = ctx_->create_buffer(cnt * row_bytes, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst,
                                        false, "read-back");
        WGPUCommandEncoder enc = ctx_->encoder();
        a.wgpuCommandEncoderCopyBufferToBuffer(enc, pg.rows.get(), off * row_bytes, rb.get(), 0, cnt * row_bytes);
        ctx_->submit(enc);
        const auto* p = static_cast<const unsigned char*>(ctx_->map_read(rb.get(), cnt * row_bytes));
        // Widened exactly (dtype.hpp), so a read-back equals the stored values.
        for (std::size_t i = 0; i < cnt; ++i) {
            float* o = out + (done + i) * dim_;
            const unsigned char* r = p + i * row_bytes;
            if (dtype_ == Dtype::Float32) {
                std::memcpy(o, r, dim_ * sizeof(float));
            } else {
                for (std::size_t j = 0; j < dim_; ++j) o[j] = load_as_float(r + j * elem_bytes_, dtype_);
            }
        }
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
    for (const Page& pg : pages_) {
        if (pg.start >= size_) break;
        sel.part_rows.push_back(std::min(pg.capacity, size_ - pg.start));
    }
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
        // Sparse: the ascending slot list splits into one run per page; each entry becomes
        // its page-local row, so a dispatch reads its page's run from list_at[c] on.
        sel = all_rows();
        sel.mode = kSelList;
        std::vector<std::uint32_t> local(filter.count);
        std::size_t at = 0;
        for (std::size_t c = 0; c < sel.part_rows.size(); ++c) {
            const std::size_t first = pages_[c].start, end = first + sel.part_rows[c];
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
    WGPUComputePipeline score_pipe = ctx_->pipeline(score_kernel, metric_, gemv ? qn : 1, format_);
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
        const Page& pg = pages_[c];
        const std::size_t rows = pl.parts[c].rows;
        if (rows == 0) continue;  // a page no listed row lives in
        Params sp{u32(rows), u32(dim4_), u32(nq), u32(rows), u32(pg.start), 0, 0, 0};
        sp.sel = sel.mode;
        sp.list_at = u32(sel.list_at[c]);
        auto xy = fold(ceil_div(rows, gemv ? 32 : 64));
        dispatch(score_kernel, score_pipe,
                 {pg.rows.get(), pg.factors.get(), s.queries.get(), s.qscale.get(), s.scores.get(), s.rowsel.get()},
                 sp, xy[0], xy[1], gemv ? 1 : u32(ceil_div(nq, 64)));
        Params sp2{u32(rows), u32(dim4_), u32(nq), u32(rows), u32(pg.start), u32(pl.parts[c].list_base), u32(m), u32(L)};
        sp2.sel = sel.mode;
        sp2.list_at = u32(sel.list_at[c]);
        const std::size_t groups_x = pl.small ? pl.parts[c].lists / kSmallLists : pl.parts[c].lists;
        dispatch(select_kernel, select_pipe, {s.scores.get(), pg.ordinals.get(), s.cands_a.get(), s.rowsel.get()},
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
