#pragma once
// The portable exact top-k of one sequence: the definition every faster kernel must match
// bit for bit. O(n): one nth_element over (key, position) entries, then one ascending sweep.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "order_key.hpp"

namespace mixdepth::kernels {

// One entry per token: orders by key, then by lower position. For float both fit one
// 64-bit word, so nth_element compares integers.
template <class T>
struct TopKEntry;

template <>
struct TopKEntry<float> {
  std::uint64_t packed;  // key in the high half, ~position in the low half
  static TopKEntry make(std::uint32_t key, std::int32_t position) {
    return {(std::uint64_t{key} << 32) | std::uint32_t(~std::uint32_t(position))};
  }
  friend bool operator>(TopKEntry a, TopKEntry b) { return a.packed > b.packed; }
  friend bool operator>=(TopKEntry a, TopKEntry b) { return a.packed >= b.packed; }
};

template <>
struct TopKEntry<double> {
  std::uint64_t key;
  std::uint32_t inverted_position;
  static TopKEntry make(std::uint64_t key, std::int32_t position) {
    return {key, std::uint32_t(~std::uint32_t(position))};
  }
  friend bool operator>(TopKEntry a, TopKEntry b) {
    return a.key != b.key ? a.key > b.key : a.inverted_position > b.inverted_position;
  }
  friend bool operator>=(TopKEntry a, TopKEntry b) { return !(b > a); }
};

// Scratch a call with `n` tokens needs, in entries of TopKEntry<T>.
template <class T>
constexpr std::ptrdiff_t top_k_portable_scratch(std::ptrdiff_t n) {
  return n;
}

template <class T>
TopKEntry<T> top_k_entry(const T* scores, std::ptrdiff_t valid, std::int32_t i) {
  return TopKEntry<T>::make(i < valid ? order_key(scores[i]) : padding_key<T>, i);
}

// Writes the positions of the k highest-ranked of scores[0, n) to out[0, k), ascending.
// Positions >= valid are padding. Requires 0 <= k <= n, 0 <= valid <= n, n < 2^31, and
// scratch for top_k_portable_scratch<T>(n) entries.
template <class T>
void top_k_portable(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k,
                    std::int32_t* out, TopKEntry<T>* scratch) {
  if (k <= 0) return;
  if (k >= n) {
    for (std::int32_t i = 0; i < static_cast<std::int32_t>(n); ++i) out[i] = i;
    return;
  }
  for (std::int32_t i = 0; i < static_cast<std::int32_t>(n); ++i)
    scratch[i] = top_k_entry(scores, valid, i);
  std::nth_element(scratch, scratch + (k - 1), scratch + n, std::greater<>{});
  // Entries are distinct (positions differ), so exactly k of them reach the k-th one.
  const TopKEntry<T> kth = scratch[k - 1];
  std::ptrdiff_t written = 0;
  for (std::int32_t i = 0; i < static_cast<std::int32_t>(n); ++i)
    if (top_k_entry(scores, valid, i) >= kth) out[written++] = i;
}

}  // namespace mixdepth::kernels
