// cuBLAS loaded at run time. The module must import where cuBLAS is absent (a wheel
// installed without the `cuda` extra, a machine without a GPU), so libcublas.so.13 is
// opened with dlopen on first use instead of being a link-time dependency. Included by
// kernels/compat.cuh after <cublas_v2.h> (types and enums only): the seven cuBLAS calls the
// engine makes are redirected to the table below.
#pragma once

#include <cublas_v2.h>

#include <cstddef>
#include <string>

namespace hive_gpu::cuda::lazy {

struct CublasApi {
    cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
    cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
    cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t) = nullptr;
    cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t) = nullptr;
    cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const float*, const float*, int, const float*, int, const float*,
                            float*, int) = nullptr;
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
};

// The loaded library, or nullptr (then cublas_unavailable_reason() says why). Thread-safe;
// the library is opened once per process and never closed.
const CublasApi* cublas();
// "" when cuBLAS is loaded.
std::string cublas_unavailable_reason();

inline cublasStatus_t create(cublasHandle_t* h) {
    const CublasApi* a = cublas();
    return a ? a->create(h) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t destroy(cublasHandle_t h) {
    const CublasApi* a = cublas();
    return a ? a->destroy(h) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t set_stream(cublasHandle_t h, cudaStream_t s) {
    const CublasApi* a = cublas();
    return a ? a->set_stream(h, s) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t set_math_mode(cublasHandle_t h, cublasMath_t m) {
    const CublasApi* a = cublas();
    return a ? a->set_math_mode(h, m) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t set_workspace(cublasHandle_t h, void* p, size_t bytes) {
    const CublasApi* a = cublas();
    return a ? a->set_workspace(h, p, bytes) : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline cublasStatus_t sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                            int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                            const float* beta, float* C, int ldc) {
    const CublasApi* a = cublas();
    return a ? a->sgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
             : CUBLAS_STATUS_NOT_INITIALIZED;
}

inline cublasStatus_t gemm_ex(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const void* alpha, const void* A, cudaDataType at, int lda, const void* B,
                              cudaDataType bt, int ldb, const void* beta, void* C, cudaDataType ct, int ldc,
                              cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    const CublasApi* a = cublas();
    return a ? a->gemm_ex(h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo)
             : CUBLAS_STATUS_NOT_INITIALIZED;
}

}  // namespace hive_gpu::cuda::lazy

#undef cublasCreate
#undef cublasDestroy
#undef cublasSetStream
#undef cublasSetWorkspace
#undef cublasSgemm
#undef cublasGemmEx
#define cublasCreate ::hive_gpu::cuda::lazy::create
#define cublasDestroy ::hive_gpu::cuda::lazy::destroy
#define cublasSetStream ::hive_gpu::cuda::lazy::set_stream
#define cublasSetMathMode ::hive_gpu::cuda::lazy::set_math_mode
#define cublasSetWorkspace ::hive_gpu::cuda::lazy::set_workspace
#define cublasSgemm ::hive_gpu::cuda::lazy::sgemm
#define cublasGemmEx ::hive_gpu::cuda::lazy::gemm_ex
