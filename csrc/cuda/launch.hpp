// Launch helpers the engine's source files share: metric and row-width dispatch, shared
// memory opt-in, grid sizes, and the carving of one scratch allocation into pieces.
#pragma once

#include "kernels/compat.cuh"

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "core/numeric.hpp"
#include "cuda/cuda_check.hpp"
#include "hive_gpu/dtype.hpp"
#include "hive_gpu/types.hpp"
#include "kernels/elements.cuh"
#include "kernels/keys.cuh"

namespace hive_gpu::cuda {

inline int next_pow2(std::size_t v) {
    int p = 1;
    while (static_cast<std::size_t>(p) < v) p <<= 1;
    return p;
}

template <typename F>
void with_metric(Metric m, F&& f) {
    switch (m) {
        case Metric::Cosine: f(std::integral_constant<int, kernels::kCosine>{}); break;
        case Metric::DotProduct: f(std::integral_constant<int, kernels::kDotProduct>{}); break;
        case Metric::Euclidean: f(std::integral_constant<int, kernels::kEuclidean>{}); break;
    }
}

template <typename F>
void with_dtype(Dtype d, F&& f) {
    switch (d) {
        case Dtype::Float32: f(std::integral_constant<int, kernels::kF32>{}); break;
        case Dtype::Float16: f(std::integral_constant<int, kernels::kF16>{}); break;
        case Dtype::BFloat16: f(std::integral_constant<int, kernels::kBF16>{}); break;
    }
}

// 16-byte loads per lane that cover a row in one step for a warp of `warp` lanes.
template <typename F>
void with_vpl(std::size_t units, int warp, F&& f) {
    const std::size_t need = ceil_div(units, static_cast<std::size_t>(warp));
    if (need <= 1) f(std::integral_constant<int, 1>{});
    else if (need <= 2) f(std::integral_constant<int, 2>{});
    else if (need <= 4) f(std::integral_constant<int, 4>{});
    else if (need <= 6) f(std::integral_constant<int, 6>{});
    else f(std::integral_constant<int, 8>{});
}

// Opens a kernel's dynamic shared memory beyond the 48 KiB default when it needs more.
template <typename Kernel>
void allow_shared(Kernel kernel, std::size_t bytes) {
    if (bytes > 40 * 1024)  // leave room for the kernels' static shared memory
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
              "cudaFuncSetAttribute");
}

inline unsigned grid_for(std::size_t items, unsigned threads, const cudaDeviceProp& p) {
    const std::size_t want = std::max<std::size_t>(1, ceil_div(items, threads));
    return static_cast<unsigned>(std::min<std::size_t>(want, static_cast<std::size_t>(p.multiProcessorCount) * 32));
}

// Byte offsets of the pieces of one search's scratch, each 256-byte aligned.
struct Carve {
    std::size_t at = 0;
    std::size_t take(std::size_t bytes) {
        const std::size_t here = at;
        at += (bytes + 255) / 256 * 256;
        return here;
    }
};

}  // namespace hive_gpu::cuda
