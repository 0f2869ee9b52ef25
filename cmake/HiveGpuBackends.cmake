# The backend registry: one hive_gpu_add_backend() call per backend in the top-level
# CMakeLists.txt, in "auto" order (the fastest device first). Everything else that names a
# backend is generated from those calls by hive_gpu_write_backend_list(): the X-macros of
# hive_gpu/backend_list.hpp (the core's registry, the Python context classes), the
# HIVE_GPU_WITH_<NAME> macros of config.hpp and the variables of the CMake package.

# Default of every optional backend's switch; OFF builds only what is asked for by name.
set(HIVE_GPU_BACKENDS_DEFAULT AUTO CACHE STRING "Default of the HIVE_GPU_<BACKEND> switches (AUTO, ON or OFF)")
set_property(CACHE HIVE_GPU_BACKENDS_DEFAULT PROPERTY STRINGS AUTO ON OFF)

# As a C string literal's contents.
function(_hive_gpu_c_string out text)
  string(REPLACE "\\" "\\\\" text "${text}")
  string(REPLACE "\"" "\\\"" text "${text}")
  string(REPLACE "\n" " " text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# In a backend folder's CMakeLists.txt, when the backend cannot build here: stops configuring
# when its switch is ON, else records why for backend_status() and leaves the folder.
macro(hive_gpu_backend_unavailable why)
  get_filename_component(_hive_gpu_name "${CMAKE_CURRENT_SOURCE_DIR}" NAME)
  string(TOUPPER "${_hive_gpu_name}" _hive_gpu_name)
  if(HIVE_GPU_${_hive_gpu_name} STREQUAL "ON")
    message(FATAL_ERROR "HIVE_GPU_${_hive_gpu_name}=ON but ${why}")
  endif()
  set(HIVE_GPU_${_hive_gpu_name}_BUILD_REASON "${why}" PARENT_SCOPE)
  return()
endmacro()

# hive_gpu_add_backend(<name> CONTEXT <class> DESCRIPTION <text> [ALIASES <alias>...] [BUILTIN])
#   <name>         the folder csrc/<name>, the C++ namespace hive_gpu::<name> of its
#                  backend_entry(), the name create_context() takes; HIVE_GPU_<NAME> switches it
#   CONTEXT        the name of its context class (C++ and Python), e.g. CudaContext
#   DESCRIPTION    one line for the Python class's docstring
#   ALIASES        other names Python's create_context() accepts
#   BUILTIN        always built, into the top directory (csrc/<name>/<name>.cmake is included);
#                  otherwise csrc/<name>/CMakeLists.txt is added when the switch is not OFF, and
#                  sets HIVE_GPU_WITH_<NAME> to 1 in PARENT_SCOPE, or calls
#                  hive_gpu_backend_unavailable(<why>).
function(hive_gpu_add_backend name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "BUILTIN" "CONTEXT;DESCRIPTION" "ALIASES")
  if(NOT arg_CONTEXT OR NOT arg_DESCRIPTION)
    message(FATAL_ERROR "hive_gpu_add_backend(${name}): CONTEXT and DESCRIPTION are required")
  endif()
  string(TOUPPER "${name}" NAME)
  set(folder "${PROJECT_SOURCE_DIR}/csrc/${name}")
  set(HIVE_GPU_WITH_${NAME} 0)
  set(HIVE_GPU_${NAME}_BUILD_REASON "")
  if(arg_BUILTIN)
    include("${folder}/${name}.cmake" OPTIONAL)
    set(HIVE_GPU_WITH_${NAME} 1)
  else()
    set(HIVE_GPU_${NAME} "${HIVE_GPU_BACKENDS_DEFAULT}" CACHE STRING "Build the ${name} backend (AUTO, ON or OFF)")
    set_property(CACHE HIVE_GPU_${NAME} PROPERTY STRINGS AUTO ON OFF)
    # The folder compares the switch with "ON" and "OFF": upper-cased here, for it.
    string(TOUPPER "${HIVE_GPU_${NAME}}" HIVE_GPU_${NAME})
    if(HIVE_GPU_${NAME} STREQUAL "OFF")
      set(HIVE_GPU_${NAME}_BUILD_REASON "turned off at build time (HIVE_GPU_${NAME}=OFF)")
    elseif(EXISTS "${folder}/CMakeLists.txt")
      add_subdirectory("${folder}" "${PROJECT_BINARY_DIR}/csrc/${name}")
    elseif(HIVE_GPU_${NAME} STREQUAL "ON")
      message(FATAL_ERROR "HIVE_GPU_${NAME}=ON but csrc/${name} has no build")
    else()
      set(HIVE_GPU_${NAME}_BUILD_REASON "this source tree has no csrc/${name}")
    endif()
  endif()
  if(HIVE_GPU_WITH_${NAME})
    message(STATUS "hive_gpu: ${name}: built")
  else()
    message(STATUS "hive_gpu: ${name}: not built: ${HIVE_GPU_${NAME}_BUILD_REASON}")
  endif()
  # Later backends' folders may ask whether this one is in the build (ROCm asks for CUDA).
  set(HIVE_GPU_WITH_${NAME} ${HIVE_GPU_WITH_${NAME}} PARENT_SCOPE)
  set_property(GLOBAL APPEND PROPERTY HIVE_GPU_BACKENDS "${name}")
  foreach(field IN ITEMS CONTEXT DESCRIPTION ALIASES)
    set_property(GLOBAL PROPERTY HIVE_GPU_BACKEND_${name}_${field} "${arg_${field}}")
  endforeach()
  set_property(GLOBAL PROPERTY HIVE_GPU_BACKEND_${name}_REASON "${HIVE_GPU_${NAME}_BUILD_REASON}")
endfunction()

# Writes <binary>/include/hive_gpu/backend_list.hpp from the backends added so far, and sets
# HIVE_GPU_WITH_MACROS (for config.hpp) and HIVE_GPU_WITH_VARIABLES (for the package config).
function(hive_gpu_write_backend_list)
  get_property(backends GLOBAL PROPERTY HIVE_GPU_BACKENDS)
  set(known "")
  set(compiled "")
  set(macros "")
  set(variables "")
  foreach(name IN LISTS backends)
    string(TOUPPER "${name}" NAME)
    foreach(field IN ITEMS CONTEXT DESCRIPTION ALIASES REASON)
      get_property(${field} GLOBAL PROPERTY HIVE_GPU_BACKEND_${name}_${field})
    endforeach()
    _hive_gpu_c_string(DESCRIPTION "${DESCRIPTION}")
    _hive_gpu_c_string(REASON "${REASON}")
    string(REPLACE ";" " " ALIASES "${ALIASES}")
    string(APPEND known " \\\n    X(${name}, \"${CONTEXT}\", \"${ALIASES}\", \"${DESCRIPTION}\", \"${REASON}\")")
    if(HIVE_GPU_WITH_${NAME})
      string(APPEND compiled " \\\n    X(${name})")
      set(with 1)
    else()
      set(with 0)
    endif()
    string(APPEND macros "#define HIVE_GPU_WITH_${NAME} ${with}\n")
    string(APPEND variables "set(HIVE_GPU_WITH_${NAME} ${with})\n")
  endforeach()
  set(HIVE_GPU_WITH_MACROS "${macros}" PARENT_SCOPE)
  set(HIVE_GPU_WITH_VARIABLES "${variables}" PARENT_SCOPE)
  set(header "${PROJECT_BINARY_DIR}/include/hive_gpu/backend_list.hpp")
  file(WRITE "${header}.tmp" "\
// Generated by CMake from the hive_gpu_add_backend() calls of CMakeLists.txt; do not edit.
// X-macros over the backends in \"auto\" order, the fastest device first.
#pragma once

// Every backend hive_gpu knows, built into this library or not: X(name, context class,
// aliases (space-separated), description, why this build left it out (\"\" when it is in)).
#define HIVE_GPU_KNOWN_BACKENDS(X)${known}

// The backends built into this library: X(name), hive_gpu::name::backend_entry() being each
// one's entry point (hive_gpu/backends.hpp).
#define HIVE_GPU_COMPILED_BACKENDS(X)${compiled}
")
  configure_file("${header}.tmp" "${header}" COPYONLY)  # touched only on change
endfunction()
