#pragma once

#include <memory>

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
    std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric) override;
    int threads() const { return threads_; }
    ThreadPool& pool() const { return *pool_; }

   private:
    int threads_;
    std::unique_ptr<ThreadPool> pool_;
};

}  // namespace hive_gpu::cpu
