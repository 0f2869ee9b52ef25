// One kernel source for two vendors: the names that differ between CUDA and HIP, and the
// warp width as a compile-time constant (32 on NVIDIA, 64 or 32 on AMD), never assumed.
#pragma once

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#include <hip/hip_runtime.h>
#define HIVE_GPU_HIP 1
// Runtime names the shared launch code uses.
#define cudaStream_t hipStream_t
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaFuncSetAttribute hipFuncSetAttribute
#define cudaFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace hive_gpu::kernels {

#if defined(HIVE_GPU_HIP)
#if defined(__AMDGCN_WAVEFRONT_SIZE)
constexpr int kWarpSize = __AMDGCN_WAVEFRONT_SIZE;
#else
constexpr int kWarpSize = 64;
#endif
#else
constexpr int kWarpSize = 32;
#endif

// Butterfly exchange across the whole warp. CUDA needs a member mask; HIP has none, and a
// 32-bit mask would be wrong on a 64-wide wavefront.
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask) {
#if defined(HIVE_GPU_HIP)
    return __shfl_xor(v, lane_mask, kWarpSize);
#else
    return __shfl_xor_sync(0xffffffffu, v, lane_mask, kWarpSize);
#endif
}

// Sum over the warp; every lane gets the total.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int m = kWarpSize / 2; m > 0; m >>= 1) v += shfl_xor(v, m);
    return v;
}

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) % kWarpSize; }
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x) / kWarpSize; }

}  // namespace hive_gpu::kernels
