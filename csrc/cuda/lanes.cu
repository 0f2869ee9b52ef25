#include "cuda/lanes.hpp"

#include <algorithm>
#include <exception>

#include "cuda/cuda_check.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::cuda {

namespace {

constexpr std::size_t kBlasWorkspace = std::size_t{32} << 20;

LanePtr make_lane() {
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

}  // namespace

void LaneDeleter::operator()(Lane* lane) const {
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

void Lane::ensure_host(std::size_t bytes) {
    if (host_bytes >= bytes) return;
    if (host) cudaFreeHost(host);
    host = nullptr;
    host_device = nullptr;
    host_bytes = 0;
    const std::size_t want = std::max<std::size_t>(bytes, std::size_t{1} << 16);
    check(cudaHostAlloc(&host, want, cudaHostAllocMapped), "cudaHostAlloc");
    check(cudaHostGetDevicePointer(&host_device, host, 0), "cudaHostGetDevicePointer");
    host_bytes = want;
}

void Lane::ensure_filter_host(std::size_t bytes) {
    if (filter_host_bytes >= bytes) return;
    if (filter_host) cudaFreeHost(filter_host);
    filter_host = nullptr;
    filter_host_bytes = 0;
    const std::size_t want = std::max<std::size_t>(bytes, std::size_t{1} << 16);
    check(cudaHostAlloc(&filter_host, want, cudaHostAllocDefault), "cudaHostAlloc");
    filter_host_bytes = want;
}

void Lane::ensure_blas() {
    if (blas) return;
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasCreate failed");
    void* ws = nullptr;
    cudaError_t e = cudaMalloc(&ws, kBlasWorkspace);
    if (e != cudaSuccess) {
        cublasDestroy(h);
        throw_cuda(e, "cuBLAS workspace");
    }
    // Exact float32: no TF32 tensor-core rounding of the operands.
    if (cublasSetStream(h, stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(h, ws, kBlasWorkspace) != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(h);
        cudaFree(ws);
        throw BackendError(HIVE_GPU_BACKEND_NAME ": cuBLAS handle setup failed");
    }
    blas = h;
    blas_workspace = ws;
    blas_tf32 = false;
}

LanePool::Lease::Lease(LanePool& pool) : pool_(pool), exceptions_(std::uncaught_exceptions()) {
    {
        std::lock_guard<std::mutex> lock(pool.mutex_);
        if (!pool.free_.empty()) {
            lane_ = std::move(pool.free_.back());
            pool.free_.pop_back();
        }
    }
    if (!lane_) lane_ = make_lane();
}

LanePool::Lease::~Lease() {
    // Every call that completes has synchronized the lane's stream last.
    if (std::uncaught_exceptions() > exceptions_ && cudaStreamSynchronize(lane_->stream) != cudaSuccess) {
        cudaGetLastError();
        return;  // the lane is dropped (and destroyed) rather than reused
    }
    std::lock_guard<std::mutex> lock(pool_.mutex_);
    pool_.free_.push_back(std::move(lane_));
}

void LanePool::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.clear();
}

}  // namespace hive_gpu::cuda
