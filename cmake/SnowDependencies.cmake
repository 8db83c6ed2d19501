# Every dependency comes from Debian 12's packages (see scripts/install-deps).

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
# libevent_pthreads gives the loop its thread-safe wake-up, which post() relies on.
pkg_check_modules(LIBEVENT REQUIRED IMPORTED_TARGET libevent_core libevent_pthreads)
# libsodium: Ed25519 node keys, X25519, BLAKE2b and ChaCha20-Poly1305 for the portal (README).
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
# The container runner: libcurl speaks HTTP to the Docker engine over its unix socket (and its
# multi interface runs every transfer on one thread); libarchive writes the build context's tar.
pkg_check_modules(LIBCURL REQUIRED IMPORTED_TARGET libcurl)
pkg_check_modules(LIBARCHIVE REQUIRED IMPORTED_TARGET libarchive)
find_package(OpenTracing REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(Protobuf REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(CLI11 REQUIRED)
# gRPC's own CMake package (Debian ships it); grpc_cpp_plugin only for the plain-gRPC benchmark.
find_package(gRPC CONFIG REQUIRED)
find_program(SNOW_GRPC_CPP_PLUGIN grpc_cpp_plugin)

if(SNOW_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(SNOW_BUILD_BENCHMARKS)
  find_package(benchmark REQUIRED)
endif()
