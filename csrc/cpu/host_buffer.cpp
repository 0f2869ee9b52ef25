#include "cpu/host_buffer.hpp"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "hive_gpu/error.hpp"

#if defined(_WIN32)
#include <malloc.h>
#elif defined(__linux__)
#include <sys/mman.h>
#endif

namespace hive_gpu::cpu {

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

void deallocate(void* p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    std::free(p);
#endif
}

}  // namespace

HostBuffer::~HostBuffer() { release(); }

void HostBuffer::release() {
    if (data_) deallocate(data_);
    data_ = nullptr;
    capacity_ = 0;
}

void HostBuffer::reserve(std::size_t floats, std::size_t keep) {
    if (floats <= capacity_) return;
    if (floats > std::numeric_limits<std::size_t>::max() / sizeof(float) - kHugePage)
        throw OutOfMemoryError("cpu: cannot allocate " + std::to_string(floats) + " floats");
    const std::size_t bytes = floats * sizeof(float);
    const std::size_t alignment = bytes >= kHugePage ? kHugePage : 64;
    auto* p = static_cast<float*>(allocate(bytes, alignment));
    if (!p)
        throw OutOfMemoryError("cpu: cannot allocate " + std::to_string(bytes) + " bytes for rows");
    if (keep) std::memcpy(p, data_, keep * sizeof(float));
    release();
    data_ = p;
    capacity_ = floats;
}

}  // namespace hive_gpu::cpu
