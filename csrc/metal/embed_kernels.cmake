# Writes the Metal kernel source as one C++ string constant, kMetalKernelSource, with
# params.h pasted in place of its #include line (newLibraryWithSource has no include path).
# Used by CMakeLists.txt; also runs alone:
#   cmake -DMETAL_SOURCE_DIR=csrc/metal -DMETAL_KERNELS_HEADER=out.inc -P csrc/metal/embed_kernels.cmake
file(READ "${METAL_SOURCE_DIR}/kernels.metal" _kernels)
file(READ "${METAL_SOURCE_DIR}/params.h" _params)
set(_include "#include \"params.h\"")
string(FIND "${_kernels}" "${_include}" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "kernels.metal no longer includes params.h; update embed_kernels.cmake")
endif()
string(REPLACE "${_include}" "${_params}" _source "${_kernels}")
string(FIND "${_source}" ")msl\"" _clash)
if(NOT _clash EQUAL -1)
  message(FATAL_ERROR "the kernel source contains the raw-string delimiter )msl\"")
endif()
set(_content "// Generated from csrc/metal/kernels.metal and params.h by CMake; do not edit.\n")
string(APPEND _content "static const char kMetalKernelSource[] = R\"msl(${_source})msl\";\n")
file(WRITE "${METAL_KERNELS_HEADER}.tmp" "${_content}")
configure_file("${METAL_KERNELS_HEADER}.tmp" "${METAL_KERNELS_HEADER}" COPYONLY)  # touched only on change
file(REMOVE "${METAL_KERNELS_HEADER}.tmp")
