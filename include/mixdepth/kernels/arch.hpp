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
#else
using static_arch = std::conditional_t<std::is_same_v<xsimd::default_arch, xsimd::unavailable>,
                                       scalar_arch, xsimd::default_arch>;
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
constexpr bool has_avx2() {
  if constexpr (is_xsimd<Arch>())
    return std::is_base_of_v<xsimd::avx2, Arch>;
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
