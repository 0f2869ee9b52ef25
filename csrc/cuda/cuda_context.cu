#include "cuda/cuda_context.hpp"

#include <algorithm>
#include <exception>
#include <string>
#include <system_error>
#include <thread>

#include "cuda/cuda_check.hpp"
#include "cuda/cuda_engine.hpp"
#include "hive_gpu/backends.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::cuda {

namespace {

constexpr std::uint64_t kDefaultReleaseThreshold = std::uint64_t{1} << 30;

}  // namespace

// What only the CUDA build has: the driver probe, device_info() and the backend entry. The
// ROCm build compiles the rest of this file with HIP and brings its own
// (csrc/rocm/rocm_context.hip, rocm_device.hip).
#if !defined(HIVE_GPU_HIP)

namespace {

// Asked once per process: the driver's answer does not change while we run.
struct Probe {
    int count = 0;
    std::string reason;
};

const Probe& probe() {
    static const Probe p = [] {
        Probe r;
        int driver = 0;
        cudaError_t e = cudaDriverGetVersion(&driver);
        if (e != cudaSuccess || driver == 0) {
            r.reason = "no CUDA driver is installed (libcuda.so could not be loaded)";
            cudaGetLastError();
            return r;
        }
        e = cudaGetDeviceCount(&r.count);
        if (e != cudaSuccess) {
            r.count = 0;
            r.reason = std::string("the CUDA runtime found no usable device: ") + cudaGetErrorString(e);
            cudaGetLastError();
        } else if (r.count == 0) {
            r.reason = "no CUDA device is present";
        } else if (std::string why = lazy::cublas_unavailable_reason(); !why.empty()) {
            r.count = 0;
            r.reason = why;
        }
        return r;
    }();
    return p;
}

std::string version_string(int v) {
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace

#endif  // !HIVE_GPU_HIP

CudaContext::CudaContext(int device) : device_(device) {
    DeviceGuard guard(device_);
    check(cudaGetDeviceProperties(&props_, device_), "cudaGetDeviceProperties");
    cudaMemPoolProps pp{};
    pp.allocType = cudaMemAllocationTypePinned;
    pp.handleTypes = cudaMemHandleTypeNone;
    pp.location.type = cudaMemLocationTypeDevice;
    pp.location.id = device_;
    check(cudaMemPoolCreate(&pool_, &pp), "cudaMemPoolCreate");
    config_.release_threshold = kDefaultReleaseThreshold;
    std::uint64_t threshold = config_.release_threshold;
    check(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold),
          "cudaMemPoolSetAttribute");
}

CudaContext::~CudaContext() {
    DeviceGuard guard(device_);
    cudaDeviceSynchronize();
    for (void* p : staging_all_) cudaFreeHost(p);
    if (pool_) cudaMemPoolDestroy(pool_);
}

#if !defined(HIVE_GPU_HIP)
DeviceInfo CudaContext::device_info() const {
    DeviceGuard guard(device_);
    DeviceInfo d;
    d.name = props_.name;
    d.backend = "cuda";
    std::size_t free_b = 0, total_b = 0;
    check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    d.vram_total = total_b;
    d.vram_available = free_b;
    d.vram_used = total_b - free_b;
    int driver = 0, runtime = 0;
    check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
    check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
    d.driver_version = version_string(driver) + " (CUDA driver API; runtime " + version_string(runtime) + ")";
    d.compute_capability = std::to_string(props_.major) + "." + std::to_string(props_.minor);
    d.max_threads_per_block = static_cast<std::uint32_t>(props_.maxThreadsPerBlock);
    d.max_shared_memory = props_.sharedMemPerBlockOptin;
    d.device_id = device_;
    char bus[32] = {0};
    check(cudaDeviceGetPCIBusId(bus, sizeof bus, device_), "cudaDeviceGetPCIBusId");
    d.pci_bus_id = bus;
    return d;
}
#endif

std::unique_ptr<Engine> CudaContext::make_engine(std::size_t dimension, Metric metric, Dtype dtype) {
    return std::make_unique<CudaEngine>(std::static_pointer_cast<CudaContext>(shared_from_this()), dimension, metric,
                                        dtype);
}

namespace {

// Staged rows: a thread of their own allocates pool memory on their own stream and uploads
// into it; the memory goes back to the pool on that stream (the add that read the rows has
// synchronized its own).
class DeviceStagedRows final : public StagedRows {
   public:
    DeviceStagedRows(std::shared_ptr<CudaContext> ctx, const float* rows, std::size_t n, std::size_t dim)
        : ctx_(std::move(ctx)), n_(n), dim_(dim) {
        copy_ = std::thread([this, rows] { run(rows); });
    }
    ~DeviceStagedRows() override {
        if (copy_.joinable()) copy_.join();
        DeviceGuard guard(ctx_->device());
        buffer_.reset();
        if (stream_) cudaStreamDestroy(stream_);
    }
    void wait() override {
        if (copy_.joinable()) copy_.join();
        if (error_) std::rethrow_exception(error_);
    }
    const float* data() const override { return buffer_.as<float>(); }
    std::size_t rows() const override { return n_; }
    std::size_t ld() const override { return dim_; }

   private:
    void run(const float* rows) noexcept {
        try {
            DeviceGuard guard(ctx_->device());
            check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
            buffer_ = Scratch(*ctx_, n_ * dim_ * sizeof(float), stream_);
            check(cudaStreamSynchronize(stream_), "staging allocation");  // ready for the upload's streams
            upload_host_rows(*ctx_, rows, n_, dim_ * sizeof(float), dim_ * sizeof(float),
                             {RowRun{0, n_, buffer_.as<unsigned char>()}});
        } catch (...) {
            error_ = std::current_exception();
        }
    }

    std::shared_ptr<CudaContext> ctx_;
    std::size_t n_, dim_;
    cudaStream_t stream_ = nullptr;
    Scratch buffer_;
    std::exception_ptr error_;
    std::thread copy_;  // last: started once everything it uses exists
};

}  // namespace

std::unique_ptr<StagedRows> CudaContext::stage_rows(const float* rows, std::size_t n, std::size_t dim) {
    if (n * dim * sizeof(float) < kStageMinBytes) return nullptr;
    try {
        return std::make_unique<DeviceStagedRows>(std::static_pointer_cast<CudaContext>(shared_from_this()), rows,
                                                  n, dim);
    } catch (const std::system_error&) {
        return nullptr;  // no thread to spare: the add copies the rows itself
    }
}

std::uint64_t CudaContext::max_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return config_.max_bytes;
}

bool CudaContext::take_under_cap(std::atomic<std::uint64_t>& counter, std::uint64_t bytes) {
    const std::uint64_t cap = max_bytes();
    const std::uint64_t now = counter.fetch_add(bytes) + bytes;
    const std::uint64_t other = &counter == &used_ ? rows_bytes_.load() : used_.load();
    if (cap != 0 && now + other > cap) {
        counter.fetch_sub(bytes);
        return false;
    }
    return true;
}

void* CudaContext::allocate(std::size_t bytes, cudaStream_t stream) {
    if (!take_under_cap(used_, bytes)) {
        throw OutOfMemoryError(HIVE_GPU_BACKEND_NAME ": the memory pool cap of " + std::to_string(max_bytes()) +
                               " bytes would be exceeded by a request of " + std::to_string(bytes) +
                               " bytes (see set_pool_config)");
    }
    void* p = nullptr;
    cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, pool_, stream);
    if (e != cudaSuccess) {
        used_.fetch_sub(bytes);
        throw_cuda(e, ("pool allocation of " + std::to_string(bytes) + " bytes").c_str());
    }
    allocations_.fetch_add(1);
    std::uint64_t reserved = 0;
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (reserved > reserved_seen_) device_allocations_.fetch_add(1);
        reserved_seen_ = reserved;
    }
    return p;
}

bool CudaContext::try_charge(std::uint64_t bytes) { return take_under_cap(rows_bytes_, bytes); }

void CudaContext::charge(std::uint64_t bytes, const char* what) {
    if (!try_charge(bytes)) {
        throw OutOfMemoryError(HIVE_GPU_BACKEND_NAME ": the context's memory cap of " + std::to_string(max_bytes()) +
                               " bytes would be exceeded by " + std::to_string(bytes) + " bytes for " + what +
                               " (see set_pool_config)");
    }
}

void CudaContext::release(void* p, std::size_t bytes, cudaStream_t stream) {
    cudaFreeAsync(p, stream);
    used_.fetch_sub(bytes);
}

void CudaContext::trim_pool() {
    DeviceGuard guard(device_);
    cudaDeviceSynchronize();
    cudaMemPoolTrimTo(pool_, 0);
    std::lock_guard<std::mutex> lock(mutex_);
    reserved_seen_ = 0;
}

PoolStats CudaContext::pool_stats() const {
    PoolStats s;
    std::uint64_t v = 0;
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &v) == cudaSuccess)
        s.reserved_bytes = v;
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &v) == cudaSuccess)
        s.used_bytes = v;
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &v) == cudaSuccess)
        s.peak_bytes = v;
    s.allocations = allocations_.load();
    s.device_allocations = device_allocations_.load();
    s.rows_bytes = rows_bytes_.load();
    std::lock_guard<std::mutex> lock(mutex_);
    s.config = config_;
    return s;
}

void CudaContext::set_pool_config(const PoolConfig& config) {
    DeviceGuard guard(device_);
    std::uint64_t threshold = config.release_threshold;
    check(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold),
          "cudaMemPoolSetAttribute");
    std::lock_guard<std::mutex> lock(mutex_);
    config_ = config;
}

std::vector<void*> CudaContext::acquire_staging(std::size_t count) {
    std::vector<void*> out;
    out.reserve(count);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        while (out.size() < count && !staging_free_.empty()) {
            out.push_back(staging_free_.back());
            staging_free_.pop_back();
        }
    }
    while (out.size() < count) {
        void* p = nullptr;
        cudaError_t e = cudaHostAlloc(&p, kStagingBytes, cudaHostAllocPortable);
        if (e != cudaSuccess) {
            return_staging(out);
            throw_cuda(e, "pinned staging allocation");
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            staging_all_.push_back(p);
        }
        out.push_back(p);
    }
    return out;
}

void CudaContext::return_staging(std::vector<void*>& buffers) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (void* p : buffers) staging_free_.push_back(p);
    buffers.clear();
}

#if !defined(HIVE_GPU_HIP)
BackendEntry backend_entry() {
    return BackendEntry{
        "cuda",
        [] { return probe().count; },
        [] { return probe().reason; },
        // create_context has checked the id against device_count.
        [](int device_id) -> std::shared_ptr<Context> { return std::make_shared<CudaContext>(device_id); },
    };
}
#endif

}  // namespace hive_gpu::cuda
