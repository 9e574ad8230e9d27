#pragma once
// The cosines and sines of rotary position embedding's angles for one position: the angle
// of pair i is position * frequency[i], computed and rounded in double (a float product
// loses digits at large positions), then its cosine and sine rounded to T. Raw pointers and
// sizes only.
//
// On an xsimd architecture the angles go through xsimd's double sincos a batch at a time
// (8.7x the C library's, whose cos and sin of one angle GCC makes one sincos call, on Zen 5:
// BM_RotaryCosSin beside BM_RotaryCosSin_Libm), the last partial batch through std::cos and
// std::sin. xsimd's results are within 2 ulp of the C library's in double and, rounded to
// float, the same, on every architecture, at the positions tests/test_kernels_rotary.cpp
// checks (each below 3000, then steps of 1.37x up to 2^31 - 1). xsimd picks its argument
// reduction for a whole batch, so an angle's last bits in double depend on the other angles
// of its batch (the whole frequency array, n and Arch), not only on its own: a row's values
// depend on its position and that array alone, never on which other rows come with it.
#include <cmath>
#include <cstddef>

#include "arch.hpp"

namespace mixdepth::kernels {

template <class Arch, class T>
void rotary_cos_sin(double position, const double* frequency, std::ptrdiff_t n, T* cosine, T* sine) noexcept {
  std::ptrdiff_t i = 0;
  if constexpr (arch_traits::is_xsimd<Arch>()) {
    using batch = xsimd::batch<double, Arch>;
    constexpr std::ptrdiff_t width = std::ptrdiff_t(batch::size);
    const batch at(position);
    const std::ptrdiff_t body = n - n % width;  // whole batches
    for (; i < body; i += width) {
      const auto [s, c] = xsimd::sincos(at * batch::load_unaligned(frequency + i));
      alignas(64) double sines[width], cosines[width];
      s.store_aligned(sines);
      c.store_aligned(cosines);
      for (std::ptrdiff_t l = 0; l < width; ++l) {
        cosine[i + l] = static_cast<T>(cosines[l]);
        sine[i + l] = static_cast<T>(sines[l]);
      }
    }
  }
  for (; i < n; ++i) {
    const double angle = position * frequency[i];
    cosine[i] = static_cast<T>(std::cos(angle));
    sine[i] = static_cast<T>(std::sin(angle));
  }
}

}  // namespace mixdepth::kernels
