# hive_gpu_python_query(<out> <code>): runs <code> in the Python interpreter that builds and
# stores its stdout in <out> (empty on failure). pip builds in an isolated environment whose
# PYTHONPATH hides the interpreter's own site-packages, where the nvidia-cublas and wgpu
# wheels live; the query runs without that overlay so it sees what the user installed.
function(hive_gpu_python_query out code)
  set(${out} "" PARENT_SCOPE)
  if(NOT Python_EXECUTABLE)
    find_package(Python QUIET COMPONENTS Interpreter)
  endif()
  if(NOT Python_EXECUTABLE)
    return()
  endif()
  # Two separate calls: <code> may hold ';', which a CMake list would split.
  execute_process(COMMAND "${Python_EXECUTABLE}" -c "${code}"
                  OUTPUT_VARIABLE _value OUTPUT_STRIP_TRAILING_WHITESPACE
                  ERROR_QUIET RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0 OR _value STREQUAL "")
    execute_process(COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE
                            "${Python_EXECUTABLE}" -c "${code}"
                    OUTPUT_VARIABLE _value OUTPUT_STRIP_TRAILING_WHITESPACE
                    ERROR_QUIET RESULT_VARIABLE _rc)
  endif()
  if(_rc EQUAL 0)
    set(${out} "${_value}" PARENT_SCOPE)
  endif()
endfunction()
