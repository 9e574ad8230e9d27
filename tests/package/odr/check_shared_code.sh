#!/usr/bin/env bash
# Static half of the mixed-ISA ODR test. Two objects built with different -m flags both
# define the same inline functions and templates (weak symbols); the linker keeps one copy
# and every caller, whatever flags it was compiled with, runs that copy. If the kept copy of
# a function the narrow unit calls uses AVX-512, the program dies with SIGILL on an
# AVX2-only CPU, but runs fine on the AVX-512 machine that built it. So look at the code:
# every weak function defined in both objects whose name mentions SCOPE (by default
# mixdepth::kernels::, the kernels and their helpers) must be free of AVX-512 instructions in
# the wide object, unless a glob pattern in ALLOWLIST matches its demangled name (a known
# hazard). And whatever its name, no shared function may call a function that only the wide
# object defines (a kernel or helper named after the wide unit's instruction set): the
# narrow unit's callers would reach it through the wide copy.
#
# With MIXDEPTH_ODR_CALLS_ONLY=1 only the calls are checked: for two units of the same
# instruction set that differ otherwise (static and runtime dispatch, tests/dispatch), where
# WIDE is the unit that compiles kernels itself and NARROW the one that calls them through
# the runtime dispatch table; then no shared function's NARROW copy may call the table.
#
# usage: check_shared_code.sh WIDE.o NARROW.o ALLOWLIST [SCOPE]   (needs binutils)
set -euo pipefail
wide=$1 narrow=$2 allowlist=$3 scope=${4:-mixdepth::kernels::}
for tool in nm objdump c++filt; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not found"; exit 77; }
done

for object in "$wide" "$narrow"; do
  [[ -r $object ]] || { echo "FAIL: cannot read $object"; exit 1; }
done
# Symbol lists are read into variables first, so that a failing nm stops the script.
weak() { nm --defined-only "$1" | awk '$2 == "W" { print $3 }' | sort -u; }
wide_weak=$(weak "$wide")
narrow_weak=$(weak "$narrow")
shared=$(comm -12 <(printf '%s\n' "$wide_weak") <(printf '%s\n' "$narrow_weak"))
[[ -n $shared ]] || { echo "FAIL: $wide and $narrow share no inline function: not units of one program?"; exit 1; }

# Per shared function of the wide object: how many instructions need AVX-512 (zmm or
# xmm/ymm16-31 registers, mask registers, or an EVEX-only mnemonic).
counts=
[[ ${MIXDEPTH_ODR_CALLS_ONLY:-0} == 1 ]] || counts=$(objdump -d --no-show-raw-insn "$wide" | awk -v shared="$shared" '
  BEGIN { n = split(shared, list, "\n"); for (i = 1; i <= n; ++i) in_shared[list[i]] = 1 }
  /^[0-9a-f]+ <.*>:$/ { name = substr($2, 2, length($2) - 3); current = (name in in_shared) ? name : ""; if (current != "") hits[current] += 0; next }
  current != "" && /%zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])([^0-9]|$)|%k[0-7]([^0-9]|$)|\{%k[1-7]\}|\{evex\}|[[:space:]](vpternlog|vperm[ti]2|vp?compress|vp?expand|vpmov[bwdq]2m|vpmovm2|vpro[lr]|vrange|vgetexp|vgetmant|vscalef|vrcp14|vrsqrt14|vfixupimm|vpconflict|vplzcnt|vpopcnt|vpermb|vpermw|vpshl?d|vpshrd|vcvt[a-z]*2u[dq]|vcvtu|vpabsq|vp(max|min)[su]q|vpmullq|vpsraq|k(mov|and|or|xor|not|shift|test|unpck|add)[bwdq])[[:space:]]/ { ++hits[current] }
  END { for (s in hits) print hits[s], s }')

# Calls from the shared functions' wide copies (relocations of call and jump targets) to
# functions the wide object defines and the narrow one does not, and whose names carry an
# instruction set (a kernel architecture among their template arguments; a plain inline
# function that one unit inlined and the other did not is no hazard).
text() { nm --defined-only "$1" | awk '$2 == "W" || $2 == "T" { print $3 }' | sort -u; }
wide_text=$(text "$wide")
narrow_text=$(text "$narrow")
only_wide=$(comm -23 <(printf '%s\n' "$wide_text") <(printf '%s\n' "$narrow_text"))
wide_only=$(paste -d ' ' <(printf '%s\n' "$only_wide") <(printf '%s\n' "$only_wide" | c++filt) |
  grep -E 'xsimd::|mixdepth::kernels::(avx512vbmi2|basic_scalar_arch|runtime_dispatch_arch)' |
  cut -d ' ' -f 1 || true)
# calls_from OBJECT TARGETS: "function target" for every shared function of OBJECT whose code
# refers (call, jump or address, also through the GOT) to one of TARGETS.
calls_from() {
  objdump -d -r --no-show-raw-insn "$1" | awk -v shared="$shared" -v targets="$2" '
    BEGIN { n = split(shared, list, "\n"); for (i = 1; i <= n; ++i) in_shared[list[i]] = 1
            n = split(targets, list, "\n"); for (i = 1; i <= n; ++i) in_targets[list[i]] = 1 }
    /^[0-9a-f]+ <.*>:$/ { name = substr($2, 2, length($2) - 3); current = (name in in_shared) ? name : ""; next }
    current != "" && /R_X86_64_(PLT32|PC32|GOTPCREL|GOTPCRELX|REX_GOTPCRELX)[[:space:]]/ {
      target = $NF; sub(/[-+]0x[0-9a-f]+$/, "", target)
      if (target in in_targets && !((current, target) in seen)) { seen[current, target] = 1; print current, target }
    }'
}
calls=$(calls_from "$wide" "$wide_only")
status=0 checked=0 outside=0
while read -r mangled target; do
  [[ -n ${mangled:-} ]] || continue
  echo "HAZARD   $(c++filt "$mangled") calls $(c++filt "$target"), which only the wide unit defines"
  status=1
done <<<"$calls"
if [[ ${MIXDEPTH_ODR_CALLS_ONLY:-0} == 1 ]]; then
  # The same function through the table in the narrow unit: the two copies differ.
  table=$(nm --undefined-only "$narrow" | awk '{ print $NF }' | { grep -E '^_ZN8mixdepth7kernels7runtime' || true; })
  while read -r mangled target; do
    [[ -n ${mangled:-} ]] || continue
    echo "HAZARD   $(c++filt "$mangled") calls $(c++filt "$target") in the narrow unit only"
    status=1
  done <<<"$(calls_from "$narrow" "$table")"
fi
declare -A pattern_used=()
while read -r count mangled; do
  [[ -n ${mangled:-} ]] || continue
  name=$(c++filt "$mangled")
  if [[ $name != *"$scope"* ]]; then
    [[ $name == *mixdepth::* ]] && ((count > 0)) && outside=$((outside + 1))
    continue
  fi
  checked=$((checked + 1))
  if ((count == 0)); then
    echo "ok       $name"
    continue
  fi
  known=0
  while IFS= read -r pattern; do
    [[ -z $pattern || $pattern == \#* ]] && continue
    # shellcheck disable=SC2053  # the pattern is a glob on purpose
    [[ $name == $pattern ]] && known=1 && pattern_used[$pattern]=1
  done <"$allowlist"
  if ((known)); then
    echo "KNOWN    $name: $count AVX-512 instructions (listed in $(basename "$allowlist"))"
  else
    echo "HAZARD   $name: $count AVX-512 instructions in the copy both units share"
    status=1
  fi
done <<<"$counts"

if [[ ${MIXDEPTH_ODR_CALLS_ONLY:-0} == 1 ]]; then
  echo "calls of $(grep -c . <<<"$shared" || true) shared function(s) checked"
else
  echo "$checked shared function(s) in scope '$scope' checked"
fi
while IFS= read -r pattern; do
  [[ -z $pattern || $pattern == \#* || -n ${pattern_used[$pattern]:-} ]] && continue
  echo "note: '$pattern' in $(basename "$allowlist") matched nothing here; remove it if fixed"
done <"$allowlist"
# The rest of mixdepth's shared code is reported, not failed: argument checks, containers
# and the like are plain inline code that each unit compiles for its own flags, as Eigen's
# is; a build may give them AVX-512 encodings (the sanitizer build's register allocation
# reaches xmm16-31 in detail::check_lengths, say). What matters for them is the calls
# check above: none may lead to a kernel of the wide unit's.
if ((outside)); then
  echo "note: $outside other shared function(s) naming mixdepth:: outside '$scope' carry" \
       "AVX-512 into the narrow unit (not checked)"
fi
if ((status)); then
  cat <<'MSG'
A function both units define is compiled with AVX-512 in the wide one, or calls code only
the wide one has, so the narrow unit may run AVX-512 code. Make it depend on the Arch
template parameter (so each unit gets its own symbol) or give it internal linkage; see
README.md, "Instruction sets and the one-definition rule".
MSG
fi
exit "$status"
