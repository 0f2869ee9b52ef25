# CPU backend sources beyond the two listed in the top-level CMakeLists.txt: a thread pool, the
# row memory, the screen, and the scoring kernels, one source compiled once per instruction set
# with its own flags.
set(_cpu_dir ${CMAKE_CURRENT_LIST_DIR})
target_sources(hive_gpu PRIVATE
  ${_cpu_dir}/thread_pool.cpp
  ${_cpu_dir}/host_buffer.cpp
  ${_cpu_dir}/screen.cpp
  ${_cpu_dir}/dispatch.cpp
  ${_cpu_dir}/kernels_generic.cpp)

# The kernels must round exactly as written (no FMA contraction by the compiler), so that
# every path scores a pair with the same operations.
if(MSVC)
  set(_cpu_strict_fp /fp:precise)
else()
  set(_cpu_strict_fp -ffp-contract=off)
endif()
set_source_files_properties(${_cpu_dir}/kernels_generic.cpp PROPERTIES COMPILE_OPTIONS "${_cpu_strict_fp}")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x64)$" AND CMAKE_SIZEOF_VOID_P EQUAL 8)
  target_sources(hive_gpu PRIVATE ${_cpu_dir}/kernels_avx2.cpp ${_cpu_dir}/kernels_avx512.cpp)
  if(MSVC)
    set(_cpu_avx2_flags /arch:AVX2 ${_cpu_strict_fp})
    set(_cpu_avx512_flags /arch:AVX512 ${_cpu_strict_fp})
  else()
    set(_cpu_avx2_flags -mavx2 -mfma -mf16c ${_cpu_strict_fp})
    set(_cpu_avx512_flags -mavx512f -mavx2 -mfma ${_cpu_strict_fp})
  endif()
  set_source_files_properties(${_cpu_dir}/kernels_avx2.cpp PROPERTIES COMPILE_OPTIONS "${_cpu_avx2_flags}")
  set_source_files_properties(${_cpu_dir}/kernels_avx512.cpp PROPERTIES COMPILE_OPTIONS "${_cpu_avx512_flags}")
  set_source_files_properties(${_cpu_dir}/dispatch.cpp PROPERTIES COMPILE_DEFINITIONS HIVE_GPU_CPU_X86_KERNELS=1)
endif()
