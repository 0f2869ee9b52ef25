// Aligned host memory for the row planes. Large buffers are 2 MiB aligned and, on Linux,
// marked for transparent huge pages: a search streams the whole matrix, and 4 KiB pages
// would cost a TLB miss every row or two.
#pragma once

#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

namespace hive_gpu::cpu {

namespace detail {
// `bytes` of aligned memory; throws OutOfMemoryError naming `what` when it is not there.
void* host_allocate(std::size_t bytes, const char* what);
void host_free(void* p);
}  // namespace detail

// A fixed-capacity array of trivially copyable T. Growing makes a new buffer (grown()) that
// the owner commits by move assignment, so an owner of several buffers can grow them all
// before it commits any: a failed allocation then leaves every one of them as it was.
template <class T>
class HostBuffer {
    static_assert(std::is_trivially_copyable_v<T>);

   public:
    HostBuffer() = default;
    ~HostBuffer() { release(); }
    HostBuffer(const HostBuffer&) = delete;
    HostBuffer& operator=(const HostBuffer&) = delete;
    HostBuffer(HostBuffer&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), capacity_(std::exchange(o.capacity_, 0)) {}
    HostBuffer& operator=(HostBuffer&& o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            capacity_ = std::exchange(o.capacity_, 0);
        }
        return *this;
    }

    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t capacity() const { return capacity_; }  // elements

    // An uninitialised buffer of `count` elements. Throws OutOfMemoryError.
    static HostBuffer allocate(std::size_t count) {
        HostBuffer b;
        b.data_ = static_cast<T*>(detail::host_allocate(bytes_for(count), "rows"));
        b.capacity_ = count;
        return b;
    }

    // A buffer of `count` elements holding a copy of this one's first `keep` (the rest is
    // uninitialised). Throws OutOfMemoryError; this buffer is never changed.
    HostBuffer grown(std::size_t count, std::size_t keep) const {
        HostBuffer b = allocate(count);
        if (keep) std::memcpy(b.data_, data_, keep * sizeof(T));
        return b;
    }

    void release() {
        if (data_) detail::host_free(data_);
        data_ = nullptr;
        capacity_ = 0;
    }

   private:
    // SIZE_MAX (which host_allocate refuses) when count * sizeof(T) overflows.
    static std::size_t bytes_for(std::size_t count) {
        return count > static_cast<std::size_t>(-1) / sizeof(T) ? static_cast<std::size_t>(-1)
                                                                 : count * sizeof(T);
    }

    T* data_ = nullptr;
    std::size_t capacity_ = 0;
};

}  // namespace hive_gpu::cpu
