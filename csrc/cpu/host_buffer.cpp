#include "cpu/host_buffer.hpp"

#include <cstdlib>
#include <limits>
#include <string>

#include "hive_gpu/error.hpp"

#if defined(_WIN32)
#include <malloc.h>
#elif defined(__linux__)
#include <sys/mman.h>
#endif

namespace hive_gpu::cpu::detail {

namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

void* allocate(std::size_t bytes, std::size_t alignment) {
    bytes = (bytes + alignment - 1) / alignment * alignment;
#if defined(_WIN32)
    return _aligned_malloc(bytes, alignment);
#else
    void* p = nullptr;
    if (posix_memalign(&p, alignment, bytes) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (alignment == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);  // a hint; failure is fine
#endif
    return p;
#endif
}

}  // namespace

void* host_allocate(std::size_t bytes, const char* what) {
    if (bytes > std::numeric_limits<std::size_t>::max() - kHugePage)
        throw OutOfMemoryError("cpu: cannot allocate " + std::to_string(bytes) + " bytes for " + what);
    const std::size_t alignment = bytes >= kHugePage ? kHugePage : 64;
    void* p = allocate(bytes == 0 ? 1 : bytes, alignment);
    if (!p) throw OutOfMemoryError("cpu: cannot allocate " + std::to_string(bytes) + " bytes for " + what);
    return p;
}

void host_free(void* p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    std::free(p);
#endif
}

}  // namespace hive_gpu::cpu::detail
