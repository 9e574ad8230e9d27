#pragma once
// RMSNorm<T>: y = x / sqrt(mean(x^2) + eps) * weight, row by row.
#include <cmath>
#include <cstdint>
#include <utility>

#include "../types.hpp"
#include "init.hpp"
#include "positions.hpp"

namespace mixdepth::layers {

template <class T>
class RMSNorm {
 public:
  // weight: [dim], dim >= 1; eps finite and > 0 (it keeps an all-zero row finite; an infinite
  // one would make every row zero).
  explicit RMSNorm(Vector<T> weight, T eps = T(1e-6)) : weight_(std::move(weight)), eps_(eps) {
    constexpr std::string_view where = "RMSNorm";
    if (weight_.size() == 0) detail::fail(where, "weight.size()", ">= 1", 0);
    if (!(eps_ > T(0)) || !std::isfinite(eps_)) detail::fail(where, "eps", "finite and > 0", eps_);
  }

  // Weight 1 + N(0, 0.1^2), from the seed alone. Throws mixdepth::Error for dim < 1.
  static RMSNorm random(Index dim, std::uint64_t seed, T eps = T(1e-6)) {
    if (dim < 1) detail::fail("RMSNorm::random", "dim", ">= 1", dim);
    NormalSource normal(seed);
    return RMSNorm(random_norm_weight<T>(dim, normal), eps);
  }

  Index dim() const { return weight_.size(); }
  const Vector<T>& weight() const { return weight_; }
  T eps() const { return eps_; }

  // out.row(i) = normalised x.row(i). out may be x itself (each row is read before it is
  // written) but must not otherwise share memory with it. Throws mixdepth::Error on shape
  // mismatch or a partial overlap.
  void operator()(MatrixCRef<T> x, MatrixRef<T> out) const {
    constexpr std::string_view where = "RMSNorm";
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::require_equal(where, "out.rows()", x.rows(), out.rows());
    detail::require_equal(where, "out.cols()", dim(), out.cols());
    mixdepth::detail::require_same_or_disjoint(where, "out", "x", x, out);
    apply_unchecked(x, out);
  }

  // The same without checks, for layers that have checked their own input.
  template <class In, class Out>
  void apply_unchecked(const In& x, Out& out) const {
    const T inverse_dim = T(1) / static_cast<T>(dim());
    for (Index r = 0; r < x.rows(); ++r) {
      const T mean_square = x.row(r).squaredNorm() * inverse_dim;
      // A finite row whose sum of squares overflowed (float |x| from ~1e18 on, by d) would come
      // out as zeros. It is normalised as x/m over sqrt(mean((x/m)^2) + eps/m^2) instead, m
      // its largest magnitude (every factor stays normal). A row holding inf keeps the plain
      // formula; one holding NaN gives NaN either way.
      const T m = std::isfinite(mean_square) ? T(0) : x.row(r).cwiseAbs().maxCoeff();
      if (std::isfinite(m) && m > T(0)) {
        const T scaled_mean_square = (x.row(r) / m).squaredNorm() * inverse_dim;
        const T inverse_scaled_rms = T(1) / std::sqrt(scaled_mean_square + eps_ / m / m);
        out.row(r).array() = (x.row(r).array() / m) * inverse_scaled_rms * weight_.transpose().array();
        continue;
      }
      const T inverse_rms = T(1) / std::sqrt(mean_square + eps_);
      out.row(r).array() = x.row(r).array() * inverse_rms * weight_.transpose().array();
    }
  }

 private:
  Vector<T> weight_;
  T eps_;
};

}  // namespace mixdepth::layers
