# Finds a webgpu.h implementation: wgpu-native as shipped in the `wgpu` Python wheel (the
# default), or any other build (Dawn, a wgpu-native release) given by WGPU_NATIVE_ROOT.
#
# Input (cache):  WGPU_NATIVE_ROOT  folder holding webgpu.h and the shared library (also
#                                   searched: include/, include/webgpu/, lib/)
# Output:         WgpuNative_FOUND, WgpuNative_INCLUDE_DIR (folder of webgpu.h),
#                 WgpuNative_LIBRARY (the shared library, loaded at run time, never linked)
set(WGPU_NATIVE_ROOT "" CACHE PATH "Folder with webgpu.h and libwgpu_native (or Dawn's libwebgpu_dawn)")

set(_wgpu_hints "")
if(WGPU_NATIVE_ROOT OR DEFINED ENV{WGPU_NATIVE_ROOT})
  list(APPEND _wgpu_hints "${WGPU_NATIVE_ROOT}" "$ENV{WGPU_NATIVE_ROOT}")
else()
  # The wgpu wheel keeps header and library together in wgpu/resources.
  # find_spec locates the package without importing it (its cffi layer is not needed).
  include(HiveGpuPython)
  hive_gpu_python_query(_wgpu_resources
    "import importlib.util as u, os; s = u.find_spec('wgpu'); print(os.path.join(list(s.submodule_search_locations)[0], 'resources'))")
  if(_wgpu_resources AND EXISTS "${_wgpu_resources}")
    list(APPEND _wgpu_hints "${_wgpu_resources}")
  endif()
endif()

find_path(WgpuNative_INCLUDE_DIR webgpu.h
  HINTS ${_wgpu_hints}
  PATH_SUFFIXES "" include include/webgpu
  NO_DEFAULT_PATH)
find_library(WgpuNative_LIBRARY
  NAMES wgpu_native-release wgpu_native webgpu_dawn
  HINTS ${_wgpu_hints}
  PATH_SUFFIXES "" lib lib64
  NO_DEFAULT_PATH)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(WgpuNative
  REQUIRED_VARS WgpuNative_INCLUDE_DIR WgpuNative_LIBRARY
  REASON_FAILURE_MESSAGE "install the `wgpu` Python package (pip install wgpu) or set WGPU_NATIVE_ROOT")
mark_as_advanced(WgpuNative_INCLUDE_DIR WgpuNative_LIBRARY)
