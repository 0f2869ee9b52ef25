#include "rocm/rocm_device.hpp"

#include <hip/hip_runtime.h>

#include <unistd.h>

#include <string>

#include "hive_gpu/error.hpp"

namespace hive_gpu::rocm {

namespace {

// HIP encodes versions as major * 10^7 + minor * 10^5 + patch.
std::string version_string(int v) {
    return std::to_string(v / 10000000) + "." + std::to_string((v / 100000) % 100) + "." +
           std::to_string(v % 100000);
}

// Makes `device` current for this thread while in scope (hipMemGetInfo asks the current one).
class DeviceGuard {
   public:
    explicit DeviceGuard(int device) {
        check_hip(hipGetDevice(&previous_), "hipGetDevice");
        if (previous_ != device) check_hip(hipSetDevice(device), "hipSetDevice");
    }
    ~DeviceGuard() {
        int now = previous_;
        if (hipGetDevice(&now) == hipSuccess && now != previous_) (void)hipSetDevice(previous_);
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

   private:
    int previous_ = 0;
};

}  // namespace

void check_hip(int error, const char* what) {
    const auto e = static_cast<hipError_t>(error);
    if (e == hipSuccess) return;
    (void)hipGetLastError();  // allocation failures are not sticky: clear them for the next call
    std::string msg = std::string("rocm: ") + what + ": " + hipGetErrorName(e) + " (" +
                      hipGetErrorString(e) + ")";
    if (e == hipErrorOutOfMemory) throw OutOfMemoryError(msg);
    throw BackendError(msg);
}

const Probe& probe() {
    static const Probe p = [] {
        Probe r;
        int driver = 0;
        hipError_t e = hipDriverGetVersion(&driver);
        if (e != hipSuccess || driver == 0) {
            r.reason = "no HIP runtime driver could be initialised";
            (void)hipGetLastError();
            return r;
        }
        e = hipGetDeviceCount(&r.count);
        if (e != hipSuccess) {
            r.count = 0;
            // Without the amdgpu kernel driver the runtime only says "no device": name the cause.
            r.reason = ::access("/dev/kfd", F_OK) != 0
                           ? std::string("no AMD GPU driver: /dev/kfd is missing (amdgpu kernel module not loaded)")
                           : std::string("the HIP runtime found no usable AMD GPU: ") + hipGetErrorName(e);
            (void)hipGetLastError();
        } else if (r.count == 0) {
            r.reason = "no AMD GPU is present";
        }
        return r;
    }();
    return p;
}

DeviceInfo describe_device(int device) {
    DeviceGuard guard(device);
    hipDeviceProp_t props{};
    check_hip(hipGetDeviceProperties(&props, device), "hipGetDeviceProperties");
    DeviceInfo d;
    d.name = props.name;
    d.backend = "rocm";
    std::size_t free_b = 0, total_b = 0;
    check_hip(hipMemGetInfo(&free_b, &total_b), "hipMemGetInfo");
    d.vram_total = total_b;
    d.vram_available = free_b;
    d.vram_used = total_b - free_b;
    int driver = 0, runtime = 0;
    check_hip(hipDriverGetVersion(&driver), "hipDriverGetVersion");
    check_hip(hipRuntimeGetVersion(&runtime), "hipRuntimeGetVersion");
    d.driver_version = version_string(driver) + " (HIP driver; runtime " + version_string(runtime) + ")";
    // The ISA with its feature flags, e.g. "gfx90a:sramecc+:xnack-": what kernels are built for.
    d.compute_capability = props.gcnArchName;
    d.max_threads_per_block = static_cast<std::uint32_t>(props.maxThreadsPerBlock);
    d.max_shared_memory = props.sharedMemPerBlock;
    d.device_id = device;
    char bus[32] = {0};
    check_hip(hipDeviceGetPCIBusId(bus, sizeof bus, device), "hipDeviceGetPCIBusId");
    d.pci_bus_id = bus;
    return d;
}

}  // namespace hive_gpu::rocm
