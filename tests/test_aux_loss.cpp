// The router auxiliary loss and its top-k membership targets (aux_loss.hpp): per-sequence
// targets, a stable BCE with its gradient against a long-double reference and finite
// differences, padding excluded, and argument checking.
#include "test_helpers.hpp"
#include "test_kernels_common.hpp"

#include <mixdepth/aux_loss.hpp>

#include <cmath>
#include <limits>
#include <vector>

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

template <class T>
std::vector<T> to_vector(const Vector<T>& v) {
  return std::vector<T>(v.data(), v.data() + v.size());
}

// sum over valid tokens of BCE, in long double, straight from the definition
// -t log(sigma(r)) - (1 - t) log(1 - sigma(r)) (fine for the moderate r it is used with).
template <class T>
long double reference_loss(const std::vector<T>& r, const std::vector<std::uint8_t>& t, Shape shape,
                           std::span<const Index> lengths) {
  long double total = 0;
  Index valid = 0;
  for (Index b = 0; b < shape.batch; ++b) {
    const Index length = lengths.empty() ? shape.seq_len : lengths[std::size_t(b)];
    for (Index p = 0; p < length; ++p) {
      const std::size_t i = std::size_t(b * shape.seq_len + p);
      const long double s = 1.0L / (1.0L + std::exp(-static_cast<long double>(r[i])));
      total += t[i] ? -std::log(s) : -std::log1p(-s);
      ++valid;
    }
  }
  return valid == 0 ? 0.0L : total / valid;
}

}  // namespace

TEST_CASE("aux loss: top_k_targets are chosen per sequence, never over the flattened batch") {
  // Sequence 0 scores higher everywhere: a top-4 over the flattened batch would take all four
  // targets from it; per sequence, each gets its own two.
  const Shape shape{2, 4};
  const std::vector<float> r = {9.f, 7.f, 8.f, 6.f,  //
                                1.f, 3.f, 2.f, 0.f};
  std::vector<std::uint8_t> targets(8, 7);
  top_k_targets<float>(r, shape, 2, targets);
  CHECK(targets == std::vector<std::uint8_t>{1, 0, 1, 0, 0, 1, 1, 0});

  // What the flattened batch would have given, to show the case can tell them apart.
  std::vector<std::uint8_t> flattened(8);
  top_k_targets<float>(r, Shape{1, 8}, 4, flattened);
  CHECK(flattened == std::vector<std::uint8_t>{1, 1, 1, 1, 0, 0, 0, 0});
  CHECK(flattened != targets);

  // Padding is never a target, even when k exceeds a sequence's length and select_top_k
  // fills the capacity with padding positions; ties go to the lower position.
  const std::vector<double> tied = {1.0, 5.0, 5.0, 5.0,   // L = 4: a three-way tie for 2 slots
                                    2.0, 1.0, 9.0, 9.0};  // L = 1: positions 1..3 are padding
  const std::vector<Index> lengths = {4, 1};
  std::vector<std::uint8_t> padded(8, 7);
  top_k_targets<double>(tied, shape, 2, padded, lengths);
  CHECK(padded == std::vector<std::uint8_t>{0, 1, 1, 0, 1, 0, 0, 0});

  // k = 0 marks nothing, k >= S marks every valid token.
  top_k_targets<double>(tied, shape, 0, padded, lengths);
  CHECK(padded == std::vector<std::uint8_t>(8, 0));
  top_k_targets<double>(tied, shape, 100, padded, lengths);
  CHECK(padded == std::vector<std::uint8_t>{1, 1, 1, 1, 1, 0, 0, 0});
}

TEST_CASE_TEMPLATE("aux loss: top_k_targets mark exactly the top-k positions of each sequence (brute force)", T, float, double) {
  const Shape shape{5, 67};
  const Index k = 9;
  const std::vector<Index> lengths = {67, 3, 40, 0, 66};
  const Vector<T> r = random_vector<T>(shape.rows(), 11);
  const std::vector<T> scores = to_vector(r);
  std::vector<std::uint8_t> targets(std::size_t(shape.rows()));
  top_k_targets<T>(scores, shape, k, targets, lengths);

  // The contract's rules as a plain sort (top_k_targets itself calls select_top_k).
  std::vector<std::uint8_t> expected(targets.size(), 0);
  for (Index b = 0; b < shape.batch; ++b) {
    const std::vector<T> sequence(scores.begin() + b * shape.seq_len, scores.begin() + (b + 1) * shape.seq_len);
    for (const Position p : kernels_testing::brute_force_top_k(sequence, k, lengths[std::size_t(b)]))
      if (p < lengths[std::size_t(b)]) expected[std::size_t(b * shape.seq_len + p)] = 1;
  }
  CHECK(targets == expected);
  for (Index b = 0; b < shape.batch; ++b) {
    Index marked = 0;
    for (Index p = 0; p < shape.seq_len; ++p) marked += targets[std::size_t(b * shape.seq_len + p)];
    CHECK(marked == std::min(k, lengths[std::size_t(b)]));
  }
}

TEST_CASE_TEMPLATE("aux loss: value and dL/dr match a long-double reference, padding gets exactly 0", T, float, double) {
  const Shape shape{3, 41};
  const std::vector<Index> lengths = {41, 17, 0};
  Vector<T> r = random_vector<T>(shape.rows(), 5) * T(3);
  std::vector<T> logits = to_vector(r);
  // Confident tokens, whose gradient is tiny (and 1 - sigmoid(r) would round to 0 in float).
  logits[3] = T(25);
  logits[7] = T(-25);
  logits[44] = T(18);
  // Padding holds values that would poison a sum if they were read.
  for (Index p = 17; p < 41; ++p) logits[std::size_t(41 + p)] = std::numeric_limits<T>::quiet_NaN();
  for (Index p = 0; p < 41; ++p) logits[std::size_t(82 + p)] = std::numeric_limits<T>::infinity();
  std::vector<std::uint8_t> targets(logits.size());
  top_k_targets<T>(logits, shape, 5, targets, lengths);

  std::vector<T> gradient(logits.size(), T(42));
  const T loss = router_aux_loss<T>(logits, shape, targets, gradient, lengths);
  const long double expected = reference_loss(logits, targets, shape, lengths);
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-13;
  CHECK(static_cast<double>(loss) == doctest::Approx(static_cast<double>(expected)).epsilon(tolerance).scale(0));
  CHECK(router_aux_loss<T>(logits, shape, targets, lengths) == loss);  // the loss-only overload

  const Index valid = 41 + 17;
  for (Index b = 0; b < shape.batch; ++b)
    for (Index p = 0; p < shape.seq_len; ++p) {
      const std::size_t i = std::size_t(b * shape.seq_len + p);
      if (p >= lengths[std::size_t(b)]) {
        CHECK(gradient[i] == T(0));
        CHECK_FALSE(std::signbit(gradient[i]));
        continue;
      }
      // sigmoid(r) - t without cancellation: -sigmoid(-r) for t = 1. Relative to g alone
      // (scale 0), so a gradient of a confident token (tiny g) must be right too.
      const long double z = static_cast<long double>(logits[i]);
      const long double g = (targets[i] ? -1.0L / (1.0L + std::exp(z)) : 1.0L / (1.0L + std::exp(-z))) / valid;
      CHECK(static_cast<double>(gradient[i]) == doctest::Approx(static_cast<double>(g)).epsilon(tolerance).scale(0));
    }

  // No valid token: loss 0, gradient all 0.
  const std::vector<Index> none = {0, 0, 0};
  CHECK(router_aux_loss<T>(logits, shape, targets, gradient, none) == T(0));
  for (T g : gradient) CHECK(g == T(0));
}

TEST_CASE_TEMPLATE("aux loss: stays finite and exact for large |r|", T, float, double) {
  // r = +-1e4 overflows exp() in a naive formula; 80 and 40 saturate sigmoid in float.
  const std::vector<T> r = {T(1e4), T(-1e4), T(1e4), T(-1e4), T(80), T(-40), T(0), T(1e-3)};
  const std::vector<std::uint8_t> t = {1, 0, 0, 1, 1, 0, 1, 0};
  const Shape shape{1, 8};
  std::vector<T> gradient(8);
  const T loss = router_aux_loss<T>(r, shape, t, gradient);
  REQUIRE(std::isfinite(loss));
  // Confident and right: ~0. Confident and wrong: |r|. sigma(0) against 1: log 2.
  const long double expected =
      (0.0L + 0.0L + 1e4L + 1e4L + std::log1p(std::exp(-80.0L)) + std::log1p(std::exp(-40.0L)) +
       std::log(2.0L) + (1e-3L + std::log1p(std::exp(-1e-3L)))) / 8;
  CHECK(static_cast<double>(loss) == doctest::Approx(static_cast<double>(expected)).epsilon(1e-6));
  const T eighth = T(1) / T(8);
  CHECK(gradient[0] == T(0));
  CHECK(gradient[1] == T(0));
  CHECK(gradient[2] == eighth);
  CHECK(gradient[3] == -eighth);
  CHECK(static_cast<double>(gradient[6]) == doctest::Approx(-0.5 / 8));
  for (T g : gradient) CHECK(std::isfinite(g));
}

TEST_CASE("aux loss: gradients w.r.t. r, router weight and bias match finite differences (double)") {
  const Shape shape{3, 24};
  const Index d = 10;
  const std::vector<Index> lengths = {24, 9, 20};
  RowMatrix<double> x = random_matrix<double>(shape.rows(), d, 21);
  // Padding rows of x are never read: NaN there would show up in the weight gradient.
  for (Index b = 0; b < shape.batch; ++b)
    for (Index p = lengths[std::size_t(b)]; p < shape.seq_len; ++p)
      x.row(b * shape.seq_len + p).setConstant(std::numeric_limits<double>::quiet_NaN());
  const Vector<double> w = random_vector<double>(d, 22) * 0.7;
  const double bias = -0.3;

  auto logits_of = [&](const Vector<double>& weight, double b) {
    Vector<double> r(shape.rows());
    Router<double>(weight, b).score(x, r);
    return to_vector(r);
  };
  // Targets are held fixed (top-k membership is piecewise constant in r: no gradient).
  const std::vector<double> r0 = logits_of(w, bias);
  std::vector<std::uint8_t> targets(r0.size());
  top_k_targets<double>(r0, shape, 4, targets, lengths);

  std::vector<double> dr(r0.size());
  router_aux_loss<double>(r0, shape, targets, dr, lengths);
  auto loss_at = [&](const std::vector<double>& r) { return router_aux_loss<double>(r, shape, targets, lengths); };

  const double step = 1e-6;
  double worst_r = 0;
  for (std::size_t i = 0; i < r0.size(); ++i) {
    std::vector<double> plus = r0, minus = r0;
    plus[i] += step;
    minus[i] -= step;
    const double numeric = std::isnan(r0[i]) ? 0.0 : (loss_at(plus) - loss_at(minus)) / (2 * step);
    worst_r = worse(worst_r, std::abs(numeric - dr[i]));
  }
  MESSAGE("aux loss dL/dr: max abs error vs central differences ", worst_r);
  CHECK(worst_r < 1e-9);

  Vector<double> dw(d);
  double db = 7;
  router_gradient<double>(x, dr, dw, db);
  REQUIRE(dw.allFinite());
  double worst_w = 0;
  for (Index c = 0; c < d; ++c) {
    Vector<double> plus = w, minus = w;
    plus[c] += step;
    minus[c] -= step;
    const double numeric = (loss_at(logits_of(plus, bias)) - loss_at(logits_of(minus, bias))) / (2 * step);
    worst_w = worse(worst_w, std::abs(numeric - dw[c]) / std::max(1.0, std::abs(numeric)));
  }
  const double numeric_bias = (loss_at(logits_of(w, bias + step)) - loss_at(logits_of(w, bias - step))) / (2 * step);
  const double error_bias = std::abs(numeric_bias - db);
  MESSAGE("aux loss dL/dw: max error ", worst_w, "; dL/dbias: error ", error_bias);
  CHECK(worst_w < 1e-8);
  CHECK(error_bias < 1e-8);
  CHECK(std::abs(db) > 1e-3);  // the check is not vacuous
}

TEST_CASE("aux loss: training a router on it makes r > 0 reproduce top-k membership") {
  // The paper's first causal method: after training, RouterThreshold{0} routes the tokens the
  // top-k would have picked. Targets follow the router's current top-k each step, as in training.
  const Shape shape{16, 128};
  const Index d = 16, k = 16;  // 12.5%
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 31);
  Vector<float> w = random_vector<float>(d, 32) / 4.f;
  float bias = 0.f;
  std::vector<std::uint8_t> targets(std::size_t(shape.rows())), routed(targets.size());
  std::vector<float> r(targets.size()), dr(targets.size());
  Vector<float> dw(d);
  Arena<float> arena;

  auto accuracy = [&] {
    Router<float>(w, bias).score(x, Eigen::Map<Vector<float>>(r.data(), shape.rows()));
    top_k_targets<float>(r, shape, k, targets);
    RouterThreshold<float>{}.route(x, r, routed, arena);
    Index agree = 0;
    for (std::size_t i = 0; i < r.size(); ++i) agree += routed[i] == targets[i];
    return double(agree) / double(r.size());
  };
  const double before = accuracy();
  for (int step = 0; step < 300; ++step) {
    Router<float>(w, bias).score(x, Eigen::Map<Vector<float>>(r.data(), shape.rows()));
    top_k_targets<float>(r, shape, k, targets);
    router_aux_loss<float>(r, shape, targets, dr);
    float db = 0;
    router_gradient<float>(x, dr, dw, db);
    w -= 0.5f * dw;
    bias -= 0.5f * db;
  }
  const double after = accuracy();
  MESSAGE("router threshold accuracy against top-12.5%: before ", before, ", after ", after);
  CHECK(before < 0.8);
  CHECK(after > 0.95);
  CHECK(bias < 0.f);  // it learned to route fewer than half
}

TEST_CASE("aux loss: bad input throws mixdepth::Error naming the argument and writes nothing") {
  const Shape shape{2, 3};
  const std::vector<float> r(6, 0.5f);
  std::vector<std::uint8_t> targets = {1, 0, 0, 0, 1, 0};
  std::vector<float> gradient(6, 9.f);
  const std::vector<float> untouched = gradient;
  const std::vector<std::uint8_t> untouched_targets = targets;

  require_mentions(error_message([&] { router_aux_loss<float>(std::span(r).first(5), shape, targets, gradient); }),
                   {"router_aux_loss", "router_logits.size()", "expected 6", "got 5"});
  require_mentions(error_message([&] { router_aux_loss<float>(r, shape, targets, std::span(gradient).first(4)); }),
                   {"logit_gradient.size()", "expected 6", "got 4"});
  require_mentions(error_message([&] { router_aux_loss<float>(r, shape, std::span(targets).first(2), gradient); }),
                   {"targets.size()", "expected 6", "got 2"});
  std::vector<std::uint8_t> bad_targets = targets;
  bad_targets[4] = 2;
  require_mentions(error_message([&] { router_aux_loss<float>(r, shape, bad_targets, gradient); }),
                   {"targets[4]", "0 or 1", "got 2"});
  const std::vector<Index> long_length = {3, 4};
  require_mentions(error_message([&] { router_aux_loss<float>(r, shape, targets, gradient, long_length); }),
                   {"lengths[1]", "[0, 3]", "got 4"});
  CHECK(gradient == untouched);

  std::vector<std::uint8_t> out(6, 7);
  require_mentions(error_message([&] { top_k_targets<float>(r, shape, -1, out); }), {"top_k_targets", "k", ">= 0", "-1"});
  require_mentions(error_message([&] { top_k_targets<float>(r, shape, 1, std::span(out).first(5)); }),
                   {"targets.size()", "expected 6", "got 5"});
  require_mentions(error_message([&] { top_k_targets<float>(std::span(r).first(3), shape, 1, out); }),
                   {"router_logits.size()", "got 3"});
  CHECK(out == std::vector<std::uint8_t>(6, 7));

  const RowMatrix<float> x = random_matrix<float>(6, 4, 1);
  Vector<float> dw = Vector<float>::Constant(4, 3.f);
  float db = 3.f;
  require_mentions(error_message([&] { router_gradient<float>(x, std::span(r).first(5), dw, db); }),
                   {"router_gradient", "logit_gradient.size()", "expected 6", "got 5"});
  Vector<float> short_dw = Vector<float>::Constant(3, 3.f);
  require_mentions(error_message([&] { router_gradient<float>(x, r, short_dw, db); }),
                   {"weight_gradient.size()", "expected 4", "got 3"});
  CHECK(dw == Vector<float>::Constant(4, 3.f));
  CHECK(db == 3.f);
  CHECK(targets == untouched_targets);

  // Outputs that share memory with an input: the gradient is zeroed before the inputs are
  // read, so the results would be computed from zeros.
  std::vector<float> logits = {5.f, -5.f, 3.f, -3.f, 1.f, 0.f};
  const std::vector<float> logits_before = logits;
  require_mentions(error_message([&] { router_aux_loss<float>(logits, shape, targets, std::span(logits)); }),
                   {"router_aux_loss", "logit_gradient", "memory disjoint from router_logits", "overlapping"});
  // A partial overlap too; buffers apart are fine.
  (void)router_aux_loss<float>(logits, shape, targets, std::span(gradient));
  require_mentions(error_message([&] {
                     router_aux_loss<float>(std::span<const float>(logits.data() + 2, 4), Shape{1, 4},
                                            std::span(targets).first(4), std::span(logits).first(4));
                   }),
                   {"logit_gradient", "overlapping"});
  CHECK(logits == logits_before);
  RowMatrix<float> xw = random_matrix<float>(6, 4, 2);
  const RowMatrix<float> xw_before = xw;
  require_mentions(error_message([&] {
                     router_gradient<float>(xw, r, Eigen::Map<Vector<float>>(xw.data() + 8, 4), db);
                   }),
                   {"router_gradient", "weight_gradient", "memory disjoint from x", "overlapping"});
  CHECK(bit_equal(xw, xw_before));
  // dL/dr in g[0, 6); a weight gradient in g[6, 10) is apart, one in g[4, 8) is not.
  std::vector<float> g(10, 0.25f);
  router_gradient<float>(x, std::span<const float>(g).first(6), Eigen::Map<Vector<float>>(g.data() + 6, 4), db);
  const std::vector<float> g_before = g;
  require_mentions(error_message([&] {
                     router_gradient<float>(x, std::span<const float>(g).first(6), Eigen::Map<Vector<float>>(g.data() + 4, 4), db);
                   }),
                   {"weight_gradient", "memory disjoint from logit_gradient", "overlapping"});
  CHECK(g == g_before);
}
