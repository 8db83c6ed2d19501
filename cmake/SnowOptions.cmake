# Build options shared by every target.

option(SNOW_BUILD_TESTS "Build the test suite" ON)
option(SNOW_BUILD_BENCHMARKS "Build the benchmarks under tests/bench" ON)
option(SNOW_FUZZ "Build the libFuzzer targets under tests/fuzz (needs clang)" OFF)
set(SNOW_SANITIZE "" CACHE STRING "Sanitizers to build with: 'address;undefined' or 'thread'")

set(SNOW_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
    -Wcast-align -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough)

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
endif()

if(SNOW_SANITIZE)
  list(JOIN SNOW_SANITIZE "," _snow_sanitizers)
  add_compile_options(-fsanitize=${_snow_sanitizers} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_snow_sanitizers})
endif()
