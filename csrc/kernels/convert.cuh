// Conversions between the three dtypes on the device: device rows of another dtype into a
// store's rows, 16-bit rows widened to float32 for an exact GEMM, and queries rounded to
// 16 bits (scaled by a power of two first) for the tensor-core screen.
#pragma once

#include "kernels/compat.cuh"
#include "kernels/elements.cuh"
#include "kernels/scan.cuh"

namespace hive_gpu::kernels {

// n rows of `dim` source elements (stride src_ld) into destination rows (stride dst_ld,
// zero padding after dim), rounded to nearest even. A value that is not finite or whose
// magnitude exceeds max_value (the destination's largest finite value) is written as 0 and
// reported like row_stats_kernel's faults: ((fault_row0 + row) << 2 | kFaultNonFinite, or
// kFaultDoesNotFit for a finite value).
template <int kSrc, int kDst>
__global__ void convert_rows_kernel(const typename Elem<kSrc>::T* __restrict__ src, std::size_t src_ld, std::size_t n,
                                    std::size_t dim, typename Elem<kDst>::T* __restrict__ dst, std::size_t dst_ld,
                                    float max_value, unsigned long long* fault, std::size_t fault_row0) {
    const std::size_t total = n * dst_ld;
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
        const std::size_t r = i / dst_ld, j = i % dst_ld;
        float v = 0.0f;
        if (j < dim) {
            v = to_float<kSrc>(src[r * src_ld + j]);
            if (!(fabsf(v) <= max_value)) {  // NaN fails this too
                const unsigned long long code = isfinite(v) ? kFaultDoesNotFit : kFaultNonFinite;
                atomicMin(fault, (static_cast<unsigned long long>(fault_row0 + r) << 2) | code);
                v = 0.0f;
            }
        }
        dst[i] = from_float<kDst>(v);
    }
}

// n rows of 16-bit elements (stride ld) widened to float32 rows of the same stride.
template <int kDtype>
__global__ void widen_rows_kernel(const std::uint16_t* __restrict__ src, std::size_t count, float* __restrict__ dst) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
        dst[i] = to_float<kDtype>(src[i]);
}

// One block per query (stride ld floats): the query times 2^s, s chosen per query so that
// its largest magnitude lies in [2^14, 2^15), rounded to 16 bits (stride ld). So the 16-bit
// copy neither overflows nor loses small components to underflow beyond what the screen's
// bound allows. inv_scale[q] = 2^-s undoes it on the GEMM's sums (exactly: a power of two).
// Queries too small or too large for 2^-s to be a normal float32 get screen_ok[q] = 0 and
// are answered by the exact path.
template <int kDtype>
__global__ void quantize_queries_kernel(const float* __restrict__ queries, std::size_t ld,
                                        std::uint16_t* __restrict__ out, float* __restrict__ inv_scale,
                                        unsigned char* __restrict__ screen_ok) {
    __shared__ float block_max;
    const float* q = queries + blockIdx.x * ld;
    float m = 0.0f;
    for (std::size_t j = threadIdx.x; j < ld; j += blockDim.x) m = fmaxf(m, fabsf(q[j]));
    for (int off = kWarpSize / 2; off > 0; off >>= 1) m = fmaxf(m, shfl_xor(m, off));
    if (threadIdx.x == 0) block_max = 0.0f;
    __syncthreads();
    if (lane_id() == 0) atomicMax(reinterpret_cast<unsigned int*>(&block_max), __float_as_uint(m));
    __syncthreads();
    const float mx = block_max;
    const int e = mx > 0.0f ? ilogbf(mx) : 0;  // 2^e <= mx < 2^(e+1)
    const int s = 14 - e;
    const bool ok = e >= -100 && e <= 100;
    for (std::size_t j = threadIdx.x; j < ld; j += blockDim.x)
        out[blockIdx.x * ld + j] = ok ? static_cast<std::uint16_t>(from_float<kDtype>(ldexpf(q[j], s))) : std::uint16_t{0};
    if (threadIdx.x == 0) {
        inv_scale[blockIdx.x] = ok ? ldexpf(1.0f, -s) : 1.0f;
        screen_ok[blockIdx.x] = ok ? 1 : 0;
    }
}

}  // namespace hive_gpu::kernels
