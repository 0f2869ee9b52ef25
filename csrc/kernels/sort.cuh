// Device-wide radix sort of (64-bit key, 32-bit value) pairs, for k beyond shared memory:
// CUB on NVIDIA, rocPRIM (the library hipCUB wraps on AMD) on AMD. Both sort all 64 key bits
// stably, ascending, so the order is the same on both (keys are unique anyway: they end with
// the row's ordinal).
#pragma once

#include "kernels/compat.cuh"

#if defined(HIVE_GPU_HIP)
#include <rocprim/device/device_radix_sort.hpp>
#else
#include <cub/device/device_radix_sort.cuh>
#endif

namespace hive_gpu::kernels {

#if defined(HIVE_GPU_HIP)
constexpr const char* kRadixSortName = "rocprim::radix_sort_pairs";
#else
constexpr const char* kRadixSortName = "cub::DeviceRadixSort";
#endif

// With temp == nullptr only sets temp_bytes, as CUB does.
inline cudaError_t radix_sort_pairs(void* temp, std::size_t& temp_bytes, const std::uint64_t* keys_in,
                                    std::uint64_t* keys_out, const std::uint32_t* vals_in,
                                    std::uint32_t* vals_out, int n, cudaStream_t stream) {
#if defined(HIVE_GPU_HIP)
    return rocprim::radix_sort_pairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, n, 0u, 64u, stream);
#else
    return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, n, 0, 64, stream);
#endif
}

}  // namespace hive_gpu::kernels
