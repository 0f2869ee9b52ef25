#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "cpu/thread_pool.hpp"
#include "hive_gpu/context.hpp"

namespace hive_gpu::cpu {

// Owns the thread pool every engine of this context searches on.
class CpuContext final : public Context {
   public:
    // threads <= 0: HIVE_GPU_CPU_THREADS when set, else the hardware concurrency.
    explicit CpuContext(int threads);
    std::string backend() const override { return "cpu"; }
    DeviceInfo device_info() const override;
    std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric, Dtype dtype) override;
    int threads() const { return threads_; }
    ThreadPool& pool() const { return *pool_; }

    // PoolConfig::max_bytes caps the host memory of this context's stored rows (rows_bytes);
    // there is no scratch pool. Engines charge their row buffers before allocating them:
    // charge() throws OutOfMemoryError when the cap would be passed, nothing charged.
    PoolStats pool_stats() const override;
    void set_pool_config(const PoolConfig& config) override;
    void charge(std::uint64_t bytes, const char* what);
    void uncharge(std::uint64_t bytes) { rows_bytes_.fetch_sub(bytes); }

   private:
    int threads_;
    std::unique_ptr<ThreadPool> pool_;
    mutable std::mutex config_mutex_;
    PoolConfig config_;
    std::atomic<std::uint64_t> rows_bytes_{0};
};

}  // namespace hive_gpu::cpu
