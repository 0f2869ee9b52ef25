// Entry points of each backend. A backend's functions exist only when it is compiled in
// (see hive_gpu/config.hpp); create_context() in context.hpp is the portable way in.
#pragma once

#include <memory>
#include <string>

#include "hive_gpu/config.hpp"
#include "hive_gpu/context.hpp"

namespace hive_gpu {

// What the core needs to know of one backend.
struct BackendEntry {
    const char* name;
    int (*device_count)();                         // 0 when no driver or device
    std::string (*unavailable_reason)();           // "" when usable
    std::shared_ptr<Context> (*make_context)(int device_id);
    // True when the usable device runs in software on the CPU (a WebGPU CPU adapter such as
    // lavapipe): "auto" then prefers the CPU backend. nullptr means never.
    bool (*emulated)() = nullptr;
};

namespace cpu {
BackendEntry backend_entry();
std::shared_ptr<Context> make_context(int threads = 0);  // 0 = hardware concurrency
}  // namespace cpu

#if HIVE_GPU_WITH_CUDA
namespace cuda {
BackendEntry backend_entry();
}
#endif
#if HIVE_GPU_WITH_ROCM
namespace rocm {
BackendEntry backend_entry();
}
#endif
#if HIVE_GPU_WITH_METAL
namespace metal {
BackendEntry backend_entry();
}
#endif
#if HIVE_GPU_WITH_WEBGPU
namespace webgpu {
BackendEntry backend_entry();
}
#endif

}  // namespace hive_gpu
