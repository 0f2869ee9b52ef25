// Small arithmetic rules shared by the host code of every engine and by the CUDA/HIP kernels.
// WGSL and MSL cannot include C++: a shader that needs one of these rules restates it and
// names the function here.
#pragma once

#include <cmath>
#include <cstddef>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HIVE_GPU_HOST_DEVICE __host__ __device__
#else
#define HIVE_GPU_HOST_DEVICE
#endif

namespace hive_gpu {

// FLT_MIN, written out so that device code needs no <cfloat>.
inline constexpr double kFloatMin = 1.17549435082228750797e-38;

// A cosine vector whose squared norm is below FLT_MIN is the zero vector (docs/guarantees.md):
// GPUs flush denormal products to zero, so its direction is not reliable in float32.
HIVE_GPU_HOST_DEVICE constexpr bool counts_as_zero(double squared_norm) { return squared_norm < kFloatMin; }

// 1/|x| for cosine, 0 for a vector that counts as zero (every similarity with it is 0).
HIVE_GPU_HOST_DEVICE inline float cosine_factor(double squared_norm) {
    return counts_as_zero(squared_norm) ? 0.0f : static_cast<float>(1.0 / ::sqrt(squared_norm));
}

HIVE_GPU_HOST_DEVICE constexpr std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

}  // namespace hive_gpu
