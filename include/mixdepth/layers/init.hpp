#pragma once
// Seeded weight initialisation for the reference layers' random() factories (tests, demos,
// benchmarks). The numbers depend on the seed (NormalSource, random.hpp), not on the C++
// standard library's distributions nor on the compiler's flags: each one is a single
// rounding of a double.
#include <cmath>
#include <cstdint>

#include "../random.hpp"
#include "../types.hpp"

namespace mixdepth::layers {

// A [fan_in, fan_out] projection with entries N(0, 1 / fan_in): activations keep their scale
// through x W, as with the usual fan-in initialisations.
template <class T>
RowMatrix<T> random_projection(Index fan_in, Index fan_out, NormalSource& normal) {
  RowMatrix<T> w(fan_in, fan_out);
  const double scale = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<T>(scale * normal());
  return w;
}

// An RMSNorm weight: 1 + N(0, 0.1^2). Trained weights are not all ones, and tests that
// compare against a reference should see the weight act.
template <class T>
Vector<T> random_norm_weight(Index dim, NormalSource& normal) {
  Vector<T> w(dim);
  // One rounding (std::fma): `1.0 + 0.1 * x` would be fused into one instruction or not,
  // depending on the target's FMA and the contraction flags, and differ in the last bit.
  for (Index i = 0; i < dim; ++i) w[i] = static_cast<T>(std::fma(0.1, normal(), 1.0));
  return w;
}

}  // namespace mixdepth::layers
