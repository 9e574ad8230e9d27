#!/usr/bin/env bash
# Builds and runs mixdepth's main demo (examples/demo.cpp; examples/quickstart.cpp until the
# demo exists). Build directory: $BUILD_DIR (default build/ in the source tree), shared with
# scripts/test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_packages "${MIXDEPTH_PACKAGES[@]}"
configure
targets=$(list_targets)
target=
for candidate in mixdepth_demo mixdepth_quickstart quickstart; do
  if grep -qx "$candidate" <<<"$targets"; then
    target=$candidate
    break
  fi
done
if [[ -z $target ]]; then
  echo "error: no demo target (mixdepth_demo, or mixdepth_quickstart until it exists) in $BUILD_DIR" >&2
  exit 1
fi
cmake --build "$BUILD_DIR" --target "$target" --parallel "$JOBS"
program=$(find "$BUILD_DIR" -type f -name "$target" -perm -u+x -print -quit)
if [[ -z $program ]]; then
  echo "error: built $target but found no executable of that name under $BUILD_DIR" >&2
  exit 1
fi
echo "==> $program"
"$program" "$@"
