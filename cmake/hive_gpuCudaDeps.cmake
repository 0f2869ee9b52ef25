# Installed beside hive_gpuConfig.cmake when the CUDA backend is built: recreates the
# targets the static library links (CUDA::cudart_static and hive_gpu::cublas).
include(CMakeFindDependencyMacro)
find_dependency(CUDAToolkit)
include("${CMAKE_CURRENT_LIST_DIR}/HiveGpuCublas.cmake")
hive_gpu_find_cublas()
if(NOT HIVE_GPU_CUBLAS_FOUND)
  set(hive_gpu_FOUND FALSE)
  set(hive_gpu_NOT_FOUND_MESSAGE "hive_gpu was built with CUDA: cuBLAS is needed (CUDA toolkit or the nvidia-cublas wheel; set HIVE_GPU_CUBLAS_ROOT)")
endif()
