#pragma once
// SwiGluMlp<T>: the pre-norm SwiGLU feed-forward branch of a transformer block, as a block
// function returning the residual-free update
//   f(x) = (silu(n W_gate) * (n W_up)) W_down,   n = RMSNorm(x),   silu(z) = z * sigmoid(z).
#include <cstdint>
#include <string_view>
#include <utility>

#include "../arena.hpp"
#include "../product.hpp"
#include "../routed.hpp"
#include "../types.hpp"
#include "init.hpp"
#include "positions.hpp"
#include "rmsnorm.hpp"

namespace mixdepth::layers {

struct SwiGluConfig {
  Index d_model = 0;  // width of the residual stream
  Index hidden = 0;   // width of the gated hidden layer
  double norm_eps = 1e-6;
};

template <class T>
struct SwiGluWeights {
  Vector<T> norm;     // [d_model]
  RowMatrix<T> gate;  // [d_model, hidden]
  RowMatrix<T> up;    // [d_model, hidden]
  RowMatrix<T> down;  // [hidden, d_model]
};

template <class T>
class SwiGluMlp {
 public:
  // Throws mixdepth::Error naming the first weight whose shape does not match the config.
  SwiGluMlp(SwiGluConfig config, SwiGluWeights<T> weights)
      : config_(checked(config)),
        weights_(std::move(weights)),
        norm_(checked_norm(config_, weights_)) {}

  // Seeded weights: projections N(0, 1/fan_in), norm weight 1 + N(0, 0.1^2).
  static SwiGluMlp random(SwiGluConfig config, std::uint64_t seed) {
    checked(config);
    NormalSource normal(seed);
    SwiGluWeights<T> w;
    w.norm = random_norm_weight<T>(config.d_model, normal);
    w.gate = random_projection<T>(config.d_model, config.hidden, normal);
    w.up = random_projection<T>(config.d_model, config.hidden, normal);
    w.down = random_projection<T>(config.hidden, config.d_model, normal);
    return SwiGluMlp(config, std::move(w));
  }

  const SwiGluConfig& config() const { return config_; }
  Index dim() const { return config_.d_model; }  // the width of the rows it takes
  const SwiGluWeights<T>& weights() const { return weights_; }
  const RMSNorm<T>& norm() const { return norm_; }

  // Block function: out = f(in.x), row by row (positions and offsets play no part). Scratch
  // (3 matrices of in.rows() rows) comes from in.scratch, or a local arena when it is null.
  // out may be in.x itself.
  void operator()(const Routed<T>& in, MatrixRef<T> out) const {
    run(in.x, out, in.scratch);
  }

  // The same for plain rows.
  void operator()(MatrixCRef<T> x, MatrixRef<T> out, Arena<T>* scratch = nullptr) const {
    run(x, out, scratch);
  }

 private:
  static const SwiGluConfig& checked(const SwiGluConfig& config) {
    constexpr std::string_view where = "SwiGluMlp";
    if (config.d_model < 1) detail::fail(where, "config.d_model", ">= 1", config.d_model);
    if (config.hidden < 1) detail::fail(where, "config.hidden", ">= 1", config.hidden);
    // Checked in T, the type RMSNorm gets: 1e300 is inf in float (rows of zeros), 1e-50 is 0.
    const T eps = static_cast<T>(config.norm_eps);
    if (!(eps > T(0)) || !std::isfinite(eps))
      detail::fail(where, "config.norm_eps", "finite and > 0 in the layer's scalar type", config.norm_eps);
    return config;
  }

  static RMSNorm<T> checked_norm(const SwiGluConfig& config, const SwiGluWeights<T>& w) {
    constexpr std::string_view where = "SwiGluMlp";
    const Index d = config.d_model, h = config.hidden;
    detail::require_dimension(where, "weights.norm.size()", d, "config.d_model", w.norm.size());
    detail::require_dimension(where, "weights.gate.rows()", d, "config.d_model", w.gate.rows());
    detail::require_dimension(where, "weights.gate.cols()", h, "config.hidden", w.gate.cols());
    detail::require_dimension(where, "weights.up.rows()", d, "config.d_model", w.up.rows());
    detail::require_dimension(where, "weights.up.cols()", h, "config.hidden", w.up.cols());
    detail::require_dimension(where, "weights.down.rows()", h, "config.hidden", w.down.rows());
    detail::require_dimension(where, "weights.down.cols()", d, "config.d_model", w.down.cols());
    return RMSNorm<T>(w.norm, static_cast<T>(config.norm_eps));
  }

  void run(MatrixCRef<T> x, MatrixRef<T> out, Arena<T>* scratch_arena) const {
    constexpr std::string_view where = "SwiGluMlp";
    detail::require_equal(where, "x.cols()", config_.d_model, x.cols());
    detail::require_equal(where, "out.rows()", x.rows(), out.rows());
    detail::require_equal(where, "out.cols()", config_.d_model, out.cols());
    const Index rows = x.rows();
    if (rows == 0) return;

    mixdepth::detail::ScratchScope<T> scratch(scratch_arena);
    auto normed = scratch->matrix(rows, config_.d_model);
    // Rows start on cache lines, so that exp rounds a row's elements alike wherever the row
    // is (Arena::aligned_rows): a token's output does not depend on the rows beside it.
    auto gated = scratch->aligned_rows(rows, config_.hidden);
    auto up = scratch->aligned_rows(rows, config_.hidden);
    norm_.apply_unchecked(x, normed);
    mixdepth::detail::product(gated, normed, weights_.gate, scratch.get());
    mixdepth::detail::product(up, normed, weights_.up, scratch.get());
    // silu(z) * u = z / (1 + exp(-z)) * u; for very negative z exp overflows to inf and the
    // quotient is the correct limit, -0.
    gated.array() = gated.array() / (T(1) + (-gated.array()).exp()) * up.array();
    mixdepth::detail::product(out, gated, weights_.down, scratch.get());
  }

  SwiGluConfig config_;
  SwiGluWeights<T> weights_;
  RMSNorm<T> norm_;
};

}  // namespace mixdepth::layers
