#pragma once
// The gate g(r) that scales a routed token's update: y = x + g(r) * f.
#include <cmath>

namespace mixdepth {

enum class Gate {
  identity,  // g(r) = r, the paper's choice: the router weight multiplies the update
  sigmoid,   // g(r) = 1 / (1 + exp(-r))
};

// Numerically stable sigmoid: never overflows exp for large |r|.
template <class T>
T sigmoid(T r) {
  if (r >= T(0)) return T(1) / (T(1) + std::exp(-r));
  const T e = std::exp(r);
  return e / (T(1) + e);
}

template <class T>
T apply_gate(Gate gate, T r) {
  return gate == Gate::identity ? r : sigmoid(r);
}

// dg/dr, for the backward pass. The sigmoid's, s (1 - s), as sigmoid(r) sigmoid(-r): 1 - s
// would cancel for large r (in float, to exactly 0 from r of about 17 on).
template <class T>
T gate_derivative(Gate gate, T r) {
  if (gate == Gate::identity) return T(1);
  return sigmoid(r) * sigmoid(-r);
}

}  // namespace mixdepth
