// The ROCm engine is the CUDA engine compiled by HIP: rows, lanes, the fused scan, rocBLAS
// SGEMM tiles (through kernels/compat.cuh and rocm/hip_vendor.hpp) and device top-k. No
// engine or kernel code lives in this folder.
#include "cuda/cuda_engine.cu"
