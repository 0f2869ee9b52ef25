#include "cuda/cuda_engine.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/numeric.hpp"
#include "core/validate.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/launch.hpp"
#include "kernels/convert.cuh"
#include "kernels/scan.cuh"

namespace hive_gpu::cuda {

namespace k = hive_gpu::kernels;

namespace {

constexpr std::size_t kMappedQueryBlocks = 64;                // single-query scans reading the query from the host
constexpr std::size_t kLaneWorkBytes = std::size_t{1} << 20;  // scratch a lane keeps for single queries
// Filtered searches passing at most 1/kSparseRatio of the rows (with the slot list given)
// read only the listed rows; denser filters mask the full scan. cuVS measured its own switch
// at ~3% of rows passing; docs/cuda.md says how to tune this from the H200 benchmark.
constexpr std::size_t kSparseRatio = 32;

// A row fault found on the device in one pass over queries, rethrown with the row
// number of the whole call.
struct RowFaultAt {
    int code;
    std::size_t row;
};

}  // namespace

// ---- life -------------------------------------------------------------------------------

CudaEngine::CudaEngine(std::shared_ptr<CudaContext> context, std::size_t dimension, Metric metric, Dtype dtype)
    : ctx_(std::move(context)),
      dim_(dimension),
      dtype_(dtype),
      elem_(dtype_size(dtype)),
      ld_(ceil_div(dimension, 16 / elem_) * (16 / elem_)),
      row_bytes_(ld_ * elem_),
      metric_(metric),
      pages_(*ctx_, row_bytes_) {
    DeviceGuard guard(ctx_->device());
    const std::size_t optin = k::max_block_shared_bytes(ctx_->props());
    const int cap = 1 << (31 - __builtin_clz(static_cast<unsigned>(optin / k::topk_shared_bytes(1))));
    max_select_k_ = cap - k::kSelectBlock * k::kSelectItems;
#if defined(HIVE_GPU_HIP)
    tensor_cores_ = false;  // rocBLAS: float32 GEMM only
#else
    tensor_cores_ = ctx_->props().major >= 8;
#endif
    // Each owner frees what it holds if a later step throws.
    write_stream_ = make_stream();
    written_ = make_event();
    producer_ = make_event();
    fault_device_ = device_alloc(sizeof(unsigned long long));
    fault_host_ = pinned_alloc(sizeof(unsigned long long), cudaHostAllocDefault);
    small_host_bytes_ = std::max<std::size_t>(row_bytes_, std::size_t{1} << 16);
    small_host_ = pinned_alloc(small_host_bytes_, cudaHostAllocDefault);
    record_write();
}

CudaEngine::~CudaEngine() {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(ctx_->device());
    cudaStreamSynchronize(write_stream_.get());
    lanes_.clear();
    try {
        pages_.shrink(0, write_stream_.get());
    } catch (...) {  // RowPages frees what is left when it goes
    }
    small_host_.reset();
    fault_host_.reset();
    fault_device_.reset();
    producer_.reset();
    written_.reset();
    write_stream_.reset();
    cudaSetDevice(previous);
}

CudaEngine::RowView CudaEngine::all_rows() const {
    return RowView{k::PagedRows{pages_.device_table(), pages_.map(), row_bytes_ / 16}, pages_.host_table(), size_};
}

// Every write ends by recording written_ on the write stream; a lane's stream waits on it
// once per write, not once per search (a wait is a driver call, ~2 us on the device host).
void CudaEngine::record_write() {
    check(cudaEventRecord(written_.get(), write_stream_.get()), "cudaEventRecord");
    writes_.fetch_add(1, std::memory_order_release);
}

void CudaEngine::after_writes(Lane& lane) const {
    const std::uint64_t w = writes_.load(std::memory_order_acquire);
    if (lane.writes_seen == w) return;  // the lane's stream already waits on the latest write
    check(cudaStreamWaitEvent(lane.stream, written_.get(), 0), "cudaStreamWaitEvent");
    lane.writes_seen = w;
}

// ---- writes that keep rows on the device -------------------------------------------------

void CudaEngine::reserve(std::size_t rows) {
    DeviceGuard guard(ctx_->device());
    pages_.grow(rows, write_stream_.get());
}

void CudaEngine::move(std::size_t src, std::size_t dst) {
    DeviceGuard guard(ctx_->device());
    cudaStream_t ws = write_stream_.get();
    check(cudaMemcpyAsync(pages_.row(dst), pages_.row(src), row_bytes_, cudaMemcpyDeviceToDevice, ws),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(pages_.factor(dst), pages_.factor(src), sizeof(float), cudaMemcpyDeviceToDevice, ws),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(pages_.ordinal(dst), pages_.ordinal(src), sizeof(std::uint32_t), cudaMemcpyDeviceToDevice, ws),
          "cudaMemcpyAsync");
    record_write();
}

void CudaEngine::truncate(std::size_t n) {
    DeviceGuard guard(ctx_->device());
    if (n >= size_) return;
    pages_.shrink(n, write_stream_.get());  // whole pages past the rows go back
    size_ = n;
}

void CudaEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    DeviceGuard guard(ctx_->device());
    cudaStream_t ws = write_stream_.get();
    pages_.for_each_run(0, n, [&](std::size_t s0, std::size_t count, std::size_t, std::size_t) {
        check(cudaMemcpyAsync(pages_.ordinal(s0), ordinals + s0, count * sizeof(std::uint32_t), cudaMemcpyHostToDevice,
                              ws),
              "cudaMemcpyAsync");
    });
    check(cudaStreamSynchronize(ws), "set_ordinals");
    record_write();
}

void CudaEngine::read(std::size_t first, std::size_t n, float* out) const {
    if (n == 0) return;
    DeviceGuard guard(ctx_->device());
    LanePool::Lease lane(lanes_);
    after_writes(*lane);
    pages_.for_each_run(first, n, [&](std::size_t s0, std::size_t count, std::size_t, std::size_t) {
        float* o = out + (s0 - first) * dim_;
        if (dtype_ == Dtype::Float32) {
            check(cudaMemcpy2DAsync(o, dim_ * sizeof(float), pages_.row(s0), row_bytes_, dim_ * sizeof(float), count,
                                    cudaMemcpyDeviceToHost, lane->stream),
                  "cudaMemcpy2DAsync");
            return;
        }
        // 16-bit rows come down as they are and are widened here, exactly (dtype.hpp).
        std::vector<std::uint16_t> bits(count * dim_);
        check(cudaMemcpy2DAsync(bits.data(), dim_ * elem_, pages_.row(s0), row_bytes_, dim_ * elem_, count,
                                cudaMemcpyDeviceToHost, lane->stream),
              "cudaMemcpy2DAsync");
        check(cudaStreamSynchronize(lane->stream), "read");
        for (std::size_t i = 0; i < bits.size(); ++i)
            o[i] = dtype_ == Dtype::Float16 ? hive_gpu::f16_to_float(bits[i]) : hive_gpu::bf16_to_float(bits[i]);
    });
    check(cudaStreamSynchronize(lane->stream), "read");
}

// ---- search entry points ------------------------------------------------------------------

void CudaEngine::search(const float* queries, std::size_t nq, std::size_t kk, float* scores,
                        std::int64_t* slots) const {
    DeviceGuard guard(ctx_->device());
    LanePool::Lease lane(lanes_);
    after_writes(*lane);
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
        const std::size_t qn = std::min(kQueryChunk, nq - q0);
        search_chunk(*lane, all_rows(), queries + q0 * dim_, nullptr, Dtype::Float32, 0, qn, kk, scores + q0 * kk,
                     slots + q0 * kk, nullptr);
    }
}

void CudaEngine::search_filtered(const float* queries, std::size_t nq, std::size_t kk, const SlotFilter& filter,
                                 float* scores, std::int64_t* slots) const {
    DeviceGuard guard(ctx_->device());
    LanePool::Lease lane(lanes_);
    after_writes(*lane);
    cudaStream_t s = lane->stream;
    const bool sparse = filter.slots != nullptr && filter.count * kSparseRatio <= size_;
    // The bits (dense) or the slot list (sparse) go up once for every query, through the
    // lane's pinned buffer.
    const std::size_t bytes = sparse ? filter.count * sizeof(std::uint32_t) : ceil_div(size_, 64) * sizeof(std::uint64_t);
    lane->ensure_filter_host(bytes);
    std::memcpy(lane->filter_host, sparse ? static_cast<const void*>(filter.slots) : filter.bits, bytes);
    Scratch dfilter(*ctx_, bytes, s);
    check(cudaMemcpyAsync(dfilter.as<void>(), lane->filter_host, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    RowView v = all_rows();
    RowView listed = v;
    listed.n = filter.count;
    listed.list = dfilter.as<std::uint32_t>();
    Scratch compact;
    k::PageRef compact_page{};  // the compact matrix's one page, as the host sees it
    bool remap = false;
    if (!sparse) {
        v.mask = dfilter.as<std::uint64_t>();
    } else if (nq == 1 && plan(1, kk, listed).path == Path::Fused) {
        // One query: the scan reads the listed rows where they are.
        v = listed;
    } else {
        // Batches (and k or rows beyond the scan): the listed rows are copied into a compact
        // matrix searched like a one-page store (GEMM, TF32 screen and exact re-rank
        // included); its row i is slot filter.slots[i].
        const std::size_t n = filter.count;
        Carve c;
        const std::size_t at_rows = c.take(n * row_bytes_), at_f = c.take(n * sizeof(float)),
                          at_o = c.take(n * sizeof(std::uint32_t)), at_table = c.take(sizeof(k::PageRef));
        compact = Scratch(*ctx_, c.at, s);
        auto* base = compact.as<unsigned char>();
        auto* crows = reinterpret_cast<float4*>(base + at_rows);
        auto* cfactors = reinterpret_cast<float*>(base + at_f);
        auto* cordinals = reinterpret_cast<std::uint32_t*>(base + at_o);
        auto* table = reinterpret_cast<k::PageRef*>(base + at_table);
        const unsigned grid = grid_for(n * k::warp_size(ctx_->props()), 256, ctx_->props());
        k::gather_rows_kernel<<<grid, 256, 0, s>>>(v.rows, listed.list, n, crows, cfactors, cordinals);
        check_launch("gather_rows_kernel");
        compact_page = k::PageRef{crows, cfactors, cordinals};
        k::store_page_kernel<<<1, 1, 0, s>>>(table, compact_page);
        check_launch("store_page_kernel");
        const int shift = std::max(k::kMinPageShift, n > 1 ? k::floor_log2(n - 1) + 1 : 0);
        v = RowView{k::PagedRows{table, k::PageMap{shift, shift}, row_bytes_ / 16}, &compact_page, n};
        remap = true;
    }
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
        const std::size_t qn = std::min(kQueryChunk, nq - q0);
        search_chunk(*lane, v, queries + q0 * dim_, nullptr, Dtype::Float32, 0, qn, kk, scores + q0 * kk,
                     slots + q0 * kk, nullptr);
    }
    if (remap)
        for (std::size_t i = 0; i < nq * kk; ++i) slots[i] = filter.slots[slots[i]];
}

void CudaEngine::search_device(const void* queries_in, Dtype src, std::size_t ld, std::size_t nq, std::size_t kk,
                               std::uintptr_t stream, float* scores, std::int64_t* slots,
                               float* device_scores) const {
    const auto* queries = static_cast<const unsigned char*>(queries_in);
    DeviceGuard guard(ctx_->device());
    check_device_pointer(queries, "queries");
    if (device_scores) check_device_pointer(device_scores, "the output array");
    LanePool::Lease lane(lanes_);
    after_writes(*lane);
    wait_producer(lane->stream, lane->ingest, stream);
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
        const std::size_t qn = std::min(kQueryChunk, nq - q0);
        try {
            search_chunk(*lane, all_rows(), nullptr, queries + q0 * ld * dtype_size(src), src, ld, qn, kk,
                         scores + q0 * kk, slots + q0 * kk, device_scores ? device_scores + q0 * kk : nullptr);
        } catch (const RowFaultAt& f) {
            throw_row_fault(static_cast<RowFault>(f.code), q0 + f.row, nq, nq == 1 ? "query" : "queries");
        }
    }
}

// ---- one pass over a chunk of queries -----------------------------------------------------

void CudaEngine::search_chunk(Lane& lane, const RowView& v, const float* host_queries, const void* device_queries,
                              Dtype device_dtype, std::size_t device_ld, std::size_t qn, std::size_t kk,
                              float* scores, std::int64_t* slots, float* device_scores) const {
    cudaStream_t s = lane.stream;
    const Plan pl = plan(qn, kk, v);
    const std::size_t qbytes = qn * ld_ * sizeof(float);
    const std::size_t rbytes = qn * kk * (sizeof(float) + sizeof(std::int64_t));
    if (host_queries && pl.path == Path::Fused) {
        // One query from the host: one copy up, one launch whose last block writes the
        // results straight into pinned host memory, one wait.
        const std::size_t at_res = (qbytes + 255) / 256 * 256;
        lane.ensure_host(at_res + rbytes);
        pack_rows(host_queries, qn, dim_ * sizeof(float), ld_ * sizeof(float), lane.host);
        // Few blocks (small stores) read the query straight from mapped host memory: no copy.
        const bool mapped_query = pl.blocks <= kMappedQueryBlocks;
        Carve c;
        const std::size_t at_q = c.take(mapped_query ? 0 : qbytes), at_work = c.take(pl.workspace);
        Scratch local;
        unsigned char* base = nullptr;
        if (c.at <= kLaneWorkBytes) {  // small: the lane keeps it, no pool call per search
            if (lane.work.bytes() < c.at) {
                lane.work.reset();
                lane.work = Scratch(*ctx_, (c.at + 16383) / 16384 * 16384, s);
            }
            base = lane.work.as<unsigned char>();
        } else {
            local = Scratch(*ctx_, c.at, s);
            base = local.as<unsigned char>();
        }
        const float* dq = static_cast<const float*>(lane.host_device);
        if (!mapped_query) {
            dq = reinterpret_cast<float*>(base + at_q);
            check(cudaMemcpyAsync(base + at_q, lane.host, qbytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
        }
        auto* out = reinterpret_cast<std::int64_t*>(static_cast<unsigned char*>(lane.host_device) + at_res);
        search_fused(lane, pl, v, dq, kk, base + at_work, reinterpret_cast<float*>(out + kk), out, true);
        check(cudaStreamSynchronize(s), "search");
        const auto* hslots = reinterpret_cast<const std::int64_t*>(static_cast<const unsigned char*>(lane.host) + at_res);
        std::memcpy(slots, hslots, kk * sizeof(std::int64_t));
        std::memcpy(scores, hslots + kk, kk * sizeof(float));
        return;
    }
    // One pool allocation per pass: results, queries, then the path's own scratch.
    Carve c;
    const std::size_t at_out = c.take(rbytes), at_q = c.take(qbytes), at_work = c.take(pl.workspace);
    Scratch ws(*ctx_, c.at, s);
    auto* base = ws.as<unsigned char>();
    std::int64_t* dslots = reinterpret_cast<std::int64_t*>(base + at_out);
    float* dscores = reinterpret_cast<float*>(dslots + qn * kk);
    float* dq = reinterpret_cast<float*>(base + at_q);
    if (host_queries) {
        lane.ensure_host(std::max(qbytes, rbytes));
        pack_rows(host_queries, qn, dim_ * sizeof(float), ld_ * sizeof(float), lane.host);
        check(cudaMemcpyAsync(dq, lane.host, qbytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    } else {
        lane.ensure_host(rbytes);
        check(cudaMemsetAsync(lane.fault_device, 0xff, sizeof(unsigned long long), s), "cudaMemsetAsync");
        if (device_dtype == Dtype::Float32) {
            if (ld_ != dim_) check(cudaMemsetAsync(dq, 0, qbytes, s), "cudaMemsetAsync");
            check(cudaMemcpy2DAsync(dq, ld_ * sizeof(float), device_queries, device_ld * sizeof(float),
                                    dim_ * sizeof(float), qn, cudaMemcpyDeviceToDevice, s),
                  "cudaMemcpy2DAsync");
        } else {  // 16-bit queries widened (exactly); infinities are faults
            with_dtype(device_dtype, [&](auto d) {
                constexpr int D = decltype(d)::value;
                k::convert_rows_kernel<D, k::kF32><<<grid_for(qn * ld_, 256, ctx_->props()), 256, 0, s>>>(
                    static_cast<const typename k::Elem<D>::T*>(device_queries), device_ld, qn, dim_, dq, ld_,
                    dtype_max(Dtype::Float32), lane.fault_device, 0);
            });
            check_launch("convert_rows_kernel");
        }
    }
    run_search(lane, pl, v, dq, qn, kk, dscores, dslots, base + at_work, host_queries ? nullptr : lane.fault_device);
    if (device_scores) {
        const unsigned grid = grid_for(qn * kk, 256, ctx_->props());
        if (metric_ == Metric::Euclidean)
            k::user_scores_kernel<true><<<grid, 256, 0, s>>>(dscores, qn * kk, device_scores);
        else
            k::user_scores_kernel<false><<<grid, 256, 0, s>>>(dscores, qn * kk, device_scores);
        check_launch("user_scores_kernel");
    }
    check(cudaMemcpyAsync(lane.host, dslots, rbytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    if (!host_queries)
        check(cudaMemcpyAsync(lane.fault_host, lane.fault_device, sizeof(unsigned long long), cudaMemcpyDeviceToHost, s),
              "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s), "search");
    if (!host_queries && *lane.fault_host != ~0ull) {
        const unsigned long long fault = *lane.fault_host;
        throw RowFaultAt{static_cast<int>(fault & 3), static_cast<std::size_t>(fault >> 2)};
    }
    const auto* hslots = static_cast<const std::int64_t*>(lane.host);
    std::memcpy(slots, hslots, qn * kk * sizeof(std::int64_t));
    std::memcpy(scores, hslots + qn * kk, qn * kk * sizeof(float));
}

void CudaEngine::run_search(Lane& lane, const Plan& pl, const RowView& v, const float* dq, std::size_t nq, std::size_t kk,
                            float* dscores, std::int64_t* dslots, void* work,
                            unsigned long long* fault) const {
    cudaStream_t s = lane.stream;
    if (pl.path == Path::Fused && fault == nullptr) {
        // Host queries were checked by the core and the scan computes the query's norm.
        search_fused(lane, pl, v, dq, kk, work, dscores, dslots);
        return;
    }
    Scratch qf(*ctx_, nq * sizeof(float), s);
    with_metric(metric_, [&](auto m) {
        k::row_stats_kernel<decltype(m)::value><<<grid_for(nq * k::warp_size(ctx_->props()), 256, ctx_->props()), 256, 0, s>>>(
            dq, ld_, nq, dim_, qf.as<float>(), fault, kMaxSquaredNorm);
    });
    check_launch("row_stats_kernel");
    if (pl.path == Path::Fused)
        search_fused(lane, pl, v, dq, kk, work, dscores, dslots);
    else if (pl.path == Path::Sorted)
        search_sorted(lane, v, dq, qf.as<float>(), nq, kk, dscores, dslots);
    else
        search_gemm(lane, v, dq, qf.as<float>(), nq, kk, dscores, dslots);
}


}  // namespace hive_gpu::cuda
