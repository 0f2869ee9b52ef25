// One GPU source for two vendors: the names that differ between CUDA and HIP, the warp width
// as a compile-time constant (32 on NVIDIA, 64 or 32 on AMD, never assumed), and the lane
// exchanges written for any width. The engine, the context and every kernel include this
// header instead of a vendor's runtime header.
#pragma once

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
// AMD: CUDA runtime and cuBLAS names mapped to HIP and rocBLAS (HIVE_GPU_HIP=1).
#include "rocm/hip_vendor.hpp"
#else
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/cublas_lazy.hpp"  // cuBLAS opened at run time: the seven calls go through it

#include <cstddef>
#define HIVE_GPU_BACKEND_NAME "cuda"
#endif

#include <cstdint>

namespace hive_gpu::kernels {

// The warp width of the device code being compiled. One AMD binary holds wave64 (gfx9, CDNA)
// and wave32 (gfx10+, RDNA) targets, so the value is per target: clang defines
// __AMDGCN_WAVEFRONT_SIZE in each target's device pass (what HIP's warpSize is made of).
// The host pass sees no target and gets 64; host code that sizes launches asks the device
// (warp_size() below), and the kernels' loops are correct for any launch shape.
#if defined(HIVE_GPU_HIP)
#if defined(__AMDGCN_WAVEFRONT_SIZE)
constexpr int kWarpSize = __AMDGCN_WAVEFRONT_SIZE;
#else
constexpr int kWarpSize = 64;
#endif
#else
constexpr int kWarpSize = 32;
#endif
static_assert(kWarpSize == 32 || kWarpSize == 64, "warp width must be 32 or 64");

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

// Bit i set when lane i's predicate holds; 64 bits wide so that a wavefront of 64 fits.
// Every lane of the warp must call it.
__device__ __forceinline__ std::uint64_t warp_ballot(bool predicate) {
#if defined(HIVE_GPU_HIP)
    return static_cast<std::uint64_t>(__ballot(predicate));
#else
    return static_cast<std::uint64_t>(__ballot_sync(0xffffffffu, predicate));
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

// ---- host side: what differs in the device properties and pointer attributes ----------

// Warp width of a device, for host code that sizes launches (32 on NVIDIA).
inline int warp_size(const cudaDeviceProp& p) { return p.warpSize; }

#if !defined(HIVE_GPU_HIP)
// Largest dynamic shared memory one block may opt in to.
inline std::size_t max_block_shared_bytes(const cudaDeviceProp& p) { return p.sharedMemPerBlockOptin; }

// Device (or managed) memory of the GPU that `a` was asked about.
inline bool is_device_memory(const cudaPointerAttributes& a) {
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}
#endif  // the HIP versions are in rocm/hip_vendor.hpp

}  // namespace hive_gpu::kernels
