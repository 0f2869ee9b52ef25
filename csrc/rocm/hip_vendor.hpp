// The CUDA backend's source compiled by HIP for AMD GPUs: CUDA runtime and cuBLAS names
// mapped to HIP and rocBLAS (the radix sort's seam is kernels/sort.cuh: CUB or rocPRIM).
// Included by kernels/compat.cuh when compiling for AMD, never by hand. In a ROCm build
// hive_gpu::cuda names that shared GPU code; a build holds CUDA or ROCm, never both
// (csrc/rocm/CMakeLists.txt).
#pragma once

#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#include <rocblas/rocblas.h>

#include <cstddef>

#define HIVE_GPU_HIP 1
#define HIVE_GPU_BACKEND_NAME "rocm"

// ---- runtime: types and constants ------------------------------------------------------
#define cudaDeviceProp hipDeviceProp_t
#define cudaError_t hipError_t
#define cudaEvent_t hipEvent_t
#define cudaStream_t hipStream_t
#define cudaMemPool_t hipMemPool_t
#define cudaMemPoolProps hipMemPoolProps
#define cudaPointerAttributes hipPointerAttribute_t
#define cudaSuccess hipSuccess
#define cudaErrorMemoryAllocation hipErrorOutOfMemory
#define cudaEventDisableTiming hipEventDisableTiming
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamPerThread hipStreamPerThread
#define cudaHostAllocDefault hipHostMallocDefault
#define cudaHostAllocPortable hipHostMallocPortable
#define cudaHostAllocMapped hipHostMallocMapped
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaMemAllocationTypePinned hipMemAllocationTypePinned
#define cudaMemHandleTypeNone hipMemHandleTypeNone
#define cudaMemLocationTypeDevice hipMemLocationTypeDevice
#define cudaMemPoolAttrReleaseThreshold hipMemPoolAttrReleaseThreshold
#define cudaMemPoolAttrReservedMemCurrent hipMemPoolAttrReservedMemCurrent
#define cudaMemPoolAttrUsedMemCurrent hipMemPoolAttrUsedMemCurrent
#define cudaMemPoolAttrUsedMemHigh hipMemPoolAttrUsedMemHigh
#define cudaFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#if defined(hipStreamLegacy)
#define cudaStreamLegacy hipStreamLegacy
#else
// HIP before 6 has no handle for it: its null stream is the legacy, synchronising one.
#define cudaStreamLegacy static_cast<hipStream_t>(nullptr)
#endif

// ---- runtime: functions ----------------------------------------------------------------
#define cudaDeviceGetPCIBusId hipDeviceGetPCIBusId
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaDriverGetVersion hipDriverGetVersion
#define cudaEventCreate hipEventCreate
#define cudaEventCreateWithFlags hipEventCreateWithFlags
#define cudaEventDestroy hipEventDestroy
#define cudaEventRecord hipEventRecord
#define cudaEventSynchronize hipEventSynchronize
#define cudaFree hipFree
#define cudaFreeAsync hipFreeAsync
#define cudaFreeHost hipHostFree
#define cudaGetDevice hipGetDevice
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaGetErrorName hipGetErrorName
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaHostAlloc hipHostMalloc
#define cudaHostGetDevicePointer hipHostGetDevicePointer
#define cudaMalloc hipMalloc
#define cudaMallocFromPoolAsync hipMallocFromPoolAsync
#define cudaMemGetInfo hipMemGetInfo
#define cudaMemPoolCreate hipMemPoolCreate
#define cudaMemPoolDestroy hipMemPoolDestroy
#define cudaMemPoolGetAttribute hipMemPoolGetAttribute
#define cudaMemPoolSetAttribute hipMemPoolSetAttribute
#define cudaMemPoolTrimTo hipMemPoolTrimTo
#define cudaMemcpy hipMemcpy
#define cudaMemcpy2DAsync hipMemcpy2DAsync
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemsetAsync hipMemsetAsync
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor hipOccupancyMaxActiveBlocksPerMultiprocessor
#define cudaPointerGetAttributes hipPointerGetAttributes
#define cudaRuntimeGetVersion hipRuntimeGetVersion
#define cudaSetDevice hipSetDevice
#define cudaStreamCreate hipStreamCreate
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamDestroy hipStreamDestroy
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamWaitEvent hipStreamWaitEvent
// HIP takes the kernel as const void*; CUDA's template overload takes the function itself.
#define cudaFuncSetAttribute(kernel, attr, value) \
    hipFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value)

// ---- BLAS: the one GEMM, through rocBLAS (same argument order as cublasSgemm) ----------
#define cublasHandle_t rocblas_handle
#define cublasStatus_t rocblas_status
#define CUBLAS_STATUS_SUCCESS rocblas_status_success
#define CUBLAS_OP_N rocblas_operation_none
#define CUBLAS_OP_T rocblas_operation_transpose
#define cublasCreate rocblas_create_handle
#define cublasDestroy rocblas_destroy_handle
#define cublasSetStream rocblas_set_stream
#define cublasSetWorkspace rocblas_set_workspace
#define cublasSgemm rocblas_sgemm
// rocBLAS (before ROCm 6) has one float32 GEMM mode, full float32: what the engine asks of
// cuBLAS with CUBLAS_DEFAULT_MATH (no TF32). There is nothing to switch.
#define CUBLAS_DEFAULT_MATH 0
#define CUBLAS_TF32_TENSOR_OP_MATH 3  // never asked for: the HIP build does not screen with TF32
inline rocblas_status cublasSetMathMode(rocblas_handle, int) { return rocblas_status_success; }

namespace hive_gpu::kernels {

// Largest dynamic shared memory of one block: AMD has no opt-in beyond the LDS size.
inline std::size_t max_block_shared_bytes(const hipDeviceProp_t& p) { return p.sharedMemPerBlock; }

// Device (or managed) memory of the GPU that `a` was asked about.
inline bool is_device_memory(const hipPointerAttribute_t& a) {
#if HIP_VERSION_MAJOR >= 6
    return a.type == hipMemoryTypeDevice || a.type == hipMemoryTypeManaged;
#else
    return a.memoryType == hipMemoryTypeDevice || a.isManaged;
#endif
}

}  // namespace hive_gpu::kernels
