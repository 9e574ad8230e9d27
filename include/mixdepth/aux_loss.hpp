#pragma once
// The router auxiliary loss (paper section 3.5; README.md, Semantics): binary cross-entropy of
// sigmoid(r_i) against top-k membership, so that r_i > threshold becomes a causal routing
// decision at inference (RouterThreshold in causal.hpp). Also the top-k membership targets,
// built per sequence (never over the flattened batch), which the causal predictor trains on.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gate.hpp"
#include "topk.hpp"
#include "types.hpp"

namespace mixdepth {

namespace detail {

// Calls run(first_row, row_count) for every maximal run of consecutive valid rows: a whole
// batch when lengths is empty, else rows [b*S, b*S + L_b) of each sequence, merged with the
// next sequence's rows when sequence b has no padding.
template <class Run>
void for_each_valid_run(Shape shape, std::span<const Index> lengths, Run&& run) {
  if (lengths.empty()) {
    if (shape.rows() > 0) run(Index{0}, shape.rows());
    return;
  }
  Index first = 0, count = 0;
  for (Index b = 0; b < shape.batch; ++b) {
    const Index start = b * shape.seq_len;
    const Index valid = lengths[static_cast<std::size_t>(b)];
    if (first + count != start) {  // the previous run ended in padding
      if (count > 0) run(first, count);
      first = start;
      count = 0;
    }
    count += valid;
  }
  if (count > 0) run(first, count);
}

inline Index valid_tokens(Shape shape, std::span<const Index> lengths) {
  if (lengths.empty()) return shape.rows();
  Index total = 0;
  for (Index length : lengths) total += length;
  return total;
}

// Targets are membership flags: 0 or 1, nothing else (a 2 would silently weigh as 1).
inline void check_targets(std::string_view where, Shape shape,
                          std::span<const std::uint8_t> targets) {
  require_equal(where, "targets.size()", shape.rows(), static_cast<Index>(targets.size()));
  for (std::size_t i = 0; i < targets.size(); ++i)
    if (targets[i] > 1) fail(where, "targets[" + std::to_string(i) + "]", "0 or 1", int{targets[i]});
}

// One token's binary cross-entropy with logits, max(z, 0) - z t + log1p(exp(-|z|)): no
// overflow for any finite z, and no cancellation when z is large and agrees with t.
template <class T>
T binary_cross_entropy_with_logit(T z, T target) {
  return std::max(z, T(0)) - z * target + std::log1p(std::exp(-std::abs(z)));
}

// BCE terms of `count` tokens, summed in double (a float sum over many tokens would lose
// digits); writes (sigmoid(z_i) - t_i) * scale to gradient[i] when gradient is non-null.
// For t = 1 that is -sigmoid(-z_i) * scale, computed so: 1 - sigmoid(z) would cancel to
// nothing for confident tokens (in float, z above about 17 would give exactly 0).
template <class T>
double binary_cross_entropy_run(const T* logits, const std::uint8_t* targets, Index count, T scale,
                                T* gradient) {
  double total = 0.0;
  for (Index i = 0; i < count; ++i) {
    const T t = targets[i] != 0 ? T(1) : T(0);
    total += static_cast<double>(binary_cross_entropy_with_logit(logits[i], t));
    if (gradient != nullptr) gradient[i] = (t != T(0) ? -sigmoid(-logits[i]) : sigmoid(logits[i])) * scale;
  }
  return total;
}

// Mean BCE over the valid tokens and its gradient, (sigmoid(z_i) - t_i) / n_valid, written to
// gradient[i] for valid rows and exactly 0 for padding rows. Arguments already checked.
template <class T>
T mean_binary_cross_entropy(const T* logits, const std::uint8_t* targets, Shape shape,
                            std::span<const Index> lengths, T* gradient) {
  const Index valid = valid_tokens(shape, lengths);
  if (gradient != nullptr)
    for (Index i = 0; i < shape.rows(); ++i) gradient[i] = T(0);
  if (valid == 0) return T(0);
  const T scale = T(1) / static_cast<T>(valid);
  double total = 0.0;
  for_each_valid_run(shape, lengths, [&](Index first, Index count) {
    total += binary_cross_entropy_run(logits + first, targets + first, count, scale,
                                      gradient == nullptr ? nullptr : gradient + first);
  });
  return static_cast<T>(total / static_cast<double>(valid));
}

}  // namespace detail

// Top-k membership targets, per sequence: targets[b*S + p] = 1 when position p is one of the
// min(k, L_b) valid tokens select_top_k picks in sequence b (its rules: ties to the lower
// position, NaN last), 0 otherwise. Padding positions (p >= lengths[b]) are always 0, even
// when k > L_b makes select_top_k take them. Throws mixdepth::Error, writing nothing, when
// router_logits.size() or targets.size() != shape.rows(), k < 0, or lengths is neither empty
// nor one length in [0, S] per sequence. `scratch` is reused across calls. (Arch: the
// unit's kernels, as select_top_k's; leave it defaulted.)
template <class T, class Arch = kernels::entry_arch>
void top_k_targets(std::span<const T> router_logits, Shape shape, Index k,
                   std::span<std::uint8_t> targets, std::span<const Index> lengths,
                   TopKScratch<T>& scratch) {
  constexpr std::string_view where = "top_k_targets";
  const Index rows = detail::checked_rows(where, shape);
  detail::require_equal(where, "router_logits.size()", rows, static_cast<Index>(router_logits.size()));
  detail::require_equal(where, "targets.size()", rows, static_cast<Index>(targets.size()));
  if (k < 0) detail::fail(where, "k", ">= 0", k);
  detail::check_lengths(where, shape, lengths);

  for (auto& t : targets) t = 0;
  const Index kept = k < shape.seq_len ? k : shape.seq_len;
  if (kept == 0) return;
  std::vector<Position> positions(static_cast<std::size_t>(kept));
  for (Index b = 0; b < shape.batch; ++b) {
    // One sequence at a time: a top-k over the flattened batch would let sequences compete.
    const Index first = b * shape.seq_len;
    const Index valid = lengths.empty() ? shape.seq_len : lengths[static_cast<std::size_t>(b)];
    select_top_k<T, Arch>(router_logits.subspan(static_cast<std::size_t>(first),
                                                static_cast<std::size_t>(shape.seq_len)),
                          Shape{1, shape.seq_len}, kept, positions,
                          std::span<const Index>(&valid, 1), scratch);
    for (Position p : positions)
      if (p < valid) targets[static_cast<std::size_t>(first + p)] = 1;
  }
}

template <class T, class Arch = kernels::entry_arch>
void top_k_targets(std::span<const T> router_logits, Shape shape, Index k,
                   std::span<std::uint8_t> targets, std::span<const Index> lengths = {}) {
  TopKScratch<T> scratch;
  top_k_targets<T, Arch>(router_logits, shape, k, targets, lengths, scratch);
}

// The router auxiliary loss: mean over the valid tokens of
//   BCE(sigmoid(r_i), t_i) = max(r_i, 0) - r_i t_i + log1p(exp(-|r_i|)),
// stable for any finite r. Writes dL/dr_i = (sigmoid(r_i) - t_i) / n_valid to
// logit_gradient[i] for valid tokens and exactly 0 for padding, and returns L (0, with an
// all-zero gradient, when no token is valid). A training loop adds L, times its weight, to
// the LM loss, and the gradient, times the same weight, to the LM's dL/dr before
// router_gradient(). Throws mixdepth::Error, writing nothing, on a size mismatch, a target
// other than 0 or 1, bad lengths, or a logit_gradient that shares memory with router_logits.
template <class T>
T router_aux_loss(std::span<const T> router_logits, Shape shape,
                  std::span<const std::uint8_t> targets, std::span<T> logit_gradient,
                  std::span<const Index> lengths = {}) {
  constexpr std::string_view where = "router_aux_loss";
  const Index rows = detail::checked_rows(where, shape);
  detail::require_equal(where, "router_logits.size()", rows, static_cast<Index>(router_logits.size()));
  detail::require_equal(where, "logit_gradient.size()", rows, static_cast<Index>(logit_gradient.size()));
  detail::check_lengths(where, shape, lengths);
  detail::check_targets(where, shape, targets);
  if (detail::overlaps(detail::vector_view(router_logits), detail::vector_view(logit_gradient)))
    detail::fail(where, "logit_gradient", "memory disjoint from router_logits", "overlapping");
  return detail::mean_binary_cross_entropy(router_logits.data(), targets.data(), shape, lengths,
                                           logit_gradient.data());
}

// The loss alone, for evaluation.
template <class T>
T router_aux_loss(std::span<const T> router_logits, Shape shape,
                  std::span<const std::uint8_t> targets, std::span<const Index> lengths = {}) {
  constexpr std::string_view where = "router_aux_loss";
  const Index rows = detail::checked_rows(where, shape);
  detail::require_equal(where, "router_logits.size()", rows, static_cast<Index>(router_logits.size()));
  detail::check_lengths(where, shape, lengths);
  detail::check_targets(where, shape, targets);
  return detail::mean_binary_cross_entropy<T>(router_logits.data(), targets.data(), shape, lengths,
                                              nullptr);
}

// Router parameter gradients from dL/dr (r = x w + bias): weight_gradient = x^T dL/dr
// (sum_i dL/dr_i x_i) and bias_gradient = sum_i dL/dr_i. Both are overwritten. Rows whose
// dL/dr is 0 (padding, from router_aux_loss) contribute nothing, even when x holds NaN there.
// Throws mixdepth::Error, writing nothing, when logit_gradient.size() != x.rows(),
// weight_gradient.size() != x.cols(), or weight_gradient shares memory with x or
// logit_gradient.
template <class T>
void router_gradient(MatrixCRef<T> x, std::span<const T> logit_gradient,
                     Eigen::Ref<Vector<T>> weight_gradient, T& bias_gradient) {
  constexpr std::string_view where = "router_gradient";
  detail::require_equal(where, "logit_gradient.size()", x.rows(), static_cast<Index>(logit_gradient.size()));
  detail::require_equal(where, "weight_gradient.size()", x.cols(), weight_gradient.size());
  if (detail::overlaps(weight_gradient, x))
    detail::fail(where, "weight_gradient", "memory disjoint from x", "overlapping");
  if (detail::overlaps(weight_gradient, detail::vector_view(logit_gradient)))
    detail::fail(where, "weight_gradient", "memory disjoint from logit_gradient", "overlapping");
  weight_gradient.setZero();
  double bias_sum = 0.0;
  const Eigen::Map<const Vector<T>> g(logit_gradient.data(), x.rows());
  // Runs of nonzero dL/dr as one GEMV each: skips padding without a per-row loop over d.
  Index i = 0;
  while (i < x.rows()) {
    while (i < x.rows() && g[i] == T(0)) ++i;
    const Index first = i;
    while (i < x.rows() && g[i] != T(0)) bias_sum += static_cast<double>(g[i++]);
    if (i > first)
      weight_gradient.noalias() += x.middleRows(first, i - first).transpose() * g.segment(first, i - first);
  }
  bias_gradient = static_cast<T>(bias_sum);
}

}  // namespace mixdepth
