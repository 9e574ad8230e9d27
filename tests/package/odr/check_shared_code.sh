#!/usr/bin/env bash
# Static half of the mixed-ISA ODR test. Two objects built with different -m flags both
# define the same inline functions and templates (weak symbols); the linker keeps one copy
# and every caller, whatever flags it was compiled with, runs that copy. If the kept copy of
# a function the narrow unit calls uses AVX-512, the program dies with SIGILL on an
# AVX2-only CPU, but runs fine on the AVX-512 machine that built it. So look at the code:
# every weak function defined in both objects whose name mentions SCOPE must be free of
# AVX-512 instructions in the wide object, unless a glob pattern in ALLOWLIST matches its
# demangled name (a known hazard).
#
# usage: check_shared_code.sh WIDE.o NARROW.o ALLOWLIST [SCOPE]   (needs binutils)
set -euo pipefail
wide=$1 narrow=$2 allowlist=$3 scope=${4:-mixdepth::kernels::}
for tool in nm objdump c++filt; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not found"; exit 77; }
done

weak() { nm --defined-only "$1" | awk '$2 == "W" { print $3 }' | sort -u; }
shared=$(comm -12 <(weak "$wide") <(weak "$narrow"))

# Per shared function of the wide object: how many instructions need AVX-512 (zmm or
# xmm/ymm16-31 registers, mask registers, or an EVEX-only mnemonic).
counts=$(objdump -d --no-show-raw-insn "$wide" | awk -v shared="$shared" '
  BEGIN { n = split(shared, list, "\n"); for (i = 1; i <= n; ++i) in_shared[list[i]] = 1 }
  /^[0-9a-f]+ <.*>:$/ { name = substr($2, 2, length($2) - 3); current = (name in in_shared) ? name : ""; if (current != "") hits[current] += 0; next }
  current != "" && /%zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])([^0-9]|$)|%k[0-7]([^0-9]|$)|\{%k[1-7]\}|\{evex\}|[[:space:]](vpternlog|vperm[ti]2|vp?compress|vp?expand|vpmov[bwdq]2m|vpmovm2|vpro[lr]|vrange|vgetexp|vgetmant|vscalef|vrcp14|vrsqrt14|vfixupimm|vpconflict|vplzcnt|vpopcnt|vpermb|vpermw|vpshl?d|vpshrd|vcvt[a-z]*2u[dq]|vcvtu|vpabsq|vp(max|min)[su]q|vpmullq|vpsraq|k(mov|and|or|xor|not|shift|test|unpck|add)[bwdq])[[:space:]]/ { ++hits[current] }
  END { for (s in hits) print hits[s], s }')

status=0 checked=0 outside=0
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

echo "$checked shared function(s) in scope '$scope' checked"
while IFS= read -r pattern; do
  [[ -z $pattern || $pattern == \#* || -n ${pattern_used[$pattern]:-} ]] && continue
  echo "note: '$pattern' in $(basename "$allowlist") matched nothing here; remove it if fixed"
done <"$allowlist"
# Outside the scope (mostly Eigen code inlined into mixdepth templates) the same sharing
# happens; Eigen itself gives no guarantee there, so it is reported, not failed.
if ((outside)); then
  echo "note: $outside other shared function(s) naming mixdepth:: carry AVX-512 into the" \
       "narrow unit (Eigen code inside mixdepth templates; not checked)"
fi
if ((status)); then
  cat <<'MSG'
A function both units define is compiled with AVX-512 in the wide one, so the narrow unit
may run AVX-512 code. Make it depend on the Arch template parameter (so each unit gets its
own symbol) or give it internal linkage; see DESIGN.md, section 5.
MSG
fi
exit "$status"
