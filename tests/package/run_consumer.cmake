# Builds and runs tests/package/consumer against mixdepth, as a user would get it:
#   cmake -DMODE=add_subdirectory|find_package -DSOURCE_DIR=<mixdepth source tree>
#         -DCONSUMER_DIR=<consumer source> -DWORK_DIR=<scratch dir, wiped>
#         [-DGENERATOR=...] [-DMAKE_PROGRAM=...] [-DCXX_COMPILER=...] [-DCOMPILER_LAUNCHER=...]
#         -P run_consumer.cmake
# find_package mode first installs mixdepth (tests, benchmarks and examples off) into
# WORK_DIR/prefix and checks what landed there.
cmake_minimum_required(VERSION 3.21)

foreach(required IN ITEMS MODE SOURCE_DIR CONSUMER_DIR WORK_DIR)
  if(NOT DEFINED ${required})
    message(FATAL_ERROR "run_consumer.cmake: -D${required}=... is required")
  endif()
endforeach()

# What every configure step shares with the build that runs this test.
set(common_args -DCMAKE_BUILD_TYPE=Release -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(GENERATOR)
  list(APPEND common_args -G ${GENERATOR})
endif()
if(MAKE_PROGRAM)
  list(APPEND common_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(CXX_COMPILER)
  list(APPEND common_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(COMPILER_LAUNCHER)
  list(APPEND common_args -DCMAKE_CXX_COMPILER_LAUNCHER=${COMPILER_LAUNCHER})
endif()

# Runs one step; stops the test with its output when it fails.
function(step name)
  message(STATUS "---- ${name}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result COMMAND_ECHO STDOUT)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${MODE}: ${name} failed (${result})")
  endif()
endfunction()

function(fail message)
  message(FATAL_ERROR "${MODE}: ${message}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(consumer_build ${WORK_DIR}/consumer-build)

# The version the source tree declares, as CMakeLists.txt reads it.
file(STRINGS ${SOURCE_DIR}/include/mixdepth/version.hpp version_lines
     REGEX "#define MIXDEPTH_VERSION_(MAJOR|MINOR|PATCH) ")
set(version "")
foreach(line IN LISTS version_lines)
  string(REGEX REPLACE ".* ([0-9]+)$" "\\1" number "${line}")
  list(APPEND version ${number})
endforeach()
list(JOIN version "." version)

if(MODE STREQUAL "add_subdirectory")
  step("configure the consumer (add_subdirectory)" ${CMAKE_COMMAND} -S ${CONSUMER_DIR}
       -B ${consumer_build} ${common_args} -DCONSUMER_MODE=add_subdirectory
       -DMIXDEPTH_SOURCE_DIR=${SOURCE_DIR})
  if(EXISTS ${consumer_build}/mixdepth/tests)
    fail("the vendored mixdepth generated a tests/ build directory")
  endif()
elseif(MODE STREQUAL "find_package")
  set(install_build ${WORK_DIR}/mixdepth-build)
  set(prefix ${WORK_DIR}/prefix)
  step("configure mixdepth for installation" ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${install_build}
       ${common_args} -DMIXDEPTH_BUILD_TESTS=OFF -DMIXDEPTH_BUILD_BENCH=OFF
       -DMIXDEPTH_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${prefix})
  step("build mixdepth" ${CMAKE_COMMAND} --build ${install_build} --config Release)
  step("install mixdepth" ${CMAKE_COMMAND} --install ${install_build} --config Release
       --prefix ${prefix})

  # Every header, and nothing else, under include/mixdepth.
  file(GLOB_RECURSE source_headers RELATIVE ${SOURCE_DIR}/include ${SOURCE_DIR}/include/*)
  file(GLOB_RECURSE installed_headers RELATIVE ${prefix}/include ${prefix}/include/*)
  list(SORT source_headers)
  list(SORT installed_headers)
  if(NOT "${source_headers}" STREQUAL "${installed_headers}")
    fail("installed headers differ from the source tree's:\n  source: ${source_headers}\n"
         "  installed: ${installed_headers}")
  endif()

  # The package files, in one directory.
  file(GLOB_RECURSE config_files ${prefix}/*/mixdepthConfig.cmake)
  list(LENGTH config_files config_count)
  if(NOT config_count EQUAL 1)
    fail("expected one installed mixdepthConfig.cmake, found: ${config_files}")
  endif()
  get_filename_component(config_dir ${config_files} DIRECTORY)
  foreach(file IN ITEMS mixdepthConfigVersion.cmake mixdepthTargets.cmake)
    if(NOT EXISTS ${config_dir}/${file})
      fail("${file} is not installed next to mixdepthConfig.cmake")
    endif()
  endforeach()
  file(READ ${config_dir}/mixdepthConfigVersion.cmake version_file)
  string(REGEX MATCH "set\\(PACKAGE_VERSION \"([^\"]*)\"\\)" _ "${version_file}")
  if(NOT "${CMAKE_MATCH_1}" STREQUAL "${version}")
    fail("mixdepthConfigVersion.cmake declares '${CMAKE_MATCH_1}', version.hpp ${version}")
  endif()

  # The exported interface: no project-only flags, no paths into the source or build tree.
  file(GLOB target_files ${config_dir}/mixdepthTargets*.cmake)
  foreach(file IN LISTS target_files)
    file(READ ${file} text)
    get_filename_component(name ${file} NAME)
    foreach(forbidden IN ITEMS -march -mtune -fsanitize "${SOURCE_DIR}" "${install_build}")
      string(FIND "${text}" "${forbidden}" at)
      if(NOT at EQUAL -1)
        fail("${name} contains '${forbidden}'")
      endif()
    endforeach()
  endforeach()
  message(STATUS "install tree checked: ${prefix}")

  step("configure the consumer (find_package)" ${CMAKE_COMMAND} -S ${CONSUMER_DIR}
       -B ${consumer_build} ${common_args} -DCONSUMER_MODE=find_package
       -DCMAKE_PREFIX_PATH=${prefix})
  # It must have found this install, not one elsewhere on the system.
  file(READ ${consumer_build}/mixdepth_dir.txt found_dir)
  if(NOT "${found_dir}" STREQUAL "${config_dir}")
    fail("the consumer found mixdepth in '${found_dir}', not in ${config_dir}")
  endif()
else()
  message(FATAL_ERROR "MODE must be add_subdirectory or find_package, not '${MODE}'")
endif()

step("build the consumer" ${CMAKE_COMMAND} --build ${consumer_build} --config Release)
foreach(candidate IN ITEMS ${consumer_build}/app ${consumer_build}/Release/app)
  if(EXISTS ${candidate})
    set(app ${candidate})
    break()
  endif()
endforeach()
if(NOT DEFINED app)
  fail("no consumer executable in ${consumer_build}")
endif()
step("run the consumer" ${app})
