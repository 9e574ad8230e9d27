#pragma once
// Shared by the kernel property tests: every architecture this build can run, and score
// distributions that break selection code (ties, NaN, infinities, signed zeros, denormals).
#include <doctest/doctest.h>

#include <mixdepth/kernels/dispatch.hpp>

#include "brute_force_top_k.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace mixdepth::kernels_testing {

// Calls f(Arch{}) for the plain loops, the static choice, and every xsimd architecture this
// unit was compiled for that the kernels distinguish (so one -march=native build checks the
// AVX-512, AVX2, SSE2 and scalar code paths against the references).
template <class F>
void for_each_arch(F&& f) {
  f(kernels::scalar_arch{});
#if !defined(MIXDEPTH_FORCE_SCALAR)
#if XSIMD_WITH_SSE2
  f(xsimd::sse2{});
#endif
#if XSIMD_WITH_AVX2
  f(xsimd::avx2{});
#endif
#if XSIMD_WITH_FMA3_AVX2
  f(xsimd::fma3<xsimd::avx2>{});
#endif
#if XSIMD_WITH_AVX512F
  f(xsimd::avx512f{});
#endif
#if XSIMD_WITH_AVX512BW
  f(xsimd::avx512bw{});
#endif
#if MIXDEPTH_WITH_AVX512VBMI2
  f(kernels::avx512vbmi2{});
#endif
#endif
}

enum class distribution {
  normal,
  sorted,
  reversed,
  all_equal,
  two_values,
  four_values,
  sixteen_values,
  some_nan,
  half_nan,
  all_nan,
  infinities,
  signed_zeros,
  denormals,
  wide_range,  // magnitudes from 1e-30 to 1e30: keys far from uniform
  specials,    // a mix of all of the above
  negatives,   // every value below -1: brackets of negative numbers only
  count
};

inline const char* name_of(distribution d) {
  constexpr const char* names[] = {"normal",     "sorted",     "reversed",     "all_equal",    "two_values",
                                   "four_values", "sixteen_values", "some_nan", "half_nan",     "all_nan",
                                   "infinities", "signed_zeros", "denormals",   "wide_range",   "specials",
                                   "negatives"};
  return names[int(d)];
}

template <class T>
std::vector<T> make_scores(std::mt19937_64& rng, std::ptrdiff_t n, distribution d) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> percent(0, 99);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const T denorm = std::numeric_limits<T>::denorm_min();
  std::vector<T> s(static_cast<std::size_t>(n));
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    T v = static_cast<T>(normal(rng));
    const int p = percent(rng);
    switch (d) {
      case distribution::normal: break;
      case distribution::sorted: v = static_cast<T>(i); break;
      case distribution::reversed: v = static_cast<T>(n - i); break;
      case distribution::all_equal: v = T(-2.5); break;
      case distribution::two_values: v = T(p % 2); break;
      case distribution::four_values: v = T(p % 4); break;
      case distribution::sixteen_values: v = T(p % 16) - T(8); break;
      case distribution::some_nan: v = p < 10 ? (p % 2 ? nan : -nan) : v; break;
      case distribution::half_nan: v = p < 50 ? nan : v; break;
      case distribution::all_nan: v = p % 2 ? nan : -nan; break;
      case distribution::infinities: v = p < 20 ? inf : p < 40 ? -inf : v; break;
      case distribution::signed_zeros: v = p < 30 ? T(0) : p < 60 ? T(-0.0) : p < 80 ? T(p % 3) - T(1) : v; break;
      case distribution::denormals: v = T(p % 7 - 3) * denorm; break;
      case distribution::wide_range: v = static_cast<T>(std::pow(10.0, normal(rng) * 10.0)) * (p % 2 ? T(1) : T(-1)); break;
      case distribution::specials: {
        const T special[] = {nan, -nan, inf, -inf, T(0), T(-0.0), denorm, -denorm, T(1), T(-1)};
        v = p < 50 ? special[p % 10] : v;
        break;
      }
      case distribution::negatives: v = T(-1) - std::abs(v); break;
      case distribution::count: break;
    }
    s[static_cast<std::size_t>(i)] = v;
  }
  return s;
}

// n values drawn from a standard normal distribution.
template <class T>
std::vector<T> normal_values(std::mt19937_64& rng, std::ptrdiff_t n) {
  std::normal_distribution<double> normal;
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

// Bitwise equality (tells -0.0 from +0.0, compares NaN payloads).
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0);
}

// Bit for bit, except that any NaN equals any NaN: IEEE 754 leaves open which operand's
// payload a + b returns when both are NaN, and compilers commute the operands freely.
template <class T>
bool same_values(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return false;
  }
  return true;
}

// How many architectures for_each_arch visits in this build (1 with MIXDEPTH_FORCE_SCALAR,
// 4 with -mavx2 -mfma, 6 with AVX-512, 7 with VBMI2 too): tests check that every case ran on every one.
inline long arch_count() {
  long n = 0;
  for_each_arch([&](auto) { ++n; });
  return n;
}

}  // namespace mixdepth::kernels_testing
