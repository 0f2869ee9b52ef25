// Lets kernels.metal compile as C++ (tests/metal_sim runs it on the CPU): MSL address
// spaces become plain C++, threadgroup arrays become per-OS-thread statics shared by the
// simulated threads of one threadgroup, and the MSL built-ins used there get C++ bodies.
// Include kernels.metal inside `namespace msl { }` after this header, so the built-ins
// below win over the C library's. threadgroup_barrier() is defined by the simulator.
#pragma once

#if defined(__METAL_VERSION__)
#error "msl_shim.hpp is for C++ compilers; the Metal compiler needs no shim"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#include "hive_gpu/dtype.hpp"

// Unknown attributes such as [[buffer(0)]] and [[thread_position_in_grid]] are ignored.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-attributes"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wattributes"
#endif

#define kernel
#define device
#define constant const
// The simulator runs one threadgroup at a time per OS thread, so a thread_local static is
// exactly one threadgroup's memory.
#define threadgroup static thread_local

namespace msl {

using uint = std::uint32_t;
using ulong = std::uint64_t;
using ushort = std::uint16_t;

// MSL's half: IEEE binary16, here its bits, widened exactly (dtype.hpp) as the GPU does.
struct half {
    std::uint16_t bits;
    explicit operator float() const { return hive_gpu::f16_to_float(bits); }
};

struct uint2 {
    uint x, y;
};
struct uint3 {
    uint x, y, z;
};

template <typename To, typename From>
inline To as_type(From v) {
    static_assert(sizeof(To) == sizeof(From), "as_type needs types of one size");
    To out;
    std::memcpy(&out, &v, sizeof(To));
    return out;
}

inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };
void threadgroup_barrier(mem_flags flags);

}  // namespace msl
