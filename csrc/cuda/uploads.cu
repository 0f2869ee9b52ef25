// Rows into the store: host rows through pinned staging buffers, device rows by device
// copies, then one kernel that computes the factors and checks the rows; rows count in the
// store only when it finds nothing wrong.
#include "cuda/cuda_engine.hpp"

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <thread>

#include "core/numeric.hpp"
#include "core/validate.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/launch.hpp"
#include "kernels/convert.cuh"
#include "kernels/scan.cuh"

namespace hive_gpu::cuda {

namespace k = hive_gpu::kernels;

namespace {

constexpr std::size_t kSmallAppendBytes = std::size_t{4} << 20;

cudaStream_t producer_stream(std::uintptr_t s) {
    if (s == 1) return cudaStreamLegacy;
    if (s == 2) return cudaStreamPerThread;
    return reinterpret_cast<cudaStream_t>(s);
}

}  // namespace

void pack_rows(const void* src_rows, std::size_t n, std::size_t src_bytes, std::size_t dst_bytes, void* dst_rows) {
    const auto* src = static_cast<const unsigned char*>(src_rows);
    auto* dst = static_cast<unsigned char*>(dst_rows);
    if (src_bytes == dst_bytes) {
        std::memcpy(dst, src, n * src_bytes);
        return;
    }
    for (std::size_t i = 0; i < n; ++i) {
        std::memcpy(dst + i * dst_bytes, src + i * src_bytes, src_bytes);
        std::memset(dst + i * dst_bytes + src_bytes, 0, dst_bytes - src_bytes);
    }
}

// Several threads each pack chunks into their own pinned buffers (two, so the next pack
// overlaps the previous copy) and copy them up on their own stream. A chunk never crosses
// a run. Touches no engine state.
void upload_host_rows(CudaContext& ctx, const void* rows_in, std::size_t n, std::size_t src_bytes,
                      std::size_t row_bytes, const std::vector<RowRun>& runs) {
    const auto* rows = static_cast<const unsigned char*>(rows_in);
    const std::size_t total = n * row_bytes;
    const std::size_t chunk_rows = std::max<std::size_t>(1, ctx.staging_bytes() / row_bytes);
    if (chunk_rows * row_bytes > ctx.staging_bytes())
        throw InvalidArgumentError(HIVE_GPU_BACKEND_NAME ": a row is larger than a staging buffer");
    std::vector<RowRun> chunks;
    for (const RowRun& r : runs)
        for (std::size_t i = 0; i < r.count; i += chunk_rows)
            chunks.push_back(RowRun{r.first + i, std::min(chunk_rows, r.count - i), r.dst + i * row_bytes});
    // Packing from pageable memory is what limits a thread (5-8 GB/s on the H200's host):
    // three quarters of the cores, up to 12, leave a core or two for the ids of the same add.
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    const std::size_t threads =
        total <= kSmallAppendBytes ? 1 : std::min<std::size_t>({chunks.size(), std::max(1u, hw * 3 / 4), 12});
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
            for (std::size_t c = t; c < chunks.size(); c += threads) {
                const RowRun& chunk = chunks[c];
                void* buf = buffers[t * 2 + parity];
                if (used[parity]) check(cudaEventSynchronize(ev[parity]), "staging");
                pack_rows(rows + chunk.first * src_bytes, chunk.count, src_bytes, row_bytes, buf);
                check(cudaMemcpyAsync(chunk.dst, buf, chunk.count * row_bytes, cudaMemcpyHostToDevice, s),
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

std::vector<RowRun> CudaEngine::append_runs(std::size_t n) const {
    std::vector<RowRun> runs;
    pages_.for_each_run(size_, n, [&](std::size_t s0, std::size_t count, std::size_t, std::size_t) {
        runs.push_back(RowRun{s0 - size_, count, pages_.row(s0)});
    });
    return runs;
}

void CudaEngine::upload_rows(const void* rows, std::size_t n) {
    const std::vector<RowRun> runs = append_runs(n);
    if (n * row_bytes_ <= small_host_bytes_) {
        auto* host = static_cast<unsigned char*>(small_host_.get());
        pack_rows(rows, n, dim_ * elem_, row_bytes_, host);
        for (const RowRun& r : runs)
            check(cudaMemcpyAsync(r.dst, host + r.first * row_bytes_, r.count * row_bytes_, cudaMemcpyHostToDevice,
                                  write_stream_.get()),
                  "cudaMemcpyAsync");
        check(cudaStreamSynchronize(write_stream_.get()), "upload");
        return;
    }
    upload_host_rows(*ctx_, rows, n, dim_ * elem_, row_bytes_, runs);
}

// Rows [size_, size_ + n) are on the device: their ordinals go up, a kernel computes their
// factors and checks them with the core's rules, and only then are they part of the store.
// fault_set: the fault word was reset by the caller (and may hold a conversion's fault).
void CudaEngine::finish_append(std::size_t n, const std::uint32_t* ordinals, const char* what, bool fault_set) {
    cudaStream_t ws = write_stream_.get();
    auto* fault_device = static_cast<unsigned long long*>(fault_device_.get());
    auto* fault_host = static_cast<unsigned long long*>(fault_host_.get());
    if (!fault_set) check(cudaMemsetAsync(fault_device, 0xff, sizeof(unsigned long long), ws), "cudaMemsetAsync");
    for (const RowRun& r : append_runs(n)) {
        const std::size_t slot = size_ + r.first;
        check(cudaMemcpyAsync(pages_.ordinal(slot), ordinals + r.first, r.count * sizeof(std::uint32_t),
                              cudaMemcpyHostToDevice, ws),
              "cudaMemcpyAsync");
        with_metric(metric_, [&](auto m) {
            with_dtype(dtype_, [&](auto d) {
                constexpr int D = decltype(d)::value;
                k::row_stats_kernel<decltype(m)::value, D>
                    <<<grid_for(r.count * k::warp_size(ctx_->props()), 256, ctx_->props()), 256, 0, ws>>>(
                        reinterpret_cast<const typename k::Elem<D>::T*>(r.dst), ld_, r.count, dim_,
                        pages_.factor(slot), fault_device, kMaxSquaredNorm, r.first);
            });
        });
        check_launch("row_stats_kernel");
    }
    check(cudaMemcpyAsync(fault_host, fault_device, sizeof(unsigned long long), cudaMemcpyDeviceToHost, ws),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(ws), "append");
    const unsigned long long fault = *fault_host;
    if (fault != ~0ull)
        throw_row_fault(static_cast<RowFault>(fault & 3), static_cast<std::size_t>(fault >> 2), n, what, dtype_,
                        std::numeric_limits<float>::quiet_NaN());
    size_ += n;
    record_write();
}

void CudaEngine::append(const void* rows, const std::uint32_t* ordinals, std::size_t n) {
    if (n == 0) return;
    DeviceGuard guard(ctx_->device());
    pages_.grow(size_ + n, write_stream_.get());
    upload_rows(rows, n);
    finish_append(n, ordinals, "vectors");
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
    const auto* rows = static_cast<const unsigned char*>(rows_in);
    const std::size_t src_elem = dtype_size(src);
    DeviceGuard guard(ctx_->device());
    check_device_pointer(rows, "vectors");
    cudaStream_t ws = write_stream_.get();
    pages_.grow(size_ + n, ws);
    wait_producer(ws, producer_.get(), stream);
    // Rows of another dtype are rounded on the device (to nearest even, as dtype.hpp does);
    // a value that does not fit is a fault, reported below like the other row faults.
    auto* fault_device = static_cast<unsigned long long*>(fault_device_.get());
    check(cudaMemsetAsync(fault_device, 0xff, sizeof(unsigned long long), ws), "cudaMemsetAsync");
    for (const RowRun& r : append_runs(n)) {
        const unsigned char* from = rows + r.first * ld * src_elem;
        if (src == dtype_) {
            if (ld_ != dim_) check(cudaMemsetAsync(r.dst, 0, r.count * row_bytes_, ws), "cudaMemsetAsync");
            check(cudaMemcpy2DAsync(r.dst, row_bytes_, from, ld * src_elem, dim_ * elem_, r.count,
                                    cudaMemcpyDeviceToDevice, ws),
                  "cudaMemcpy2DAsync");
            continue;
        }
        with_dtype(src, [&](auto sd) {
            with_dtype(dtype_, [&](auto dd) {
                constexpr int S = decltype(sd)::value, D = decltype(dd)::value;
                if constexpr (S != D)
                    k::convert_rows_kernel<S, D><<<grid_for(r.count * ld_, 256, ctx_->props()), 256, 0, ws>>>(
                        reinterpret_cast<const typename k::Elem<S>::T*>(from), ld, r.count, dim_,
                        reinterpret_cast<typename k::Elem<D>::T*>(r.dst), ld_, dtype_max(dtype_), fault_device,
                        r.first);
            });
        });
        check_launch("convert_rows_kernel");
    }
    finish_append(n, ordinals, "vectors", /*fault_set=*/true);
}

void CudaEngine::write(std::size_t slot, const void* row) {
    DeviceGuard guard(ctx_->device());
    cudaStream_t ws = write_stream_.get();
    pack_rows(row, 1, dim_ * elem_, row_bytes_, small_host_.get());
    unsigned char* dst = pages_.row(slot);
    check(cudaMemcpyAsync(dst, small_host_.get(), row_bytes_, cudaMemcpyHostToDevice, ws), "cudaMemcpyAsync");
    with_metric(metric_, [&](auto m) {
        with_dtype(dtype_, [&](auto d) {
            constexpr int D = decltype(d)::value;
            k::row_stats_kernel<decltype(m)::value, D><<<1, 256, 0, ws>>>(
                reinterpret_cast<const typename k::Elem<D>::T*>(dst), ld_, 1, dim_, pages_.factor(slot), nullptr,
                kMaxSquaredNorm);
        });
    });
    check_launch("row_stats_kernel");
    record_write();
    // small_host_ is reused by the next write.
    check(cudaStreamSynchronize(ws), "write");
}

}  // namespace hive_gpu::cuda
