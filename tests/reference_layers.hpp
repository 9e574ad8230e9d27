#pragma once
// The reference layers written out as scalar loops in double, whatever the layer's type, from
// the formulas alone (RMSNorm, RoPE as a complex rotation, causal GQA attention by original
// position, SwiGLU): nothing is shared with the library's kernels or products. Used by
// test_layers.cpp (each layer) and test_decoder.cpp (a whole stack).
#include <doctest/doctest.h>
#include <mixdepth/mixdepth.hpp>

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

namespace mixdepth::reference {

using Reference = RowMatrix<double>;

// max |actual - reference| relative to the largest |reference| entry.
template <class A>
double relative_difference(const A& actual, const Reference& reference) {
  REQUIRE(actual.rows() == reference.rows());
  REQUIRE(actual.cols() == reference.cols());
  if (reference.size() == 0) return 0.0;
  const Reference difference = actual.template cast<double>() - reference;
  const double scale = std::max(reference.cwiseAbs().maxCoeff(), 1e-300);
  // NaN in the result propagates (a plain maxCoeff() may skip it) and fails the caller's check.
  return difference.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>() / scale;
}

template <class T>
Reference widen(const RowMatrix<T>& m) {
  return m.template cast<double>();
}
template <class T>
Vector<double> widen(const Vector<T>& v) {
  return v.template cast<double>();
}

inline Reference reference_product(const Reference& a, const Reference& b) {
  Reference c = Reference::Zero(a.rows(), b.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < b.cols(); ++j) {
      double sum = 0.0;
      for (Index t = 0; t < a.cols(); ++t) sum += a(i, t) * b(t, j);
      c(i, j) = sum;
    }
  return c;
}

inline Reference reference_rmsnorm(const Reference& x, const Vector<double>& weight, double eps) {
  Reference y(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) {
    double sum_of_squares = 0.0;
    for (Index c = 0; c < x.cols(); ++c) sum_of_squares += x(i, c) * x(i, c);
    const double rms = std::sqrt(sum_of_squares / static_cast<double>(x.cols()) + eps);
    for (Index c = 0; c < x.cols(); ++c) y(i, c) = x(i, c) / rms * weight[c];
  }
  return y;
}

template <class T>
Reference reference_mlp(const layers::SwiGluMlp<T>& mlp, const Reference& x) {
  const auto& w = mlp.weights();
  const Reference normed = reference_rmsnorm(x, widen(w.norm), mlp.config().norm_eps);
  Reference gate = reference_product(normed, widen(w.gate));
  const Reference up = reference_product(normed, widen(w.up));
  for (Index i = 0; i < gate.rows(); ++i)
    for (Index c = 0; c < gate.cols(); ++c) {
      const double z = gate(i, c);
      gate(i, c) = z / (1.0 + std::exp(-z)) * up(i, c);
    }
  return reference_product(gate, widen(w.down));
}

// RoPE written as complex rotation: (x[i] + i x[i+half]) * e^(i * position / theta^(2i/hd)).
inline void reference_rope(Reference& m, const std::vector<Position>& positions, Index head_dim,
                    double theta) {
  const Index half = head_dim / 2;
  for (Index row = 0; row < m.rows(); ++row)
    for (Index head = 0; head < m.cols(); head += head_dim)
      for (Index i = 0; i < half; ++i) {
        const double angle = positions[std::size_t(row)] /
                             std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
        const std::complex<double> z =
            std::complex<double>(m(row, head + i), m(row, head + i + half)) * std::polar(1.0, angle);
        m(row, head + i) = z.real();
        m(row, head + i + half) = z.imag();
      }
}

// Causal GQA attention by loops: every row attends to the rows of its own sequence whose
// position is not after its own.
template <class T>
Reference reference_attention(const layers::Attention<T>& attention, const Reference& x,
                              const std::vector<Position>& positions,
                              const std::vector<Index>& offsets) {
  const layers::AttentionConfig& config = attention.config();
  const auto& w = attention.weights();
  const Index head_dim = config.head_dim, group = config.n_heads / config.n_kv_heads;
  const Reference normed = reference_rmsnorm(x, widen(w.norm), config.norm_eps);
  Reference queries = reference_product(normed, widen(w.query));
  Reference keys = reference_product(normed, widen(w.key));
  const Reference values = reference_product(normed, widen(w.value));
  reference_rope(queries, positions, head_dim, config.rope_theta);
  reference_rope(keys, positions, head_dim, config.rope_theta);

  Reference context = Reference::Zero(x.rows(), config.query_width());
  for (std::size_t b = 0; b + 1 < offsets.size(); ++b)
    for (Index i = offsets[b]; i < offsets[b + 1]; ++i)
      for (Index head = 0; head < config.n_heads; ++head) {
        const Index kv_head = head / group;
        std::vector<double> weights;
        std::vector<Index> seen;
        for (Index j = offsets[b]; j < offsets[b + 1]; ++j) {
          if (positions[std::size_t(j)] > positions[std::size_t(i)]) continue;
          double score = 0.0;
          for (Index t = 0; t < head_dim; ++t)
            score += queries(i, head * head_dim + t) * keys(j, kv_head * head_dim + t);
          weights.push_back(score / std::sqrt(static_cast<double>(head_dim)));
          seen.push_back(j);
        }
        if (seen.empty()) continue;
        const double largest = *std::max_element(weights.begin(), weights.end());
        double total = 0.0;
        for (double& s : weights) total += (s = std::exp(s - largest));
        for (std::size_t s = 0; s < seen.size(); ++s)
          for (Index t = 0; t < head_dim; ++t)
            context(i, head * head_dim + t) +=
                weights[s] / total * values(seen[s], kv_head * head_dim + t);
      }
  return reference_product(context, widen(w.output));
}

}  // namespace mixdepth::reference
