// Aligned host memory for the row matrix. Large buffers are 2 MiB aligned and, on Linux,
// marked for transparent huge pages: a search streams the whole matrix, and 4 KiB pages
// would cost a TLB miss every row or two.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hive_gpu::cpu {

class HostBuffer {
   public:
    HostBuffer() = default;
    ~HostBuffer();
    HostBuffer(const HostBuffer&) = delete;
    HostBuffer& operator=(const HostBuffer&) = delete;

    float* data() { return data_; }
    const float* data() const { return data_; }
    std::size_t capacity() const { return capacity_; }  // floats

    // Grows to at least `floats`, keeping the first `keep` floats. Throws OutOfMemoryError
    // and leaves the buffer untouched when the memory is not there.
    void reserve(std::size_t floats, std::size_t keep);
    void release();

   private:
    float* data_ = nullptr;
    std::size_t capacity_ = 0;
};

}  // namespace hive_gpu::cpu
