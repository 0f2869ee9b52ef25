// Entry points of each backend. A backend's functions exist only when it is compiled in
// (hive_gpu/backend_list.hpp lists those); create_context() in context.hpp is the portable way in.
#pragma once

#include <memory>
#include <string>

#include "hive_gpu/backend_list.hpp"
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
std::shared_ptr<Context> make_context(int threads = 0);  // 0 = hardware concurrency
}  // namespace cpu

// hive_gpu::<name>::backend_entry() of every compiled backend, the CPU's included.
#define HIVE_GPU_DECLARE_BACKEND_ENTRY(name) \
    namespace name {                          \
    BackendEntry backend_entry();             \
    }
HIVE_GPU_COMPILED_BACKENDS(HIVE_GPU_DECLARE_BACKEND_ENTRY)
#undef HIVE_GPU_DECLARE_BACKEND_ENTRY

}  // namespace hive_gpu
