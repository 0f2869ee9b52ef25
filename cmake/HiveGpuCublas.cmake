# hive_gpu_find_cublas(): defines the imported target hive_gpu::cublas from the CUDA
# toolkit's cuBLAS when it has one, else from the nvidia-cublas wheel (nvidia/cu13) of the
# Python interpreter, which ships libcublas.so.13 without an unversioned link. Sets
# HIVE_GPU_CUBLAS_FOUND, HIVE_GPU_CUBLAS_LIBRARY and HIVE_GPU_CUBLAS_ORIGIN (toolkit|wheel).
# Used by the build and by the installed hive_gpuCudaDeps.cmake.
include("${CMAKE_CURRENT_LIST_DIR}/HiveGpuPython.cmake")

function(hive_gpu_find_cublas)
  set(HIVE_GPU_CUBLAS_FOUND FALSE PARENT_SCOPE)
  if(TARGET hive_gpu::cublas)
    set(HIVE_GPU_CUBLAS_FOUND TRUE PARENT_SCOPE)
    return()
  endif()
  set(_lib "")
  set(_inc "")
  set(_origin "")
  if(TARGET CUDA::cublas)
    get_target_property(_lib CUDA::cublas IMPORTED_LOCATION)
    if(NOT _lib)
      get_target_property(_lib CUDA::cublas IMPORTED_LOCATION_RELEASE)
    endif()
    if(_lib)
      set(_inc "${CUDAToolkit_INCLUDE_DIRS}")
      set(_origin toolkit)
    endif()
  endif()
  if(NOT _lib)
    set(_roots ${HIVE_GPU_CUBLAS_ROOT} $ENV{HIVE_GPU_CUBLAS_ROOT})
    hive_gpu_python_query(_wheel
      "import nvidia, os; print(';'.join(os.path.join(p, 'cu13') for p in nvidia.__path__))")
    list(APPEND _roots ${_wheel})
    find_library(HIVE_GPU_CUBLAS_WHEEL_LIB NAMES cublas libcublas.so.13
                 PATHS ${_roots} PATH_SUFFIXES lib NO_DEFAULT_PATH)
    find_path(HIVE_GPU_CUBLAS_WHEEL_INC cublas_v2.h PATHS ${_roots} PATH_SUFFIXES include NO_DEFAULT_PATH)
    if(HIVE_GPU_CUBLAS_WHEEL_LIB AND HIVE_GPU_CUBLAS_WHEEL_INC)
      set(_lib "${HIVE_GPU_CUBLAS_WHEEL_LIB}")
      set(_inc "${HIVE_GPU_CUBLAS_WHEEL_INC}")
      set(_origin wheel)
    endif()
  endif()
  if(NOT _lib)
    return()
  endif()
  add_library(hive_gpu::cublas SHARED IMPORTED GLOBAL)
  get_filename_component(_dir "${_lib}" DIRECTORY)
  set_target_properties(hive_gpu::cublas PROPERTIES
    IMPORTED_LOCATION "${_lib}"
    IMPORTED_NO_SONAME FALSE
    INTERFACE_INCLUDE_DIRECTORIES "${_inc}")
  if(_origin STREQUAL "wheel")
    # libcublas.so.13 needs libcublasLt.so.13 from the same folder at link time.
    set_property(TARGET hive_gpu::cublas PROPERTY INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_dir}")
  endif()
  set(HIVE_GPU_CUBLAS_FOUND TRUE PARENT_SCOPE)
  set(HIVE_GPU_CUBLAS_LIBRARY "${_lib}" PARENT_SCOPE)
  set(HIVE_GPU_CUBLAS_ORIGIN "${_origin}" PARENT_SCOPE)
endfunction()
