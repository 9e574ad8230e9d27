#pragma once
// The MoD router: one scalar logit per token, r = x w + bias.
#include <string>
#include <utility>

#include "kernels/dispatch.hpp"
#include "types.hpp"

namespace mixdepth {

template <class T>
class Router {
 public:
  // Not explicit (as in the contract): `Block<T, F> block({w, 0.5f}, capacity, f)` works.
  Router(Vector<T> weight, T bias = T(0)) : weight_(std::move(weight)), bias_(bias) {
    if (weight_.size() == 0) detail::fail("Router", "weight.size()", ">= 1", 0);
  }

  Index dim() const { return weight_.size(); }
  const Vector<T>& weight() const { return weight_; }
  T bias() const { return bias_; }

  // logits[i] = x.row(i) . weight + bias. Throws mixdepth::Error when x.cols() != dim(),
  // logits.size() != x.rows(), or logits shares memory with x. (Arch: see
  // kernels/dispatch.hpp; leave it defaulted.)
  template <class Arch = kernels::entry_arch>
  void score(MatrixCRef<T> x, Eigen::Ref<Vector<T>> logits) const {
    constexpr std::string_view where = "Router::score";
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::require_equal(where, "logits.size()", x.rows(), logits.size());
    if (detail::overlaps(x, logits)) detail::fail(where, "logits", "memory disjoint from x", "overlapping");
    if (x.rows() == 0) return;
    kernels::dispatched::router_scores<T, Arch>(x.data(), x.outerStride(), x.rows(), x.cols(),
                                                weight_.data(), bias_, logits.data());
  }

 private:
  Vector<T> weight_;
  T bias_;
};

}  // namespace mixdepth
