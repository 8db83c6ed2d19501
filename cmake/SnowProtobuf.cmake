# snow_protobuf(NAME target ROOT dir PROTOS file...): an OBJECT library of the C++ generated from
# each .proto (paths relative to ROOT, which is also the import root). Linking it adds the objects
# and the generated headers' root to the include path; headers are included as
# "<path under ROOT>.pb.h", e.g. "snow/core/v1/daemon.pb.h".
#
# (A library of its own because a custom command's outputs only attach to targets of the same
# directory, and the targets that use them usually live elsewhere.)
function(snow_protobuf)
  cmake_parse_arguments(ARG "" "NAME;ROOT" "PROTOS" ${ARGN})
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/proto-gen)
  set(sources)
  foreach(proto ${ARG_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" stem ${proto})
    set(generated ${out_dir}/${stem}.pb.cc ${out_dir}/${stem}.pb.h)
    add_custom_command(
      OUTPUT ${generated}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${out_dir}
      COMMAND protobuf::protoc --cpp_out=${out_dir} -I ${ARG_ROOT} ${ARG_ROOT}/${proto}
      DEPENDS ${ARG_ROOT}/${proto} protobuf::protoc
      COMMENT "protoc ${proto}"
      VERBATIM)
    list(APPEND sources ${generated})
  endforeach()
  add_library(${ARG_NAME} OBJECT ${sources})
  # Its objects end up in shared objects (libsnow-core, plugins). In-tree the top CMakeLists.txt
  # sets CMAKE_POSITION_INDEPENDENT_CODE; a plugin project using the installed package does not.
  set_target_properties(${ARG_NAME} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_include_directories(${ARG_NAME} PUBLIC $<BUILD_INTERFACE:${out_dir}>)
  target_link_libraries(${ARG_NAME} PUBLIC protobuf::libprotobuf)
endfunction()

# snow_grpc_services(NAME target ROOT dir PROTOS file... MESSAGES lib): an OBJECT library of only
# the gRPC service code grpc_cpp_plugin makes from each .proto ("<path under ROOT>.grpc.pb.h":
# stubs, AsyncService), for code that wants gRPC's own generated API, such as the plain-gRPC peer
# of the RPC benchmark. The messages come from `lib`, which must already carry those .protos'
# protoc output (snow_protobuf): a .proto's messages may be linked into a process only once, and
# a second copy aborts at start-up ("File already exists in database").
function(snow_grpc_services)
  cmake_parse_arguments(ARG "" "NAME;ROOT;MESSAGES" "PROTOS" ${ARGN})
  if(NOT SNOW_GRPC_CPP_PLUGIN)
    message(FATAL_ERROR "snow_grpc_services(${ARG_NAME}): grpc_cpp_plugin not found "
                        "(Debian: protobuf-compiler-grpc)")
  endif()
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/grpc-gen)
  set(sources)
  foreach(proto ${ARG_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" stem ${proto})
    set(generated ${out_dir}/${stem}.grpc.pb.cc ${out_dir}/${stem}.grpc.pb.h)
    add_custom_command(
      OUTPUT ${generated}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${out_dir}
      COMMAND protobuf::protoc --grpc_out=${out_dir}
              --plugin=protoc-gen-grpc=${SNOW_GRPC_CPP_PLUGIN} -I ${ARG_ROOT} ${ARG_ROOT}/${proto}
      DEPENDS ${ARG_ROOT}/${proto} protobuf::protoc ${SNOW_GRPC_CPP_PLUGIN}
      COMMENT "grpc_cpp_plugin ${proto}"
      VERBATIM)
    list(APPEND sources ${generated})
  endforeach()
  add_library(${ARG_NAME} OBJECT ${sources})
  target_include_directories(${ARG_NAME} PUBLIC $<BUILD_INTERFACE:${out_dir}>)
  # The messages' headers ("<stem>.pb.h") come with `lib`'s include directories.
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_MESSAGES} gRPC::grpc++)
endfunction()
