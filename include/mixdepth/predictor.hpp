#pragma once
// CausalPredictor<T>: the paper's second causal routing method (section 3.5; README.md,
// Semantics). A small MLP d -> h -> 1 reads a block's input rows and predicts whether the
// block's top-k router would pick each token, from that token alone, so decoding can route
// without seeing the future. Its training reads x with a stop gradient: it owns its
// parameters and optimiser state, takes x and the targets as const views, and changes nothing
// else. A CausalRule (causal.hpp): routed when its logit exceeds threshold().
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <utility>

#include "arena.hpp"
#include "aux_loss.hpp"
#include "capacity.hpp"
#include "product.hpp"
#include "random.hpp"
#include "causal.hpp"
#include "routed.hpp"
#include "types.hpp"

namespace mixdepth {

enum class Activation {
  silu,  // a * sigmoid(a)
  relu,  // max(a, 0); its derivative at 0 is taken as 0
};

// The predictor's parameters: logit = act(x W1 + b1) . w2 + b2. Gradients and Adam moments
// have the same layout.
template <class T>
struct PredictorParameters {
  RowMatrix<T> hidden_weight;  // W1, [d, h]
  Vector<T> hidden_bias;       // b1, [h]
  Vector<T> output_weight;     // w2, [h]
  T output_bias = T(0);        // b2

  Index dim() const { return hidden_weight.rows(); }
  Index hidden() const { return hidden_weight.cols(); }

  static PredictorParameters zeros(Index dim, Index hidden) {
    return {RowMatrix<T>::Zero(dim, hidden), Vector<T>::Zero(hidden), Vector<T>::Zero(hidden), T(0)};
  }
};

// Confusion counts of predicted routing against top-k targets, over valid tokens only.
// A ratio whose denominator is 0 is 1: no token was wrongly routed (precision) or missed
// (recall) or misjudged (accuracy) when there was none to judge.
struct RoutingMetrics {
  Index true_positives = 0;   // routed and in the top-k
  Index false_positives = 0;  // routed, not in the top-k
  Index true_negatives = 0;   // skipped, not in the top-k
  Index false_negatives = 0;  // skipped, in the top-k

  Index tokens() const { return true_positives + false_positives + true_negatives + false_negatives; }
  double accuracy() const { return ratio(true_positives + true_negatives, tokens()); }
  double precision() const { return ratio(true_positives, true_positives + false_positives); }
  double recall() const { return ratio(true_positives, true_positives + false_negatives); }
  // Fraction of the tokens routed.
  double routed_fraction() const {
    return tokens() == 0 ? 0.0 : static_cast<double>(true_positives + false_positives) / static_cast<double>(tokens());
  }

  void add(bool routed, bool target) {
    if (routed) (target ? true_positives : false_positives) += 1;
    else (target ? false_negatives : true_negatives) += 1;
  }

 private:
  static double ratio(Index num, Index den) {
    return den == 0 ? 1.0 : static_cast<double>(num) / static_cast<double>(den);
  }
};

// Metrics of routing decisions (0 or nonzero per row) against targets (0 or 1), counting
// only valid tokens. Throws mixdepth::Error when a size is not shape.rows(), a target is not
// 0 or 1, or lengths are bad.
inline RoutingMetrics routing_metrics(std::span<const std::uint8_t> routed,
                                      std::span<const std::uint8_t> targets, Shape shape,
                                      std::span<const Index> lengths = {}) {
  constexpr std::string_view where = "routing_metrics";
  const Index rows = detail::checked_rows(where, shape);
  detail::require_equal(where, "routed.size()", rows, static_cast<Index>(routed.size()));
  detail::check_lengths(where, shape, lengths);
  detail::check_targets(where, shape, targets);
  RoutingMetrics metrics;
  detail::for_each_valid_run(shape, lengths, [&](Index first, Index count) {
    for (Index i = first; i < first + count; ++i)
      metrics.add(routed[static_cast<std::size_t>(i)] != 0, targets[static_cast<std::size_t>(i)] != 0);
  });
  return metrics;
}

// Adam (Kingma & Ba) with bias correction, as PyTorch computes it:
//   m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2,
//   p -= learning_rate * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + epsilon).
struct AdamOptions {
  double learning_rate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
};

template <class T>
class CausalPredictor;

// The predictor's optimiser state: Adam moments, the step count and the gradient buffer, so
// that a training step allocates nothing once the arena has seen the batch.
template <class T>
class PredictorAdam {
 public:
  // Throws mixdepth::Error unless dim >= 1 and hidden >= 1 (a predictor's own limits).
  PredictorAdam(Index dim, Index hidden, AdamOptions options = {})
      : options_(checked(options)),
        first_moment_(PredictorParameters<T>::zeros(at_least_one("dim", dim), at_least_one("hidden", hidden))),
        second_moment_(PredictorParameters<T>::zeros(dim, hidden)),
        gradient_(PredictorParameters<T>::zeros(dim, hidden)) {}
  explicit PredictorAdam(const CausalPredictor<T>& predictor, AdamOptions options = {})
      : PredictorAdam(predictor.dim(), predictor.hidden(), options) {}

  const AdamOptions& options() const { return options_; }
  void set_options(AdamOptions options) { options_ = checked(options); }
  Index steps() const { return steps_; }
  // The gradient of the last train_step (before its update).
  const PredictorParameters<T>& gradient() const { return gradient_; }
  Index dim() const { return gradient_.dim(); }
  Index hidden() const { return gradient_.hidden(); }

 private:
  friend class CausalPredictor<T>;

  static Index at_least_one(std::string_view argument, Index value) {
    if (value < 1) detail::fail("PredictorAdam", argument, ">= 1", value);
    return value;
  }

  static AdamOptions checked(AdamOptions o) {
    constexpr std::string_view where = "AdamOptions";
    if (!(o.learning_rate > 0.0)) detail::fail(where, "learning_rate", "> 0", o.learning_rate);
    if (!(o.beta1 >= 0.0 && o.beta1 < 1.0)) detail::fail(where, "beta1", "in [0, 1)", o.beta1);
    if (!(o.beta2 >= 0.0 && o.beta2 < 1.0)) detail::fail(where, "beta2", "in [0, 1)", o.beta2);
    if (!(o.epsilon > 0.0)) detail::fail(where, "epsilon", "> 0", o.epsilon);
    return o;
  }

  // One parameter block: moments and value updated coefficient-wise.
  template <class P, class G, class M>
  void update(P& parameter, const G& gradient, M& first, M& second, T step_size, T correction2) {
    const T beta1 = static_cast<T>(options_.beta1), beta2 = static_cast<T>(options_.beta2);
    const T epsilon = static_cast<T>(options_.epsilon);
    first.array() = beta1 * first.array() + (T(1) - beta1) * gradient.array();
    second.array() = beta2 * second.array() + (T(1) - beta2) * gradient.array().square();
    parameter.array() -= step_size * first.array() / ((second.array() / correction2).sqrt() + epsilon);
  }

  void apply(PredictorParameters<T>& p) {
    ++steps_;
    const double t = static_cast<double>(steps_);
    const T step_size = static_cast<T>(options_.learning_rate / (1.0 - std::pow(options_.beta1, t)));
    const T correction2 = static_cast<T>(1.0 - std::pow(options_.beta2, t));
    update(p.hidden_weight, gradient_.hidden_weight, first_moment_.hidden_weight,
           second_moment_.hidden_weight, step_size, correction2);
    update(p.hidden_bias, gradient_.hidden_bias, first_moment_.hidden_bias,
           second_moment_.hidden_bias, step_size, correction2);
    update(p.output_weight, gradient_.output_weight, first_moment_.output_weight,
           second_moment_.output_weight, step_size, correction2);
    // The scalar bias through 1x1 maps, so that it follows the same formula.
    Eigen::Map<Vector<T>> bias(&p.output_bias, 1), bias_first(&first_moment_.output_bias, 1),
        bias_second(&second_moment_.output_bias, 1);
    const Eigen::Map<const Vector<T>> bias_gradient(&gradient_.output_bias, 1);
    update(bias, bias_gradient, bias_first, bias_second, step_size, correction2);
  }

  AdamOptions options_;
  Index steps_ = 0;
  PredictorParameters<T> first_moment_, second_moment_, gradient_;
};

template <class T>
class CausalPredictor {
 public:
  // Seeded random initialisation: W1 ~ N(0, 1/d), w2 ~ N(0, 1/h) (fan-in scaling keeps
  // activations and the initial logits of order 1), biases 0, threshold 0.
  CausalPredictor(Index dim, Index hidden, Activation activation = Activation::silu,
                  std::uint64_t seed = 0)
      : activation_(activation) {
    constexpr std::string_view where = "CausalPredictor";
    if (dim < 1) detail::fail(where, "dim", ">= 1", dim);
    if (hidden < 1) detail::fail(where, "hidden", ">= 1", hidden);
    check_activation(where, activation);
    NormalSource normal(seed);
    parameters_ = PredictorParameters<T>::zeros(dim, hidden);
    const double hidden_scale = 1.0 / std::sqrt(static_cast<double>(dim));
    const double output_scale = 1.0 / std::sqrt(static_cast<double>(hidden));
    for (Index i = 0; i < parameters_.hidden_weight.size(); ++i)
      parameters_.hidden_weight.data()[i] = static_cast<T>(hidden_scale * normal());
    for (Index i = 0; i < hidden; ++i) parameters_.output_weight[i] = static_cast<T>(output_scale * normal());
  }

  // From explicit weights: hidden_weight [d, h] with d, h >= 1, hidden_bias [h],
  // output_weight [h]. Throws mixdepth::Error naming the mismatched argument.
  explicit CausalPredictor(PredictorParameters<T> parameters, Activation activation = Activation::silu,
                           T threshold = T(0))
      : activation_(activation), threshold_(threshold) {
    constexpr std::string_view where = "CausalPredictor";
    if (parameters.hidden_weight.rows() < 1)
      detail::fail(where, "parameters.hidden_weight.rows()", ">= 1", parameters.hidden_weight.rows());
    if (parameters.hidden_weight.cols() < 1)
      detail::fail(where, "parameters.hidden_weight.cols()", ">= 1", parameters.hidden_weight.cols());
    const Index hidden = parameters.hidden_weight.cols();
    detail::require_equal(where, "parameters.hidden_bias.size()", hidden, parameters.hidden_bias.size());
    detail::require_equal(where, "parameters.output_weight.size()", hidden, parameters.output_weight.size());
    check_activation(where, activation);
    parameters_ = std::move(parameters);
  }

  Index dim() const { return parameters_.dim(); }
  Index hidden() const { return parameters_.hidden(); }
  Activation activation() const { return activation_; }
  const PredictorParameters<T>& parameters() const { return parameters_; }

  // A token is routed when its logit is > threshold() (strictly).
  T threshold() const { return threshold_; }
  void set_threshold(T threshold) { threshold_ = threshold; }

  // out[i] = act(x_i W1 + b1) . w2 + b2 for every row of x. The hidden activations live in
  // `scratch` (rewound before returning), and so do the matrix product's packing buffers
  // (product.hpp): once the arena has seen x's size, nothing allocates. Throws
  // mixdepth::Error, writing nothing, when x.cols() != dim() or out.size() != x.rows().
  void logits(MatrixCRef<T> x, Eigen::Ref<Vector<T>> out, Arena<T>& scratch) const {
    constexpr std::string_view where = "CausalPredictor::logits";
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::require_equal(where, "out.size()", x.rows(), out.size());
    detail::ScratchScope<T> scope(&scratch);
    auto hidden = scratch.aligned_rows(x.rows(), this->hidden());
    forward_rows(x, hidden, out, scratch);
  }

  // The same with a temporary arena (allocates).
  void logits(MatrixCRef<T> x, Eigen::Ref<Vector<T>> out) const {
    Arena<T> scratch;
    logits(x, out, scratch);
  }

  // CausalRule: routed[i] = logit(x_i) > threshold(). router_logits are not read (the
  // predictor decides from x alone). Throws mixdepth::Error, writing nothing, when
  // x.cols() != dim() or routed.size() != x.rows().
  void route(MatrixCRef<T> x, std::span<const T> /*router_logits*/, std::span<std::uint8_t> routed,
             Arena<T>& scratch) const {
    constexpr std::string_view where = "CausalPredictor::route";
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::require_equal(where, "routed.size()", x.rows(), static_cast<Index>(routed.size()));
    detail::ScratchScope<T> scope(&scratch);
    auto hidden = scratch.aligned_rows(x.rows(), this->hidden());
    Eigen::Map<Vector<T>> z(scratch.take(x.rows()).data(), x.rows());
    forward_rows(x, hidden, z, scratch);
    for (Index i = 0; i < x.rows(); ++i) routed[static_cast<std::size_t>(i)] = z[i] > threshold_;
  }

  // Mean binary cross-entropy with logits of the valid tokens against top-k membership
  // targets (top_k_targets() in aux_loss.hpp). Rows of x are shape's rows; padding rows
  // (positions >= lengths[b]) are not read beyond their targets' size check.
  T loss(MatrixCRef<T> x, Shape shape, std::span<const std::uint8_t> targets, Arena<T>& scratch,
         std::span<const Index> lengths = {}) const {
    check_training_input("CausalPredictor::loss", x, shape, targets, lengths);
    detail::ScratchScope<T> scope(&scratch);
    const Pass pass = forward_valid(x, shape, lengths, scratch);
    return bce(pass, shape, targets, lengths, nullptr);
  }

  // The loss and its gradient with respect to every parameter (hand-written backward),
  // written to `gradient` (resized to this predictor's shape if needed). Valid tokens only:
  // padding rows contribute exactly nothing, even when they hold NaN.
  T loss_and_gradient(MatrixCRef<T> x, Shape shape, std::span<const std::uint8_t> targets,
                      PredictorParameters<T>& gradient, Arena<T>& scratch,
                      std::span<const Index> lengths = {}) const {
    check_training_input("CausalPredictor::loss_and_gradient", x, shape, targets, lengths);
    if (gradient.dim() != dim() || gradient.hidden() != hidden() ||
        gradient.hidden_bias.size() != hidden() || gradient.output_weight.size() != hidden())
      gradient = PredictorParameters<T>::zeros(dim(), hidden());
    return loss_and_gradient_unchecked(x, shape, targets, lengths, gradient, scratch);
  }

  // One Adam step on this predictor's own parameters; returns the loss before the step.
  // Activations and product packing buffers come from `scratch`, the gradient and moments
  // from `optimizer`: once both have seen the batch, a step allocates nothing.
  // Nothing else changes: x and targets are read-only views, and the optimiser state is the
  // predictor's own. Throws mixdepth::Error, changing nothing, on bad input or an optimiser
  // made for another shape.
  T train_step(MatrixCRef<T> x, Shape shape, std::span<const std::uint8_t> targets,
               PredictorAdam<T>& optimizer, Arena<T>& scratch, std::span<const Index> lengths = {}) {
    constexpr std::string_view where = "CausalPredictor::train_step";
    check_training_input(where, x, shape, targets, lengths);
    detail::require_equal(where, "optimizer.dim()", dim(), optimizer.dim());
    detail::require_equal(where, "optimizer.hidden()", hidden(), optimizer.hidden());
    const T value = loss_and_gradient_unchecked(x, shape, targets, lengths, optimizer.gradient_, scratch);
    optimizer.apply(parameters_);
    return value;
  }

  // Routing decisions (logit > threshold()) of the valid tokens against the targets.
  RoutingMetrics evaluate(MatrixCRef<T> x, Shape shape, std::span<const std::uint8_t> targets,
                          Arena<T>& scratch, std::span<const Index> lengths = {}) const {
    check_training_input("CausalPredictor::evaluate", x, shape, targets, lengths);
    detail::ScratchScope<T> scope(&scratch);
    const Pass pass = forward_valid(x, shape, lengths, scratch);
    RoutingMetrics metrics;
    Index packed = 0;
    detail::for_each_valid_run(shape, lengths, [&](Index first, Index count) {
      for (Index j = 0; j < count; ++j)
        metrics.add(pass.logits[packed + j] > threshold_, targets[static_cast<std::size_t>(first + j)] != 0);
      packed += count;
    });
    return metrics;
  }

  // Sets threshold() so that `fraction` of the valid tokens of this calibration batch are
  // routed, and returns it. The target count is m = ceil(fraction * n) over the n valid
  // tokens of the whole batch (Capacity::fraction's rounding, so that one sequence of S
  // tokens gets the top-k capacity k), so the routed count is within one token of
  // fraction * n. The threshold lies halfway between the m-th and (m+1)-th largest logits,
  // which routes exactly m tokens when those differ. When they are equal, a tie straddles
  // the boundary and no strict threshold routes exactly m: it routes either none or all of
  // the tied tokens, whichever count is nearer m (none on a draw). m = 0 gives +infinity;
  // m = n gives -infinity. NaN logits rank below every number and are never routed; nor are
  // logits of -infinity, which no strict threshold lies below, so when fewer than m logits
  // exceed -infinity, fewer than m tokens are routed.
  // fraction must be in [0, 1]; throws mixdepth::Error, changing nothing, otherwise.
  T calibrate_threshold(MatrixCRef<T> x, Shape shape, double fraction, Arena<T>& scratch,
                        std::span<const Index> lengths = {}) {
    constexpr std::string_view where = "CausalPredictor::calibrate_threshold";
    const Index rows = detail::checked_rows(where, shape);
    detail::require_equal(where, "x.rows()", rows, x.rows());
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::check_lengths(where, shape, lengths);
    if (!(fraction >= 0.0 && fraction <= 1.0)) detail::fail(where, "fraction", "in [0, 1]", fraction);
    detail::ScratchScope<T> scope(&scratch);
    const Pass pass = forward_valid(x, shape, lengths, scratch);
    threshold_ = threshold_for_count(pass.logits, fraction == 0.0 ? 0 : Capacity::fraction(fraction)(pass.valid));
    return threshold_;
  }

  // The strict threshold that routes `m` of `logits` (reorders them), as documented above.
  static T threshold_for_count(std::span<T> logits, Index m) {
    constexpr T infinity = std::numeric_limits<T>::infinity();
    const Index n = static_cast<Index>(logits.size());
    // Descending, NaN last: a strict weak order even with NaN (NaNs are all equivalent).
    const auto before = [](T a, T b) { return a > b || (!std::isnan(a) && std::isnan(b)); };
    const auto numeric = std::count_if(logits.begin(), logits.end(), [](T v) { return !std::isnan(v); });
    if (m <= 0 || n == 0) return infinity;
    if (m >= numeric) return -infinity;
    const auto begin = logits.begin();
    std::nth_element(begin, begin + (m - 1), logits.end(), before);
    const T upper = begin[m - 1];                                    // m-th largest
    const T lower = *std::min_element(begin + m, logits.end(), before);  // (m+1)-th largest
    if (upper > lower) return between(lower, upper);
    // A tie at the boundary: `above` tokens beat it, `through` tokens reach it.
    Index above = 0, through = 0;
    T next_below = -infinity;
    for (T v : logits) {
      above += v > upper;
      through += v >= upper;
      if (v < upper && v > next_below) next_below = v;
    }
    if (m - above <= through - m) return upper;
    return between(next_below, upper);
  }

 private:
  // Logits of the valid rows, packed in row order, and what backward needs.
  struct Pass {
    StridedRowMatrixMap<T> pre;         // x W1 + b1, [valid, h], rows on cache lines
    StridedRowMatrixMap<T> activation;  // act(pre), [valid, h], rows on cache lines
    std::span<T> logits;                // [valid]
    Index valid;
  };

  static void check_activation(std::string_view where, Activation activation) {
    if (activation != Activation::silu && activation != Activation::relu)
      detail::fail(where, "activation", "Activation::silu or Activation::relu", static_cast<int>(activation));
  }

  void check_training_input(std::string_view where, MatrixCRef<T> x, Shape shape,
                            std::span<const std::uint8_t> targets, std::span<const Index> lengths) const {
    const Index rows = detail::checked_rows(where, shape);
    detail::require_equal(where, "x.rows()", rows, x.rows());
    detail::require_equal(where, "x.cols()", dim(), x.cols());
    detail::check_lengths(where, shape, lengths);
    detail::check_targets(where, shape, targets);
  }

  // A value strictly between lower and upper (lower < upper), as near the middle as floating
  // point allows; lower itself when they are adjacent, which still separates them.
  static T between(T lower, T upper) {
    const T middle = std::midpoint(lower, upper);
    return middle < upper ? middle : lower;
  }

  template <class Pre, class Out>
  void activate(const Pre& pre, Out& out) const {
    if (activation_ == Activation::silu)
      out.array() = pre.array() / (T(1) + (-pre.array()).exp());
    else
      out.array() = pre.array().max(T(0));
  }

  // logits for all rows (out: contiguous). A row's logit has the same bits whatever rows
  // come with it, so that a decoding step routes a token as the forward over its sequence
  // does: `hidden` is [rows, h] scratch whose rows start on cache lines (Eigen's exp then
  // rounds every row alike; Arena::aligned_rows), and both layers are products through the
  // GEMM kernel, w2 as an h x 1 matrix (Eigen's matrix-vector product would sum a row in an
  // order that depends on how many rows there are).
  template <class Out>
  void forward_rows(MatrixCRef<T> x, StridedRowMatrixMap<T>& hidden, Out& out, Arena<T>& scratch) const {
    detail::product(hidden, x, parameters_.hidden_weight, &scratch);
    finish_forward(hidden, hidden, out.data(), scratch);
  }

  // The forward pass over the valid rows only (one product per run of valid rows), keeping
  // pre-activations for the backward pass. Padding rows are never read. Each logit has the
  // bits forward_rows gives its row, so training, evaluate() and calibrate_threshold() see
  // the logits that logits() and route() compute.
  Pass forward_valid(MatrixCRef<T> x, Shape shape, std::span<const Index> lengths, Arena<T>& scratch) const {
    const Index valid = detail::valid_tokens(shape, lengths);
    Pass pass{scratch.aligned_rows(valid, hidden()), scratch.aligned_rows(valid, hidden()),
              scratch.take(valid), valid};
    Index packed = 0;
    detail::for_each_valid_run(shape, lengths, [&](Index first, Index count) {
      detail::product(pass.pre.middleRows(packed, count), x.middleRows(first, count),
                      parameters_.hidden_weight, &scratch);
      packed += count;
    });
    finish_forward(pass.pre, pass.activation, pass.logits.data(), scratch);
    return pass;
  }

  // From pre = x W1 (rows on cache lines): pre += b1, activation = act(pre) (may be pre
  // itself), logits = activation w2 + b2, the last a product through the GEMM kernel.
  void finish_forward(StridedRowMatrixMap<T>& pre, StridedRowMatrixMap<T>& activation, T* logits,
                      Arena<T>& scratch) const {
    pre.rowwise() += parameters_.hidden_bias.transpose();
    activate(pre, activation);
    RowMatrixMap<T> z(logits, pre.rows(), 1);
    const ConstRowMatrixMap<T> w2(parameters_.output_weight.data(), pre.cols(), 1);
    detail::product(z, activation, w2, &scratch);
    z.array() += parameters_.output_bias;
  }

  // Mean BCE over the packed valid logits; writes dL/dz (packed) when gradient is non-null.
  T bce(const Pass& pass, Shape shape, std::span<const std::uint8_t> targets,
        std::span<const Index> lengths, T* gradient) const {
    if (pass.valid == 0) return T(0);
    const T scale = T(1) / static_cast<T>(pass.valid);
    double total = 0.0;
    Index packed = 0;
    detail::for_each_valid_run(shape, lengths, [&](Index first, Index count) {
      total += detail::binary_cross_entropy_run(pass.logits.data() + packed, targets.data() + first,
                                                count, scale, gradient == nullptr ? nullptr : gradient + packed);
      packed += count;
    });
    return static_cast<T>(total / static_cast<double>(pass.valid));
  }

  T loss_and_gradient_unchecked(MatrixCRef<T> x, Shape shape, std::span<const std::uint8_t> targets,
                                std::span<const Index> lengths, PredictorParameters<T>& gradient,
                                Arena<T>& scratch) const {
    detail::ScratchScope<T> scope(&scratch);
    Pass pass = forward_valid(x, shape, lengths, scratch);
    Eigen::Map<Vector<T>> dz(scratch.take(pass.valid).data(), pass.valid);
    const T value = bce(pass, shape, targets, lengths, dz.data());

    // z = a w2 + b2
    gradient.output_weight.noalias() = pass.activation.transpose() * dz;
    gradient.output_bias = dz.sum();
    // dL/dpre = act'(pre) * (dz w2^T), written over pre; the activation buffer, no longer
    // needed, holds sigmoid(pre) for SiLU's derivative sigma (1 + pre (1 - sigma)).
    const Index h = hidden();
    const auto upstream = dz.replicate(1, h).array() * parameters_.output_weight.transpose().replicate(pass.valid, 1).array();
    if (activation_ == Activation::silu) {
      auto& sigma = pass.activation;
      sigma.array() = T(1) / (T(1) + (-pass.pre.array()).exp());
      pass.pre.array() = sigma.array() * (T(1) + pass.pre.array() * (T(1) - sigma.array())) * upstream;
    } else {
      pass.pre.array() = (pass.pre.array() > T(0)).select(upstream, T(0));
    }
    // pre = x W1 + b1, one product per run of valid rows.
    gradient.hidden_bias.noalias() = pass.pre.colwise().sum().transpose();
    gradient.hidden_weight.setZero();
    Index packed = 0;
    detail::for_each_valid_run(shape, lengths, [&](Index first, Index count) {
      detail::add_product(gradient.hidden_weight, x.middleRows(first, count).transpose(),
                          pass.pre.middleRows(packed, count), &scratch);
      packed += count;
    });
    return value;
  }

  PredictorParameters<T> parameters_;
  Activation activation_ = Activation::silu;
  T threshold_ = T(0);
};

static_assert(CausalRule<CausalPredictor<float>, float>);
static_assert(CausalRule<CausalPredictor<double>, double>);

}  // namespace mixdepth
