// Run-time choice of the kernel table. The AVX2 and AVX-512 tables exist only in x86-64
// builds (cpu.cmake defines HIVE_GPU_CPU_X86_KERNELS); everything else runs the generic one.
#include <cstdlib>
#include <cstring>

#include "cpu/kernels.hpp"

#if HIVE_GPU_CPU_X86_KERNELS && defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#include <immintrin.h>
#endif

namespace hive_gpu::cpu {

namespace isa_generic {
extern const KernelTable kTable;
}
#if HIVE_GPU_CPU_X86_KERNELS
namespace isa_avx2 {
extern const KernelTable kTable;
}
namespace isa_avx512 {
extern const KernelTable kTable;
}
#endif

namespace {

#if HIVE_GPU_CPU_X86_KERNELS
struct X86Features {
    bool avx2_fma = false;  // with F16C, which the float16 rows need (every AVX2 CPU has it)
    bool avx512f = false;
};

X86Features detect() {
    X86Features f;
#if defined(_MSC_VER) && !defined(__clang__)
    int r[4];
    __cpuid(r, 0);
    const int max_leaf = r[0];
    __cpuid(r, 1);
    const bool fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1,
               f16c = (r[2] >> 29) & 1;
    if (!osxsave || !avx || max_leaf < 7) return f;
    // The OS must save the YMM (and for AVX-512 the opmask and ZMM) state on context switches.
    const unsigned long long xcr0 = _xgetbv(0);
    __cpuidex(r, 7, 0);
    const bool avx2 = (r[1] >> 5) & 1, avx512f = (r[1] >> 16) & 1;
    f.avx2_fma = avx2 && fma && f16c && (xcr0 & 0x6) == 0x6;
    f.avx512f = f.avx2_fma && avx512f && (xcr0 & 0xE6) == 0xE6;
#else
    // libgcc and compiler-rt also check that the OS enables the register state.
    __builtin_cpu_init();
    f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    f.avx512f = f.avx2_fma && __builtin_cpu_supports("avx512f");
#endif
    return f;
}
#endif

const KernelTable& choose() {
    const char* cap = std::getenv("HIVE_GPU_CPU_ISA");
    const bool allow_avx2 = !cap || std::strcmp(cap, "generic") != 0;
    const bool allow_avx512 = allow_avx2 && (!cap || std::strcmp(cap, "avx2") != 0);
#if HIVE_GPU_CPU_X86_KERNELS
    const X86Features f = detect();
    if (allow_avx512 && f.avx512f) return isa_avx512::kTable;
    if (allow_avx2 && f.avx2_fma) return isa_avx2::kTable;
#else
    (void)allow_avx512;
#endif
    return isa_generic::kTable;
}

}  // namespace

const KernelTable& kernels() {
    static const KernelTable& table = choose();
    return table;
}

}  // namespace hive_gpu::cpu
