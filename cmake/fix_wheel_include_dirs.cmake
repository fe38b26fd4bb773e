# Passed with -DCMAKE_PROJECT_INCLUDE=<this file> when building against the ROS 2 wheels
# from PyPI (see README, "Package structure", and `make msgs`).
#
# Why: the wheels' exported CMake targets <pkg>__rosidl_generator_py carry the include
# directories of the machine that built the wheels (/opt/python/cp3XX-cp3XX/include/...
# and a NumPy include under /opt/python/...). Any interface package that depends on them
# (ours depends on std_msgs and builtin_interfaces) then fails to compile its Python
# extension with "Python.h: No such file or directory".
#
# What: at the end of configure (after rosidl_generate_interfaces() has imported those
# targets), every imported *__rosidl_generator_py target whose include directories do not
# exist on this machine gets this interpreter's Python and NumPy include directories
# instead. On a normal ROS installation the directories exist and nothing is changed.

function(_gm_skip_fix_wheel_include_dirs)
  if(NOT Python3_EXECUTABLE)
    find_package(Python3 REQUIRED COMPONENTS Interpreter)
  endif()
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
      "import sysconfig, numpy; print(sysconfig.get_paths()['include'] + ';' + numpy.get_include(), end='')"
    OUTPUT_VARIABLE _includes
    RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR
      "gm_skip_ros: ${Python3_EXECUTABLE} cannot report its Python/NumPy include dirs; "
      "install numpy into that interpreter or pass -DPython3_EXECUTABLE=<python with numpy>")
  endif()
  get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  set(_fixed "")
  foreach(_t IN LISTS _targets)
    if(NOT _t MATCHES "__rosidl_generator_py$")
      continue()
    endif()
    get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_missing FALSE)
    foreach(_d IN LISTS _dirs)
      if(NOT _d MATCHES "^\\$<" AND NOT EXISTS "${_d}")
        set(_missing TRUE)
      endif()
    endforeach()
    if(_missing)
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_includes}")
      list(APPEND _fixed ${_t})
    endif()
  endforeach()
  if(_fixed)
    message(STATUS "gm_skip_ros: include dirs of ${_fixed} set to ${_includes}")
  endif()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _gm_skip_fix_wheel_include_dirs)
