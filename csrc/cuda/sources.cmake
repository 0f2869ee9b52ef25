# The engine and context sources that CUDA (nvcc) and ROCm (HIP's clang, csrc/rocm) both
# compile: one list, so a new source file cannot be missing from one of the two builds.
set(HIVE_GPU_CUDA_SHARED_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/cuda_context.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_engine.cu
  ${CMAKE_CURRENT_LIST_DIR}/lanes.cu
  ${CMAKE_CURRENT_LIST_DIR}/row_pages.cu
  ${CMAKE_CURRENT_LIST_DIR}/search_gemm.cu
  ${CMAKE_CURRENT_LIST_DIR}/search_scan.cu
  ${CMAKE_CURRENT_LIST_DIR}/uploads.cu)
