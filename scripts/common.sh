# Shared by scripts/demo.sh and scripts/test.sh; source it, do not run it.
# Sets MIXDEPTH_ROOT (the source tree), BUILD_DIR and JOBS; provides require_packages and
# configure.

MIXDEPTH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$MIXDEPTH_ROOT/build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$PWD/$BUILD_DIR ;; esac
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# The Debian 12 packages mixdepth builds with.
# (make: the default CMake generator; only a Recommends of cmake.)
MIXDEPTH_PACKAGES=(cmake make g++ libeigen3-dev libxsimd-dev doctest-dev libbenchmark-dev)

# require_packages PKG...: installs what is missing when running as root, otherwise prints
# the command to run and exits 1.
require_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "note: dpkg-query not found (not Debian?); not checking for: $*" >&2
    return 0
  fi
  local missing=() package
  for package in "$@"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null) != installed ]]; then
      missing+=("$package")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) == 0 ]]; then
    echo "Installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
  else
    echo "Missing Debian packages: ${missing[*]}" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# configure [CMAKE_ARGS...]: a Release build of the whole project in BUILD_DIR.
configure() {
  cmake -S "$MIXDEPTH_ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@"
}

# list_targets: the targets of the configured build in BUILD_DIR, one per line.
list_targets() {
  local listing
  if [[ -f $BUILD_DIR/build.ninja ]]; then
    listing=$(cmake --build "$BUILD_DIR" -- -t targets all)
    sed -n 's/^\([^:]*\): .*/\1/p' <<<"$listing"
  else
    listing=$(cmake --build "$BUILD_DIR" --target help)
    sed -n 's/^\.\.\. \([^ ]*\).*/\1/p' <<<"$listing"
  fi
}
