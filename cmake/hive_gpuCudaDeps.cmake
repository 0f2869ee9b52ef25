# Installed beside hive_gpuConfig.cmake when the CUDA backend is built: recreates the
# target the static library links (CUDA::cudart_static). cuBLAS is opened at run time
# (libcublas.so.13 from the nvidia-cublas wheel, the system or a CUDA toolkit), so linking
# a program needs neither cuBLAS nor its headers.
include(CMakeFindDependencyMacro)
find_dependency(CUDAToolkit)
