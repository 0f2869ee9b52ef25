// The ROCm context: one AMD GPU through the HIP runtime. Storages need the engine that is
// shared with CUDA; until that source compiles under HIP, make_engine() says so.
#include <hip/hip_runtime.h>

#include <memory>
#include <string>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/error.hpp"
#include "rocm/rocm_device.hpp"

namespace hive_gpu::rocm {

namespace {

class RocmContext final : public Context {
   public:
    explicit RocmContext(int device) : device_(device) {}

    std::string backend() const override { return "rocm"; }
    DeviceInfo device_info() const override { return describe_device(device_); }
    std::unique_ptr<Engine> make_engine(std::size_t, Metric) override {
        throw BackendError("rocm: this build has no ROCm engine yet (device_info() works; "
                           "storages need the engine shared with CUDA)");
    }

   private:
    int device_;
};

}  // namespace

BackendEntry backend_entry() {
    return BackendEntry{
        "rocm",
        [] { return probe().count; },
        [] { return probe().reason; },
        [](int device_id) -> std::shared_ptr<Context> {
            const Probe& p = probe();
            if (!p.reason.empty()) throw NoDeviceError("rocm: " + p.reason);
            if (device_id < 0 || device_id >= p.count)
                throw InvalidDeviceIdError("rocm: device id " + std::to_string(device_id) +
                                           " is out of range (" + std::to_string(p.count) + " device(s))");
            return std::make_shared<RocmContext>(device_id);
        },
    };
}

}  // namespace hive_gpu::rocm
