// What the HIP runtime says about AMD GPUs: how many there are, why none can be used, and
// the DeviceInfo of one of them.
#pragma once

#include <string>

#include "hive_gpu/types.hpp"

namespace hive_gpu::rocm {

struct Probe {
    int count = 0;       // usable devices
    std::string reason;  // "" when count > 0
};

// Asked once per process: the runtime's answer does not change while we run.
const Probe& probe();

// Every field from hipGetDeviceProperties / hipMemGetInfo / hipDriverGetVersion.
DeviceInfo describe_device(int device);

// Throws BackendError (OutOfMemoryError for allocation failures) with the runtime's words.
void check_hip(int error, const char* what);

}  // namespace hive_gpu::rocm
