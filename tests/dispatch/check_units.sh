#!/usr/bin/env bash
# Static check of a library made by mixdepth_add_dispatch_library(): its units are compiled
# with different -m flags and linked into one program, so
#   1. no code symbol may be defined (weak: inline functions, templates) by two of its units,
#      or by a unit and one of the program's own objects, with different instructions: the
#      linker keeps one copy, and the other unit's callers would run code compiled for an
#      instruction set nobody checked (the idea of tests/package/odr/check_shared_code.sh,
#      made stricter: any difference, not only AVX-512, and the program's objects too);
#   2. each unit uses the instruction set it claims and no wider one: the dispatcher and the
#      scalar unit no AVX, the AVX2 unit no AVX-512, and the AVX-512 unit does use AVX-512;
#   3. the program's own objects, built with MIXDEPTH_RUNTIME_DISPATCH, compile no kernel
#      (select_top_k and friends reach the kernels through the library's tables only).
#
# usage: check_units.sh LIBRARY.a [PROGRAM_OBJECT.o...]   (needs binutils; x86-64 objects)
# With MIXDEPTH_CHECK_BASELINE=0 (the build's own flags already ask for an instruction set,
# which the scalar unit and the dispatcher then take too) their AVX is reported, not failed.
set -euo pipefail
library=$(realpath "$1")
shift
for tool in ar nm objdump c++filt; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not found"; exit 77; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/lib"
(cd "$work/lib" && ar x "$library")
units=("$work"/lib/unit_*.o)
dispatcher=("$work"/lib/dispatcher*.o)
[[ -e ${units[0]} && -e ${dispatcher[0]} ]] || { echo "FAIL: $library has no unit_*.o or dispatcher*.o"; exit 1; }
objects=("${units[@]}" "${dispatcher[@]}" "$@")
status=0

# ---- 1. shared code -------------------------------------------------------------------------
# Weak code symbols of an object (nm type W; weak data, V, and unique globals, u, carry no
# instructions), each with its instructions: mnemonics and registers, addresses, constants
# and symbol references left out. A symbol two objects define is harmless only where the
# copies are the same instructions (compiler helpers such as clang's __clang_call_terminate).
code_of_weak_symbols() {
  objdump -d --no-show-raw-insn "$1" | awk -v weak="$(nm --defined-only "$1" | awk '$2 == "W" { print $3 }')" '
    BEGIN { n = split(weak, list, "\n"); for (i = 1; i <= n; ++i) is_weak[list[i]] = 1 }
    /^[0-9a-f]+ <.*>:$/ { name = substr($2, 2, length($2) - 3); if (!(name in is_weak)) name = ""; else code[name] = ""; next }
    name != "" && /^[[:space:]]+[0-9a-f]+:/ {
      sub(/^[[:space:]]+[0-9a-f]+:[[:space:]]+/, ""); gsub(/[0-9a-f]+ <[^>]*>|#.*$|0x[0-9a-f]+|[[:space:]]+/, " ")
      code[name] = code[name] $0 ";" }
    END {
      for (s in code) print s "\t" code[s]
      # Aliases (a constructor C1 sharing its C2 code) have no heading of their own: "?"
      for (s in is_weak) if (s != "" && !(s in code)) print s "\t?"
    }'
}
declare -A owner=() code=()
shared=0 same=0
for object in "${objects[@]}"; do
  name=$(basename "$object")
  while IFS=$'\t' read -r symbol instructions; do
    [[ -n $symbol ]] || continue
    if [[ -z ${owner[$symbol]:-} ]]; then
      owner[$symbol]=$name
      code[$symbol]=$instructions
    elif [[ $instructions != "?" && ${code[$symbol]} == "$instructions" ]]; then
      echo "same     $(c++filt "$symbol"): ${owner[$symbol]} and $name define the same instructions"
      same=$((same + 1))
    else
      echo "SHARED   $(c++filt "$symbol"): ${owner[$symbol]} and $name define it with different code"
      shared=$((shared + 1))
    fi
  done < <(code_of_weak_symbols "$object")
done
echo "${#owner[@]} weak code symbol(s) in ${#objects[@]} object(s): $shared shared with different code," \
     "$same with the same"
((shared == 0)) || status=1

# ---- 2. instruction sets --------------------------------------------------------------------
avx512_pattern='%zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])([^0-9]|$)|%k[0-7]([^0-9]|$)|\{%k[1-7]\}|[[:space:]](vp?compress|vp?expand|vpternlog|vperm[ti]2|vpmov[bwdq]2m|vpmovm2|k(mov|and|or|xor|not|shift|test|unpck|add)[bwdq])[[:space:]]'
avx_pattern='%ymm|%zmm|^[[:space:]]*[0-9a-f]+:[[:space:]]+v[a-z]'
count() { grep -Ec "$2" <<<"$1" || true; }  # grep -c exits 1 when it counts 0
for object in "${units[@]}" "${dispatcher[@]}"; do
  name=$(basename "$object")
  listing=$(objdump -d --no-show-raw-insn "$object")  # a failure here stops the script (set -e)
  avx512=$(count "$listing" "$avx512_pattern")
  avx=$(count "$listing" "$avx_pattern")
  case $name in
    unit_avx512*) ok=$((avx512 > 0)); want="AVX-512 instructions" ;;
    unit_avx2*) ok=$((avx512 == 0 && avx > 0)); want="AVX2 but no AVX-512 instructions" ;;
    *) ok=$((avx == 0)); want="no AVX instructions" ;;
  esac
  if ((!ok)) && [[ $name != unit_avx* && ${MIXDEPTH_CHECK_BASELINE:-1} == 0 ]]; then
    echo "note     $name: $avx VEX/EVEX instructions, from the build's own flags (not checked)"
  elif ((ok)); then
    echo "ok       $name: $want ($avx VEX/EVEX, $avx512 AVX-512)"
  else
    echo "WRONG    $name: expected $want, found $avx VEX/EVEX of which $avx512 AVX-512"
    status=1
  fi
done

# ---- 3. the program compiles no kernel of its own ----------------------------------------------
for object in "$@"; do
  kernels=$(nm --defined-only "$object" | awk '{ print $3 }' | c++filt |
    grep -E 'mixdepth::kernels::(top_k|router_scores|gather_rows|scatter_gated)<' || true)
  if [[ -n $kernels ]]; then
    echo "KERNEL   $(basename "$object") compiles kernels itself (is MIXDEPTH_RUNTIME_DISPATCH defined?):"
    sed 's/^/           /' <<<"$kernels"
    status=1
  else
    echo "ok       $(basename "$object"): no kernel of its own"
  fi
done

if ((status)); then
  cat <<'MSG'
See cmake/mixdepthDispatch.cmake and README.md, "Instruction sets and the one-definition rule": every function a kernel reaches must
depend on the Arch template parameter or have internal linkage, and each unit must be compiled
with its own flags only.
MSG
fi
exit "$status"
