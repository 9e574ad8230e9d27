#pragma once
// The top-k contract written out with plain comparisons, for the tests and the fuzz harness
// (no doctest here): nothing is shared with the kernels or top_k_portable, no order keys.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mixdepth::kernels_testing {

// Valid tokens (positions below `valid`) before padding, numbers before NaN, larger before
// smaller (-0 == +0), then the lower position; the first min(k, n) in ascending order.
template <class T>
std::vector<std::int32_t> brute_force_top_k(const T* s, std::ptrdiff_t n, std::ptrdiff_t k, std::ptrdiff_t valid) {
  std::vector<std::int32_t> order(static_cast<std::size_t>(n));
  for (std::ptrdiff_t i = 0; i < n; ++i) order[std::size_t(i)] = static_cast<std::int32_t>(i);
  auto ranks_before = [&](std::int32_t a, std::int32_t b) {
    const bool pad_a = a >= valid, pad_b = b >= valid;
    if (pad_a != pad_b) return !pad_a;
    if (pad_a) return a < b;
    const T va = s[a], vb = s[b];
    const bool nan_a = std::isnan(va), nan_b = std::isnan(vb);
    if (nan_a != nan_b) return !nan_a;
    if (!nan_a && va != vb) return va > vb;
    return a < b;
  };
  std::sort(order.begin(), order.end(), ranks_before);
  order.resize(static_cast<std::size_t>(std::min(k, n)));
  std::sort(order.begin(), order.end());
  return order;
}

template <class T>
std::vector<std::int32_t> brute_force_top_k(const std::vector<T>& s, std::ptrdiff_t k, std::ptrdiff_t valid) {
  return brute_force_top_k(s.data(), static_cast<std::ptrdiff_t>(s.size()), k, valid);
}

}  // namespace mixdepth::kernels_testing
