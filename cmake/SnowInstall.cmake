# Install rules and the SnowCore CMake package, included from the top CMakeLists.txt after the
# targets are defined.
#
# `cmake --install build/release --prefix /usr/local` gives:
#   bin/snow-core                                 the daemon (RUNPATH $ORIGIN/../lib)
#   bin/snowctl                                   the control CLI (docs/rpc.md)
#   lib/libsnow-core.so{,.0,.0.1.0}               the library, with its SOVERSION symlinks
#   include/snow/{posix,core,contexts,rpc}/      the public headers (and rpc/v1/*.pb.h)
#   lib/cmake/SnowCore/                           the package: find_package(SnowCore)
#   lib/snow-core/plugins/                        the plugin directory the unit passes to --modules
#   lib/systemd/system/snow-core.service          the systemd unit (scripts/snow-core.service)
#   share/doc/snow-core/modules.md                the module author's guide
# An out-of-tree plugin then builds with find_package(SnowCore), snow_protobuf() and
# snow_add_plugin(), exactly as plugins/example does (docs/modules.md; tested by
# tests/package/out_of_tree.sh).

include(CMakePackageConfigHelpers)

set(SNOW_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/SnowCore
    CACHE STRING "Where the SnowCore CMake package is installed (relative to the prefix)")
# Relative to the prefix, and "lib", not CMAKE_INSTALL_LIBDIR: with the prefix /usr, Debian's
# GNUInstallDirs gives lib/x86_64-linux-gnu, which systemd does not search for units.
# /usr/local/lib/systemd/system and /usr/lib/systemd/system are both on systemd's unit path.
set(SNOW_INSTALL_SYSTEMD_UNITDIR lib/systemd/system
    CACHE STRING "Where the systemd unit is installed (relative to the prefix)")

# ---- Usage requirements of the exported target -------------------------------------------------

# The public headers are C++20, and a consumer's compiler default (g++ 12: gnu++17) is not. The
# in-tree build sets CMAKE_CXX_STANDARD; an out-of-tree plugin gets it from the imported target.
# (The loader's ABI signature includes __cplusplus: a plugin built as C++23 is refused.)
target_compile_features(snowcore PUBLIC cxx_std_20)

# The installed daemon finds the installed libsnow-core without LD_LIBRARY_PATH or ldconfig,
# wherever the prefix is (relative RUNPATH; the build tree keeps its absolute build RPATH).
set_target_properties(snow-core snowctl PROPERTIES
  INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")

# ---- Targets -----------------------------------------------------------------------------------

# About the private dependencies: snowcore links libevent (PkgConfig::LIBEVENT), yaml-cpp,
# Threads, libdl and the OBJECT library snow_core_proto PRIVATE. For a SHARED library, CMake
# exports none of its PRIVATE link dependencies (they are only wrapped in $<LINK_ONLY:...> for
# STATIC libraries, whose consumers must link them), and the objects of snow_core_proto are
# already inside libsnow-core.so. So none of them appears in SnowCoreTargets.cmake, and a
# consumer needs neither their packages nor their targets; `install(EXPORT)` accepts this
# without exporting snow_core_proto (checked by tests/package). The one trace left is
# IMPORTED_LINK_DEPENDENT_LIBRARIES "yaml-cpp" in the per-configuration file: a hint for the
# linker's -rpath-link, used only if the consumer happens to have a yaml-cpp target, harmless
# otherwise (libsnow-core.so's DT_NEEDED entry finds the library through the system paths).
# Were snowcore ever made STATIC, snow_core_proto would have to be linked through
# target_sources($<TARGET_OBJECTS:...>) instead, and libevent/yaml-cpp found in
# SnowCoreConfig.cmake.
#
# snow-core (the daemon) is exported as well, as SnowCore::snow-core, so that a plugin's own
# tests can run the installed daemon with $<TARGET_FILE:SnowCore::snow-core>.
install(TARGETS snowcore snow-core
  EXPORT SnowCoreTargets
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT development)
install(TARGETS snowctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)

# The public headers: everything under <area>/include/snow/<area>/, included as
# "snow/<area>/x.h". Not only *.h: checked_posix.h includes posix_methods.inc. (The
# INSTALL_INTERFACE include directory of snowcore is ${CMAKE_INSTALL_INCLUDEDIR}, see the
# target_include_directories() of posix/, core/ and contexts/.)
foreach(area posix core contexts rpc)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${area}/include/snow
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    COMPONENT development)
endforeach()
# The RPC messages (node.proto, config.proto), whose code is inside libsnow-core: modules read
# them (e.g. the rpc.peer.down event's snow.rpc.v1.PeerStatus payload).
install(DIRECTORY ${PROJECT_BINARY_DIR}/rpc/proto-gen/snow/rpc/v1
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/snow/rpc
  COMPONENT development
  FILES_MATCHING PATTERN "*.pb.h")

install(EXPORT SnowCoreTargets
  NAMESPACE SnowCore::
  DESTINATION ${SNOW_INSTALL_CMAKEDIR}
  COMPONENT development)

# ---- The package -------------------------------------------------------------------------------

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/SnowCoreConfig.cmake.in
  ${PROJECT_BINARY_DIR}/SnowCoreConfig.cmake
  INSTALL_DESTINATION ${SNOW_INSTALL_CMAKEDIR}
  NO_SET_AND_CHECK_MACRO)

# ExactVersion, not SameMajorVersion: the plugin loader refuses a plugin whose ABI signature
# differs from the daemon's, and that signature contains SNOW_VERSION verbatim (module.h,
# SNOW_ABI_SIGNATURE). A plugin compiled against 0.1.0 headers loads only into a 0.1.0 daemon,
# so find_package(SnowCore 0.1.0) must not be satisfied by 0.1.1 or 0.2.0: the mismatch would
# only show at load time. (The file also refuses a package built for another pointer size.)
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/SnowCoreConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY ExactVersion)

install(FILES
  ${PROJECT_BINARY_DIR}/SnowCoreConfig.cmake
  ${PROJECT_BINARY_DIR}/SnowCoreConfigVersion.cmake
  ${PROJECT_SOURCE_DIR}/cmake/SnowProtobuf.cmake
  ${PROJECT_SOURCE_DIR}/cmake/SnowPlugin.cmake
  DESTINATION ${SNOW_INSTALL_CMAKEDIR}
  COMPONENT development)

# ---- Running it --------------------------------------------------------------------------------

# The plugin directory of the systemd unit (--modules <prefix>/lib/snow-core/plugins), created
# empty with mode 0755: the loader refuses a group- or world-writable directory.
install(DIRECTORY DESTINATION lib/snow-core/plugins COMPONENT runtime
  DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
                        WORLD_READ WORLD_EXECUTE)

# The systemd unit goes where systemd looks for units (see SNOW_INSTALL_SYSTEMD_UNITDIR), not
# share/doc: installed there, `systemctl daemon-reload && systemctl enable --now snow-core` is
# all it takes. scripts/snow-core.service names /usr/local (the default prefix); installed with
# another prefix, the unit is rewritten to name that prefix's daemon and plugin directory
# (CMAKE_INSTALL_PREFIX is evaluated at install time, so `--prefix` counts). /etc/snow-core is
# left alone: the configuration file is the operator's (docs/modules.md).
set(_snow_unit_code [[
  set(unit_dir "@SNOW_INSTALL_SYSTEMD_UNITDIR@")
  if(NOT IS_ABSOLUTE "${unit_dir}")
    set(unit_dir "${CMAKE_INSTALL_PREFIX}/${unit_dir}")
  endif()
  set(unit_file "$ENV{DESTDIR}${unit_dir}/snow-core.service")
  file(READ "@PROJECT_SOURCE_DIR@/scripts/snow-core.service" unit)
  string(REPLACE "/usr/local/" "${CMAKE_INSTALL_PREFIX}/" unit "${unit}")
  message(STATUS "Installing: ${unit_file}")
  file(MAKE_DIRECTORY "$ENV{DESTDIR}${unit_dir}")
  file(WRITE "${unit_file}" "${unit}")
  list(APPEND CMAKE_INSTALL_MANIFEST_FILES "${unit_file}")
]])
string(CONFIGURE "${_snow_unit_code}" _snow_unit_code @ONLY)
install(CODE "${_snow_unit_code}" COMPONENT runtime)

# The module author's guide, which the unit's Documentation= names.
install(FILES ${PROJECT_SOURCE_DIR}/docs/modules.md
  DESTINATION ${CMAKE_INSTALL_DOCDIR}
  COMPONENT development)
