#include "cuda/cuda_engine.hpp"

#include <algorithm>
#include <cstring>
#include <exception>
#include <thread>
#include <type_traits>

#include "core/numeric.hpp"
#include "core/validate.hpp"
#include "cuda/cuda_check.hpp"
#include "hive_gpu/storage.hpp"
#include "kernels/rerank.cuh"
#include "kernels/scan.cuh"
#include "kernels/select.cuh"
#include "kernels/sort.cuh"

namespace hive_gpu::cuda {

namespace k = hive_gpu::kernels;

namespace {

constexpr std::size_t kQueryChunk = 4096;                    // queries per device pass
constexpr std::size_t kTileBudgetFloats = std::size_t{64} << 20;  // both SGEMM score tiles: 256 MiB
constexpr std::size_t kBlasWorkspace = std::size_t{32} << 20;
constexpr std::size_t kSkinnyMaxQueries = 4;  // beyond, cuBLAS measured faster on the H100
constexpr std::size_t kScreenMaxK = 256;     // beyond, near-ties around the k-th make re-runs likely
constexpr std::size_t kMappedQueryBlocks = 64;               // single-query scans reading the query from the host
constexpr std::size_t kLaneWorkBytes = std::size_t{1} << 20;  // scratch a lane keeps for single queries
constexpr std::size_t kSmallAppendBytes = std::size_t{4} << 20;
// Filtered searches passing at most 1/kSparseRatio of the rows (with the slot list given)
// read only the listed rows; denser filters mask the full scan. cuVS measured its own switch
// at ~3% of rows passing; docs/cuda.md says how to tune this from the H200 benchmark.
constexpr std::size_t kSparseRatio = 32;


int next_pow2(std::size_t v) {
    int p = 1;
    while (static_cast<std::size_t>(p) < v) p <<= 1;
    return p;
}

template <typename F>
void with_metric(Metric m, F&& f) {
    switch (m) {
        case Metric::Cosine: f(std::integral_constant<int, k::kCosine>{}); break;
        case Metric::DotProduct: f(std::integral_constant<int, k::kDotProduct>{}); break;
        case Metric::Euclidean: f(std::integral_constant<int, k::kEuclidean>{}); break;
    }
}

// float4 loads per lane that cover a row in one step for a warp of `warp` lanes.
template <typename F>
void with_vpl(std::size_t ld4, int warp, F&& f) {
    const std::size_t need = ceil_div(ld4, static_cast<std::size_t>(warp));
    if (need <= 1) f(std::integral_constant<int, 1>{});
    else if (need <= 2) f(std::integral_constant<int, 2>{});
    else if (need <= 4) f(std::integral_constant<int, 4>{});
    else if (need <= 6) f(std::integral_constant<int, 6>{});
    else f(std::integral_constant<int, 8>{});
}

// Opens a kernel's dynamic shared memory beyond the 48 KiB default when it needs more.
template <typename Kernel>
void allow_shared(Kernel kernel, std::size_t bytes) {
    if (bytes > 40 * 1024)  // leave room for the kernels' static shared memory
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes)),
              "cudaFuncSetAttribute");
}

unsigned grid_for(std::size_t items, unsigned threads, const cudaDeviceProp& p) {
    const std::size_t want = std::max<std::size_t>(1, ceil_div(items, threads));
    return static_cast<unsigned>(std::min<std::size_t>(want, static_cast<std::size_t>(p.multiProcessorCount) * 32));
}

cudaStream_t producer_stream(std::uintptr_t s) {
    if (s == 1) return cudaStreamLegacy;
    if (s == 2) return cudaStreamPerThread;
    return reinterpret_cast<cudaStream_t>(s);
}

// Rows [0, n) of `src` (stride dim) into `dst` with stride ld, zero padding after dim.
void pack_rows(const float* src, std::size_t n, std::size_t dim, std::size_t ld, float* dst) {
    if (ld == dim) {
        std::memcpy(dst, src, n * dim * sizeof(float));
        return;
    }
    for (std::size_t i = 0; i < n; ++i) {
        std::memcpy(dst + i * ld, src + i * dim, dim * sizeof(float));
        std::memset(dst + i * ld + dim, 0, (ld - dim) * sizeof(float));
    }
}

// A row fault found on the device in one pass over queries, rethrown with the row
// number of the whole call.
struct RowFaultAt {
    int code;
    std::size_t row;
};

}  // namespace

// ---- lanes ------------------------------------------------------------------------------

// Every write ends by recording written_ on the write stream; a lane's stream waits on it
// once per write, not once per search (a wait is a driver call, ~2 us on the device host).
void CudaEngine::record_write() {
    check(cudaEventRecord(written_, write_stream_), "cudaEventRecord");
    writes_.fetch_add(1, std::memory_order_release);
}

void CudaEngine::after_writes(Lane& lane) const {
    const std::uint64_t w = writes_.load(std::memory_order_acquire);
    if (lane.writes_seen == w) return;  // the lane's stream already waits on the latest write
    check(cudaStreamWaitEvent(lane.stream, written_, 0), "cudaStreamWaitEvent");
    lane.writes_seen = w;
}

void CudaEngine::LaneDeleter::operator()(Lane* lane) const {
    if (lane->stream) cudaStreamSynchronize(lane->stream);
    lane->work.reset();
    if (lane->stream) cudaStreamSynchronize(lane->stream);
    if (lane->blas) cublasDestroy(lane->blas);
    if (lane->blas_workspace) cudaFree(lane->blas_workspace);
    if (lane->host) cudaFreeHost(lane->host);
    if (lane->fault_device) cudaFree(lane->fault_device);
    if (lane->fault_host) cudaFreeHost(lane->fault_host);
    if (lane->flags_host) cudaFreeHost(lane->flags_host);
    if (lane->filter_host) cudaFreeHost(lane->filter_host);
    if (lane->done) cudaFree(lane->done);
    if (lane->ingest) cudaEventDestroy(lane->ingest);
    if (lane->aux) {
        cudaStreamSynchronize(lane->aux);
        cudaStreamDestroy(lane->aux);
    }
    for (cudaEvent_t e : {lane->tile_scored[0], lane->tile_scored[1], lane->tile_free[0], lane->tile_free[1], lane->selected})
        if (e) cudaEventDestroy(e);
    if (lane->stream) cudaStreamDestroy(lane->stream);
    delete lane;
}

// A lane borrowed for one call; goes back to the free list when the call ends.
class CudaEngine::LeasedLane {
   public:
    explicit LeasedLane(const CudaEngine& e) : engine_(e), exceptions_(std::uncaught_exceptions()) {
        {
            std::lock_guard<std::mutex> lock(e.lanes_mutex_);
            if (!e.free_lanes_.empty()) {
                lane_ = std::move(e.free_lanes_.back());
                e.free_lanes_.pop_back();
            }
        }
        if (!lane_) lane_ = e.make_lane();
    }
    ~LeasedLane() {
        // Every call that completes has synchronized the lane's stream last. A failed call
        // (unwinding through here) may leave work queued: drain it before the lane is reused.
        if (std::uncaught_exceptions() > exceptions_ && cudaStreamSynchronize(lane_->stream) != cudaSuccess) {
            cudaGetLastError();
            return;  // the lane is dropped (and destroyed) rather than reused
        }
        std::lock_guard<std::mutex> lock(engine_.lanes_mutex_);
        engine_.free_lanes_.push_back(std::move(lane_));
    }
    Lane& operator*() const { return *lane_; }
    Lane* operator->() const { return lane_.get(); }

   private:
    const CudaEngine& engine_;
    int exceptions_;  // in flight when the lease began
    LanePtr lane_;
};

CudaEngine::LanePtr CudaEngine::make_lane() const {
    LanePtr lane(new Lane);
    check(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&lane->ingest, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaStreamCreateWithFlags(&lane->aux, cudaStreamNonBlocking), "cudaStreamCreate");
    for (cudaEvent_t* e : {&lane->tile_scored[0], &lane->tile_scored[1], &lane->tile_free[0], &lane->tile_free[1], &lane->selected})
        check(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaMalloc(&lane->fault_device, sizeof(unsigned long long)), "cudaMalloc");
    check(cudaHostAlloc(&lane->fault_host, sizeof(unsigned long long), cudaHostAllocDefault),
          "cudaHostAlloc");
    check(cudaHostAlloc(reinterpret_cast<void**>(&lane->flags_host), kQueryChunk, cudaHostAllocDefault),
          "cudaHostAlloc");
    check(cudaMalloc(&lane->done, sizeof(unsigned int)), "cudaMalloc");
    check(cudaMemsetAsync(lane->done, 0, sizeof(unsigned int), lane->stream), "cudaMemsetAsync");
    return lane;
}

void CudaEngine::ensure_host(Lane& lane, std::size_t bytes) const {
    if (lane.host_bytes >= bytes) return;
    if (lane.host) cudaFreeHost(lane.host);
    lane.host = nullptr;
    lane.host_device = nullptr;
    lane.host_bytes = 0;
    const std::size_t want = std::max<std::size_t>(bytes, std::size_t{1} << 16);
    check(cudaHostAlloc(&lane.host, want, cudaHostAllocMapped), "cudaHostAlloc");
    check(cudaHostGetDevicePointer(&lane.host_device, lane.host, 0), "cudaHostGetDevicePointer");
    lane.host_bytes = want;
}

void CudaEngine::ensure_filter_host(Lane& lane, std::size_t bytes) const {
    if (lane.filter_host_bytes >= bytes) return;
    if (lane.filter_host) cudaFreeHost(lane.filter_host);
    lane.filter_host = nullptr;
    lane.filter_host_bytes = 0;
    const std::size_t want = std::max<std::size_t>(bytes, std::size_t{1} << 16);
    check(cudaHostAlloc(&lane.filter_host, want, cudaHostAllocDefault), "cudaHostAlloc");
    lane.filter_host_bytes = want;
}

void CudaEngine::ensure_blas(Lane& lane) const {
    if (lane.blas) return;
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasCreate failed");
    void* ws = nullptr;
    cudaError_t e = cudaMalloc(&ws, kBlasWorkspace);
    if (e != cudaSuccess) {
        cublasDestroy(h);
        throw_cuda(e, "cuBLAS workspace");
    }
    // Exact float32: no TF32 tensor-core rounding of the operands.
    if (cublasSetStream(h, lane.stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(h, ws, kBlasWorkspace) != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(h);
        cudaFree(ws);
        throw BackendError(HIVE_GPU_BACKEND_NAME ": cuBLAS handle setup failed");
    }
    lane.blas = h;
    lane.blas_workspace = ws;
}

// ---- life -------------------------------------------------------------------------------

CudaEngine::CudaEngine(std::shared_ptr<CudaContext> context, std::size_t dimension, Metric metric)
    : ctx_(std::move(context)), dim_(dimension), ld_((dimension + 3) / 4 * 4), metric_(metric) {
    DeviceGuard guard(ctx_->device());
    const std::size_t optin = k::max_block_shared_bytes(ctx_->props());
    const int cap = 1 << (31 - __builtin_clz(static_cast<unsigned>(optin / k::topk_shared_bytes(1))));
    max_select_k_ = cap - k::kSelectBlock * k::kSelectItems;
#if defined(HIVE_GPU_HIP)
    tensor_cores_ = false;  // rocBLAS: float32 GEMM only
#else
    tensor_cores_ = ctx_->props().major >= 8;
#endif
    check(cudaStreamCreateWithFlags(&write_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&written_, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&producer_, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaMalloc(&fault_device_, sizeof(unsigned long long)), "cudaMalloc");
    check(cudaHostAlloc(&fault_host_, sizeof(unsigned long long), cudaHostAllocDefault), "cudaHostAlloc");
    small_host_bytes_ = std::max<std::size_t>(ld_ * sizeof(float), std::size_t{1} << 16);
    check(cudaHostAlloc(reinterpret_cast<void**>(&small_host_), small_host_bytes_, cudaHostAllocDefault),
          "cudaHostAlloc");
    record_write();
}

CudaEngine::~CudaEngine() {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(ctx_->device());
    cudaStreamSynchronize(write_stream_);
    free_lanes_.clear();
    cudaFree(rows_);
    cudaFree(factors_);
    cudaFree(ordinals_);
    ctx_->uncharge(row_bytes(capacity_));
    cudaFree(fault_device_);
    cudaFreeHost(fault_host_);
    cudaFreeHost(small_host_);
    cudaEventDestroy(written_);
    cudaEventDestroy(producer_);
    cudaStreamDestroy(write_stream_);
    cudaSetDevice(previous);
}

std::size_t CudaEngine::row_bytes(std::size_t rows) const {
    return rows * (ld_ * sizeof(float) + sizeof(float) + sizeof(std::uint32_t));
}

std::size_t CudaEngine::memory_bytes() const { return row_bytes(capacity_); }

// ---- writes -----------------------------------------------------------------------------

void CudaEngine::grow(std::size_t rows) {
    if (rows <= capacity_) return;
    const std::size_t want = std::max(rows, capacity_ + capacity_ / 2);
    float* r = nullptr;
    float* f = nullptr;
    std::uint32_t* o = nullptr;
    auto try_alloc = [&](std::size_t cap) {
        cudaError_t e = cudaMalloc(&r, cap * ld_ * sizeof(float));
        if (e == cudaSuccess) e = cudaMalloc(&f, cap * sizeof(float));
        if (e == cudaSuccess) e = cudaMalloc(&o, cap * sizeof(std::uint32_t));
        if (e != cudaSuccess) {
            cudaFree(r);
            cudaFree(f);
            cudaFree(o);
            r = nullptr, f = nullptr, o = nullptr;
            cudaGetLastError();
        }
        return e;
    };
    // The context's byte cap covers rows too: the geometric size if it fits, else the exact.
    std::size_t cap = want;
    if (!ctx_->try_charge(row_bytes(cap))) {
        cap = rows;
        ctx_->charge(row_bytes(cap), "rows");
    }
    cudaError_t e = try_alloc(cap);
    if (e == cudaErrorMemoryAllocation) {
        // Memory cached by the scratch pool is the first thing to give back.
        ctx_->trim_pool();
        e = try_alloc(cap);
        if (e == cudaErrorMemoryAllocation && cap > rows) {
            ctx_->uncharge(row_bytes(cap) - row_bytes(rows));
            e = try_alloc(cap = rows);
        }
    }
    if (e != cudaSuccess) ctx_->uncharge(row_bytes(cap));
    if (e == cudaErrorMemoryAllocation)
        throw OutOfMemoryError(HIVE_GPU_BACKEND_NAME ": cannot hold " + std::to_string(rows) + " rows of dimension " +
                               std::to_string(dim_) + " (" +
                               std::to_string(rows * ld_ * sizeof(float) >> 20) +
                               " MiB) on the device");
    check(e, "cudaMalloc");
    if (size_ > 0) {
        cudaError_t c = cudaMemcpyAsync(r, rows_, size_ * ld_ * sizeof(float), cudaMemcpyDeviceToDevice, write_stream_);
        if (c == cudaSuccess) c = cudaMemcpyAsync(f, factors_, size_ * sizeof(float), cudaMemcpyDeviceToDevice, write_stream_);
        if (c == cudaSuccess) c = cudaMemcpyAsync(o, ordinals_, size_ * sizeof(std::uint32_t), cudaMemcpyDeviceToDevice, write_stream_);
        if (c == cudaSuccess) c = cudaStreamSynchronize(write_stream_);
        if (c != cudaSuccess) {
            cudaFree(r);
            cudaFree(f);
            cudaFree(o);
            ctx_->uncharge(row_bytes(cap));
            throw_cuda(c, "copying rows to their new buffer");
        }
    }
    cudaFree(rows_);
    cudaFree(factors_);
    cudaFree(ordinals_);
    ctx_->uncharge(row_bytes(capacity_));
    rows_ = r;
    factors_ = f;
    ordinals_ = o;
    capacity_ = cap;
}

void CudaEngine::reserve(std::size_t rows) {
    DeviceGuard guard(ctx_->device());
    grow(rows);
}

void CudaEngine::upload_rows(const float* rows, std::size_t n, float* dst) {
    const std::size_t total = n * ld_ * sizeof(float);
    if (total <= small_host_bytes_) {
        pack_rows(rows, n, dim_, ld_, small_host_);
        check(cudaMemcpyAsync(dst, small_host_, total, cudaMemcpyHostToDevice, write_stream_), "cudaMemcpyAsync");
        check(cudaStreamSynchronize(write_stream_), "upload");
        return;
    }
    upload_host_rows(*ctx_, rows, n, dim_, ld_, dst);
}

// Several threads each pack chunks into their own pinned buffers (two, so the next pack
// overlaps the previous copy) and copy them up on their own stream. Touches no engine state.
void upload_host_rows(CudaContext& ctx, const float* rows, std::size_t n, std::size_t dim,
                      std::size_t ld, float* dst) {
    const std::size_t row_bytes = ld * sizeof(float);
    const std::size_t total = n * row_bytes;
    const std::size_t chunk_rows = std::max<std::size_t>(1, ctx.staging_bytes() / row_bytes);
    if (chunk_rows * row_bytes > ctx.staging_bytes())
        throw InvalidArgumentError(HIVE_GPU_BACKEND_NAME ": a row is larger than a staging buffer");
    const std::size_t chunks = ceil_div(n, chunk_rows);
    // Packing from pageable memory is what limits a thread (5-8 GB/s on the H200's host):
    // three quarters of the cores, up to 12, leave a core or two for the ids of the same add.
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    const std::size_t threads = total <= kSmallAppendBytes
                                    ? 1
                                    : std::min<std::size_t>({chunks, std::max(1u, hw * 3 / 4), 12});
    std::vector<void*> buffers = ctx.acquire_staging(threads * 2);
    std::vector<std::exception_ptr> errors(threads);
    auto worker = [&](std::size_t t) {
        cudaStream_t s = nullptr;
        cudaEvent_t ev[2] = {nullptr, nullptr};
        try {
            DeviceGuard guard(ctx.device());
            check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
            for (auto& e : ev) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
            bool used[2] = {false, false};
            int parity = 0;
            for (std::size_t c = t; c < chunks; c += threads) {
                const std::size_t first = c * chunk_rows;
                const std::size_t count = std::min(chunk_rows, n - first);
                float* buf = static_cast<float*>(buffers[t * 2 + parity]);
                if (used[parity]) check(cudaEventSynchronize(ev[parity]), "staging");
                pack_rows(rows + first * dim, count, dim, ld, buf);
                check(cudaMemcpyAsync(dst + first * ld, buf, count * row_bytes, cudaMemcpyHostToDevice, s),
                      "cudaMemcpyAsync");
                check(cudaEventRecord(ev[parity], s), "cudaEventRecord");
                used[parity] = true;
                parity ^= 1;
            }
            check(cudaStreamSynchronize(s), "upload");
        } catch (...) {
            errors[t] = std::current_exception();
        }
        if (s) {
            cudaStreamSynchronize(s);
            cudaStreamDestroy(s);
        }
        for (auto e : ev)
            if (e) cudaEventDestroy(e);
    };
    if (threads == 1) {
        worker(0);
    } else {
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (std::size_t t = 0; t < threads; ++t) pool.emplace_back(worker, t);
        for (auto& th : pool) th.join();
    }
    ctx.return_staging(buffers);
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// Rows [size_, size_ + n) are on the device: compute their factors, check them with the
// core's rules, and only then make them part of the store.
void CudaEngine::finish_append(std::size_t n, const char* what) {
    check(cudaMemsetAsync(fault_device_, 0xff, sizeof(unsigned long long), write_stream_), "cudaMemsetAsync");
    with_metric(metric_, [&](auto m) {
        k::row_stats_kernel<decltype(m)::value>
            <<<grid_for(n * k::warp_size(ctx_->props()), 256, ctx_->props()), 256, 0, write_stream_>>>(
                rows_ + size_ * ld_, ld_, n, dim_, factors_ + size_, fault_device_, kMaxSquaredNorm);
    });
    check_launch("row_stats_kernel");
    check(cudaMemcpyAsync(fault_host_, fault_device_, sizeof(unsigned long long), cudaMemcpyDeviceToHost, write_stream_),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(write_stream_), "append");
    const unsigned long long fault = *fault_host_;
    if (fault != ~0ull)
        throw_row_fault(static_cast<RowFault>(fault & 3), static_cast<std::size_t>(fault >> 2), n, what);
    size_ += n;
    record_write();
}

void CudaEngine::append_f32(const float* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    DeviceGuard guard(ctx_->device());
    grow(size_ + n);
    upload_rows(rows, n, rows_ + size_ * ld_);
    check(cudaMemcpyAsync(ordinals_ + size_, ordinals, n * sizeof(std::uint32_t), cudaMemcpyHostToDevice, write_stream_),
          "cudaMemcpyAsync");
    finish_append(n, "vectors");
}

void CudaEngine::check_device_pointer(const void* p, const char* what) const {
    cudaPointerAttributes a{};
    cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
        cudaGetLastError();
        throw InvalidArgumentError(std::string(what) + " is not a CUDA device pointer");
    }
    if (!k::is_device_memory(a))
        throw InvalidArgumentError(std::string(what) + " is not in CUDA device memory");
    if (a.device != ctx_->device())
        throw InvalidArgumentError(std::string(what) + " lives on CUDA device " + std::to_string(a.device) +
                                   ", the storage on device " + std::to_string(ctx_->device()));
}

void CudaEngine::wait_producer(cudaStream_t ours, cudaEvent_t event, std::uintptr_t producer) const {
    if (producer == 0) return;
    check(cudaEventRecord(event, producer_stream(producer)), "cudaEventRecord on the producer's stream");
    check(cudaStreamWaitEvent(ours, event, 0), "cudaStreamWaitEvent");
}

void CudaEngine::append_device(const void* rows_in, Dtype src, std::size_t ld, const std::uint32_t* ordinals,
                               std::size_t n, std::uintptr_t stream) {
    if (n == 0) return;
    if (src != Dtype::Float32) throw InvalidDtypeError("device rows must be float32 for now");
    const float* rows = static_cast<const float*>(rows_in);
    DeviceGuard guard(ctx_->device());
    check_device_pointer(rows, "vectors");
    grow(size_ + n);
    wait_producer(write_stream_, producer_, stream);
    float* dst = rows_ + size_ * ld_;
    if (ld_ != dim_) check(cudaMemsetAsync(dst, 0, n * ld_ * sizeof(float), write_stream_), "cudaMemsetAsync");
    check(cudaMemcpy2DAsync(dst, ld_ * sizeof(float), rows, ld * sizeof(float), dim_ * sizeof(float), n,
                            cudaMemcpyDeviceToDevice, write_stream_),
          "cudaMemcpy2DAsync");
    check(cudaMemcpyAsync(ordinals_ + size_, ordinals, n * sizeof(std::uint32_t), cudaMemcpyHostToDevice, write_stream_),
          "cudaMemcpyAsync");
    finish_append(n, "vectors");
}

void CudaEngine::write_f32(std::size_t slot, const float* row) {
    DeviceGuard guard(ctx_->device());
    pack_rows(row, 1, dim_, ld_, small_host_);
    check(cudaMemcpyAsync(rows_ + slot * ld_, small_host_, ld_ * sizeof(float), cudaMemcpyHostToDevice, write_stream_),
          "cudaMemcpyAsync");
    with_metric(metric_, [&](auto m) {
        k::row_stats_kernel<decltype(m)::value><<<1, 256, 0, write_stream_>>>(
            rows_ + slot * ld_, ld_, 1, dim_, factors_ + slot, nullptr, kMaxSquaredNorm);
    });
    check_launch("row_stats_kernel");
    record_write();
    // small_host_ is reused by the next write.
    check(cudaStreamSynchronize(write_stream_), "write");
}

void CudaEngine::move(std::size_t src, std::size_t dst) {
    DeviceGuard guard(ctx_->device());
    check(cudaMemcpyAsync(rows_ + dst * ld_, rows_ + src * ld_, ld_ * sizeof(float), cudaMemcpyDeviceToDevice, write_stream_),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(factors_ + dst, factors_ + src, sizeof(float), cudaMemcpyDeviceToDevice, write_stream_),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(ordinals_ + dst, ordinals_ + src, sizeof(std::uint32_t), cudaMemcpyDeviceToDevice, write_stream_),
          "cudaMemcpyAsync");
    record_write();
}

void CudaEngine::truncate(std::size_t n) {
    DeviceGuard guard(ctx_->device());
    if (n >= size_) return;
    size_ = n;
    if (n == 0) {
        // An emptied store gives its device memory back.
        check(cudaStreamSynchronize(write_stream_), "truncate");
        cudaFree(rows_);
        cudaFree(factors_);
        cudaFree(ordinals_);
        ctx_->uncharge(row_bytes(capacity_));
        rows_ = nullptr;
        factors_ = nullptr;
        ordinals_ = nullptr;
        capacity_ = 0;
    }
}

void CudaEngine::set_ordinals(const std::uint32_t* ordinals, std::size_t n) {
    DeviceGuard guard(ctx_->device());
    check(cudaMemcpyAsync(ordinals_, ordinals, n * sizeof(std::uint32_t), cudaMemcpyHostToDevice, write_stream_),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(write_stream_), "set_ordinals");
    record_write();
}

void CudaEngine::read(std::size_t first, std::size_t n, float* out) const {
    if (n == 0) return;
    DeviceGuard guard(ctx_->device());
    LeasedLane lane(*this);
    after_writes(*lane);
    check(cudaMemcpy2DAsync(out, dim_ * sizeof(float), rows_ + first * ld_, ld_ * sizeof(float), dim_ * sizeof(float), n,
                            cudaMemcpyDeviceToHost, lane->stream),
          "cudaMemcpy2DAsync");
    check(cudaStreamSynchronize(lane->stream), "read");
}

// ---- search -----------------------------------------------------------------------------

// Byte offsets of the pieces of one search's scratch, each 256-byte aligned.
struct Carve {
    std::size_t at = 0;
    std::size_t take(std::size_t bytes) {
        const std::size_t here = at;
        at += (bytes + 255) / 256 * 256;
        return here;
    }
};

template <typename F>
void CudaEngine::with_scan_kernel(bool short_rounds, bool filtered, F&& f) const {
    with_metric(metric_, [&](auto m) {
        with_vpl(ld_ / 4, k::warp_size(ctx_->props()), [&](auto v) {
            constexpr int M = decltype(m)::value, V = decltype(v)::value;
            if (short_rounds)
                filtered ? f(k::scan_query_kernel<M, V, k::kWarpRowsSmall, true>)
                         : f(k::scan_query_kernel<M, V, k::kWarpRowsSmall>);
            else
                filtered ? f(k::scan_query_kernel<M, V, k::kWarpSize, true>) : f(k::scan_query_kernel<M, V>);
        });
    });
}

CudaEngine::Plan CudaEngine::plan(std::size_t nq, std::size_t kk, const RowView& v) const {
    const std::size_t n = v.n;
    Plan p;
    const std::size_t optin = k::max_block_shared_bytes(ctx_->props());
    if (kk > static_cast<std::size_t>(max_select_k_)) {
        p.path = Path::Sorted;
        return p;
    }
    p.cap = next_pow2(kk + k::kScanBlock);
    p.shared = k::topk_shared_bytes(p.cap) + ld_ * sizeof(float);
    if (nq != 1 || p.shared > optin) {
        p.path = Path::Gemm;
        return p;
    }
    p.path = Path::Fused;
    // A store too small to give every SM a block of full-warp rounds takes short rounds.
    const std::size_t sms = static_cast<std::size_t>(ctx_->props().multiProcessorCount);
    p.short_rounds = n < static_cast<std::size_t>(k::kScanBlock) * sms;
    const std::size_t per_round = p.short_rounds
                                      ? k::kScanBlock / k::warp_size(ctx_->props()) * k::kWarpRowsSmall
                                      : static_cast<std::size_t>(k::kScanBlock);
    p.filtered = v.mask != nullptr || v.list != nullptr;
    const int slot = (31 - __builtin_clz(static_cast<unsigned>(p.cap))) + (p.short_rounds ? 32 : 0) + (p.filtered ? 64 : 0);
    int per_sm = scan_blocks_per_sm_[slot].load(std::memory_order_relaxed);
    if (per_sm == 0) {
        with_scan_kernel(p.short_rounds, p.filtered, [&](auto kernel) {
            allow_shared(kernel, p.shared);
            check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, k::kScanBlock, p.shared),
                  "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
        });
        per_sm = std::max(per_sm, 1);
        scan_blocks_per_sm_[slot].store(per_sm, std::memory_order_relaxed);
    }
    // Enough blocks to fill the chip, but not so many that merging their k-lists costs
    // more than the scan (large k).
    p.blocks = std::min<std::size_t>({static_cast<std::size_t>(per_sm) * sms, ceil_div(n, per_round),
                                      std::max<std::size_t>(1, n / (8 * kk))});
    p.blocks = std::max<std::size_t>(p.blocks, 1);
    p.workspace = p.blocks * kk * (sizeof(std::uint64_t) + sizeof(std::uint32_t));
    return p;
}

void CudaEngine::search_chunk(Lane& lane, const RowView& v, const float* host_queries,
                              const float* device_queries, std::size_t device_ld, std::size_t qn, std::size_t kk,
                              float* scores, std::int64_t* slots, float* device_scores) const {
    cudaStream_t s = lane.stream;
    const Plan pl = plan(qn, kk, v);
    const std::size_t qbytes = qn * ld_ * sizeof(float);
    const std::size_t rbytes = qn * kk * (sizeof(float) + sizeof(std::int64_t));
    if (host_queries && pl.path == Path::Fused) {
        // One query from the host: one copy up, one launch whose last block writes the
        // results straight into pinned host memory, one wait.
        const std::size_t at_res = (qbytes + 255) / 256 * 256;
        ensure_host(lane, at_res + rbytes);
        pack_rows(host_queries, qn, dim_, ld_, static_cast<float*>(lane.host));
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
        ensure_host(lane, std::max(qbytes, rbytes));
        pack_rows(host_queries, qn, dim_, ld_, static_cast<float*>(lane.host));
        check(cudaMemcpyAsync(dq, lane.host, qbytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    } else {
        ensure_host(lane, rbytes);
        if (ld_ != dim_) check(cudaMemsetAsync(dq, 0, qbytes, s), "cudaMemsetAsync");
        check(cudaMemcpy2DAsync(dq, ld_ * sizeof(float), device_queries, device_ld * sizeof(float),
                                dim_ * sizeof(float), qn, cudaMemcpyDeviceToDevice, s),
              "cudaMemcpy2DAsync");
        check(cudaMemsetAsync(lane.fault_device, 0xff, sizeof(unsigned long long), s), "cudaMemsetAsync");
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

void CudaEngine::search(const float* queries, std::size_t nq, std::size_t kk, float* scores,
                        std::int64_t* slots) const {
    DeviceGuard guard(ctx_->device());
    LeasedLane lane(*this);
    after_writes(*lane);
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
        const std::size_t qn = std::min(kQueryChunk, nq - q0);
        search_chunk(*lane, all_rows(), queries + q0 * dim_, nullptr, 0, qn, kk, scores + q0 * kk, slots + q0 * kk,
                     nullptr);
    }
}

void CudaEngine::search_filtered(const float* queries, std::size_t nq, std::size_t kk, const SlotFilter& filter,
                                 float* scores, std::int64_t* slots) const {
    DeviceGuard guard(ctx_->device());
    LeasedLane lane(*this);
    after_writes(*lane);
    cudaStream_t s = lane->stream;
    const bool sparse = filter.slots != nullptr && filter.count * kSparseRatio <= size_;
    // The bits (dense) or the slot list (sparse) go up once for every query, through the
    // lane's pinned buffer.
    const std::size_t bytes = sparse ? filter.count * sizeof(std::uint32_t) : ceil_div(size_, 64) * sizeof(std::uint64_t);
    ensure_filter_host(*lane, bytes);
    std::memcpy(lane->filter_host, sparse ? static_cast<const void*>(filter.slots) : filter.bits, bytes);
    Scratch dfilter(*ctx_, bytes, s);
    check(cudaMemcpyAsync(dfilter.as<void>(), lane->filter_host, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    RowView v = all_rows();
    Scratch compact;
    bool remap = false;
    if (!sparse) {
        v.mask = dfilter.as<std::uint64_t>();
    } else if (RowView listed{rows_, factors_, ordinals_, filter.count, nullptr, dfilter.as<std::uint32_t>()};
               nq == 1 && plan(1, kk, listed).path == Path::Fused) {
        // One query: the scan reads the listed rows where they are.
        v = listed;
    } else {
        // Batches (and k or rows beyond the scan): the listed rows are copied into a compact
        // matrix searched like a small store (GEMM, TF32 screen and exact re-rank included);
        // its row i is slot filter.slots[i].
        const std::size_t n = filter.count;
        Carve c;
        const std::size_t at_rows = c.take(n * ld_ * sizeof(float)), at_f = c.take(n * sizeof(float)),
                          at_o = c.take(n * sizeof(std::uint32_t));
        compact = Scratch(*ctx_, c.at, s);
        auto* base = compact.as<unsigned char>();
        v = RowView{reinterpret_cast<float*>(base + at_rows), reinterpret_cast<float*>(base + at_f),
                    reinterpret_cast<std::uint32_t*>(base + at_o), n};
        const unsigned grid = grid_for(n * k::warp_size(ctx_->props()), 256, ctx_->props());
        k::gather_rows_kernel<<<grid, 256, 0, s>>>(
            reinterpret_cast<const float4*>(rows_), ld_ / 4, factors_, ordinals_, dfilter.as<std::uint32_t>(), n,
            reinterpret_cast<float4*>(base + at_rows), reinterpret_cast<float*>(base + at_f),
            reinterpret_cast<std::uint32_t*>(base + at_o));
        check_launch("gather_rows_kernel");
        remap = true;
    }
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
        const std::size_t qn = std::min(kQueryChunk, nq - q0);
        search_chunk(*lane, v, queries + q0 * dim_, nullptr, 0, qn, kk, scores + q0 * kk, slots + q0 * kk, nullptr);
    }
    if (remap)
        for (std::size_t i = 0; i < nq * kk; ++i) slots[i] = filter.slots[slots[i]];
}

void CudaEngine::search_device(const void* queries_in, Dtype src, std::size_t ld, std::size_t nq, std::size_t kk,
                               std::uintptr_t stream, float* scores, std::int64_t* slots,
                               float* device_scores) const {
    if (src != Dtype::Float32) throw InvalidDtypeError("device queries must be float32 for now");
    const float* queries = static_cast<const float*>(queries_in);
    DeviceGuard guard(ctx_->device());
    check_device_pointer(queries, "queries");
    if (device_scores) check_device_pointer(device_scores, "the output array");
    LeasedLane lane(*this);
    after_writes(*lane);
    wait_producer(lane->stream, lane->ingest, stream);
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
        const std::size_t qn = std::min(kQueryChunk, nq - q0);
        try {
            search_chunk(*lane, all_rows(), nullptr, queries + q0 * ld, ld, qn, kk, scores + q0 * kk, slots + q0 * kk,
                         device_scores ? device_scores + q0 * kk : nullptr);
        } catch (const RowFaultAt& f) {
            throw_row_fault(static_cast<RowFault>(f.code), q0 + f.row, nq, nq == 1 ? "query" : "queries");
        }
    }
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

void CudaEngine::search_fused(Lane& lane, const Plan& pl, const RowView& v, const float* dq, std::size_t kk, void* work,
                              float* dscores, std::int64_t* dslots, bool one_launch) const {
    cudaStream_t s = lane.stream;
    const std::size_t ld4 = ld_ / 4;
    auto* ckeys = static_cast<std::uint64_t*>(work);
    auto* cvals = reinterpret_cast<std::uint32_t*>(ckeys + pl.blocks * kk);
    with_scan_kernel(pl.short_rounds, pl.filtered, [&](auto kernel) {
        allow_shared(kernel, pl.shared);
        kernel<<<static_cast<unsigned>(pl.blocks), k::kScanBlock, pl.shared, s>>>(
            reinterpret_cast<const float4*>(v.rows), ld4, v.n, v.list, v.mask, reinterpret_cast<const float4*>(dq),
            v.factors, v.ordinals, static_cast<int>(kk), pl.cap, ckeys, cvals, one_launch ? lane.done : nullptr, dscores,
            dslots);
        check_launch("scan_query_kernel");
    });
    if (one_launch) return;
    with_metric(metric_, [&](auto m) {
        // Short candidate lists (small stores) merge one item per thread per round: a
        // smaller shared array, so a cheaper sort, where latency is what counts.
        constexpr bool kHigher = k::MetricTraits<decltype(m)::value>::kHigherFirst;
        const bool short_list = pl.blocks * kk <= 4 * static_cast<std::size_t>(k::kSelectBlock);
        const int items = short_list ? 1 : k::kSelectItems;
        const int mcap = next_pow2(kk + k::kSelectBlock * items);
        const std::size_t mshared = k::topk_shared_bytes(mcap);
        auto merge = short_list ? k::merge_lists_kernel<kHigher, 1> : k::merge_lists_kernel<kHigher, k::kSelectItems>;
        allow_shared(merge, mshared);
        merge<<<1, k::kSelectBlock, mshared, s>>>(ckeys, cvals, pl.blocks * kk, static_cast<int>(kk), mcap, nullptr,
                                                  nullptr, nullptr, nullptr, dscores, dslots);
        check_launch("merge_lists_kernel");
    });
}

void CudaEngine::gemm_scores(Lane& lane, const RowView& v, const float* dq, std::size_t nq, std::size_t col0,
                             std::size_t cols, float* out, bool tf32) const {
    ensure_blas(lane);
    if (tf32 != lane.blas_tf32) {
        if (cublasSetMathMode(lane.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH) !=
            CUBLAS_STATUS_SUCCESS)
            throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasSetMathMode failed");
        lane.blas_tf32 = tf32;
    }
    const float one = 1.0f, zero = 0.0f;
    // Column-major view: out (cols x nq, ld cols) = rows(col0..)^T (cols x dim) * Q (dim x nq).
    cublasStatus_t st = cublasSgemm(lane.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(nq),
                                    static_cast<int>(dim_), &one, v.rows + col0 * ld_, static_cast<int>(ld_), dq,
                                    static_cast<int>(ld_), &zero, out, static_cast<int>(cols));
    if (st != CUBLAS_STATUS_SUCCESS)
        throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasSgemm failed with status " + std::to_string(static_cast<int>(st)));
}

bool CudaEngine::skinny(std::size_t nq) const {
    return nq <= kSkinnyMaxQueries && kSkinnyMaxQueries * ld_ * sizeof(float) <= 40 * 1024;
}

std::size_t CudaEngine::screen_width(std::size_t nq, std::size_t kk, std::size_t n) const {
    if (!tensor_cores_ || skinny(nq) || kk > kScreenMaxK) return 0;
    const std::size_t kc = std::min(n, 2 * kk + 32);
    return kc <= static_cast<std::size_t>(max_select_k_) ? kc : 0;
}

void CudaEngine::search_gemm(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                             std::size_t kk, float* dscores, std::int64_t* dslots) const {
    cudaStream_t s = lane.stream;
    const auto& p = ctx_->props();
    const std::size_t entry = sizeof(std::uint64_t) + sizeof(std::uint32_t);
    const std::size_t kc = screen_width(nq, kk, v.n);
    if (kc == 0) {
        search_gemm_exact(lane, v, dq, qf, nq, kk, dscores, dslots);
        return;
    }
    // Tensor-core screening, then the exact float32 re-rank (kernels/rerank.cuh).
    Carve c;
    const std::size_t at_run = c.take(nq * kc * entry), at_max = c.take(sizeof(unsigned)),
                      at_ok = c.take(nq);
    Scratch ws(*ctx_, c.at, s);
    auto* base = ws.as<unsigned char>();
    auto* rkeys = reinterpret_cast<std::uint64_t*>(base + at_run);
    auto* rvals = reinterpret_cast<std::uint32_t*>(rkeys + nq * kc);
    auto* max_bits = reinterpret_cast<unsigned*>(base + at_max);
    auto* ok = base + at_ok;
    // Rows a mask drops never become candidates, so the proof below speaks of the rows
    // that pass: the kc candidates are the best kc of those (all of them when fewer).
    select_tiles(lane, v, dq, qf, nq, kc, true, rkeys, rvals);
    check(cudaMemsetAsync(max_bits, 0, sizeof(unsigned), s), "cudaMemsetAsync");
    if (metric_ != Metric::Cosine) {
        k::max_factor_kernel<<<grid_for(v.n, 256, p), 256, 0, s>>>(v.factors, v.n, max_bits);
        check_launch("max_factor_kernel");
    }
    const int cap = next_pow2(kc);
    with_metric(metric_, [&](auto m) {
        auto kernel = k::rerank_kernel<decltype(m)::value>;
        allow_shared(kernel, k::topk_shared_bytes(cap));
        kernel<<<static_cast<unsigned>(nq), k::kSelectBlock, k::topk_shared_bytes(cap), s>>>(
            rkeys, rvals, static_cast<int>(kc), static_cast<int>(kk), cap, reinterpret_cast<const float4*>(v.rows),
            ld_ / 4, reinterpret_cast<const float4*>(dq), v.factors, v.ordinals, qf, max_bits, k::screen_bound(dim_),
            dscores, dslots, ok);
        check_launch("rerank_kernel");
    });
    check(cudaMemcpyAsync(lane.flags_host, ok, nq, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s), "search");
    std::vector<std::size_t> redo;
    for (std::size_t q = 0; q < nq; ++q)
        if (!lane.flags_host[q]) redo.push_back(q);
    if (redo.empty()) return;
    // Queries the screen could not settle (near-ties around the k-th): float32 GEMM again.
    if (redo.size() * 4 > nq) {
        search_gemm_exact(lane, v, dq, qf, nq, kk, dscores, dslots);
        return;
    }
    const std::size_t nr = redo.size();
    Carve r;
    const std::size_t at_q = r.take(nr * ld_ * sizeof(float)), at_qf = r.take(nr * sizeof(float)),
                      at_sc = r.take(nr * kk * sizeof(float)), at_sl = r.take(nr * kk * sizeof(std::int64_t));
    Scratch again(*ctx_, r.at, s);
    auto* rb = again.as<unsigned char>();
    auto* rq = reinterpret_cast<float*>(rb + at_q);
    auto* rqf = reinterpret_cast<float*>(rb + at_qf);
    auto* rsc = reinterpret_cast<float*>(rb + at_sc);
    auto* rsl = reinterpret_cast<std::int64_t*>(rb + at_sl);
    for (std::size_t i = 0; i < nr; ++i) {
        check(cudaMemcpyAsync(rq + i * ld_, dq + redo[i] * ld_, ld_ * sizeof(float), cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
        check(cudaMemcpyAsync(rqf + i, qf + redo[i], sizeof(float), cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    }
    search_gemm_exact(lane, v, rq, rqf, nr, kk, rsc, rsl);
    for (std::size_t i = 0; i < nr; ++i) {
        check(cudaMemcpyAsync(dscores + redo[i] * kk, rsc + i * kk, kk * sizeof(float), cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
        check(cudaMemcpyAsync(dslots + redo[i] * kk, rsl + i * kk, kk * sizeof(std::int64_t),
                              cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
    }
}

void CudaEngine::search_gemm_exact(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                                   std::size_t kk, float* dscores, std::int64_t* dslots) const {
    cudaStream_t s = lane.stream;
    const std::size_t entry = sizeof(std::uint64_t) + sizeof(std::uint32_t);
    Scratch run(*ctx_, nq * kk * entry, s);
    auto* rkeys = run.as<std::uint64_t>();
    auto* rvals = reinterpret_cast<std::uint32_t*>(rkeys + nq * kk);
    select_tiles(lane, v, dq, qf, nq, kk, false, rkeys, rvals);
    with_metric(metric_, [&](auto m) {
        constexpr bool kHigher = k::MetricTraits<decltype(m)::value>::kHigherFirst;
        k::finalize_kernel<kHigher><<<grid_for(nq * kk, 256, ctx_->props()), 256, 0, s>>>(rkeys, rvals, nq * kk,
                                                                                         dscores, dslots);
        check_launch("finalize_kernel");
    });
}

void CudaEngine::select_tiles(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                              std::size_t kk, bool tf32, std::uint64_t* rkeys, std::uint32_t* rvals) const {
    // GEMM tiles on lane.stream, selection on lane.aux: the selection of tile t runs while
    // tile t + 1 is multiplied. Two score buffers bound the scratch. The running top kk
    // (sorted keys) ends in rkeys/rvals, ordered before later work on lane.stream.
    cudaStream_t s = lane.stream, a = lane.aux;
    const auto& p = ctx_->props();
    const std::size_t n = v.n;
    std::size_t tile = std::min(n, std::max<std::size_t>(1024, kTileBudgetFloats / 2 / nq));
    if (tile < n) tile = std::max<std::size_t>(256, tile / 256 * 256);
    tile = std::min<std::size_t>(tile, static_cast<std::size_t>(1) << 30);  // cuBLAS takes int sizes
    const std::size_t want_blocks = static_cast<std::size_t>(p.multiProcessorCount) * 2;
    std::size_t splits = nq >= want_blocks ? 1 : std::min(ceil_div(want_blocks, nq), std::max<std::size_t>(1, tile / 8192));
    splits = std::max<std::size_t>(1, splits);
    const std::size_t tiles = ceil_div(n, tile);
    // A few queries: the bandwidth-bound skinny product reads the rows once at full speed.
    const bool thin = !tf32 && skinny(nq);
    const std::size_t entry = sizeof(std::uint64_t) + sizeof(std::uint32_t);
    Carve c;
    const std::size_t at_t0 = c.take(nq * tile * sizeof(float));
    const std::size_t at_t1 = c.take(tiles > 1 ? nq * tile * sizeof(float) : 0);
    const std::size_t at_cand = c.take(splits > 1 ? nq * splits * kk * entry : 0);
    Scratch ws(*ctx_, c.at, s);
    auto* base = ws.as<unsigned char>();
    float* tile_buf[2] = {reinterpret_cast<float*>(base + at_t0), reinterpret_cast<float*>(base + at_t1)};
    auto* ckeys = reinterpret_cast<std::uint64_t*>(base + at_cand);
    auto* cvals = reinterpret_cast<std::uint32_t*>(ckeys + nq * splits * kk);
    const int cap = next_pow2(kk + k::kSelectBlock * k::kSelectItems);
    const std::size_t shared = k::topk_shared_bytes(cap);
    with_metric(metric_, [&](auto m) {
        constexpr int M = decltype(m)::value;
        constexpr bool kHigher = k::MetricTraits<M>::kHigherFirst;
        auto select = k::select_tile_kernel<M>;
        auto merge = k::merge_lists_kernel<kHigher>;
        allow_shared(select, shared);
        allow_shared(merge, shared);
        for (std::size_t t = 0; t < tiles; ++t) {
            const std::size_t c0 = t * tile;
            const std::size_t cols = std::min(tile, n - c0);
            const bool first = t == 0;
            const int b = static_cast<int>(t % 2);
            float* buf = tile_buf[b];
            if (t >= 2) check(cudaStreamWaitEvent(s, lane.tile_free[b], 0), "cudaStreamWaitEvent");
            if (thin)
                skinny_scores(lane, v, dq, nq, c0, cols, buf);
            else
                gemm_scores(lane, v, dq, nq, c0, cols, buf, tf32);
            check(cudaEventRecord(lane.tile_scored[b], s), "cudaEventRecord");
            check(cudaStreamWaitEvent(a, lane.tile_scored[b], 0), "cudaStreamWaitEvent");
            const dim3 grid(static_cast<unsigned>(nq), static_cast<unsigned>(splits));
            if (splits == 1) {
                select<<<grid, k::kSelectBlock, shared, a>>>(buf, cols, cols, c0, v.factors, v.ordinals, v.mask, qf,
                                                             static_cast<int>(kk), cap, first ? nullptr : rkeys, rvals,
                                                             rkeys, rvals);
                check_launch("select_tile_kernel");
            } else {
                select<<<grid, k::kSelectBlock, shared, a>>>(buf, cols, cols, c0, v.factors, v.ordinals, v.mask, qf,
                                                             static_cast<int>(kk), cap, nullptr, nullptr, ckeys, cvals);
                check_launch("select_tile_kernel");
                merge<<<static_cast<unsigned>(nq), k::kSelectBlock, shared, a>>>(
                    ckeys, cvals, splits * kk, static_cast<int>(kk), cap, first ? nullptr : rkeys, rvals, rkeys, rvals,
                    nullptr, nullptr);
                check_launch("merge_lists_kernel");
            }
            check(cudaEventRecord(lane.tile_free[b], a), "cudaEventRecord");
        }
    });
    check(cudaEventRecord(lane.selected, a), "cudaEventRecord");
    check(cudaStreamWaitEvent(s, lane.selected, 0), "cudaStreamWaitEvent");
}

void CudaEngine::skinny_scores(Lane& lane, const RowView& v, const float* dq, std::size_t nq, std::size_t col0,
                               std::size_t cols, float* out) const {
    const std::size_t ld4 = ld_ / 4;
    auto launch = [&](auto qn) {
        constexpr int Q = decltype(qn)::value;
        with_vpl(ld4, k::warp_size(ctx_->props()), [&](auto vpl) {
            auto kernel = k::skinny_dots_kernel<Q, decltype(vpl)::value>;
            const std::size_t shared = Q * ld_ * sizeof(float);
            allow_shared(kernel, shared);
            int per_sm = 0;
            check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, k::kSkinnyBlock, shared),
                  "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
            const std::size_t blocks = std::min<std::size_t>(
                static_cast<std::size_t>(std::max(per_sm, 1)) * ctx_->props().multiProcessorCount,
                std::max<std::size_t>(1, ceil_div(cols, 2 * (k::kSkinnyBlock / k::warp_size(ctx_->props())))));
            kernel<<<static_cast<unsigned>(blocks), k::kSkinnyBlock, shared, lane.stream>>>(
                reinterpret_cast<const float4*>(v.rows + col0 * ld_), ld4, cols, reinterpret_cast<const float4*>(dq),
                static_cast<int>(nq), out, cols);
            check_launch("skinny_dots_kernel");
        });
    };
    if (nq <= 2) launch(std::integral_constant<int, 2>{});
    else launch(std::integral_constant<int, 4>{});
}

void CudaEngine::search_sorted(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                               std::size_t kk, float* dscores, std::int64_t* dslots) const {
    // k beyond shared memory: score every row, sort all keys, keep the first k.
    cudaStream_t s = lane.stream;
    const std::size_t n = v.n;
    Scratch dots(*ctx_, n * sizeof(float), s);
    Scratch keys(*ctx_, 2 * n * sizeof(std::uint64_t), s);
    Scratch vals(*ctx_, 2 * n * sizeof(std::uint32_t), s);
    auto* k_in = keys.as<std::uint64_t>();
    auto* k_out = k_in + n;
    auto* v_in = vals.as<std::uint32_t>();
    auto* v_out = v_in + n;
    std::size_t temp_bytes = 0;
    check(k::radix_sort_pairs(nullptr, temp_bytes, k_in, k_out, v_in, v_out, static_cast<int>(n), s),
          k::kRadixSortName);
    Scratch temp(*ctx_, temp_bytes, s);
    with_metric(metric_, [&](auto m) {
        constexpr int M = decltype(m)::value;
        for (std::size_t q = 0; q < nq; ++q) {
            gemm_scores(lane, v, dq + q * ld_, 1, 0, n, dots.as<float>(), false);
            k::keys_from_scores_kernel<M><<<grid_for(n, 256, ctx_->props()), 256, 0, s>>>(
                dots.as<float>(), n, v.factors, v.ordinals, v.mask, qf + q, k_in, v_in);
            check_launch("keys_from_scores_kernel");
            check(k::radix_sort_pairs(temp.as<void>(), temp_bytes, k_in, k_out, v_in, v_out, static_cast<int>(n), s),
                  k::kRadixSortName);
            k::finalize_kernel<k::MetricTraits<M>::kHigherFirst><<<grid_for(kk, 256, ctx_->props()), 256, 0, s>>>(
                k_out, v_out, kk, dscores + q * kk, dslots + q * kk);
            check_launch("finalize_kernel");
        }
    });
}

}  // namespace hive_gpu::cuda
