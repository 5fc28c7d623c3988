# Small helpers that keep every target's flags the same.

# Warnings for our own code only (generated and third-party code is exempt).
function(tunefleet_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter
                                           -Wno-missing-field-initializers)
  if(TUNEFLEET_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# tunefleet_library(name SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
function(tunefleet_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC "${PROJECT_SOURCE_DIR}")
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  tunefleet_warnings(${name})
endfunction()

# tunefleet_executable(name SOURCES ... DEPS ...)
function(tunefleet_executable name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}")
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  tunefleet_warnings(${name})
endfunction()

# tunefleet_test(name SOURCES ... DEPS ... [LABELS ...] [TIMEOUT s] [WHOLE])
# One GoogleTest binary per area, registered with CTest as one test per case;
# WHOLE registers the binary as one CTest test instead (for suites whose
# cases share an expensive fixture, e.g. one local fleet for 120 rows, which
# one process per case would start 120 times).
function(tunefleet_test name)
  cmake_parse_arguments(ARG "WHOLE" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}")
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} tunefleet_testing GTest::gmock GTest::gtest_main)
  tunefleet_warnings(${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(ARG_WHOLE)
    add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY "${PROJECT_BINARY_DIR}")
    set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
    return()
  endif()
  include(GoogleTest)
  gtest_discover_tests(${name}
    WORKING_DIRECTORY "${PROJECT_BINARY_DIR}"
    PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}"
    DISCOVERY_TIMEOUT 60)
endfunction()

# Adds every immediate subfolder of `parent` that has a CMakeLists.txt.
function(tunefleet_add_subdirectories parent)
  file(GLOB children RELATIVE "${CMAKE_CURRENT_SOURCE_DIR}/${parent}"
       "${CMAKE_CURRENT_SOURCE_DIR}/${parent}/*")
  list(SORT children)
  foreach(child ${children})
    if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${parent}/${child}/CMakeLists.txt")
      add_subdirectory("${parent}/${child}")
    endif()
  endforeach()
endfunction()

# tunefleet_fuzzer(name SOURCES ... DEPS ... CORPUS dir [SECONDS s])
# A libFuzzer target (only with -DTUNEFLEET_FUZZ=ON and clang; scripts/fuzz
# configures that build) plus a short CTest run of it labelled `fuzz`, seeded
# from the checked-in CORPUS. New inputs go to the build tree, never into the
# seeds. Every fuzzer joins the `fuzzers` target.
function(tunefleet_fuzzer name)
  cmake_parse_arguments(ARG "" "CORPUS;SECONDS" "SOURCES;DEPS" ${ARGN})
  if(NOT TUNEFLEET_FUZZ)
    return()
  endif()
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(WARNING "TUNEFLEET_FUZZ needs clang (libFuzzer): ${name} is skipped")
    return()
  endif()
  if(NOT ARG_SECONDS)
    set(ARG_SECONDS ${TUNEFLEET_FUZZ_SECONDS})
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}")
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_compile_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  tunefleet_warnings(${name})
  if(NOT TARGET fuzzers)
    add_custom_target(fuzzers)
  endif()
  add_dependencies(fuzzers ${name})
  set(corpus "${CMAKE_CURRENT_BINARY_DIR}/${name}_corpus")
  file(MAKE_DIRECTORY "${corpus}" "${PROJECT_BINARY_DIR}/fuzz-artifacts")
  add_test(NAME ${name}_short
           COMMAND ${name} -max_total_time=${ARG_SECONDS} -max_len=8192
                   -artifact_prefix=${PROJECT_BINARY_DIR}/fuzz-artifacts/${name}-
                   "${corpus}" "${ARG_CORPUS}")
  set_tests_properties(${name}_short PROPERTIES LABELS fuzz TIMEOUT 300)
endfunction()
