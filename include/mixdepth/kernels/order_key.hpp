#pragma once
// The total order of section 1 of the contract, as unsigned integer keys: a larger key ranks
// higher. Numbers keep their order, -0.0 equals +0.0, NaN ranks below every number, and
// padding ranks below NaN. Free of Eigen; shared by the portable and the SIMD top-k.
#include <bit>
#include <cstdint>
#include <type_traits>

namespace mixdepth::kernels {

template <class T>
using order_key_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

template <class T>
inline constexpr order_key_t<T> padding_key = 0;
template <class T>
inline constexpr order_key_t<T> nan_key = 1;

// Keys of numbers lie in [key(-inf), key(+inf)], both far above nan_key.
template <class T>
constexpr order_key_t<T> order_key(T value) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  using Key = order_key_t<T>;
  constexpr Key sign = Key{1} << (8 * sizeof(T) - 1);
  if (value != value) return nan_key<T>;
  if (value == T(0)) return sign;  // both zeros map to the key of +0.0
  const Key bits = std::bit_cast<Key>(value);
  return (bits & sign) ? Key(~bits) : Key(bits | sign);
}

}  // namespace mixdepth::kernels
