#!/usr/bin/env bash
# Builds and runs mixdepth's main demo (examples/demo.cpp, target mixdepth_demo). Build
# directory: $BUILD_DIR (default build/ in the source tree), shared with scripts/test.sh.
# Arguments go to the demo: [seq_len] [batch].
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_packages "${MIXDEPTH_PACKAGES[@]}"
configure -DMIXDEPTH_BUILD_EXAMPLES=ON  # set, not left to a cache that may hold OFF
target=mixdepth_demo
if ! grep -qx "$target" <<<"$(list_targets)"; then
  echo "error: no $target target in $BUILD_DIR" >&2
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
