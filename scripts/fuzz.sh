#!/usr/bin/env bash
# Builds the libFuzzer harness tests/fuzz/fuzz_topk.cpp with clang (ASan + UBSan,
# -march=native) in its own build directory and runs it for FUZZ_SECONDS seconds (default 60)
# on a copy of the committed corpus tests/fuzz/corpus, so the source tree stays clean. Exits
# non-zero on any finding (a top-k mismatch, a sanitizer report, a crash, a hang).
#
#   scripts/fuzz.sh                     # 60 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh    # longer
# Environment: FUZZ_SECONDS, FUZZ_BUILD_DIR (default build-fuzz/ in the source tree),
# FUZZ_CXX (default clang++), JOBS (build parallelism). Extra arguments go to the fuzzer.
# Each run draws a new random seed, which libFuzzer prints first ("INFO: Seed: N"); to repeat
# a run's sequence of inputs, pass it back: scripts/fuzz.sh -seed=N (with the same corpus).
#
# After a longer run, fold what it found into the committed corpus (kept small by -merge):
#   build-fuzz/tests/fuzz/mixdepth_fuzz_topk -merge=1 tests/fuzz/corpus build-fuzz/fuzz-corpus
set -euo pipefail
BUILD_DIR=${FUZZ_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build-fuzz}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_CXX=${FUZZ_CXX:-clang++}

# clang and its libFuzzer runtime (libclang-rt-<major>-dev on Debian 12: clang 14).
clang_major=14
if command -v "$FUZZ_CXX" >/dev/null 2>&1; then
  clang_major=$("$FUZZ_CXX" -dumpversion | cut -d. -f1)
fi
require_packages cmake libeigen3-dev libxsimd-dev clang "libclang-rt-$clang_major-dev"
if ! command -v "$FUZZ_CXX" >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: $FUZZ_CXX not found; install clang with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y clang libclang-rt-14-dev" >&2
  exit 1
fi

harness=$BUILD_DIR/tests/fuzz/mixdepth_fuzz_topk
# Debug: assertions on; the harness's own -O1 -g come after the build type's flags.
configure -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$FUZZ_CXX" -DMIXDEPTH_BUILD_FUZZ=ON \
  -DMIXDEPTH_BUILD_TESTS=OFF -DMIXDEPTH_BUILD_BENCH=OFF -DMIXDEPTH_BUILD_EXAMPLES=OFF
cmake --build "$BUILD_DIR" --parallel "$JOBS" --target mixdepth_fuzz_topk

corpus=$BUILD_DIR/fuzz-corpus
artifacts=$BUILD_DIR/fuzz-artifacts
rm -rf "$corpus"
mkdir -p "$corpus" "$artifacts"
touch "$BUILD_DIR/fuzz-started"  # artifacts newer than this are this run's
cp "$MIXDEPTH_ROOT"/tests/fuzz/corpus/* "$corpus"/
echo "scripts/fuzz.sh: fuzzing for $FUZZ_SECONDS s from $(find "$corpus" -type f | wc -l) corpus inputs"

# -max_len: the 10-byte header plus 8 KiB of scores (longer sequences come from tiling, see
# fuzz_topk.cpp); -timeout: an input that runs for 30 s is a hang.
status=0
"$harness" -max_total_time="$FUZZ_SECONDS" -max_len=8202 -timeout=30 \
  -dict="$MIXDEPTH_ROOT/tests/fuzz/topk.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
  "$@" "$corpus" || status=$?
if ((status != 0)); then
  echo "scripts/fuzz.sh: the fuzzer failed (exit $status); inputs that reproduce it:" >&2
  find "$artifacts" -type f -newer "$BUILD_DIR/fuzz-started" >&2
  echo "reproduce one with: $harness $artifacts/<file>" >&2
  exit "$status"
fi
echo "scripts/fuzz.sh: no findings in $FUZZ_SECONDS s ($(find "$corpus" -type f | wc -l) inputs in $corpus)"
