# Fails, naming each file, when a source under SERVING_DIR outside grpc/ and
# main.cc includes gRPC (grpcpp), a generated proto (*.pb.h) or a grpc/ header:
# the serving core stays gRPC-free and the layout shows it.
# Usage: cmake -DSERVING_DIR=<services/serving> -P check_grpc_layout.cmake
if(NOT SERVING_DIR OR NOT IS_DIRECTORY "${SERVING_DIR}")
  message(FATAL_ERROR "SERVING_DIR='${SERVING_DIR}' is not a directory")
endif()
get_filename_component(SERVING_DIR "${SERVING_DIR}" ABSOLUTE)
file(GLOB_RECURSE sources RELATIVE "${SERVING_DIR}"
     "${SERVING_DIR}/*.h" "${SERVING_DIR}/*.cc" "${SERVING_DIR}/*.hpp" "${SERVING_DIR}/*.cpp")
list(SORT sources)
if(NOT sources)
  message(FATAL_ERROR "no sources under ${SERVING_DIR}")
endif()
set(offenders "")
set(checked 0)
foreach(rel IN LISTS sources)
  if(rel MATCHES "^grpc/" OR rel STREQUAL "main.cc")
    continue()
  endif()
  math(EXPR checked "${checked} + 1")
  file(STRINGS "${SERVING_DIR}/${rel}" hits
       REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]*grpcpp/|[^>\"]*\\.pb\\.h|services/serving/grpc/)")
  foreach(hit IN LISTS hits)
    string(STRIP "${hit}" hit)
    string(APPEND offenders "\n  ${SERVING_DIR}/${rel}: ${hit}")
  endforeach()
endforeach()
if(offenders)
  message(FATAL_ERROR "gRPC outside services/serving/grpc/ (move the file to grpc/ "
                      "or put an interface between it and the core):${offenders}")
endif()
message(STATUS "serving layout: ${checked} core files free of gRPC (grpc/ and main.cc skipped)")
