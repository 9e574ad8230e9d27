#pragma once
// The total order of section 1 of the contract, as unsigned integer keys: a larger key ranks
// higher. Numbers keep their order, -0.0 equals +0.0, NaN ranks below every number, and
// padding ranks below NaN. Free of Eigen; shared by the portable and the SIMD top-k.
#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace mixdepth::kernels {

template <class T>
using order_key_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

template <class T>
inline constexpr order_key_t<T> padding_key = 0;
template <class T>
inline constexpr order_key_t<T> nan_key = 1;

// Keys of numbers lie in [key(-inf), key(+inf)], both far above nan_key. Computed from the
// bits alone, never by comparing floats: the key does not change when denormal inputs are
// read as zero (the DAZ flag that -ffast-math executables set) or when the compiler assumes
// that no NaN exists (-ffinite-math-only).
template <class T>
constexpr order_key_t<T> order_key(T value) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  using Key = order_key_t<T>;
  constexpr Key sign = Key{1} << (8 * sizeof(T) - 1);
  constexpr Key infinity = std::bit_cast<Key>(std::numeric_limits<T>::infinity());
  const Key bits = std::bit_cast<Key>(value);
  const Key magnitude = bits & Key(~sign);
  if (magnitude > infinity) return nan_key<T>;
  if (magnitude == 0) return sign;  // both zeros map to the key of +0.0
  return (bits & sign) ? Key(~bits) : Key(bits | sign);
}

}  // namespace mixdepth::kernels
