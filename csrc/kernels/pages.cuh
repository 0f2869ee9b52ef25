// Paged rows as the kernels see them. A store's rows live in pages that are never moved:
// growing adds a page. Pages 0 and 1 hold 2^base rows, each later page twice its
// predecessor until 2^max rows, then every page holds 2^max rows. So small stores take
// small pages, large ones pages of a fixed size, and slot -> (page, row) is a bit scan.
// Every page boundary is a multiple of 2^base >= 64, so the rows a warp scores together
// (and the 64 bits of one filter word) never straddle two pages.
#pragma once

#include "kernels/compat.cuh"

#include <cstddef>
#include <cstdint>

namespace hive_gpu::kernels {

__host__ __device__ __forceinline__ int floor_log2(std::uint64_t v) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return 63 - __clzll(static_cast<long long>(v));
#else
    return 63 - __builtin_clzll(v);
#endif
}

constexpr int kMinPageShift = 6;  // 64 rows: one filter word

struct PagePlace {
    std::size_t page;
    std::size_t row;  // within the page
};

struct PageMap {
    int base_shift;  // log2 of the rows of pages 0 and 1
    int max_shift;   // log2 of the rows of the largest pages (>= base_shift)

    // Pages below this index grow geometrically; from it on all hold 2^max_shift rows.
    __host__ __device__ __forceinline__ std::size_t first_full() const {
        return static_cast<std::size_t>(max_shift - base_shift) + 1;
    }
    __host__ __device__ __forceinline__ std::size_t start(std::size_t page) const {
        if (page == 0) return 0;
        if (page < first_full()) return std::size_t{1} << (base_shift + page - 1);
        return (page - first_full() + 1) << max_shift;
    }
    __host__ __device__ __forceinline__ std::size_t rows(std::size_t page) const {
        if (page == 0) return std::size_t{1} << base_shift;
        if (page < first_full()) return std::size_t{1} << (base_shift + page - 1);
        return std::size_t{1} << max_shift;
    }
    // The page holding `slot`, and the slot's row within it.
    __host__ __device__ __forceinline__ PagePlace place(std::size_t slot) const {
        if (slot < (std::size_t{1} << base_shift)) return PagePlace{0, slot};
        if (slot < (std::size_t{1} << max_shift)) {
            const int l = floor_log2(slot);  // base_shift <= l < max_shift
            return PagePlace{static_cast<std::size_t>(l - base_shift) + 1, slot - (std::size_t{1} << l)};
        }
        return PagePlace{first_full() - 1 + (slot >> max_shift), slot & ((std::size_t{1} << max_shift) - 1)};
    }
    // Pages needed for `n` rows.
    __host__ __device__ __forceinline__ std::size_t pages_for(std::size_t n) const {
        return n == 0 ? 0 : place(n - 1).page + 1;
    }
};

// place() on a map held in registers: a kernel parameter whose member function is called
// would have its address taken and be copied to the stack.
__host__ __device__ __forceinline__ PagePlace place(int base_shift, int max_shift, std::size_t slot) {
    return PageMap{base_shift, max_shift}.place(slot);
}

// One page: its rows (row r at byte r * row_bytes, 16-byte aligned) and per-row data.
struct PageRef {
    const void* rows;
    float* factors;
    std::uint32_t* ordinals;
};

// A store's rows for a kernel: the page table (device memory) and its map.
struct PagedRows {
    const PageRef* pages;
    PageMap map;
    std::size_t ld4;  // 16-byte units per row

    __device__ __forceinline__ const float4* row4(std::size_t slot) const {
        const PagePlace at = map.place(slot);
        return static_cast<const float4*>(pages[at.page].rows) + at.row * ld4;
    }
};

// Writes one page-table entry (a compact copy searched like a one-page store).
[[maybe_unused]] static __global__ void store_page_kernel(PageRef* dst, PageRef value) { *dst = value; }

}  // namespace hive_gpu::kernels
