// Launch helpers the engine's source files share: metric and row-width dispatch, shared
// memory opt-in, grid sizes, and the carving of one scratch allocation into pieces.
#pragma once

#include "kernels/compat.cuh"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <type_traits>
#include <utility>

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

// f(std::integral_constant<int, v>) for v in {0, 1, 2}: a kernel template argument from a
// run-time value.
template <typename F>
void with_one_of_three(int v, F&& f) {
    switch (v) {
        case 0: f(std::integral_constant<int, 0>{}); break;
        case 1: f(std::integral_constant<int, 1>{}); break;
        default: f(std::integral_constant<int, 2>{}); break;
    }
}

// The kernels' metric and dtype ids are the enums' values.
static_assert(static_cast<int>(Metric::Cosine) == kernels::kCosine &&
              static_cast<int>(Metric::DotProduct) == kernels::kDotProduct &&
              static_cast<int>(Metric::Euclidean) == kernels::kEuclidean);
static_assert(static_cast<int>(Dtype::Float32) == kernels::kF32 && static_cast<int>(Dtype::Float16) == kernels::kF16 &&
              static_cast<int>(Dtype::BFloat16) == kernels::kBF16);

template <typename F>
void with_metric(Metric m, F&& f) {
    with_one_of_three(static_cast<int>(m), std::forward<F>(f));
}

template <typename F>
void with_dtype(Dtype d, F&& f) {
    with_one_of_three(static_cast<int>(d), std::forward<F>(f));
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

// Blocks of `kernel` (`threads` threads, `shared` dynamic bytes) that one SM holds at once,
// asked of the occupancy calculator once and kept in `cached` (0: not yet asked).
template <typename Kernel>
int blocks_per_sm(std::atomic<int>& cached, Kernel kernel, int threads, std::size_t shared) {
    int n = cached.load(std::memory_order_relaxed);
    if (n == 0) {
        allow_shared(kernel, shared);
        check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, shared),
              "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
        n = std::max(n, 1);
        cached.store(n, std::memory_order_relaxed);
    }
    return n;
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
