#pragma once

#include <memory>

#include "hive_gpu/context.hpp"

namespace hive_gpu::cpu {

class CpuContext final : public Context {
   public:
    explicit CpuContext(int threads);
    std::string backend() const override { return "cpu"; }
    DeviceInfo device_info() const override;
    std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric) override;
    int threads() const { return threads_; }

   private:
    int threads_;
};

}  // namespace hive_gpu::cpu
