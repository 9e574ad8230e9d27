// CausalPredictor (predictor.hpp): forward against a plain reference, route() as a
// CausalRule, the BCE gradient against finite differences, Adam, the stop gradient, learning
// top-k membership to the paper's accuracy, threshold calibration, metrics, argument checks.
#include "test_helpers.hpp"
#include "heap_counter.hpp"

#include <mixdepth/predictor.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

// Per row, in long double: act(x W1 + b1) . w2 + b2.
template <class T>
std::vector<long double> reference_logits(const CausalPredictor<T>& predictor, const RowMatrix<T>& x) {
  const auto& p = predictor.parameters();
  std::vector<long double> out(std::size_t(x.rows()));
  for (Index i = 0; i < x.rows(); ++i) {
    long double z = p.output_bias;
    for (Index j = 0; j < predictor.hidden(); ++j) {
      long double a = p.hidden_bias[j];
      for (Index c = 0; c < predictor.dim(); ++c) a += static_cast<long double>(x(i, c)) * p.hidden_weight(c, j);
      a = predictor.activation() == Activation::silu ? a / (1.0L + std::exp(-a)) : std::max(a, 0.0L);
      z += a * p.output_weight[j];
    }
    out[std::size_t(i)] = z;
  }
  return out;
}

template <class T>
std::vector<std::uint8_t> targets_for(const Vector<T>& router_logits, Shape shape, Index k,
                                      std::span<const Index> lengths = {}) {
  std::vector<std::uint8_t> targets(std::size_t(shape.rows()));
  top_k_targets<T>(std::span<const T>(router_logits.data(), std::size_t(router_logits.size())), shape, k,
                   targets, lengths);
  return targets;
}

bool parameters_bit_equal(const PredictorParameters<double>& a, const PredictorParameters<double>& b) {
  return bit_equal(a.hidden_weight, b.hidden_weight) && bit_equal(a.hidden_bias, b.hidden_bias) &&
         bit_equal(a.output_weight, b.output_weight) &&
         std::memcmp(&a.output_bias, &b.output_bias, sizeof(double)) == 0;
}

}  // namespace

TEST_CASE("predictor: seeded construction is deterministic, explicit weights are shape-checked") {
  const CausalPredictor<double> a(12, 7, Activation::silu, 99), b(12, 7, Activation::silu, 99),
      c(12, 7, Activation::silu, 100);
  CHECK(a.dim() == 12);
  CHECK(a.hidden() == 7);
  CHECK(a.threshold() == 0.0);
  CHECK(parameters_bit_equal(a.parameters(), b.parameters()));
  CHECK_FALSE(bit_equal(a.parameters().hidden_weight, c.parameters().hidden_weight));
  // Fan-in scaling: W1 entries have variance about 1/d.
  const double variance = a.parameters().hidden_weight.squaredNorm() / double(12 * 7);
  CHECK(variance == doctest::Approx(1.0 / 12).epsilon(0.4));

  PredictorParameters<float> p = PredictorParameters<float>::zeros(5, 3);
  p.hidden_weight = random_matrix<float>(5, 3, 1);
  p.output_bias = 0.25f;
  const CausalPredictor<float> explicit_weights(p, Activation::relu, 1.5f);
  CHECK(bit_equal(explicit_weights.parameters().hidden_weight, p.hidden_weight));
  CHECK(explicit_weights.parameters().output_bias == 0.25f);
  CHECK(explicit_weights.threshold() == 1.5f);
  CHECK(explicit_weights.activation() == Activation::relu);

  auto with = [&](auto change) {
    PredictorParameters<float> q = p;
    change(q);
    return error_message([&] { CausalPredictor<float> bad(q); });
  };
  require_mentions(with([](auto& q) { q.hidden_bias.resize(4); }),
                   {"CausalPredictor", "parameters.hidden_bias.size()", "expected 3", "got 4"});
  require_mentions(with([](auto& q) { q.output_weight.resize(2); }),
                   {"parameters.output_weight.size()", "expected 3", "got 2"});
  require_mentions(with([](auto& q) { q.hidden_weight.resize(0, 3); }),
                   {"parameters.hidden_weight.rows()", ">= 1", "got 0"});
  require_mentions(error_message([] { CausalPredictor<float>(0, 4); }), {"dim", ">= 1", "got 0"});
  require_mentions(error_message([] { CausalPredictor<float>(4, -2); }), {"hidden", ">= 1", "got -2"});
  require_mentions(error_message([] { CausalPredictor<float>(4, 2, static_cast<Activation>(7)); }),
                   {"activation", "got 7"});
}

TEST_CASE_TEMPLATE("predictor: logits match a per-row reference and route() is logits > threshold", T, float, double) {
  const Index rows = 53, d = 21, h = 13;
  for (Activation act : {Activation::silu, Activation::relu}) {
    CausalPredictor<T> predictor(d, h, act, 3);
    PredictorParameters<T> p = predictor.parameters();
    p.hidden_bias = random_vector<T>(h, 4);
    p.output_bias = T(-0.2);
    predictor = CausalPredictor<T>(p, act);
    const RowMatrix<T> x = random_matrix<T>(rows, d, 5);
    Vector<T> z(rows);
    Arena<T> arena;
    predictor.logits(x, z, arena);
    const auto expected = reference_logits(predictor, x);
    const double tolerance = std::is_same_v<T, float> ? 2e-5 : 1e-12;
    for (Index i = 0; i < rows; ++i)
      CHECK(static_cast<double>(z[i]) == doctest::Approx(static_cast<double>(expected[std::size_t(i)])).epsilon(tolerance));

    // A strided view (columns of a wider matrix) and the arena-free overload agree bit for bit.
    RowMatrix<T> wide = random_matrix<T>(rows, d + 3, 6);
    wide.leftCols(d) = x;
    Vector<T> strided(rows), no_arena(rows);
    predictor.logits(wide.leftCols(d), strided, arena);
    predictor.logits(x, no_arena);
    CHECK(bit_equal(strided, z));
    CHECK(bit_equal(no_arena, z));

    // route(): the median logit as threshold routes exactly the rows above it.
    std::vector<T> sorted(z.data(), z.data() + rows);
    std::nth_element(sorted.begin(), sorted.begin() + rows / 2, sorted.end());
    predictor.set_threshold(sorted[std::size_t(rows / 2)]);
    std::vector<std::uint8_t> routed(std::size_t(rows), 9);
    const std::vector<T> router_logits(std::size_t(rows), T(100));  // not read by the predictor
    static_assert(CausalRule<CausalPredictor<T>, T>);
    predictor.route(x, router_logits, routed, arena);
    Index count = 0;
    for (Index i = 0; i < rows; ++i) {
      CHECK(routed[std::size_t(i)] == (z[i] > predictor.threshold() ? 1 : 0));
      count += routed[std::size_t(i)];
    }
    CHECK(count == rows / 2);  // strict >: the median row itself stays out
  }
}

TEST_CASE_TEMPLATE("predictor: a row's logit has the same bits alone as among other rows (decoding routes as "
                   "the forward)", T, float, double) {
  const Index rows = 72, d = 40;
  for (const Index h : {Index(64), Index(7), Index(16), Index(33)}) {
    const CausalPredictor<T> predictor(d, h, Activation::silu, 8);
    const RowMatrix<T> x = random_matrix<T>(rows, d, 9);
    Vector<T> all(rows), one(1);
    Arena<T> arena;
    predictor.logits(x, all, arena);
    Index differ = 0;
    for (Index r = 0; r < rows; ++r) {
      predictor.logits(x.middleRows(r, 1), one, arena);
      differ += !bit_equal(one, all.segment(r, 1));
    }
    for (const Index count : {Index(2), Index(3), Index(5), Index(9)}) {  // Eigen's row blocks were 8, 4, 2, 1
      Vector<T> some(count);
      predictor.logits(x.middleRows(rows - count, count), some, arena);
      differ += !bit_equal(some, all.tail(count));
    }
    INFO("h ", h);
    CHECK(differ == 0);
  }
}

TEST_CASE_TEMPLATE("predictor: loss, evaluate and calibrate_threshold read the logits that logits() and route() "
                   "compute, bit for bit", T, float, double) {
  const Index d = 67;
  const Shape shape{3, 100};
  const std::vector<Index> lengths = {100, 57, 0};
  for (const Activation activation : {Activation::silu, Activation::relu}) {
    for (const Index h : {Index(64), Index(7), Index(33), Index(37)}) {
      for (const bool padded : {false, true}) {
        const std::span<const Index> lens = padded ? std::span<const Index>(lengths) : std::span<const Index>();
        const CausalPredictor<T> base(d, h, activation, 21 + std::uint64_t(h));
        const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 22 + std::uint64_t(h));
        const auto targets = targets_for(random_vector<T>(shape.rows(), 23), shape, 12, lens);
        Arena<T> arena;
        Vector<T> all(shape.rows());
        base.logits(x, all, arena);
        INFO("h ", h, ", relu ", activation == Activation::relu, ", padded ", padded);

        // The loss is router_aux_loss over logits()'s values: the same BCE, the same order.
        const T from_logits = router_aux_loss<T>(std::span<const T>(all.data(), std::size_t(all.size())), shape,
                                                 targets, lens);
        const T loss = base.loss(x, shape, targets, arena, lens);
        CHECK(std::memcmp(&loss, &from_logits, sizeof(T)) == 0);

        // evaluate() routes what route() routes, at a threshold on every valid logit and
        // just below it (where one differing bit flips a decision).
        std::vector<std::uint8_t> valid(std::size_t(shape.rows()), 0);
        for (Index b = 0; b < shape.batch; ++b)
          for (Index p = 0; p < (padded ? lengths[std::size_t(b)] : shape.seq_len); ++p)
            valid[std::size_t(b * shape.seq_len + p)] = 1;
        CausalPredictor<T> predictor = base;
        std::vector<std::uint8_t> decisions(std::size_t(shape.rows()));
        Index disagree = 0, checked = 0;
        for (Index i = 0; i < shape.rows(); i += 3) {
          if (!valid[std::size_t(i)]) continue;
          for (const T threshold : {all[i], std::nextafter(all[i], -std::numeric_limits<T>::infinity())}) {
            predictor.set_threshold(threshold);
            predictor.route(x, {}, decisions, arena);
            const RoutingMetrics by_route = routing_metrics(decisions, targets, shape, lens);
            const RoutingMetrics by_evaluate = predictor.evaluate(x, shape, targets, arena, lens);
            disagree += by_route.true_positives != by_evaluate.true_positives ||
                        by_route.false_positives != by_evaluate.false_positives;
            ++checked;
          }
        }
        CHECK(checked > 50);
        CHECK(disagree == 0);

        // calibrate_threshold places its threshold among the same logits: route() then
        // routes exactly its m = ceil(fraction * n) valid tokens (these logits are distinct).
        const Index n_valid = std::count(valid.begin(), valid.end(), std::uint8_t(1));
        for (const double fraction : {0.125, 0.5, 0.9}) {
          predictor.calibrate_threshold(x, shape, fraction, arena, lens);
          predictor.route(x, {}, decisions, arena);
          Index routed = 0;
          for (Index i = 0; i < shape.rows(); ++i) routed += valid[std::size_t(i)] && decisions[std::size_t(i)];
          CHECK(routed == Capacity::fraction(fraction)(n_valid));
        }
      }
    }
  }
}

TEST_CASE("predictor: logits and route reuse the arena and make no heap allocation after warm-up") {
  const Index rows = 64, d = 32, h = 16;
  const CausalPredictor<float> predictor(d, h, Activation::silu, 8);
  const RowMatrix<float> x = random_matrix<float>(rows, d, 9);
  Vector<float> z(rows);
  std::vector<std::uint8_t> routed(static_cast<std::size_t>(rows));
  Arena<float> arena;
  predictor.route(x, {}, routed, arena);  // warm-up: the arena grows once
  arena.reset();                          // one chunk from now on
  const Index held = arena.capacity();
  REQUIRE(held >= rows * h);
  const auto start = arena.mark();
  // Every malloc is counted (heap_counter, where active), and Eigen asserts on a forbidden one
  // in builds with assertions; the arena checks below hold in every build.
  const long heap_before = heap_counter::count();  // every malloc, where active (not under ASan)
  Eigen::internal::set_is_malloc_allowed(false);
  predictor.logits(x, z, arena);
  predictor.route(x, {}, routed, arena);
  predictor.route(x.topRows(1), {}, std::span(routed).first(1), arena);  // a decode step: one row
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(heap_counter::count() - heap_before == 0);
  CHECK(arena.capacity() == held);
  // Each call rewound what it took.
  CHECK(arena.mark().chunk == start.chunk);
  CHECK(arena.mark().used == start.used);
}

TEST_CASE("predictor: BCE gradient matches finite differences for every parameter block (SiLU and ReLU, double)") {
  const Shape shape{3, 12};
  const Index d = 6, h = 5;
  const std::vector<Index> lengths = {12, 7, 10};
  RowMatrix<double> x = random_matrix<double>(shape.rows(), d, 41);
  // Padding rows hold NaN: reading them would poison every gradient entry.
  for (Index b = 0; b < shape.batch; ++b)
    for (Index p = lengths[std::size_t(b)]; p < shape.seq_len; ++p)
      x.row(b * shape.seq_len + p).setConstant(std::numeric_limits<double>::quiet_NaN());
  Vector<double> router_logits = random_vector<double>(shape.rows(), 42);
  const auto targets = targets_for(router_logits, shape, 3, lengths);

  for (Activation act : {Activation::silu, Activation::relu}) {
    CAPTURE(static_cast<int>(act));
    PredictorParameters<double> p = CausalPredictor<double>(d, h, act, 43).parameters();
    p.hidden_bias = random_vector<double>(h, 44) * 0.5;
    p.output_bias = 0.3;
    const CausalPredictor<double> predictor(p, act);
    Arena<double> arena;
    PredictorParameters<double> gradient;  // empty: loss_and_gradient sizes it
    const double loss = predictor.loss_and_gradient(x, shape, targets, gradient, arena, lengths);
    CHECK(loss == predictor.loss(x, shape, targets, arena, lengths));

    if (act == Activation::relu) {  // finite differences must not straddle a kink
      double nearest_kink = 1e9;
      for (Index b = 0; b < shape.batch; ++b)
        for (Index i = 0; i < lengths[std::size_t(b)]; ++i) {
          const auto pre = (x.row(b * shape.seq_len + i) * p.hidden_weight).transpose() + p.hidden_bias;
          nearest_kink = std::min(nearest_kink, pre.cwiseAbs().minCoeff());
        }
      REQUIRE(nearest_kink > 1e-4);
    }

    const double step = 1e-6;
    auto loss_with = [&](auto&& change) {
      PredictorParameters<double> q = p;
      change(q);
      return CausalPredictor<double>(q, act).loss(x, shape, targets, arena, lengths);
    };
    auto numeric = [&](auto&& entry) {
      return (loss_with([&](auto& q) { entry(q) += step; }) - loss_with([&](auto& q) { entry(q) -= step; })) /
             (2 * step);
    };
    double worst = 0;
    auto compare = [&](double analytic, double fd) {
      worst = worse(worst, std::abs(analytic - fd) / std::max(1e-3, std::abs(fd)));
    };
    for (Index c = 0; c < d; ++c)
      for (Index j = 0; j < h; ++j)
        compare(gradient.hidden_weight(c, j), numeric([&](auto& q) -> double& { return q.hidden_weight(c, j); }));
    const double worst_hidden_weight = std::exchange(worst, 0.0);
    for (Index j = 0; j < h; ++j)
      compare(gradient.hidden_bias[j], numeric([&](auto& q) -> double& { return q.hidden_bias[j]; }));
    const double worst_hidden_bias = std::exchange(worst, 0.0);
    for (Index j = 0; j < h; ++j)
      compare(gradient.output_weight[j], numeric([&](auto& q) -> double& { return q.output_weight[j]; }));
    const double worst_output_weight = std::exchange(worst, 0.0);
    compare(gradient.output_bias, numeric([&](auto& q) -> double& { return q.output_bias; }));
    const double worst_output_bias = worst;
    MESSAGE((act == Activation::silu ? "SiLU" : "ReLU"), " predictor BCE gradient, max relative error: W1 ",
            worst_hidden_weight, ", b1 ", worst_hidden_bias, ", w2 ", worst_output_weight, ", b2 ", worst_output_bias);
    CHECK(worst_hidden_weight < 1e-6);
    CHECK(worst_hidden_bias < 1e-6);
    CHECK(worst_output_weight < 1e-6);
    CHECK(worst_output_bias < 1e-6);
    CHECK(gradient.hidden_weight.allFinite());
    CHECK(gradient.hidden_weight.norm() > 1e-3);  // not vacuous
  }
}

TEST_CASE("predictor: padding rows and their targets do not affect loss, gradient or metrics") {
  const Shape shape{4, 16};
  const Index d = 8, h = 6;
  const std::vector<Index> lengths = {16, 5, 0, 11};
  const CausalPredictor<float> predictor(d, h, Activation::silu, 51);
  RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 52);
  std::vector<std::uint8_t> targets = targets_for(random_vector<float>(shape.rows(), 53), shape, 2, lengths);
  Arena<float> arena;
  PredictorParameters<float> g1, g2;
  const float loss1 = predictor.loss_and_gradient(x, shape, targets, g1, arena, lengths);
  const RoutingMetrics m1 = predictor.evaluate(x, shape, targets, arena, lengths);

  for (Index b = 0; b < shape.batch; ++b)
    for (Index p = lengths[std::size_t(b)]; p < shape.seq_len; ++p) {
      x.row(b * shape.seq_len + p).setConstant(1e30f);
      targets[std::size_t(b * shape.seq_len + p)] = 1;
    }
  const float loss2 = predictor.loss_and_gradient(x, shape, targets, g2, arena, lengths);
  const RoutingMetrics m2 = predictor.evaluate(x, shape, targets, arena, lengths);
  CHECK(loss1 == loss2);
  CHECK(bit_equal(g1.hidden_weight, g2.hidden_weight));
  CHECK(bit_equal(g1.hidden_bias, g2.hidden_bias));
  CHECK(bit_equal(g1.output_weight, g2.output_weight));
  CHECK(g1.output_bias == g2.output_bias);
  CHECK(m1.tokens() == 16 + 5 + 11);
  CHECK(m2.tokens() == m1.tokens());
  CHECK(m2.true_positives == m1.true_positives);
  CHECK(m2.false_positives == m1.false_positives);

  // Without lengths the same rows count, and the loss changes: the test can tell.
  CHECK(predictor.loss(x, shape, targets, arena) != loss1);
}

TEST_CASE("predictor: training changes only its own parameters (stop gradient)") {
  const Shape shape{4, 32};
  const Index d = 12, h = 8;
  const RowMatrix<double> x = random_matrix<double>(shape.rows(), d, 61);
  const RowMatrix<double> x_before = x;
  const Router<double> router(random_vector<double>(d, 62), 0.1);
  const Vector<double> router_weight_before = router.weight();
  Vector<double> router_logits(shape.rows());
  router.score(x, router_logits);
  const Vector<double> router_logits_before = router_logits;
  const auto targets = targets_for(router_logits, shape, 4);
  const auto targets_before = targets;
  // Any other weights a model holds: here a second predictor, e.g. another layer's.
  const CausalPredictor<double> other(d, h, Activation::relu, 63);
  const PredictorParameters<double> other_before = other.parameters();

  CausalPredictor<double> predictor(d, h, Activation::silu, 64);
  const PredictorParameters<double> initial = predictor.parameters();
  PredictorAdam<double> adam(predictor, {.learning_rate = 1e-2});
  Arena<double> arena;
  const double first_loss = predictor.train_step(x, shape, targets, adam, arena);
  double last_loss = first_loss;
  for (int step = 1; step < 20; ++step) last_loss = predictor.train_step(x, shape, targets, adam, arena);

  CHECK(bit_equal(x, x_before));
  CHECK(bit_equal(router.weight(), router_weight_before));
  CHECK(router.bias() == 0.1);
  router.score(x, router_logits);
  CHECK(bit_equal(router_logits, router_logits_before));
  CHECK(targets == targets_before);
  CHECK(parameters_bit_equal(other.parameters(), other_before));
  // ...while the predictor's own parameters did move, every block of them, and it improved.
  CHECK_FALSE(bit_equal(predictor.parameters().hidden_weight, initial.hidden_weight));
  CHECK_FALSE(bit_equal(predictor.parameters().hidden_bias, initial.hidden_bias));
  CHECK_FALSE(bit_equal(predictor.parameters().output_weight, initial.output_weight));
  CHECK(predictor.parameters().output_bias != initial.output_bias);
  CHECK(adam.steps() == 20);
  CHECK(last_loss < first_loss);
}

TEST_CASE("predictor: one Adam step follows the bias-corrected formula") {
  const Shape shape{2, 10};
  const Index d = 4, h = 3;
  const RowMatrix<double> x = random_matrix<double>(shape.rows(), d, 71);
  const auto targets = targets_for(random_vector<double>(shape.rows(), 72), shape, 3);
  CausalPredictor<double> predictor(d, h, Activation::silu, 73);
  const AdamOptions options{.learning_rate = 0.05, .beta1 = 0.8, .beta2 = 0.95, .epsilon = 1e-6};
  PredictorAdam<double> adam(predictor, options);
  Arena<double> arena;

  // Three steps by hand over all parameters flattened into one vector; m, v start at 0.
  auto flatten = [&](const PredictorParameters<double>& q) {
    Vector<double> v(d * h + 2 * h + 1);
    v << Eigen::Map<const Vector<double>>(q.hidden_weight.data(), d * h), q.hidden_bias, q.output_weight, q.output_bias;
    return v;
  };
  auto unflatten = [&](const Vector<double>& v) {
    PredictorParameters<double> q = PredictorParameters<double>::zeros(d, h);
    Eigen::Map<Vector<double>>(q.hidden_weight.data(), d * h) = v.head(d * h);
    q.hidden_bias = v.segment(d * h, h);
    q.output_weight = v.segment(d * h + h, h);
    q.output_bias = v[d * h + 2 * h];
    return q;
  };
  Vector<double> p = flatten(predictor.parameters());
  Vector<double> m = Vector<double>::Zero(p.size()), v = m;
  PredictorParameters<double> g;
  for (int t = 1; t <= 3; ++t) {
    CausalPredictor<double>(unflatten(p), Activation::silu).loss_and_gradient(x, shape, targets, g, arena);
    const Vector<double> gradient = flatten(g);
    m = 0.8 * m + 0.2 * gradient;
    v = 0.95 * v + 0.05 * gradient.cwiseAbs2();
    const Vector<double> m_hat = m / (1 - std::pow(0.8, t));
    const Vector<double> v_hat = v / (1 - std::pow(0.95, t));
    p.array() -= 0.05 * m_hat.array() / (v_hat.array().sqrt() + 1e-6);
    predictor.train_step(x, shape, targets, adam, arena);
    CHECK(adam.gradient().output_bias == doctest::Approx(g.output_bias).epsilon(1e-10));
  }
  const Vector<double> difference = flatten(predictor.parameters()) - p;
  MESSAGE("Adam: max difference from the by-hand update after 3 steps ", difference.cwiseAbs().maxCoeff());
  CHECK(difference.cwiseAbs().maxCoeff<Eigen::PropagateNaN>() < 1e-12);
  CHECK(adam.steps() == 3);
  // Each Adam step moves a weight by up to about the learning rate: three move some by more than one.
  CHECK((predictor.parameters().hidden_weight - CausalPredictor<double>(d, h, Activation::silu, 73).parameters().hidden_weight)
            .cwiseAbs()
            .maxCoeff() > 0.05);

  require_mentions(error_message([] { PredictorAdam<double>(2, 2, {.learning_rate = 0}); }),
                   {"AdamOptions", "learning_rate", "> 0", "got 0"});
  require_mentions(error_message([] { PredictorAdam<double>(2, 2, {.beta1 = 1.0}); }), {"beta1", "[0, 1)", "got 1"});
  require_mentions(error_message([] { PredictorAdam<double>(2, 2, {.beta2 = -0.5}); }), {"beta2", "got -0.5"});
  require_mentions(error_message([] { PredictorAdam<double>(2, 2, {.epsilon = 0}); }), {"epsilon", "> 0"});
}

TEST_CASE("predictor: learns per-sequence top-12.5% membership to >= 97% held-out accuracy") {
  // The paper's setting (256 of 2048 tokens) with a small model: router logits r = x w,
  // targets the top 12.5% of each sequence. The cut-off varies a little between sequences, so
  // a rule that sees one token cannot be perfect; the paper reports 97-99%.
  const Index d = 32, h = 32, seq_len = 2048, k = 256;
  const Shape train{16, seq_len}, held_out{8, seq_len};
  const Vector<float> w = random_vector<float>(d, 81) / std::sqrt(float(d));
  auto make = [&](Shape shape, std::uint64_t seed) {
    RowMatrix<float> x = random_matrix<float>(shape.rows(), d, seed);
    Vector<float> r(shape.rows());
    Router<float>(w).score(x, r);
    return std::tuple{x, r, targets_for(r, shape, k)};
  };
  const auto [x_train, r_train, t_train] = make(train, 82);
  const auto [x_test, r_test, t_test] = make(held_out, 83);

  // The ceiling for any one-token rule, for the record: the best fixed cut on r itself.
  std::vector<float> sorted(r_train.data(), r_train.data() + r_train.size());
  std::vector<std::uint8_t> oracle(t_test.size());
  const float cut = CausalPredictor<float>::threshold_for_count(sorted, train.rows() / 8);
  for (std::size_t i = 0; i < oracle.size(); ++i) oracle[i] = r_test[Index(i)] > cut;
  const double ceiling = routing_metrics(oracle, t_test, held_out).accuracy();

  CausalPredictor<float> predictor(d, h, Activation::silu, 84);
  PredictorAdam<float> adam(predictor, {.learning_rate = 1e-2});
  Arena<float> arena;
  const double initial = predictor.evaluate(x_test, held_out, t_test, arena).accuracy();
  const auto start = std::chrono::steady_clock::now();
  RoutingMetrics metrics;
  double best = 0;
  int steps = 0;
  float loss = 0;
  // Mini-batches of 4 sequences, cycling through the training set, until held-out accuracy
  // stops improving (checked every 50 steps).
  const Shape batch{4, seq_len};
  while (steps < 1000) {
    const Index first = (steps % (train.batch / batch.batch)) * batch.rows();
    loss = predictor.train_step(x_train.middleRows(first, batch.rows()), batch,
                                std::span(t_train).subspan(std::size_t(first), std::size_t(batch.rows())),
                                adam, arena);
    ++steps;
    if (steps % 50 == 0) {
      metrics = predictor.evaluate(x_test, held_out, t_test, arena);
      if (metrics.accuracy() <= best) break;
      best = metrics.accuracy();
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("predictor held-out accuracy ", metrics.accuracy(), " (from ", initial, "; one-token ceiling ", ceiling,
          ") after ", steps, " Adam steps in ", seconds, " s; precision ", metrics.precision(), ", recall ",
          metrics.recall(), ", last training loss ", loss);
  CHECK(initial < 0.9);
  CHECK(metrics.accuracy() >= 0.97);
  CHECK(metrics.precision() > 0.9);
  CHECK(metrics.recall() > 0.9);
}

TEST_CASE_TEMPLATE("predictor: calibrate_threshold routes the target fraction of valid tokens within one token", T, float, double) {
  const Shape shape{6, 100};
  const std::vector<Index> lengths = {100, 37, 0, 99, 64, 1};
  const Index valid = 100 + 37 + 99 + 64 + 1;
  const Index d = 10;
  CausalPredictor<T> predictor(d, 8, Activation::silu, 91);
  RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 92);
  Arena<T> arena;
  std::vector<std::uint8_t> routed(std::size_t(shape.rows()));
  auto routed_valid = [&] {
    predictor.route(x, {}, routed, arena);
    Index count = 0;
    for (Index b = 0; b < shape.batch; ++b)
      for (Index p = 0; p < lengths[std::size_t(b)]; ++p) count += routed[std::size_t(b * shape.seq_len + p)];
    return count;
  };
  for (double fraction : {0.125, 0.1, 0.5, 0.9, 1.0 / 3.0}) {
    const T threshold = predictor.calibrate_threshold(x, shape, fraction, arena, lengths);
    CHECK(predictor.threshold() == threshold);
    const Index count = routed_valid();
    CAPTURE(fraction);
    CHECK(std::abs(double(count) - fraction * double(valid)) < 1.0);
    CHECK(count == Index(std::ceil(fraction * double(valid) - 1e-9)));  // ceil, like Capacity
  }
  predictor.calibrate_threshold(x, shape, 0.0, arena, lengths);
  CHECK(predictor.threshold() == std::numeric_limits<T>::infinity());
  CHECK(routed_valid() == 0);
  predictor.calibrate_threshold(x, shape, 1.0, arena, lengths);
  CHECK(predictor.threshold() == -std::numeric_limits<T>::infinity());
  CHECK(routed_valid() == valid);

  // Padding rows are not calibrated on: huge values there change nothing.
  const T before = predictor.calibrate_threshold(x, shape, 0.25, arena, lengths);
  x.row(2 * shape.seq_len).setConstant(T(1e6));
  CHECK(predictor.calibrate_threshold(x, shape, 0.25, arena, lengths) == before);

  // Ties at the boundary: no strict threshold routes exactly m, so it routes none or all of
  // the tied tokens, whichever is nearer m (none on a draw).
  std::vector<T> logits = {T(5), T(3), T(3), T(3), T(1), T(0)};
  auto count_above = [&](T t) { return std::count_if(logits.begin(), logits.end(), [&](T v) { return v > t; }); };
  auto copy = logits;
  CHECK(count_above(CausalPredictor<T>::threshold_for_count(copy, 2)) == 1);  // 1 or 4: 1 is nearer
  copy = logits;
  CHECK(count_above(CausalPredictor<T>::threshold_for_count(copy, 3)) == 4);  // 1 or 4: 4 is nearer
  copy = logits;
  CHECK(count_above(CausalPredictor<T>::threshold_for_count(copy, 5)) == 5);  // no tie: halfway 0..1
  copy = logits;
  CHECK(CausalPredictor<T>::threshold_for_count(copy, 5) == T(0.5));
  std::vector<T> with_nan = {T(2), std::numeric_limits<T>::quiet_NaN(), T(1), T(4)};
  CHECK(CausalPredictor<T>::threshold_for_count(with_nan, 1) == T(3));  // NaN ranks last
}

TEST_CASE("predictor: routing_metrics and evaluate count routed tokens against targets") {
  const Shape shape{2, 5};
  const std::vector<std::uint8_t> routed = {1, 1, 0, 0, 1, /**/ 0, 1, 0, 1, 1};
  const std::vector<std::uint8_t> target = {1, 0, 0, 1, 1, /**/ 0, 1, 1, 0, 1};
  const std::vector<Index> lengths = {5, 3};
  const RoutingMetrics m = routing_metrics(routed, target, shape, lengths);
  CHECK(m.true_positives == 3);   // rows 0, 4, 6
  CHECK(m.false_positives == 1);  // row 1
  CHECK(m.true_negatives == 2);   // rows 2, 5
  CHECK(m.false_negatives == 2);  // rows 3, 7
  CHECK(m.tokens() == 8);
  CHECK(m.accuracy() == doctest::Approx(5.0 / 8));
  CHECK(m.precision() == doctest::Approx(3.0 / 4));
  CHECK(m.recall() == doctest::Approx(3.0 / 5));
  CHECK(m.routed_fraction() == doctest::Approx(4.0 / 8));
  const RoutingMetrics none{};
  CHECK(none.accuracy() == 1.0);
  CHECK(none.precision() == 1.0);

  // evaluate() is routing_metrics of route()'s decisions.
  const Shape big{3, 40};
  const CausalPredictor<double> predictor(7, 5, Activation::relu, 101);
  const RowMatrix<double> x = random_matrix<double>(big.rows(), 7, 102);
  const auto targets = targets_for(random_vector<double>(big.rows(), 103), big, 10);
  Arena<double> arena;
  std::vector<std::uint8_t> decisions(std::size_t(big.rows()));
  predictor.route(x, {}, decisions, arena);
  const RoutingMetrics from_route = routing_metrics(decisions, targets, big);
  const RoutingMetrics from_evaluate = predictor.evaluate(x, big, targets, arena);
  CHECK(from_route.true_positives == from_evaluate.true_positives);
  CHECK(from_route.false_positives == from_evaluate.false_positives);
  CHECK(from_route.true_negatives == from_evaluate.true_negatives);
  CHECK(from_route.false_negatives == from_evaluate.false_negatives);
  CHECK(from_evaluate.tokens() == big.rows());
}

TEST_CASE("predictor: bad input throws mixdepth::Error naming the argument and changes nothing") {
  const Shape shape{2, 6};
  const Index d = 5, h = 4;
  CausalPredictor<float> predictor(d, h, Activation::silu, 111);
  predictor.set_threshold(0.75f);
  const PredictorParameters<float> before = predictor.parameters();
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 112);
  const RowMatrix<float> narrow = random_matrix<float>(shape.rows(), d - 1, 113);
  std::vector<std::uint8_t> targets(12, 0);
  targets[0] = targets[7] = 1;
  Arena<float> arena;

  Vector<float> z = Vector<float>::Constant(12, 3.f);
  require_mentions(error_message([&] { predictor.logits(narrow, z, arena); }),
                   {"CausalPredictor::logits", "x.cols()", "expected 5", "got 4"});
  Vector<float> short_z = Vector<float>::Constant(11, 3.f);
  require_mentions(error_message([&] { predictor.logits(x, short_z, arena); }), {"out.size()", "expected 12", "got 11"});
  CHECK(z == Vector<float>::Constant(12, 3.f));
  CHECK(short_z == Vector<float>::Constant(11, 3.f));

  std::vector<std::uint8_t> routed(12, 7);
  require_mentions(error_message([&] { predictor.route(x, {}, std::span(routed).first(10), arena); }),
                   {"CausalPredictor::route", "routed.size()", "expected 12", "got 10"});
  require_mentions(error_message([&] { predictor.route(narrow, {}, routed, arena); }), {"x.cols()", "expected 5"});
  CHECK(routed == std::vector<std::uint8_t>(12, 7));

  require_mentions(error_message([&] { PredictorAdam<float>(-1, h); }), {"PredictorAdam", "dim", ">= 1", "-1"});
  require_mentions(error_message([&] { PredictorAdam<float>(d, 0); }), {"PredictorAdam", "hidden", ">= 1", "0"});
  PredictorAdam<float> adam(predictor);
  PredictorAdam<float> wrong_adam(d, h + 1);
  require_mentions(error_message([&] { predictor.train_step(x, Shape{2, 5}, targets, adam, arena); }),
                   {"CausalPredictor::train_step", "x.rows()", "expected 10", "got 12"});
  require_mentions(error_message([&] { predictor.train_step(x, shape, std::span(targets).first(11), adam, arena); }),
                   {"targets.size()", "expected 12", "got 11"});
  auto bad_targets = targets;
  bad_targets[3] = 255;
  require_mentions(error_message([&] { predictor.train_step(x, shape, bad_targets, adam, arena); }),
                   {"targets[3]", "0 or 1", "got 255"});
  const std::vector<Index> bad_lengths = {6, 7};
  require_mentions(error_message([&] { predictor.train_step(x, shape, targets, adam, arena, bad_lengths); }),
                   {"lengths[1]", "got 7"});
  require_mentions(error_message([&] { predictor.train_step(x, shape, targets, wrong_adam, arena); }),
                   {"optimizer.hidden()", "expected 4", "got 5"});
  CHECK(adam.steps() == 0);
  CHECK(wrong_adam.steps() == 0);

  PredictorParameters<float> gradient = PredictorParameters<float>::zeros(d, h);
  gradient.output_bias = 5.f;
  require_mentions(error_message([&] { predictor.loss_and_gradient(narrow, shape, targets, gradient, arena); }),
                   {"CausalPredictor::loss_and_gradient", "x.cols()"});
  CHECK(gradient.output_bias == 5.f);

  require_mentions(error_message([&] { predictor.calibrate_threshold(x, shape, 1.5, arena); }),
                   {"CausalPredictor::calibrate_threshold", "fraction", "[0, 1]", "got 1.5"});
  require_mentions(error_message([&] { predictor.calibrate_threshold(x, shape, -0.1, arena); }), {"fraction", "-0.1"});
  require_mentions(error_message([&] { predictor.calibrate_threshold(x, Shape{3, 6}, 0.5, arena); }),
                   {"x.rows()", "expected 18", "got 12"});
  require_mentions(error_message([&] { predictor.evaluate(x, shape, targets, arena, bad_lengths); }),
                   {"CausalPredictor::evaluate", "lengths[1]"});
  require_mentions(error_message([&] { routing_metrics(routed, std::span(targets).first(3), shape); }),
                   {"routing_metrics", "targets.size()", "got 3"});

  CHECK(predictor.threshold() == 0.75f);
  CHECK(bit_equal(predictor.parameters().hidden_weight, before.hidden_weight));
  CHECK(bit_equal(predictor.parameters().output_weight, before.output_weight));
}
