#!/usr/bin/env bash
# Builds mixdepth's tests, examples and benchmarks in Release and runs the whole test suite
# (doctest cases, examples, packaging tests). Build directory: $BUILD_DIR (default build/
# in the source tree). Extra arguments go to the CMake configure step, e.g.
#   BUILD_DIR=build-asan scripts/test.sh -DMIXDEPTH_SANITIZE=address,undefined
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_packages "${MIXDEPTH_PACKAGES[@]}"
start=$SECONDS
# The options are set, not left to the cache: a build directory configured before with
# tests off would otherwise build nothing to test and report success.
configure -DMIXDEPTH_BUILD_TESTS=ON -DMIXDEPTH_BUILD_EXAMPLES=ON -DMIXDEPTH_BUILD_BENCH=ON "$@"
cmake --build "$BUILD_DIR" --parallel "$JOBS"
built=$SECONDS
cd "$BUILD_DIR"
ctest --output-on-failure --no-tests=error --parallel "${CTEST_PARALLEL_LEVEL:-$JOBS}"
echo "scripts/test.sh: build $((built - start)) s, tests $((SECONDS - built)) s ($BUILD_DIR)"
