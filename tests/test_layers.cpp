// The reference layers (RMSNorm, SwiGluMlp, Attention with RoPE and GQA) against plain scalar
// loops (reference_layers.hpp), plus the properties a MoD block relies on: original positions, causality,
// independent sequences, scratch discipline, and composition with sequential() and Block.
#include "test_helpers.hpp"
#include "heap_counter.hpp"
#include "reference_layers.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <complex>
#include <limits>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

namespace {

using namespace mixdepth;
using mixdepth::layers::Attention;
using mixdepth::layers::AttentionConfig;
using mixdepth::layers::AttentionWeights;
using mixdepth::layers::RMSNorm;
using mixdepth::layers::SwiGluConfig;
using mixdepth::layers::SwiGluMlp;
using mixdepth::layers::SwiGluWeights;
using mixdepth::testing::error_message;
using mixdepth::testing::random_matrix;
using mixdepth::testing::random_vector;
using mixdepth::testing::require_mentions;
using namespace mixdepth::reference;

// ---- tolerances and comparisons ----

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

// Comparing runs at different positions adds the rounding of angles up to ~65536 rad.
template <class T>
constexpr double shifted_tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-9;
}

// ---- routed batches for the tests ----

// Rows of several sequences as a block function receives them: each sequence holds `count`
// rows at ascending, gappy positions (the tokens a router kept).
template <class T>
struct RoutedBatch {
  RowMatrix<T> x;
  std::vector<Position> positions;
  std::vector<Index> offsets{0};

  RoutedBatch(const std::vector<Index>& counts, Index d_model, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (Index count : counts) {
      std::vector<Position> all(std::size_t(3 * count + 1));
      std::iota(all.begin(), all.end(), Position{0});
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(std::size_t(count));
      std::sort(all.begin(), all.end());
      positions.insert(positions.end(), all.begin(), all.end());
      offsets.push_back(offsets.back() + count);
    }
    x = random_matrix<T>(offsets.back(), d_model, seed + 1);
  }

  Index rows() const { return x.rows(); }
  Routed<T> view(Arena<T>* scratch = nullptr) const {
    return Routed<T>{x, positions, offsets, scratch};
  }
};

std::vector<AttentionConfig> attention_configs() {
  // GQA ratios 1, 2 and 4; one head width that differs from d_model; a Llama-3-like theta.
  return {
      {16, 4, 4, 4, 10000.0, 1e-6},
      {12, 4, 2, 6, 10000.0, 1e-6},
      {16, 8, 2, 4, 500000.0, 1e-5},
  };
}

template <class T>
RowMatrix<T> run_attention(const Attention<T>& attention, const RoutedBatch<T>& batch) {
  RowMatrix<T> out(batch.rows(), attention.config().d_model);
  Arena<T> arena;
  attention(batch.view(&arena), out);
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("RMSNorm matches a scalar loop, also in place", T, float, double) {
  for (Index d : {1, 7, 64, 129}) {
    const auto norm = RMSNorm<T>::random(d, 10 + std::uint64_t(d), T(1e-5));
    RowMatrix<T> x = random_matrix<T>(9, d, 20);
    x.row(3).setZero();  // eps keeps an all-zero row finite
    const Reference expected = reference_rmsnorm(widen(x), widen(norm.weight()), double(T(1e-5)));
    RowMatrix<T> out(9, d);
    norm(x, out);
    INFO("d = ", d);
    CHECK(relative_difference(out, expected) <= tolerance<T>());
    CHECK(out.row(3).isZero(0));
    norm(x, x);  // out aliasing x is allowed
    CHECK(testing::bit_equal(x, out));
  }
}

TEST_CASE_TEMPLATE("RMSNorm normalises finite rows whose sum of squares overflows", T, float, double) {
  // Before, such a row came out as zeros: its sum of squares was inf, so 1/rms was 0.
  const T big = std::sqrt(std::numeric_limits<T>::max());  // the square of 2 big overflows
  for (Index d : {1, 7, 64, 129}) {
    const auto norm = RMSNorm<T>::random(d, 30 + std::uint64_t(d), T(1e-5));
    RowMatrix<T> x = random_matrix<T>(4, d, 31);
    x.row(0) *= 2 * big;
    x.row(1).setConstant(std::numeric_limits<T>::max() / 2);
    x.row(2).setZero();
    x(2, 0) = 4 * big;  // one huge entry: y_0 = sqrt(d) w_0
    x.row(3) *= std::numeric_limits<T>::max() / 4;
    RowMatrix<T> out(4, d);
    norm(x, out);
    INFO("d = ", d);
    CHECK(out.allFinite());
    // Reference in long double on the row divided by its largest magnitude (exact).
    double worst = 0;
    for (Index r = 0; r < 4; ++r) {
      const long double m = x.row(r).cwiseAbs().maxCoeff();
      long double sum = 0;
      for (Index c = 0; c < d; ++c) sum += (x(r, c) / m) * (x(r, c) / m);
      const long double scale = 1 / std::sqrt(sum / d + 1e-5L / m / m);
      for (Index c = 0; c < d; ++c) {
        const long double want = x(r, c) / m * scale * norm.weight()(c);
        worst = testing::worse(worst, double(std::fabs(out(r, c) - want) / std::max(1.0L, std::fabs(want))));
      }
    }
    CHECK(worst <= tolerance<T>());
    CHECK(out(2, 0) == doctest::Approx(double(std::sqrt(T(d)) * norm.weight()(0))).epsilon(1e-5));
    norm(x, x);  // in place as well
    CHECK(testing::bit_equal(x, out));
  }
}

TEST_CASE("RotaryEmbedding rejects bad head sizes, theta and shapes, and its frequencies are theta^(-2i/d)") {
  using layers::RotaryEmbedding;
  require_mentions(error_message([] { RotaryEmbedding<float>(7, 10000.0); }), {"RotaryEmbedding", "head_dim", "even", "got 7"});
  require_mentions(error_message([] { RotaryEmbedding<float>(0, 10000.0); }), {"head_dim", ">= 2", "got 0"});
  require_mentions(error_message([] { RotaryEmbedding<float>(8, 0.0); }), {"theta", "> 0", "got 0"});
  require_mentions(error_message([] { RotaryEmbedding<float>(8, std::numeric_limits<double>::infinity()); }), {"theta", "finite"});
  const RotaryEmbedding<double> rope(8, 500.0);
  for (Index i = 0; i < 4; ++i) CHECK(rope.inverse_frequency(i) == doctest::Approx(std::pow(500.0, -2.0 * i / 8)).scale(0));
  RowMatrix<double> rows = random_matrix<double>(3, 16, 4);
  const RowMatrix<double> before = rows;
  const std::vector<Position> two{0, 1}, three{0, 1, 2};
  require_mentions(error_message([&] { rope.rotate(rows, two); }), {"RotaryEmbedding::rotate", "positions.size()", "expected 3", "got 2"});
  RowMatrix<double> ragged = random_matrix<double>(3, 12, 5);
  require_mentions(error_message([&] { rope.rotate(ragged, three); }), {"rows.cols()", "multiple of head_dim (8)", "got 12"});
  CHECK(testing::bit_equal(rows, before));
  rope.rotate(rows, three);
  CHECK(testing::bit_equal(rows.row(0), before.row(0)));  // position 0: no rotation
  CHECK_FALSE(testing::bit_equal(rows.row(2), before.row(2)));
  CHECK(rows.row(2).norm() == doctest::Approx(before.row(2).norm()).scale(0));  // a rotation keeps lengths
}

TEST_CASE("RMSNorm rejects an empty weight, a bad eps and mismatched shapes") {
  require_mentions(error_message([] { RMSNorm<float>(Vector<float>()); }), {"weight.size()"});
  for (const float eps : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    require_mentions(error_message([&] { RMSNorm<float>(Vector<float>::Ones(4), eps); }),
                     {"eps", "finite and > 0"});
  const RMSNorm<double> norm(Vector<double>::Ones(4));
  RowMatrix<double> x(3, 5), out(3, 4), short_out(2, 4);
  require_mentions(error_message([&] { norm(x, out); }), {"x.cols()", "expected 4", "got 5"});
  x.resize(3, 4);
  require_mentions(error_message([&] { norm(x, short_out); }), {"out.rows()", "expected 3", "got 2"});
  // In place is fine; out one row below x would read rows it had already written.
  RowMatrix<double> rows = random_matrix<double>(4, 4, 3);
  const RowMatrix<double> rows_before = rows;
  require_mentions(error_message([&] { norm(rows.topRows(3), rows.bottomRows(3)); }),
                   {"RMSNorm", "out", "x itself or memory disjoint from it", "a partial overlap"});
  CHECK(testing::bit_equal(rows, rows_before));
  RowMatrix<double> apart(4, 4);
  norm(rows, apart);
  norm(rows, rows);
  CHECK(testing::bit_equal(rows, apart));
}

TEST_CASE_TEMPLATE("SwiGluMlp matches a scalar loop over a ragged routed batch", T, float, double) {
  for (const SwiGluConfig config : {SwiGluConfig{8, 24, 1e-6}, SwiGluConfig{33, 17, 1e-5}}) {
    const auto mlp = SwiGluMlp<T>::random(config, 7);
    const RoutedBatch<T> batch({4, 0, 11, 1}, config.d_model, 30);
    RowMatrix<T> out(batch.rows(), config.d_model);
    Arena<T> arena;
    mlp(batch.view(&arena), out);
    INFO("d_model = ", config.d_model, ", hidden = ", config.hidden);
    CHECK(relative_difference(out, reference_mlp(mlp, widen(batch.x))) <= tolerance<T>());

    // Row by row: the plain-rows overload agrees, and out may be the input itself.
    RowMatrix<T> plain(batch.rows(), config.d_model);
    mlp(batch.x, plain);
    CHECK(testing::bit_equal(plain, out));
    RowMatrix<T> in_place = batch.x;
    mlp(in_place, in_place);
    CHECK(testing::bit_equal(in_place, out));
  }
}

TEST_CASE("SwiGluMlp rejects mismatched weights and config, naming the argument") {
  const SwiGluConfig config{8, 12, 1e-6};
  const auto good = SwiGluMlp<float>::random(config, 1).weights();
  auto with = [&](auto change) {
    SwiGluWeights<float> w = good;
    change(w);
    return error_message([&] { SwiGluMlp<float>(config, w); });
  };
  require_mentions(with([](auto& w) { w.norm.resize(7); }),
                   {"SwiGluMlp", "weights.norm.size()", "expected 8 (config.d_model)", "got 7"});
  require_mentions(with([](auto& w) { w.gate.resize(8, 11); }),
                   {"weights.gate.cols()", "expected 12 (config.hidden)", "got 11"});
  require_mentions(with([](auto& w) { w.up.resize(9, 12); }), {"weights.up.rows()", "got 9"});
  require_mentions(with([](auto& w) { w.down.resize(8, 12); }),
                   {"weights.down.rows()", "expected 12", "got 8"});
  require_mentions(error_message([] { SwiGluMlp<float>::random({8, 0, 1e-6}, 1); }),
                   {"config.hidden", ">= 1"});
  for (const double eps : {0.0, 1e300, 1e-50, std::numeric_limits<double>::quiet_NaN()})
    require_mentions(error_message([&] { SwiGluMlp<float>::random({8, 12, eps}, 1); }),
                     {"SwiGluMlp", "config.norm_eps", "finite and > 0"});
  const auto mlp = SwiGluMlp<float>(config, good);
  RowMatrix<float> x(3, 8), out(3, 9);
  require_mentions(error_message([&] { mlp(x, out); }), {"out.cols()", "expected 8", "got 9"});
}

TEST_CASE_TEMPLATE("Attention matches a scalar loop: GQA ratios 1, 2, 4 over ragged sequences", T,
                   float, double) {
  // An empty sequence, a single row, and one longer than a query block (64 rows).
  const std::vector<std::vector<Index>> batches = {{5, 0, 9, 1}, {70, 3}};
  std::uint64_t seed = 100;
  for (const AttentionConfig& config : attention_configs())
    for (const auto& counts : batches) {
      const auto attention = Attention<T>::random(config, ++seed);
      const RoutedBatch<T> batch(counts, config.d_model, ++seed);
      const RowMatrix<T> out = run_attention(attention, batch);
      INFO("heads ", config.n_heads, "/", config.n_kv_heads, ", head_dim ", config.head_dim,
           ", rows ", batch.rows());
      CHECK(relative_difference(out, reference_attention(attention, widen(batch.x), batch.positions,
                                                         batch.offsets)) <= tolerance<T>());
      // out may be the input itself.
      RowMatrix<T> in_place = batch.x;
      attention(Routed<T>{in_place, batch.positions, batch.offsets, nullptr}, in_place);
      CHECK(testing::bit_equal(in_place, out));
    }
}

TEST_CASE("RoPE rotates queries and keys by the original position, scores see differences only") {
  const AttentionConfig config{16, 4, 2, 8, 10000.0, 1e-6};
  const auto attention = Attention<double>::random(config, 5);
  const RowMatrix<double> x = random_matrix<double>(6, 16, 6);
  const std::vector<Position> positions{0, 3, 4, 10, 11, 40};
  std::vector<Position> shifted = positions;
  for (auto& p : shifted) p += 1000;

  auto project = [&](const std::vector<Position>& at) {
    std::array<RowMatrix<double>, 3> qkv{RowMatrix<double>(6, 32), RowMatrix<double>(6, 16),
                                         RowMatrix<double>(6, 16)};
    attention.project(x, at, qkv[0], qkv[1], qkv[2]);
    return qkv;
  };
  const auto base = project(positions);
  const auto moved = project(shifted);
  const auto unrotated = project(std::vector<Position>(6, 0));

  // The rotation matches the complex-number reference at the given positions, and position 0
  // is no rotation at all.
  const auto& w = attention.weights();
  const Reference normed = reference_rmsnorm(x, w.norm, config.norm_eps);
  Reference expected_queries = reference_product(normed, w.query);
  CHECK(relative_difference(unrotated[0], expected_queries) <= 1e-12);
  reference_rope(expected_queries, positions, config.head_dim, config.rope_theta);
  CHECK(relative_difference(base[0], expected_queries) <= 1e-12);
  CHECK(testing::rows_bit_equal(base[0], 0, unrotated[0], 0));

  // rotate() on its own does what project() applied.
  RowMatrix<double> rotated = unrotated[0];
  attention.rotary().rotate(rotated, positions);
  CHECK(testing::bit_equal(rotated, base[0]));

  // Values carry no position; queries and keys do, and change when positions move.
  CHECK(testing::bit_equal(base[2], moved[2]));
  CHECK((base[0] - moved[0]).cwiseAbs().maxCoeff<Eigen::PropagateNaN>() > 1e-2);
  CHECK((base[1] - moved[1]).cwiseAbs().maxCoeff<Eigen::PropagateNaN>() > 1e-2);

  // Yet every query-key score (query head h against its key head) is unchanged.
  for (Index head = 0; head < config.n_heads; ++head) {
    const Index kv_head = head / 2;
    auto scores = [&](const auto& qkv) {
      return RowMatrix<double>(qkv[0].middleCols(head * 8, 8) *
                               qkv[1].middleCols(kv_head * 8, 8).transpose());
    };
    CHECK((scores(base) - scores(moved)).cwiseAbs().maxCoeff<Eigen::PropagateNaN>() <= 1e-10);
  }
}

TEST_CASE_TEMPLATE("Attention depends on relative positions only: shifting a sequence changes "
                   "nothing, moving one token does", T, float, double) {
  for (const AttentionConfig& config : attention_configs()) {
    const auto attention = Attention<T>::random(config, 11);
    const RoutedBatch<T> batch({8, 6, 12}, config.d_model, 12);
    const RowMatrix<T> out = run_attention(attention, batch);

    RoutedBatch<T> shifted = batch;  // every sequence by its own constant
    const Position shift[] = {1000, 7, 65536};
    for (std::size_t b = 0; b < 3; ++b)
      for (Index j = batch.offsets[b]; j < batch.offsets[b + 1]; ++j)
        shifted.positions[std::size_t(j)] += shift[b];
    CHECK(relative_difference(run_attention(attention, shifted), widen(out)) <= shifted_tolerance<T>());

    // Move the later half of sequence 2 one step further away: earlier rows keep their
    // outputs exactly, later ones change.
    RoutedBatch<T> stretched = batch;
    const Index first = batch.offsets[2], middle = first + 6, last = batch.offsets[3];
    for (Index j = middle; j < last; ++j) stretched.positions[std::size_t(j)] += 1;
    const RowMatrix<T> moved = run_attention(attention, stretched);
    CHECK(testing::bit_equal(moved.topRows(middle), out.topRows(middle)));
    const RowMatrix<T> later = moved.middleRows(middle + 1, last - middle - 1) -
                               out.middleRows(middle + 1, last - middle - 1);
    CHECK(later.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>() > 1e-3 * out.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>());
  }
}

TEST_CASE_TEMPLATE("Attention is causal: changing a later row never changes earlier outputs", T,
                   float, double) {
  const AttentionConfig config{16, 4, 1, 4, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(config, 21);
  const RoutedBatch<T> batch({70}, config.d_model, 22);  // two query blocks
  const RowMatrix<T> out = run_attention(attention, batch);
  for (Index changed : {0, 5, 63, 64, 69}) {
    RoutedBatch<T> edited = batch;
    edited.x.row(changed) *= T(-2);
    const RowMatrix<T> after = run_attention(attention, edited);
    INFO("changed row ", changed);
    CHECK(testing::bit_equal(after.topRows(changed), out.topRows(changed)));
    for (Index later = changed; later < batch.rows(); ++later)
      CHECK_FALSE(testing::rows_bit_equal(after, later, out, later));
  }
}

TEST_CASE_TEMPLATE("Attention is causal even when a later key's value is inf or NaN", T, float, double) {
  // Before, a query block multiplied its masked (zero) weights by every value its widest
  // query sees: 0 * inf put NaN into the context of earlier queries of the same block, and
  // a prefill disagreed with decoding token by token.
  const AttentionConfig config{16, 4, 2, 4, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(config, 23);
  const Index n = 70;  // two query blocks
  const RowMatrix<T> queries = random_matrix<T>(n, config.query_width(), 24);
  const RowMatrix<T> keys = random_matrix<T>(n, config.kv_width(), 25);
  std::vector<Position> positions(static_cast<std::size_t>(n));
  std::iota(positions.begin(), positions.end(), 0);
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (const T bad_value : {std::numeric_limits<T>::infinity(), std::numeric_limits<T>::quiet_NaN()}) {
    for (Index bad : {1, 5, 63, 64, 69}) {
      RowMatrix<T> values = random_matrix<T>(n, config.kv_width(), 26);
      values.row(bad).setZero();  // the reference: a finite value nobody before `bad` sees
      RowMatrix<T> expected(n, config.query_width()), context(n, config.query_width());
      attention.attend(queries, positions, keys, values, positions, expected);
      values.row(bad).setConstant(bad_value);
      attention.attend(queries, positions, keys, values, positions, context);
      INFO("bad row ", bad, " value ", double(bad_value));
      double worst = 0;
      for (Index r = 0; r < bad; ++r)
        for (Index c = 0; c < context.cols(); ++c)
          worst = testing::worse(worst, std::fabs(double(context(r, c)) - double(expected(r, c))) /
                                      std::max(1.0, std::fabs(double(expected(r, c)))));
      CHECK(context.topRows(bad).allFinite());
      CHECK(worst <= tolerance);
      CHECK_FALSE(context.row(bad).allFinite());  // the bad key's own query sees it
    }
  }
}

TEST_CASE_TEMPLATE("Sequences of one batch never influence each other", T, float, double) {
  const AttentionConfig config{12, 4, 2, 6, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(config, 31);
  const RoutedBatch<T> batch({7, 5, 0, 9}, config.d_model, 32);
  const RowMatrix<T> out = run_attention(attention, batch);

  RoutedBatch<T> edited = batch;  // replace sequence 1 entirely
  edited.x.middleRows(7, 5) = random_matrix<T>(5, config.d_model, 33);
  const RowMatrix<T> after = run_attention(attention, edited);
  CHECK(testing::bit_equal(after.topRows(7), out.topRows(7)));
  CHECK(testing::bit_equal(after.bottomRows(9), out.bottomRows(9)));
  CHECK_FALSE(testing::bit_equal(after.middleRows(7, 5), out.middleRows(7, 5)));

  // Each sequence run alone gives its rows of the batch (blocking may reorder sums).
  for (std::size_t b = 0; b < 4; ++b) {
    const Index first = batch.offsets[b], count = batch.offsets[b + 1] - first;
    const RowMatrix<T> rows = batch.x.middleRows(first, count);
    const std::vector<Position> at(batch.positions.begin() + first,
                                   batch.positions.begin() + first + count);
    const std::vector<Index> offsets{0, count};
    RowMatrix<T> alone(count, config.d_model);
    attention(Routed<T>{rows, at, offsets, nullptr}, alone);
    CHECK(relative_difference(alone, widen(RowMatrix<T>(out.middleRows(first, count)))) <=
          tolerance<T>());
  }
}

TEST_CASE("Attention rejects bad configs, weights and routed input, naming the argument") {
  const AttentionConfig config{16, 4, 2, 8, 10000.0, 1e-6};
  auto config_error = [](AttentionConfig c) {
    return error_message([&] { Attention<float>::random(c, 1); });
  };
  require_mentions(config_error({16, 4, 3, 8}), {"config.n_heads", "multiple of config.n_kv_heads (3)", "got 4"});
  require_mentions(config_error({16, 4, 2, 7}), {"config.head_dim", "even", "got 7"});
  require_mentions(config_error({16, 4, 0, 8}), {"config.n_kv_heads", ">= 1"});
  require_mentions(config_error({16, 4, 2, 8, -1.0}), {"config.rope_theta"});
  // norm_eps is checked in the layer's type: 1e300 is inf in float, 1e-50 is 0.
  for (const double eps : {0.0, -1e-6, 1e300, 1e-50, std::numeric_limits<double>::infinity()})
    require_mentions(config_error({16, 4, 2, 8, 10000.0, eps}), {"Attention", "config.norm_eps", "finite and > 0"});
  CHECK_NOTHROW(Attention<double>::random({16, 4, 2, 8, 10000.0, 1e-50}, 1));

  const auto good = Attention<float>::random(config, 1).weights();
  auto with = [&](auto change) {
    AttentionWeights<float> w = good;
    change(w);
    return error_message([&] { Attention<float>(config, w); });
  };
  require_mentions(with([](auto& w) { w.query.resize(16, 30); }),
                   {"Attention", "weights.query.cols()",
                    "expected 32 (config.n_heads * config.head_dim)", "got 30"});
  require_mentions(with([](auto& w) { w.key.resize(16, 32); }),
                   {"weights.key.cols()", "expected 16 (config.n_kv_heads * config.head_dim)", "got 32"});
  require_mentions(with([](auto& w) { w.value.resize(15, 16); }),
                   {"weights.value.rows()", "expected 16 (config.d_model)", "got 15"});
  require_mentions(with([](auto& w) { w.output.resize(16, 16); }),
                   {"weights.output.rows()", "expected 32", "got 16"});
  require_mentions(with([](auto& w) { w.norm.resize(8); }), {"weights.norm.size()", "got 8"});

  const Attention<float> attention(config, good);
  const RoutedBatch<float> batch({3, 2}, 16, 2);
  RowMatrix<float> out(5, 16);
  auto routed_error = [&](std::vector<Position> positions, std::vector<Index> offsets) {
    return error_message([&] { attention(Routed<float>{batch.x, positions, offsets, nullptr}, out); });
  };
  require_mentions(routed_error({0, 1, 2, 0}, {0, 3, 5}), {"in.positions.size()", "expected 5", "got 4"});
  require_mentions(routed_error({0, 1, 2, 0, 1}, {0, 3, 4}), {"in.offsets.back()", "expected 5", "got 4"});
  require_mentions(routed_error({0, 1, 2, 0, 1}, {1, 3, 5}), {"in.offsets[0]", "expected 0", "got 1"});
  require_mentions(routed_error({0, 2, 1, 0, 1}, {0, 3, 5}), {"in.positions[2]", ">= 2", "got 1"});
  RowMatrix<float> narrow(5, 15);
  require_mentions(error_message([&] { attention(batch.view(), narrow); }),
                   {"out.cols()", "expected 16", "got 15"});

  // Nothing was written before a check failed.
  out.setConstant(7.0f);
  (void)routed_error({0, 1, 2, 0}, {0, 3, 5});
  CHECK((out.array() == 7.0f).all());

  RowMatrix<float> queries(2, 32), keys(3, 16), values(3, 16), context(2, 32);
  const std::vector<Position> query_at{0, 1}, unsorted{2, 0, 1};
  require_mentions(error_message([&] {
                     attention.attend(queries, query_at, keys, values, unsorted, context);
                   }),
                   {"Attention::attend", "key_positions[1]"});
  const std::vector<Position> sorted{0, 1, 2};
  RowMatrix<float> by_feature(16, 3), wrong_rows(15, 3);
  context.setConstant(7.0f);
  require_mentions(error_message([&] {
                     attention.attend_by_feature(queries, query_at, wrong_rows, values, sorted, context);
                   }),
                   {"Attention::attend_by_feature", "keys_by_feature.rows()", "expected 16", "got 15"});
  require_mentions(error_message([&] {
                     attention.attend_by_feature(queries, query_at, by_feature, values.topRows(2), sorted, context);
                   }),
                   {"values.rows()", "expected 3", "got 2"});
  const Eigen::Map<const RowMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>> crowded(
      by_feature.data(), 16, 3, Eigen::OuterStride<>(2));
  require_mentions(error_message([&] {
                     attention.attend_by_feature(queries, query_at, crowded, values, sorted, context);
                   }),
                   {"keys_by_feature.outerStride()", ">= keys_by_feature.cols() (3)", "got 2"});
  require_mentions(error_message([&] {
                     attention.attend_by_feature(queries, query_at, by_feature, values, unsorted, context);
                   }),
                   {"Attention::attend_by_feature", "key_positions[1]"});
  RowMatrix<float> shared(32, 3);
  require_mentions(error_message([&] {
                     attention.attend_by_feature(queries, query_at, shared.topRows(16), values, sorted,
                                                 Eigen::Map<RowMatrix<float>>(shared.data(), 2, 32));
                   }),
                   {"context", "memory disjoint", "overlapping"});
  CHECK((context.array() == 7.0f).all());  // nothing written before a check failed

  // context may be the queries themselves, but not a shifted view of their memory: writing
  // one head's context would overwrite queries not yet scored.
  RowMatrix<float> wide = RowMatrix<float>::Constant(2, 40, 7.0f);
  const RowMatrix<float> wide_before = wide;
  require_mentions(error_message([&] {
                     attention.attend(wide.leftCols(32), query_at, keys, values, sorted, wide.rightCols(32));
                   }),
                   {"Attention::attend", "context", "queries itself or memory disjoint from it", "a partial overlap"});
  require_mentions(error_message([&] {
                     attention.attend_by_feature(wide.leftCols(32), query_at, by_feature, values, sorted,
                                                 wide.rightCols(32));
                   }),
                   {"Attention::attend_by_feature", "context", "queries itself", "a partial overlap"});
  CHECK(testing::bit_equal(wide, wide_before));
  keys = random_matrix<float>(3, 16, 7);  // (the checks above never read them)
  values = random_matrix<float>(3, 16, 8);
  RowMatrix<float> in_place = random_matrix<float>(2, 32, 5), apart(2, 32);
  const RowMatrix<float> in_place_queries = in_place;
  attention.attend(in_place_queries, query_at, keys, values, sorted, apart);
  attention.attend(in_place, query_at, keys, values, sorted, in_place);  // the same view: allowed
  CHECK(testing::bit_equal(in_place, apart));

  // project's three outputs must be apart (keys written over queries would be rotated twice).
  const RowMatrix<float> x3 = random_matrix<float>(3, 16, 6);
  const std::vector<Position> at3{0, 1, 2};
  RowMatrix<float> q3 = RowMatrix<float>::Constant(3, 32, 7.0f), k3 = RowMatrix<float>::Constant(3, 16, 7.0f),
                   v3 = RowMatrix<float>::Constant(3, 16, 7.0f);
  require_mentions(error_message([&] { attention.project(x3, at3, q3, q3.leftCols(16), v3); }),
                   {"Attention::project", "keys", "memory disjoint from queries", "overlapping"});
  require_mentions(error_message([&] { attention.project(x3, at3, q3, k3, q3.rightCols(16)); }),
                   {"values", "memory disjoint from queries", "overlapping"});
  require_mentions(error_message([&] { attention.project(x3, at3, q3, k3, k3); }),
                   {"values", "memory disjoint from keys", "overlapping"});
  CHECK(((q3.array() == 7.0f).all() && (k3.array() == 7.0f).all() && (v3.array() == 7.0f).all()));
}

TEST_CASE("sequential() rejects an MLP narrower than its attention before any forward") {
  // Before the check, the MLP's own check fired after the attention had written `out` and
  // appended to its cache.
  const auto attention = Attention<float>::random({16, 4, 2, 8}, 1);
  const auto narrow_mlp = SwiGluMlp<float>::random({8, 16}, 2);
  require_mentions(error_message([&] { (void)sequential(attention, narrow_mlp); }),
                   {"sequential", "mlp.dim()", "expected 16", "got 8"});
  KvCache<float> cache(1, attention.config().kv_width(), 4);
  require_mentions(error_message([&] { (void)sequential(layers::CachedAttention<float>(attention, cache), narrow_mlp); }),
                   {"mlp.dim()", "expected 16", "got 8"});
  const auto mlp = SwiGluMlp<float>::random({16, 32}, 3);
  CHECK(sequential(attention, mlp).mlp().config().d_model == 16);  // equal widths build
}

TEST_CASE_TEMPLATE("Plain-rows overloads equal one routed sequence at positions 0..n-1", T, float,
                   double) {
  const AttentionConfig config{12, 4, 2, 6, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(config, 41);
  const RowMatrix<T> x = random_matrix<T>(67, 12, 42);
  std::vector<Position> positions(67);
  std::iota(positions.begin(), positions.end(), Position{0});
  const std::vector<Index> offsets{0, 67};
  RowMatrix<T> dense(67, 12), routed(67, 12);
  attention(x, dense);
  attention(Routed<T>{x, positions, offsets, nullptr}, routed);
  CHECK(testing::bit_equal(dense, routed));
  CHECK(relative_difference(dense, reference_attention(attention, widen(x), positions, offsets)) <=
        tolerance<T>());
}

TEST_CASE_TEMPLATE("project, attend and project_output reproduce a forward and decode over a "
                   "cache that skipped tokens", T, float, double) {
  const AttentionConfig config{16, 4, 2, 4, 10000.0, 1e-6};
  const Index q_width = config.query_width(), kv_width = config.kv_width();
  const auto attention = Attention<T>::random(config, 51);
  // The tokens a MoD block kept, at their original positions.
  const RowMatrix<T> x = random_matrix<T>(6, 16, 52);
  const std::vector<Position> positions{1, 2, 5, 9, 10, 14};
  const std::vector<Index> offsets{0, 6};
  RowMatrix<T> full(6, 16);
  attention(Routed<T>{x, positions, offsets, nullptr}, full);

  // Fill a "cache" with the first five tokens, then decode the sixth alone.
  RowMatrix<T> queries(5, q_width), keys(6, kv_width), values(6, kv_width);
  const std::span<const Position> cached(positions.data(), 5);
  attention.project(x.topRows(5), cached, queries, keys.topRows(5), values.topRows(5));
  RowMatrix<T> new_query(1, q_width), context(1, q_width), step(1, 16);
  const std::span<const Position> newest(positions.data() + 5, 1);
  attention.project(x.bottomRows(1), newest, new_query, keys.bottomRows(1), values.bottomRows(1));
  attention.attend(new_query, newest, keys, values, positions, context);
  attention.project_output(context, step);
  CHECK(testing::bit_equal(step, full.bottomRows(1)));  // the same bits as inside the forward

  // A query placed before every cached key sees nothing and gets a zero context; one placed
  // between keys sees exactly the earlier ones.
  const std::vector<Position> before{0};
  attention.attend(new_query, before, keys, values, positions, context);
  CHECK(context.isZero(0));
  const std::vector<Position> between{9};
  RowMatrix<T> context_between(1, q_width), context_prefix(1, q_width);
  attention.attend(new_query, between, keys, values, positions, context_between);
  const std::span<const Position> first_four(positions.data(), 4);
  attention.attend(new_query, between, keys.topRows(4), values.topRows(4), first_four, context_prefix);
  CHECK(testing::bit_equal(context_between, context_prefix));

  // The keys given by feature (as KvCache holds them), rows padded apart: the same bits.
  RowMatrix<T> padded = RowMatrix<T>::Constant(kv_width, 9, T(1e30));
  padded.leftCols(6) = keys.transpose();
  const Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>> by_feature(
      padded.data(), kv_width, 6, Eigen::OuterStride<>(9));
  RowMatrix<T> context_by_feature(1, q_width);
  attention.attend_by_feature(new_query, newest, by_feature, values, positions, context_by_feature);
  attention.attend(new_query, newest, keys, values, positions, context);
  CHECK(testing::bit_equal(context_by_feature, context));
  attention.attend_by_feature(new_query, between, by_feature, values, positions, context_by_feature);
  CHECK(testing::bit_equal(context_by_feature, context_between));
}

TEST_CASE_TEMPLATE("attend: a query alone (its KV head's query heads scored together) gets the "
                   "bits it gets inside a block of queries", T, float, double) {
  // A block of several queries scores head by head; one query alone scores each KV head's
  // group of query heads as the rows of one product. Groups of 1 to 72 query heads (one
  // tile strip of 6 rows, several, and more than a query block's 64 rows), head widths of a
  // whole AVX-512 panel and less, key counts across vector, panel (64 floats), depth-block
  // (512) and column-block (1536) boundaries, queries that see every key and queries that
  // see only a prefix.
  struct Case {
    Index heads, kv_heads, head_dim;
  };
  std::uint64_t seed = 900;
  for (const Case c : {Case{8, 2, 64}, Case{8, 1, 16}, Case{6, 3, 8}, Case{4, 4, 64}, Case{16, 2, 64}, Case{72, 1, 2}})
    for (const Index n_keys : {Index(1), Index(17), Index(64), Index(130), Index(1100), Index(1600)}) {
      CAPTURE(c.heads);
      CAPTURE(c.kv_heads);
      CAPTURE(c.head_dim);
      CAPTURE(n_keys);
      const AttentionConfig config{8, c.heads, c.kv_heads, c.head_dim, 10000.0, 1e-6};
      const auto attention = Attention<T>::random(config, ++seed);
      const Index q_width = config.query_width(), kv_width = config.kv_width();
      const RowMatrix<T> keys = random_matrix<T>(n_keys, kv_width, ++seed);
      const RowMatrix<T> values = random_matrix<T>(n_keys, kv_width, ++seed);
      std::vector<Position> key_at(static_cast<std::size_t>(n_keys));
      for (Index j = 0; j < n_keys; ++j) key_at[std::size_t(j)] = Position(2 * j);
      // Query 2 sees no key; query 3 the first key only; query 4 about half of them; query 5
      // all but the last.
      const std::vector<Position> query_at{Position(2 * n_keys), Position(2 * n_keys + 5), Position(0) - 1, 0,
                                           Position(n_keys), Position(2 * n_keys - 3)};
      const Index n_queries = Index(query_at.size());
      const RowMatrix<T> queries = random_matrix<T>(n_queries, q_width, ++seed);
      RowMatrix<T> together(n_queries, q_width);
      attention.attend(queries, query_at, keys, values, key_at, together);
      RowMatrix<T> by_feature = keys.transpose();
      for (Index r = 0; r < n_queries; ++r) {
        CAPTURE(r);
        const std::span<const Position> at(query_at.data() + r, 1);
        RowMatrix<T> alone(1, q_width), alone_by_feature(1, q_width);
        attention.attend(queries.row(r), at, keys, values, key_at, alone);
        CHECK(testing::bit_equal(alone, together.row(r)));
        attention.attend_by_feature(queries.row(r), at, by_feature, values, key_at, alone_by_feature);
        CHECK(testing::bit_equal(alone_by_feature, together.row(r)));
      }
      CHECK(together.row(2).isZero(0));
      // Context in place of the queries, as the layer's forward has it.
      RowMatrix<T> in_place = queries.row(0);
      attention.attend(in_place, std::span<const Position>(query_at.data(), 1), keys, values, key_at, in_place);
      CHECK(testing::bit_equal(in_place, together.row(0)));
      // 65 queries: a block of 64, then a block of one (scored by group) in the same call.
      if (n_keys == 130) {
        std::vector<Position> many_at(65);
        for (std::size_t r = 0; r < many_at.size(); ++r) many_at[r] = Position(4 * r) - 3;
        const RowMatrix<T> many = random_matrix<T>(65, q_width, ++seed);
        RowMatrix<T> many_context(65, q_width), alone(1, q_width);
        attention.attend(many, many_at, keys, values, key_at, many_context);
        for (const Index r : {Index(0), Index(1), Index(40), Index(63), Index(64)}) {
          CAPTURE(r);
          attention.attend(many.row(r), std::span<const Position>(many_at.data() + r, 1), keys, values, key_at, alone);
          CHECK(testing::bit_equal(alone, many_context.row(r)));
        }
      }
    }
}

TEST_CASE_TEMPLATE("CachedAttention over an empty cache equals Attention bit for bit, in one "
                   "prefill or in chunks, for several KV head counts", T, float, double) {
  // Over 64 queries (more than one query block) and longer than a cache line of tokens, so
  // the cache's appends by feature run several lines; batch 2 with interleaved positions.
  const Index n = 150, batch = 2, chunk = 37;
  for (Index kv_heads : {1, 2, 6}) {
    CAPTURE(kv_heads);
    const AttentionConfig config{24, 6, kv_heads, 4, 10000.0, 1e-6};
    const auto attention = Attention<T>::random(config, 71 + std::uint64_t(kv_heads));
    const RowMatrix<T> x = random_matrix<T>(batch * n, 24, 72);
    std::vector<Position> positions;
    for (Index b = 0; b < batch; ++b)
      for (Index i = 0; i < n; ++i) positions.push_back(Position(3 * i + b));
    const std::vector<Index> offsets{0, n, 2 * n};
    RowMatrix<T> want(batch * n, 24);
    attention(Routed<T>{x, positions, offsets, nullptr}, want);

    KvCache<T> whole_cache(batch, config.kv_width(), n);
    RowMatrix<T> whole(batch * n, 24);
    layers::CachedAttention<T>(attention, whole_cache)(Routed<T>{x, positions, offsets, nullptr}, whole);
    CHECK(testing::bit_equal(whole, want));

    KvCache<T> chunk_cache(batch, config.kv_width(), n);
    const layers::CachedAttention<T> chunked(attention, chunk_cache);
    RowMatrix<T> pieces(batch * n, 24);
    for (Index first = 0; first < n; first += chunk) {
      const Index count = std::min(chunk, n - first);
      RowMatrix<T> xs(batch * count, 24), ys(batch * count, 24);
      std::vector<Position> ps;
      for (Index b = 0; b < batch; ++b) {
        xs.middleRows(b * count, count) = x.middleRows(b * n + first, count);
        ps.insert(ps.end(), positions.begin() + b * n + first, positions.begin() + b * n + first + count);
      }
      const std::vector<Index> chunk_offsets{0, count, 2 * count};
      chunked(Routed<T>{xs, ps, chunk_offsets, nullptr}, ys);
      for (Index b = 0; b < batch; ++b) pieces.middleRows(b * n + first, count) = ys.middleRows(b * count, count);
    }
    CHECK(testing::bit_equal(pieces, want));
  }
}

TEST_CASE_TEMPLATE("Block(router, capacity, sequential(attention, mlp)) computes Eq. 1", T, float,
                   double) {
  const Index d = 16;
  const Shape shape{3, 12};
  const std::vector<Index> lengths{12, 5, 0};  // padding in sequence 1, nothing valid in 2
  const AttentionConfig attention_config{d, 4, 2, 4, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(attention_config, 61);
  const auto mlp = SwiGluMlp<T>::random({d, 40, 1e-6}, 62);
  const Vector<T> router_weight = random_vector<T>(d, 63);
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 64);

  for (Gate gate : {Gate::identity, Gate::sigmoid}) {
    Block<T, decltype(sequential(attention, mlp))> block(
        Router<T>(router_weight, T(0.25)), Capacity::fraction(0.5), sequential(attention, mlp), gate);
    const Index k = 6;
    Workspace<T> workspace;
    RowMatrix<T> y(shape.rows(), d);
    block.forward(x, shape, y, workspace, lengths);

    // Eq. 1 by hand: top-k per sequence in double, padding last, ties to the lower position.
    const Reference wide_x = widen(x);
    const Vector<double> logits = wide_x * widen(router_weight) + Vector<double>::Constant(x.rows(), 0.25);
    std::vector<Position> rows, positions;
    std::vector<Index> offsets{0};
    for (Index b = 0; b < shape.batch; ++b) {
      std::vector<Position> order(std::size_t(shape.seq_len));
      std::iota(order.begin(), order.end(), Position{0});
      std::stable_sort(order.begin(), order.end(), [&](Position i, Position j) {
        const bool pad_i = i >= lengths[std::size_t(b)], pad_j = j >= lengths[std::size_t(b)];
        if (pad_i != pad_j) return pad_j;
        return logits[b * shape.seq_len + i] > logits[b * shape.seq_len + j];
      });
      std::vector<Position> kept;
      for (Index j = 0; j < k; ++j)
        if (order[std::size_t(j)] < lengths[std::size_t(b)]) kept.push_back(order[std::size_t(j)]);
      std::sort(kept.begin(), kept.end());
      for (Position p : kept) {
        rows.push_back(static_cast<Position>(b * shape.seq_len + p));
        positions.push_back(p);
      }
      offsets.push_back(static_cast<Index>(rows.size()));
    }
    REQUIRE(std::vector<Position>(workspace.routed_rows().begin(), workspace.routed_rows().end()) == rows);

    Reference routed(static_cast<Index>(rows.size()), d);
    for (std::size_t j = 0; j < rows.size(); ++j) routed.row(Index(j)) = wide_x.row(rows[j]);
    const Reference a = reference_attention(attention, routed, positions, offsets);
    const Reference update = a + reference_mlp(mlp, Reference(routed + a));
    Reference expected = wide_x;
    for (std::size_t j = 0; j < rows.size(); ++j) {
      const double r = logits[rows[j]];
      const double g = gate == Gate::identity ? r : 1.0 / (1.0 + std::exp(-r));
      expected.row(rows[j]) += g * update.row(Index(j));
    }
    INFO("gate ", std::string(gate == Gate::identity ? "identity" : "sigmoid"));
    CHECK(relative_difference(y, expected) <= tolerance<T>());
    // Rows that were not routed come through bit for bit.
    for (Index r = 0; r < x.rows(); ++r)
      if (std::find(rows.begin(), rows.end(), Position(r)) == rows.end())
        CHECK(testing::rows_bit_equal(y, r, x, r));

    // A const block, a reused workspace and the in-place entry point agree.
    const auto& const_block = block;
    RowMatrix<T> again(shape.rows(), d);
    const_block.forward(x, shape, again, workspace, lengths);
    CHECK(testing::bit_equal(again, y));
    RowMatrix<T> in_place = x;
    block.forward_inplace(in_place, shape, workspace, lengths);
    CHECK(testing::bit_equal(in_place, y));
  }
}

TEST_CASE_TEMPLATE("Layers take scratch from the arena, give it back, and stop growing it", T,
                   float, double) {
  const AttentionConfig config{16, 4, 2, 4, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(config, 71);
  const auto mlp = SwiGluMlp<T>::random({16, 48, 1e-6}, 72);
  const auto both = sequential(attention, mlp);
  const RoutedBatch<T> batch({80, 0, 13}, 16, 73);
  RowMatrix<T> out(batch.rows(), 16), own_arena_out(batch.rows(), 16);

  Arena<T> arena;
  both(batch.view(&arena), out);
  arena.reset();  // joins the chunks the first call grew into one
  const Index grown = arena.capacity();
  CHECK(grown > 0);
  const auto start = arena.mark();
  const T* first_free = arena.take(1).data();
  arena.rewind(start);
  for (int repeat = 0; repeat < 3; ++repeat) {
    both(batch.view(&arena), out);
    CHECK(arena.capacity() == grown);
    // Everything taken during the call was given back: the next take starts where it did.
    const auto mark = arena.mark();
    CHECK(arena.take(1).data() == first_free);
    arena.rewind(mark);
  }
  both(batch.view(nullptr), own_arena_out);  // a null arena: the layer brings its own
  CHECK(testing::bit_equal(out, own_arena_out));

  // Through a Block, the workspace's arena stops growing after the first forward.
  Block<T, decltype(both)> block(Router<T>(random_vector<T>(16, 74)), Capacity::fraction(0.25), both);
  Workspace<T> workspace;
  const RowMatrix<T> x = random_matrix<T>(4 * 32, 16, 75);
  RowMatrix<T> y(x.rows(), 16);
  block.forward(x, {4, 32}, y, workspace);
  const Index block_grown = workspace.arena().capacity();
  for (int repeat = 0; repeat < 3; ++repeat) {
    block.forward(x, {4, 32}, y, workspace);
    CHECK(workspace.arena().capacity() == block_grown);
  }
}

#ifdef EIGEN_RUNTIME_NO_MALLOC
// Every malloc is counted (heap_counter; not under ASan, which owns malloc), and Eigen's own
// are also refused by set_is_malloc_allowed(false) in builds with assertions on; the arena
// check holds in every build. test_zero_alloc.cpp does the same at real sizes.
TEST_CASE_TEMPLATE("After a warm-up call the layers allocate nothing (small shapes)", T, float,
                   double) {
  const AttentionConfig config{32, 4, 2, 8, 10000.0, 1e-6};
  const auto attention = Attention<T>::random(config, 101);
  const auto both = sequential(attention, SwiGluMlp<T>::random({32, 64, 1e-6}, 102));
  const RoutedBatch<T> batch({96, 0, 17}, 32, 103);
  RowMatrix<T> out(batch.rows(), 32), dense_out(96, 32);
  RowMatrix<T> queries(1, 32), keys(1, 16), values(1, 16), context(1, 32), step(1, 32);
  const std::vector<Position> at{5};
  Arena<T> arena;
  auto calls = [&] {
    both(batch.view(&arena), out);
    attention(batch.x.topRows(96), dense_out, &arena);
    attention.project(batch.x.topRows(1), at, queries, keys, values, &arena);
    attention.attend(queries, at, keys, values, at, context, &arena);
    attention.project_output(context, step, &arena);
  };
  calls();
  attention.project_output(context, step);  // no arena: a local one, which allocates
  arena.reset();
  const Index grown = arena.capacity();
  const long heap_before = heap_counter::count();  // every malloc, where active (not under ASan)
  Eigen::internal::set_is_malloc_allowed(false);
  calls();
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(heap_counter::count() - heap_before == 0);
  CHECK(arena.capacity() == grown);
}
#endif

TEST_CASE("A const layer is safe to call from several threads at once") {
  const AttentionConfig config{32, 8, 2, 4, 10000.0, 1e-6};
  const auto both = sequential(Attention<float>::random(config, 81),
                               SwiGluMlp<float>::random({32, 64, 1e-6}, 82));
  const RoutedBatch<float> batch({40, 25, 0, 33}, 32, 83);
  RowMatrix<float> serial(batch.rows(), 32);
  both(batch.view(), serial);

  std::vector<RowMatrix<float>> results(2, RowMatrix<float>(batch.rows(), 32));
  std::vector<int> mismatches(2, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      Arena<float> arena;
      for (int repeat = 0; repeat < 20; ++repeat) {
        both(batch.view(&arena), results[t]);
        if (!testing::bit_equal(results[t], serial)) ++mismatches[t];
      }
    });
  for (auto& thread : threads) thread.join();
  CHECK(mismatches[0] == 0);
  CHECK(mismatches[1] == 0);
}

TEST_CASE("random() is deterministic per seed and scaled by 1/sqrt(fan_in)") {
  const AttentionConfig config{64, 8, 4, 16, 10000.0, 1e-6};
  const auto a = Attention<double>::random(config, 91);
  const auto b = Attention<double>::random(config, 91);
  const auto c = Attention<double>::random(config, 92);
  CHECK(testing::bit_equal(a.weights().query, b.weights().query));
  CHECK(testing::bit_equal(a.weights().output, b.weights().output));
  CHECK_FALSE(testing::bit_equal(a.weights().query, c.weights().query));

  auto standard_deviation = [](const RowMatrix<double>& m) {
    const double mean = m.mean();
    return std::sqrt((m.array() - mean).square().sum() / static_cast<double>(m.size()));
  };
  // fan_in 64 for query, key and value; 8 * 16 = 128 for the output projection.
  CHECK(standard_deviation(a.weights().query) == doctest::Approx(1.0 / 8.0).epsilon(0.05));
  CHECK(standard_deviation(a.weights().key) == doctest::Approx(1.0 / 8.0).epsilon(0.05));
  CHECK(standard_deviation(a.weights().output) == doctest::Approx(1.0 / std::sqrt(128.0)).epsilon(0.05));
  CHECK(a.weights().norm.mean() == doctest::Approx(1.0).epsilon(0.05));
  CHECK(a.weights().norm.minCoeff() != a.weights().norm.maxCoeff());

  const auto mlp = SwiGluMlp<float>::random({64, 256, 1e-6}, 93);
  CHECK(testing::bit_equal(mlp.weights().gate, SwiGluMlp<float>::random({64, 256, 1e-6}, 93).weights().gate));
  const RowMatrix<double> down = mlp.weights().down.cast<double>();
  CHECK(standard_deviation(down) == doctest::Approx(1.0 / 16.0).epsilon(0.05));
  // Centred: |mean| within 4 standard errors of 0.
  auto centred = [](const RowMatrix<double>& m, double sigma) {
    return std::fabs(m.mean()) < 4.0 * sigma / std::sqrt(static_cast<double>(m.size()));
  };
  CHECK(centred(a.weights().query, 1.0 / 8.0));
  CHECK(centred(a.weights().output, 1.0 / std::sqrt(128.0)));
  CHECK(centred(down, 1.0 / 16.0));
}

TEST_CASE("RMSNorm::random's weight is 1 + 0.1 N(0, 1), each a single rounding of the seed's draw") {
  const Index dim = 20000;
  const Vector<double> w = RMSNorm<double>::random(dim, 5).weight();
  NormalSource normal(5);
  Index differ = 0;
  // std::fma: one rounding, in every build (a plain 1 + 0.1 x was fused into an FMA or not
  // depending on the target and the contraction flags: 5% of these differed).
  for (Index i = 0; i < dim; ++i) differ += w[i] != std::fma(0.1, normal(), 1.0);
  CHECK(differ == 0);
  const double mean = w.mean();
  const double spread = std::sqrt((w.array() - mean).square().sum() / double(dim));
  CHECK(std::fabs(mean - 1.0) < 4.0 * 0.1 / std::sqrt(double(dim)));
  CHECK(spread == doctest::Approx(0.1).epsilon(0.03));
  const Vector<float> wf = RMSNorm<float>::random(dim, 5).weight();
  CHECK(testing::bit_equal(wf, Vector<float>(w.cast<float>())));
  testing::require_mentions(testing::error_message([] { RMSNorm<float>::random(-3, 1); }), {"RMSNorm::random", "dim", ">= 1", "-3"});
  testing::require_mentions(testing::error_message([] { RMSNorm<float>::random(0, 1); }), {"RMSNorm::random", "dim", ">= 1", "0"});
}
