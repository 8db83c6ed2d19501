#!/usr/bin/env bash
# Proves that a plugin builds out of tree against an INSTALLED snow-core, and that the installed
# daemon loads and runs it:
#   a. cmake --install BUILD_DIR --prefix TMP/prefix
#   b. configure and build PLUGIN_SOURCE (plugins/example) as a standalone project against
#      TMP/prefix only (find_package(SnowCore) must come from the installed package)
#   c. TMP/prefix/bin/snow-core --modules TMP/plugins --config ... --check-config: exit 0 and
#      "module greeter 1.0.0 loaded"
#   d. the same for real: wait for "ready: 1 module started (greeter)", ask the greeter over TCP,
#      SIGTERM, exit 0
#
# Usage: out_of_tree.sh BUILD_DIR PLUGIN_SOURCE CXX_COMPILER [COMPILER_LAUNCHER]
# (tests/package/CMakeLists.txt passes the snow-core build's compiler: the plugin's ABI
# signature names the compiler version, which must match the daemon's.)
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 BUILD_DIR PLUGIN_SOURCE CXX_COMPILER [COMPILER_LAUNCHER]" >&2
  exit 2
fi
build_dir=$(cd "$1" && pwd)
plugin_source=$(cd "$2" && pwd)
cxx=$3
launcher=${4:-}
source_root=$(cd "$(dirname "$0")/../.." && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/snow-package.XXXXXX")
prefix=$tmp/prefix
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ]; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

step() { echo "==== $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
show() {  # show FILE: a log, indented
  sed 's/^/    | /' "$1"
}
running() {  # running PID: alive and not a zombie (kill -0 succeeds on an unreaped child)
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# The daemon must run from the prefix alone: no library path, no systemd socket inherited from
# whatever runs the tests.
unset LD_LIBRARY_PATH NOTIFY_SOCKET

# ---- a. install ------------------------------------------------------------------------------
step "a. cmake --install $build_dir --prefix $prefix"
cmake --install "$build_dir" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
  { show "$tmp/install.log"; fail "cmake --install failed"; }
for f in bin/snow-core lib/cmake/SnowCore/SnowCoreConfig.cmake \
  lib/cmake/SnowCore/SnowCoreConfigVersion.cmake lib/cmake/SnowCore/SnowCoreTargets.cmake \
  lib/cmake/SnowCore/SnowProtobuf.cmake lib/cmake/SnowCore/SnowPlugin.cmake \
  include/snow/core/module.h include/snow/posix/posix.h include/snow/contexts/static_context.h \
  lib/systemd/system/snow-core.service lib/snow-core/plugins/spawner.so; do
  [ -e "$prefix/$f" ] || fail "the install tree lacks $f"
done
ls "$prefix"/lib/libsnow-core.so* >/dev/null 2>&1 || fail "the install tree lacks lib/libsnow-core.so*"
# What a consumer links: the public dependencies only. (yaml-cpp may appear in
# IMPORTED_LINK_DEPENDENT_LIBRARIES, a -rpath-link hint that needs no such target.)
exported=$(grep 'INTERFACE_LINK_LIBRARIES' "$prefix"/lib/cmake/SnowCore/SnowCoreTargets.cmake)
echo "exported:$exported"
if grep -q 'snow_core_proto\|LIBEVENT\|yaml-cpp\|Threads' <<<"$exported"; then
  fail "a private dependency of libsnow-core leaked into the exported link interface"
fi
echo "installed: $(cd "$prefix" && find . -type f -o -type l | sort | grep -v '^./include/' | tr '\n' ' ')"
echo "           + $(find "$prefix/include" -name '*.h' | wc -l) headers under include/snow"

# ---- b. the plugin, out of tree ----------------------------------------------------------------
step "b. configure $plugin_source against $prefix only"
# How a project is configured against the package: `configure SOURCE BUILD`.
options=(-G Ninja
  -DCMAKE_BUILD_TYPE=RelWithDebInfo
  -DCMAKE_CXX_COMPILER="$cxx"
  -DCMAKE_PREFIX_PATH="$prefix"
  # Nothing but CMAKE_PREFIX_PATH may lead to a SnowCore package: not the user or system
  # package registries (where a build tree could be registered), not the environment.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if [ -n "$launcher" ]; then
  options+=(-DCMAKE_CXX_COMPILER_LAUNCHER="$launcher")
fi
configure() {
  env -u CMAKE_PREFIX_PATH -u SnowCore_DIR -u SnowCore_ROOT cmake -S "$1" -B "$2" "${options[@]}"
}
configure "$plugin_source" "$tmp/build" >"$tmp/configure.log" 2>&1 ||
  { show "$tmp/configure.log"; fail "configuring the plugin against the installed package failed"; }
found=$(sed -n 's/^SnowCore_DIR:PATH=//p' "$tmp/build/CMakeCache.txt")
[ "$found" = "$prefix/lib/cmake/SnowCore" ] ||
  fail "SnowCore was found at '$found', not in the installed package $prefix/lib/cmake/SnowCore"
echo "SnowCore_DIR=$found"

step "b. build the plugin"
cmake --build "$tmp/build" >"$tmp/build.log" 2>&1 ||
  { show "$tmp/build.log"; fail "building the plugin out of tree failed"; }
# Its compile and link lines must name the prefix, never the snow-core source or build tree.
if grep -F -e "$source_root/posix" -e "$source_root/core" -e "$source_root/contexts" \
  -e "$build_dir" "$tmp/build/build.ninja" >/dev/null; then
  grep -n -F -e "$source_root/posix" -e "$source_root/core" -e "$source_root/contexts" \
    -e "$build_dir" "$tmp/build/build.ninja" | head -5 >&2
  fail "the out-of-tree build refers to the snow-core source or build tree"
fi
# Every installed header compiles for a plain consumer of SnowCore::snowcore (all of them in one
# translation unit): none needs a file that was not installed.
step "b. compile every installed header against SnowCore::snowcore"
mkdir "$tmp/headers"
(cd "$prefix/include" && find snow -name '*.h' | sort | sed 's/.*/#include "&"/') >"$tmp/headers/all.cc"
cat >"$tmp/headers/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(snow-headers LANGUAGES CXX)
find_package(SnowCore REQUIRED)
add_library(all_headers OBJECT all.cc)
target_link_libraries(all_headers PRIVATE SnowCore::snowcore)
EOF
{ configure "$tmp/headers" "$tmp/headers-build" && cmake --build "$tmp/headers-build"; } \
  >"$tmp/headers.log" 2>&1 ||
  { show "$tmp/headers.log"; fail "the installed headers do not compile for a consumer"; }
echo "$(wc -l <"$tmp/headers/all.cc") headers compile"

plugin=$tmp/build/greeter.so
[ -f "$plugin" ] || fail "the build made no greeter.so"

mkdir -m 0755 "$tmp/plugins"
install -m 0755 "$plugin" "$tmp/plugins/greeter.so"
cat >"$tmp/snow.yaml" <<'EOF'
modules: {greeter: {greeting: hi, listen: "127.0.0.1:0"}}
EOF
daemon=("$prefix/bin/snow-core" --modules "$tmp/plugins" --config "$tmp/snow.yaml")

# ---- c. --check-config ---------------------------------------------------------------------------
step "c. ${daemon[*]} --check-config"
status=0
"${daemon[@]}" --check-config 2>"$tmp/check.log" || status=$?
show "$tmp/check.log"
[ "$status" -eq 0 ] || fail "--check-config exited $status, not 0"
grep -q "module greeter 1.0.0 loaded" "$tmp/check.log" ||
  fail "--check-config did not log 'module greeter 1.0.0 loaded'"

# ---- d. for real ---------------------------------------------------------------------------------
step "d. ${daemon[*]}"
"${daemon[@]}" 2>"$tmp/run.log" &
daemon_pid=$!
deadline=$((SECONDS + 10))
until grep -q "ready: 1 module started (greeter)" "$tmp/run.log"; do
  if ! running "$daemon_pid"; then
    status=0
    wait "$daemon_pid" || status=$?
    daemon_pid=
    show "$tmp/run.log"
    fail "the daemon exited ($status) before it was ready"
  fi
  if [ $SECONDS -ge $deadline ]; then
    show "$tmp/run.log"
    fail "no 'ready: 1 module started (greeter)' within 10 s"
  fi
  sleep 0.1  # Polling interval, not synchronisation: the loop re-checks the log.
done
echo "ready"

# The plugin really serves: ask it over TCP on the port it bound (listen: 127.0.0.1:0).
port=$(sed -n 's/.*greeter: listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/run.log" | head -1)
[ -n "$port" ] || { show "$tmp/run.log"; fail "the greeter logged no 'listening on' address"; }
answer=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'ada\n' >&3 && read -r -t 10 line <&3 &&
  echo "$line") 2>&1) || true
[ "$answer" = "hi, ada" ] || fail "the greeter on port $port answered '$answer', not 'hi, ada'"
echo "greeter on 127.0.0.1:$port answered '$answer'"

kill -TERM "$daemon_pid"
deadline=$((SECONDS + 20))
while running "$daemon_pid" && [ $SECONDS -lt $deadline ]; do
  sleep 0.1
done
if running "$daemon_pid"; then
  show "$tmp/run.log"
  fail "the daemon did not exit within 20 s of SIGTERM"
fi
status=0
wait "$daemon_pid" || status=$?
daemon_pid=
show "$tmp/run.log"
[ "$status" -eq 0 ] || fail "the daemon exited $status after SIGTERM, not 0"
grep -q "SIGTERM received: stopping" "$tmp/run.log" || fail "the daemon did not log the SIGTERM"

echo "PASS: out-of-tree plugin built against the installed SnowCore package, loaded and served"
