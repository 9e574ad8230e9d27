#pragma once
// Architecture tags of the SIMD kernels and the static choice among them.
//
// Kernels are templates over an architecture tag `Arch`: an xsimd architecture
// (xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2, ...) or `scalar_arch` (plain loops).
// Static dispatch, the default, picks `static_arch`: xsimd's best architecture for the flags
// this translation unit is compiled with, or `scalar_arch` when there is none or when
// MIXDEPTH_FORCE_SCALAR is defined. MIXDEPTH_RUNTIME_DISPATCH (see dispatch.hpp) instead
// calls kernels that a library built with cmake/mixdepthDispatch.cmake compiled once per
// architecture.
#include <type_traits>

#include <xsimd/xsimd.hpp>

// The kernels promise the same bits as their portable references, which needs every float
// and double operation rounded to its own type. x87 arithmetic (32-bit x86 without
// -mfpmath=sse) keeps excess precision wherever the compiler leaves values in registers:
// compiled with -m32 alone, the gated scatter's kernel and reference differed. GCC reports
// 2 for x87 arithmetic and -1 for a mix (-mfpmath=sse,387); only 0 is accepted.
#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
#error "mixdepth needs float and double arithmetic without excess precision (FLT_EVAL_METHOD 0): on 32-bit x86 compile with -msse2 -mfpmath=sse"
#endif

// AVX-512 with VBMI2 (byte compress) in this unit's flags.
#if XSIMD_WITH_AVX512BW && defined(__AVX512VBMI2__)
#define MIXDEPTH_WITH_AVX512VBMI2 1
#else
#define MIXDEPTH_WITH_AVX512VBMI2 0
#endif

namespace mixdepth::kernels {

// AVX-512 BW plus VBMI2, whose byte compress packs the positions of 64 lanes at once (the
// top-k's last pass). xsimd 8.1 has no tag for it; this one derives from xsimd::avx512bw, so
// every xsimd operation takes avx512bw's code, while mixdepth's kernels get instantiations
// (and symbols) of their own: a unit compiled without VBMI2 never receives this code.
struct avx512vbmi2 : xsimd::avx512bw {
  static constexpr bool supported() noexcept { return MIXDEPTH_WITH_AVX512VBMI2; }
  static constexpr bool available() noexcept { return true; }
  static constexpr unsigned version() noexcept { return xsimd::generic::version(3, 4, 1); }
  static constexpr const char* name() noexcept { return "avx512vbmi2"; }
};

}  // namespace mixdepth::kernels

#if MIXDEPTH_WITH_AVX512VBMI2
namespace xsimd::types {
template <class T>
struct get_bool_simd_register<T, mixdepth::kernels::avx512vbmi2> {
  using type = simd_avx512_bool_register<T>;
};
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(mixdepth::kernels::avx512vbmi2, avx512bw);
}  // namespace xsimd::types
#endif

namespace mixdepth::kernels {

// Code without SIMD: every kernel has a plain-loop version under this tag. The tag still
// names the instruction set the unit is compiled for (xsimd's best one for its flags), so
// plain loops that the compiler auto-vectorizes with AVX-512 in one unit and with AVX2 in
// another get different symbols, and the linker never hands one unit the other's copy.
template <class Isa>
struct basic_scalar_arch {
  static constexpr const char* name() noexcept { return "scalar"; }
};
using scalar_arch = basic_scalar_arch<xsimd::default_arch>;

template <class Arch>
inline constexpr bool is_scalar_arch = false;
template <class Isa>
inline constexpr bool is_scalar_arch<basic_scalar_arch<Isa>> = true;

#if defined(MIXDEPTH_FORCE_SCALAR)
using static_arch = scalar_arch;
#elif MIXDEPTH_WITH_AVX512VBMI2
using static_arch = avx512vbmi2;
#else
using static_arch = std::conditional_t<std::is_same_v<xsimd::default_arch, xsimd::unavailable>,
                                       scalar_arch, xsimd::default_arch>;
#endif

// The Arch that mixdepth's functions calling kernels take by default (select_top_k,
// gather_rows, scatter_gated, Router::score, Block, forward_dense). Static dispatch: this
// unit's static_arch. Runtime dispatch (dispatch.hpp): a tag of its own around it, so that
// those functions, which reach the kernels through the dispatch table there and directly
// here, have different names in the two modes, and a program may mix units of both.
template <class Isa>
struct runtime_dispatch_arch {
  static constexpr const char* name() noexcept { return "runtime dispatch"; }
};
#if defined(MIXDEPTH_RUNTIME_DISPATCH)
using entry_arch = runtime_dispatch_arch<static_arch>;
#else
using entry_arch = static_arch;
#endif

namespace arch_traits {

template <class Arch>
constexpr bool is_xsimd() {
  if constexpr (is_scalar_arch<Arch> || std::is_same_v<Arch, xsimd::unavailable>)
    return false;
  else
    return Arch::supported();  // compiled for it: its batch types exist in this unit
}

template <class Arch>
constexpr bool has_avx512() {
  if constexpr (is_xsimd<Arch>())
    return std::is_base_of_v<xsimd::avx512f, Arch>;
  else
    return false;
}

template <class Arch>
constexpr bool has_byte_compress() {
  if constexpr (is_xsimd<Arch>())
    return std::is_base_of_v<avx512vbmi2, Arch>;
  else
    return false;
}

template <class Arch>
constexpr bool has_avx2() {
  if constexpr (is_xsimd<Arch>())
    return std::is_base_of_v<xsimd::avx2, Arch>;
  else
    return false;
}

namespace detail_traits {
template <class Arch>
inline constexpr bool is_fma3 = false;
#if XSIMD_WITH_FMA3_SSE || XSIMD_WITH_FMA3_AVX || XSIMD_WITH_FMA3_AVX2
template <class Base>
inline constexpr bool is_fma3<xsimd::fma3<Base>> = true;
#endif
}  // namespace detail_traits

// Whether shim::fma uses a fused multiply-add instruction on this architecture: AVX-512 and
// xsimd's fma3<...> tags. Elsewhere (fma4 and NEON included, which have one) shim::fma is
// a multiply and an add, each rounded.
template <class Arch>
constexpr bool has_fused_fma() {
  if constexpr (is_xsimd<Arch>())
    return has_avx512<Arch>() || detail_traits::is_fma3<Arch>;
  else
    return false;
}

}  // namespace arch_traits

// How the top-k kernel runs on `Arch`: compress and mask extraction exist for AVX-512 and
// AVX2 only (simd_shim.hpp); older x86 and other ISAs take the plain-loop top-k.
enum class top_k_tier { scalar, avx2, avx512 };

template <class Arch>
constexpr top_k_tier top_k_tier_of() {
  if constexpr (arch_traits::has_avx512<Arch>())
    return top_k_tier::avx512;
  else if constexpr (arch_traits::has_avx2<Arch>())
    return top_k_tier::avx2;
  else
    return top_k_tier::scalar;
}

}  // namespace mixdepth::kernels
