// The MoD-aware KV cache, CachedAttention and Decoder: the stack against one assembled from
// scalar-loop reference layers; decoding step by step equals the causal forward over whole
// sequences, bit for bit; skipped tokens never enter a layer's cache.
#include "brute_force_top_k.hpp"
#include "reference_layers.hpp"
#include "test_helpers.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

using namespace mixdepth;
using namespace mixdepth::testing;
using layers::Decoder;
using layers::Routing;

namespace {

layers::DecoderConfig small_config(double capacity = 0.25) {
  layers::DecoderConfig c;
  c.layers = 4;
  c.attention = {.d_model = 32, .n_heads = 4, .n_kv_heads = 2, .head_dim = 8};
  c.mlp = {.d_model = 32, .hidden = 64};
  c.capacity = capacity;
  c.predictor_hidden = 16;
  return c;
}

// Decodes x ([batch * seq_len, d]) with a prefill of `prompt` tokens and steps for the rest;
// returns the last layer's output for every token in the layout of x.
template <class T>
RowMatrix<T> decode(Decoder<T>& decoder, const RowMatrix<T>& x, Shape shape, Index prompt, Routing routing) {
  const Index d = x.cols();
  RowMatrix<T> out(shape.rows(), d);
  RowMatrix<T> prompt_x(shape.batch * prompt, d), prompt_y(shape.batch * prompt, d);
  for (Index b = 0; b < shape.batch; ++b) prompt_x.middleRows(b * prompt, prompt) = x.middleRows(b * shape.seq_len, prompt);
  decoder.prefill(prompt_x, {shape.batch, prompt}, prompt_y, routing);
  for (Index b = 0; b < shape.batch; ++b) out.middleRows(b * shape.seq_len, prompt) = prompt_y.middleRows(b * prompt, prompt);
  RowMatrix<T> token(shape.batch, d), y(shape.batch, d);
  for (Index t = prompt; t < shape.seq_len; ++t) {
    for (Index b = 0; b < shape.batch; ++b) token.row(b) = x.row(b * shape.seq_len + t);
    decoder.step(token, y, routing);
    for (Index b = 0; b < shape.batch; ++b) out.row(b * shape.seq_len + t) = y.row(b);
  }
  return out;
}

// One sequence (rows of `x`, at positions 0..n-1) through the decoder's layers, assembled
// from the scalar-loop references with the decoder's weights: a dense layer is x + f(x); a
// MoD layer scores every row with its router (in double), lets `route(logits)` pick the rows
// f runs on, at their original positions, and adds g(r) f to those rows only (g: identity).
template <class Route>
reference::Reference reference_stack(const Decoder<double>& decoder, reference::Reference x, Route route) {
  using reference::Reference;
  for (Index l = 0; l < decoder.layers(); ++l) {
    const std::size_t n = std::size_t(x.rows());
    std::vector<double> logits(n, 1.0);
    std::vector<bool> routed(n, true);
    if (decoder.is_routed(l)) {
      const Router<double>& router = decoder.router(l);
      for (std::size_t i = 0; i < n; ++i) {
        double r = router.bias();
        for (Index c = 0; c < x.cols(); ++c) r += x(Index(i), c) * router.weight()(c);
        logits[i] = r;
      }
      routed = route(logits);
    }
    std::vector<Position> positions;
    for (std::size_t i = 0; i < n; ++i)
      if (routed[i]) positions.push_back(Position(i));
    Reference chosen(Index(positions.size()), x.cols());
    for (std::size_t j = 0; j < positions.size(); ++j) chosen.row(Index(j)) = x.row(positions[j]);
    const std::vector<Index> offsets{0, Index(positions.size())};
    const Reference a = reference::reference_attention(decoder.attention(l), chosen, positions, offsets);
    const Reference f = a + reference::reference_mlp(decoder.mlp(l), Reference(chosen + a));
    for (std::size_t j = 0; j < positions.size(); ++j)
      x.row(positions[j]) += (decoder.is_routed(l) ? logits[std::size_t(positions[j])] : 1.0) * f.row(Index(j));
  }
  return x;
}

}  // namespace

TEST_CASE("decoder: outputs equal a stack of scalar-loop reference layers, forward, prefill and steps") {
  // Top-k over padded sequences (k from the padded length, padding never routed); a prompt
  // routed by top-k, then tokens routed one by one by the router's logit; GQA and MQA; every
  // layer MoD or every other one; a capacity that skips tokens and one that keeps them all.
  const Index d = 16;
  long routed = 0, visits = 0;
  for (const double capacity : {0.34, 1.0})
    for (const Index mod_every : {1, 2})
      for (const Index kv_heads : {2, 1}) {
        layers::DecoderConfig config;
        config.layers = 4;
        config.attention = {.d_model = d, .n_heads = 4, .n_kv_heads = kv_heads, .head_dim = 6};
        config.mlp = {.d_model = d, .hidden = 20};
        config.capacity = capacity;
        config.mod_every = mod_every;
        config.predictor_hidden = 8;
        Decoder<double> decoder(config, 5);
        INFO("capacity ", capacity, ", mod_every ", mod_every, ", kv_heads ", kv_heads);
        const auto top_k = [](Index k) {
          return [k](const std::vector<double>& logits) {
            std::vector<bool> chosen(logits.size(), false);
            for (const auto p : kernels_testing::brute_force_top_k(logits, k, Index(logits.size())))
              chosen[std::size_t(p)] = true;
            return chosen;
          };
        };

        // The forward over a padded batch, top-k.
        const Shape shape{2, 8};
        const std::vector<Index> lengths{8, 4};  // k = 3 from the padded 8, 2 from 4 alone
        const RowMatrix<double> x = random_matrix<double>(shape.rows(), d, 21) * 2.0;
        RowMatrix<double> y(shape.rows(), d);
        decoder.forward(x, shape, y, Routing::top_k, lengths);
        const Index k = Capacity::fraction(capacity)(shape.seq_len);
        for (Index b = 0; b < shape.batch; ++b) {
          const Index first = b * shape.seq_len, n = lengths[std::size_t(b)];
          const auto expected = reference_stack(decoder, x.middleRows(first, n), top_k(std::min(k, n)));
          CHECK(reference::relative_difference(y.middleRows(first, n), expected) <= 1e-12);
          CHECK(bit_equal(y.middleRows(first + n, shape.seq_len - n), x.middleRows(first + n, shape.seq_len - n)));
        }

        // A prompt of 5 (lengths 5 and 2) routed by top-k, then 3 steps routed by r > 0.3.
        const Index prompt = 5, steps = 3;
        const double threshold = 0.3;
        const std::vector<Index> prompt_lengths{5, 2};
        for (Index l = 0; l < decoder.layers(); ++l) decoder.router_threshold(l).threshold = threshold;
        decoder.reset(shape.batch, 16, 16);
        RowMatrix<double> prompt_x(shape.batch * prompt, d), prompt_y(shape.batch * prompt, d);
        for (Index b = 0; b < shape.batch; ++b)
          prompt_x.middleRows(b * prompt, prompt) = x.middleRows(b * shape.seq_len, prompt);
        decoder.prefill(prompt_x, {shape.batch, prompt}, prompt_y, Routing::top_k, prompt_lengths);
        std::vector<RowMatrix<double>> step_y;
        for (Index s = 0; s < steps; ++s) {
          RowMatrix<double> token(shape.batch, d), out(shape.batch, d);
          for (Index b = 0; b < shape.batch; ++b) token.row(b) = x.row(b * shape.seq_len + prompt_lengths[std::size_t(b)] + s);
          decoder.step(token, out, Routing::router);
          step_y.push_back(out);
        }
        routed += decoder.routed_layer_routed();
        visits += decoder.routed_layer_visits();
        const Index prompt_k = Capacity::fraction(capacity)(prompt);  // from the padded prompt
        for (Index b = 0; b < shape.batch; ++b) {
          const Index n = prompt_lengths[std::size_t(b)];
          const auto expected = reference_stack(
              decoder, x.middleRows(b * shape.seq_len, n + steps), [&](const std::vector<double>& logits) {
                const std::vector<double> in_prompt(logits.begin(), logits.begin() + n);
                std::vector<bool> chosen = top_k(std::min(prompt_k, n))(in_prompt);
                for (std::size_t t = std::size_t(n); t < logits.size(); ++t) chosen.push_back(logits[t] > threshold);
                return chosen;
              });
          CHECK(reference::relative_difference(prompt_y.middleRows(b * prompt, n), expected.topRows(n)) <= 1e-12);
          CHECK(bit_equal(prompt_y.middleRows(b * prompt + n, prompt - n), prompt_x.middleRows(b * prompt + n, prompt - n)));
          for (Index s = 0; s < steps; ++s)
            CHECK(reference::relative_difference(step_y[std::size_t(s)].row(b), expected.row(n + s)) <= 1e-12);
        }
      }
  // The steps' causal rule both routed and skipped tokens over these cases.
  CHECK(routed > 0);
  CHECK(routed < visits);
}

TEST_CASE_TEMPLATE("decoder: decoding step by step gives the causal forward's bits, routing included", T, float,
                   double) {
  // Widths that are whole cache lines and widths that are not (rows then start at every
  // offset against a line), GQA and MQA, a prompt of one token and of several.
  struct Case {
    Index d, heads, kv_heads, hidden, predictor_hidden, batch, prompt;
  };
  for (const Case c : {Case{32, 4, 2, 64, 16, 2, 5}, Case{24, 4, 2, 50, 7, 3, 1}, Case{40, 4, 1, 70, 10, 1, 4}}) {
    layers::DecoderConfig config = small_config();
    config.attention = {.d_model = c.d, .n_heads = c.heads, .n_kv_heads = c.kv_heads, .head_dim = c.d / c.heads};
    config.mlp = {.d_model = c.d, .hidden = c.hidden};
    config.predictor_hidden = c.predictor_hidden;
    for (Routing routing : {Routing::router, Routing::predictor}) {
      Decoder<T> decoder(config, 42);
      const Shape shape{c.batch, 24};
      const RowMatrix<T> x = random_matrix<T>(shape.rows(), c.d, 7);
      RowMatrix<T> full(shape.rows(), c.d);
      decoder.forward(x, shape, full, routing);
      decoder.reset(shape.batch, shape.seq_len, shape.seq_len);
      const RowMatrix<T> stepped = decode(decoder, x, shape, c.prompt, routing);
      INFO("d ", c.d, ", routing ", int(routing));
      CHECK(bit_equal(stepped, full));
      CHECK(decoder.positions()[0] == 24);
      // some but not all tokens were routed through the MoD layers
      CHECK(decoder.routed_layer_routed() > 0);
      CHECK(decoder.routed_layer_routed() < decoder.routed_layer_visits());
      CHECK(decoder.routed_layer_visits() == 2 * (24 - c.prompt) * c.batch);  // 2 MoD layers
    }
  }
}

TEST_CASE("decoder: every token routed equals top-k at full capacity, none routed makes MoD layers the identity") {
  Decoder<float> decoder(small_config(1.0), 43);
  const Shape shape{2, 12};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 8);
  RowMatrix<float> dense(shape.rows(), 32);
  decoder.forward(x, shape, dense, Routing::top_k);
  for (Index l = 0; l < decoder.layers(); ++l) decoder.router_threshold(l).threshold = -std::numeric_limits<float>::infinity();
  decoder.reset(shape.batch, shape.seq_len, shape.seq_len);
  CHECK(bit_equal(decode(decoder, x, shape, 3, Routing::router), dense));
  for (Index l = 1; l < decoder.layers(); l += 2) CHECK(decoder.cache(l).tokens() == shape.rows());

  for (Index l = 0; l < decoder.layers(); ++l) decoder.router_threshold(l).threshold = std::numeric_limits<float>::infinity();
  std::vector<RowMatrix<float>> inputs;
  RowMatrix<float> y(shape.rows(), 32);
  decoder.forward(x, shape, y, Routing::router, {}, &inputs);
  REQUIRE(inputs.size() == 4);
  CHECK(bit_equal(inputs[2], inputs[1]));  // layer 1 is MoD and routed nothing: identity
  CHECK(bit_equal(y, inputs[3]));          // so is layer 3
  decoder.reset(shape.batch, shape.seq_len, shape.seq_len);
  decode(decoder, x, shape, 3, Routing::router);
  CHECK(decoder.cache(1).tokens() == 0);
  CHECK(decoder.cache(3).tokens() == 0);
  CHECK(decoder.cache(0).tokens() == shape.rows());
}

TEST_CASE("decoder: a MoD layer's cache holds exactly the routed tokens, with their positions and bytes") {
  Decoder<float> decoder(small_config(), 44);
  const Shape shape{2, 20};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 9);
  std::vector<RowMatrix<float>> inputs;
  RowMatrix<float> full(shape.rows(), 32);
  decoder.forward(x, shape, full, Routing::router, {}, &inputs);
  decoder.reset(shape.batch, shape.seq_len, shape.seq_len);
  decode(decoder, x, shape, 1, Routing::router);
  std::size_t bytes = 0;
  for (Index l = 0; l < decoder.layers(); ++l) {
    // the router's decisions on this layer's input, recomputed independently
    Vector<float> logits(shape.rows());
    decoder.router(l).score(inputs[std::size_t(l)], logits);
    for (Index b = 0; b < shape.batch; ++b) {
      std::vector<Position> expected;
      for (Index p = 0; p < shape.seq_len; ++p)
        if (!decoder.is_routed(l) || logits(b * shape.seq_len + p) > 0.f) expected.push_back(Position(p));
      const auto cached = decoder.cache(l).positions(b);
      CHECK(std::vector<Position>(cached.begin(), cached.end()) == expected);
    }
    bytes += std::size_t(decoder.cache(l).tokens()) * (2 * 16 * sizeof(float) + sizeof(Position));
  }
  CHECK(decoder.kv_bytes() == bytes);
  CHECK(decoder.cache(1).tokens() < decoder.cache(0).tokens());
}

TEST_CASE_TEMPLATE("KvCache: appends keep every key, by token and by feature, through reserve growth and truncation",
                   T, float, double) {
  constexpr Index line = Index(64 / sizeof(T));
  for (Index n = 0; n <= 8 * line + 1; ++n) {  // the stride rule: whole lines, an odd number of them
    const Index stride = Arena<T>::spread_stride(n);
    CHECK(stride >= n);
    CHECK(stride < n + 2 * line);
    CHECK(stride % line == 0);
    if (n > 0) CHECK((stride / line) % 2 == 1);
  }
  const Index width = 5;
  KvCache<T> cache(2, width, 3);
  CHECK(cache.key_stride() == Arena<T>::spread_stride(3));
  const RowMatrix<T> keys = random_matrix<T>(6, width, 81), values = random_matrix<T>(6, width, 82);
  std::vector<RowMatrix<T>> want_keys(2), want_values(2);
  std::vector<std::vector<Position>> want_positions(2);
  auto append = [&](Index b, Index first, Index count, Position at) {
    std::vector<Position> positions(static_cast<std::size_t>(count));
    for (Index j = 0; j < count; ++j) positions[std::size_t(j)] = Position(at + 2 * j);
    cache.check_append("test", b, count, positions);
    cache.append_unchecked(b, keys, values, first, count, positions);
    auto& k = want_keys[std::size_t(b)];
    auto& v = want_values[std::size_t(b)];
    k.conservativeResize(k.rows() + count, width);
    v.conservativeResize(v.rows() + count, width);
    k.bottomRows(count) = keys.middleRows(first, count);
    v.bottomRows(count) = values.middleRows(first, count);
    want_positions[std::size_t(b)].insert(want_positions[std::size_t(b)].end(), positions.begin(), positions.end());
  };
  auto holds_what_was_appended = [&] {
    bool ok = true;
    for (Index b = 0; b < 2; ++b) {
      const auto& k = want_keys[std::size_t(b)];
      ok = ok && cache.size(b) == k.rows() && bit_equal(RowMatrix<T>(cache.keys(b)), k) &&
           bit_equal(RowMatrix<T>(cache.keys_by_feature(b)), RowMatrix<T>(k.transpose())) &&
           bit_equal(RowMatrix<T>(cache.values(b)), want_values[std::size_t(b)]) &&
           std::equal(cache.positions(b).begin(), cache.positions(b).end(), want_positions[std::size_t(b)].begin(),
                      want_positions[std::size_t(b)].end());
    }
    return ok;
  };
  for (Index b = 0; b < 2; ++b) {
    want_keys[std::size_t(b)].resize(0, width);
    want_values[std::size_t(b)].resize(0, width);
  }
  append(0, 1, 2, 4);
  append(1, 0, 3, 0);
  CHECK(holds_what_was_appended());
  CHECK(cache.tokens() == 5);
  CHECK(cache.last_position(0) == 6);
  cache.reserve(2);  // never shrinks
  CHECK(cache.capacity() == 3);
  // A growth within the padding of the keys' rows: the stride, and so the keys, stay.
  const T* keys_before = cache.keys_by_feature(0).data();
  const T* values_before = cache.values(0).data();
  cache.reserve(line);
  CHECK(cache.capacity() == line);
  CHECK(cache.key_stride() == Arena<T>::spread_stride(3));
  CHECK(cache.keys_by_feature(0).data() == keys_before);
  CHECK(cache.values(0).data() != values_before);
  CHECK(holds_what_was_appended());
  cache.reserve(3 * line + 1);  // a new stride: the stored keys move with it
  CHECK(cache.key_stride() == Arena<T>::spread_stride(3 * line + 1));
  CHECK(cache.key_stride() == 5 * line);
  CHECK(holds_what_was_appended());
  append(0, 3, 3, 10);
  CHECK(holds_what_was_appended());
  const std::size_t reserved =
      2 * (std::size_t(width * cache.key_stride()) * sizeof(T) +
           std::size_t(cache.capacity()) * (std::size_t(width) * sizeof(T) + sizeof(Position)));
  CHECK(cache.reserved_bytes() == reserved);
  CHECK(cache.bytes() == std::size_t(cache.tokens()) * (2 * std::size_t(width) * sizeof(T) + sizeof(Position)));
  // A rollback, then new tokens where the dropped ones were.
  cache.truncate(0, 1);
  want_keys[0].conservativeResize(1, width);
  want_values[0].conservativeResize(1, width);
  want_positions[0].resize(1);
  append(0, 5, 1, 7);
  CHECK(holds_what_was_appended());
  // Appends of several cache lines of tokens at once, starting at an odd offset.
  const RowMatrix<T> many_keys = random_matrix<T>(4 * line, width, 83);
  const RowMatrix<T> many_values = random_matrix<T>(4 * line, width, 84);
  std::vector<Position> many_positions(static_cast<std::size_t>(2 * line + 3));
  for (std::size_t j = 0; j < many_positions.size(); ++j) many_positions[j] = Position(100 + j);
  cache.check_append("test", 1, 2 * line + 3, many_positions);
  cache.append_unchecked(1, many_keys, many_values, 5, 2 * line + 3, many_positions);
  const auto& k1 = want_keys[1];
  RowMatrix<T> both(k1.rows() + 2 * line + 3, width);
  both << k1, many_keys.middleRows(5, 2 * line + 3);
  CHECK(bit_equal(RowMatrix<T>(cache.keys(1)), both));
  CHECK(bit_equal(RowMatrix<T>(cache.keys_by_feature(1)), RowMatrix<T>(both.transpose())));
  CHECK(cache.keys_by_feature(0).outerStride() == cache.key_stride());
}

TEST_CASE("CachedAttention: later tokens provably do not attend to a token the block skipped") {
  // A rule that routes rows whose first feature is positive: editing the rest of a skipped
  // row keeps it skipped, so any change downstream would mean it was attended to.
  struct FlagRule {
    void route(MatrixCRef<float> x, std::span<const float>, std::span<std::uint8_t> routed, Arena<float>&) const {
      for (Index i = 0; i < x.rows(); ++i) routed[std::size_t(i)] = x(i, 0) > 0.f;
    }
  };
  const layers::AttentionConfig config{.d_model = 16, .n_heads = 2, .n_kv_heads = 1, .head_dim = 8};
  const auto attention = layers::Attention<float>::random(config, 5);
  auto run = [&](const RowMatrix<float>& x) {
    KvCache<float> cache(1, config.kv_width(), 16);
    layers::CachedAttention<float> f(attention, cache);
    Block<float, layers::CachedAttention<float>> block(Router<float>(Vector<float>::Ones(16)), Capacity::tokens(1), f);
    Workspace<float> ws;
    RowMatrix<float> out(x.rows(), 16), y(1, 16);
    for (Index t = 0; t < x.rows(); ++t) {
      const std::vector<Index> start = {t};
      block.forward_causal(x.row(t), {1, 1}, y, ws, FlagRule{}, {}, start);
      out.row(t) = y;
    }
    return std::pair{out, std::vector<Position>(cache.positions(0).begin(), cache.positions(0).end())};
  };
  RowMatrix<float> x = random_matrix<float>(10, 16, 6);
  for (Index t = 0; t < 10; ++t) x(t, 0) = (t % 3 == 1) ? -1.f : 1.f;  // tokens 1, 4, 7 skip
  const auto [out, cached] = run(x);
  CHECK(cached == std::vector<Position>{0, 2, 3, 5, 6, 8, 9});
  RowMatrix<float> edited = x;
  edited.row(4).tail(15).setConstant(100.f);  // still skipped
  const auto [edited_out, edited_cached] = run(edited);
  CHECK(edited_cached == cached);
  CHECK(bit_equal(RowMatrix<float>(edited_out.bottomRows(5)), RowMatrix<float>(out.bottomRows(5))));
  // the check can fail: edit a routed token instead
  RowMatrix<float> routed_edit = x;
  routed_edit.row(3).tail(15).setConstant(100.f);
  CHECK_FALSE(bit_equal(RowMatrix<float>(run(routed_edit).first.bottomRows(5)), RowMatrix<float>(out.bottomRows(5))));
}

TEST_CASE("decoder: bad steps throw mixdepth::Error and leave caches and positions as they were") {
  Decoder<float> decoder(small_config(), 45);
  const Shape shape{2, 6};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 10);
  for (Index l = 0; l < decoder.layers(); ++l) decoder.router_threshold(l).threshold = -std::numeric_limits<float>::infinity();
  decoder.reset(2, 8, 7);  // MoD layers route everything here and have one token less room
  RowMatrix<float> y(shape.rows(), 32);
  decoder.prefill(x, shape, y, Routing::router);
  RowMatrix<float> token = random_matrix<float>(2, 32, 11), out(2, 32);
  decoder.step(token, out, Routing::router);  // 7 of 7 in MoD layers now
  const auto before = decoder.checkpoint();
  const long visits_before = decoder.routed_layer_visits(), routed_before = decoder.routed_layer_routed();
  auto unchanged = [&] {
    const auto now = decoder.checkpoint();
    return now.sizes == before.sizes && now.positions == before.positions &&
           decoder.routed_layer_visits() == visits_before && decoder.routed_layer_routed() == routed_before;
  };
  require_mentions(error_message([&] { decoder.step(token, out, Routing::router); }),
                   {"CachedAttention", "tokens of sequence 0", "<= 7", "7 cached + 1 new"});
  CHECK(unchanged());  // layer 0 had appended before layer 1 overflowed: rolled back
  // Layer 1 now routes nothing (fits) and layer 3 overflows: layer 1's visits are not counted.
  decoder.router_threshold(1).threshold = std::numeric_limits<float>::infinity();
  require_mentions(error_message([&] { decoder.step(token, out, Routing::router); }), {"CachedAttention", "<= 7"});
  CHECK(unchanged());
  decoder.router_threshold(1).threshold = -std::numeric_limits<float>::infinity();
  RowMatrix<float> three(3, 32), out3(3, 32);
  require_mentions(error_message([&] { decoder.step(three, out3, Routing::router); }),
                   {"Decoder::step", "x.rows()", "expected 2", "got 3"});
  require_mentions(error_message([&] { decoder.step(token, out, Routing::top_k); }), {"routing", "top-k is not causal"});
  RowMatrix<float> narrow(2, 31);
  require_mentions(error_message([&] { decoder.step(narrow, out, Routing::router); }), {"x.cols()", "32", "31"});
  require_mentions(error_message([&] { decoder.prefill(x, shape, y, Routing::router); }), {"prefill starts from empty caches"});
  CHECK(unchanged());
  KvCache<float> cache(1, 4, 2);
  require_mentions(error_message([&] { cache.truncate(0, 1); }), {"KvCache::truncate", "size", "[0, 0]"});
  require_mentions(error_message([&] { (void)cache.size(3); }), {"sequence", "[0, 1)", "3"});
  const std::vector<Position> two_positions{0, 1};
  require_mentions(error_message([&] { cache.check_append("test", 0, -1, {}); }), {"test", "count", ">= 0", "-1"});
  require_mentions(error_message([&] { cache.check_append("test", 0, 1, two_positions); }),
                   {"positions.size()", "expected 1", "got 2"});
  cache.check_append("test", 0, 2, two_positions);  // fits: no throw
  // Sizes whose byte counts would overflow: an error, not undefined behaviour.
  require_mentions(error_message([&] { cache.reserve(Index{1} << 40); }),
                   {"KvCache::reserve", "capacity", "<= 2147483648", "got 1099511627776"});
  KvCache<float> wide(1, Index{1} << 40, 0);
  require_mentions(error_message([&] { wide.reserve(Index{1} << 30); }),
                   {"KvCache::reserve", "capacity", "fewer than 2^63 bytes", "1073741824 tokens of 1099511627776 values"});
  CHECK(cache.capacity() == 2);
  CHECK(wide.capacity() == 0);
}

TEST_CASE("decoder: bad reset, config and layer_inputs calls throw before anything changes") {
  Decoder<float> decoder(small_config(), 46);
  const Shape shape{1, 4};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 12);
  RowMatrix<float> y(shape.rows(), 32);
  decoder.reset(1, 8, 8);
  decoder.prefill(x, shape, y, Routing::top_k);
  const auto before = decoder.checkpoint();
  auto unchanged = [&] {
    const auto now = decoder.checkpoint();
    return now.sizes == before.sizes && now.positions == before.positions && decoder.cache(0).size(0) == 4;
  };
  // Each argument is named, and a bad one empties no cache (the context stays usable).
  require_mentions(error_message([&] { decoder.reset(1, 8, -1); }), {"Decoder::reset", "routed_tokens", ">= 0", "-1"});
  CHECK(unchanged());
  require_mentions(error_message([&] { decoder.reset(1, -2, 8); }), {"Decoder::reset", "dense_tokens", ">= 0", "-2"});
  CHECK(unchanged());
  require_mentions(error_message([&] { decoder.reset(0, 8, 8); }), {"Decoder::reset", "batch", ">= 1", "0"});
  CHECK(unchanged());
  // A cache that cannot be made (here too large; a failed allocation alike) after others
  // could: the layers before it keep theirs too.
  REQUIRE_FALSE(decoder.is_routed(0));
  require_mentions(error_message([&] { decoder.reset(1, 8, Index{1} << 40); }), {"KvCache::reserve", "capacity"});
  CHECK(unchanged());
  decoder.restore(before);  // still the same reset's checkpoint

  // layer_inputs is handed over only when every layer has run: a bad length leaves it as it was.
  std::vector<RowMatrix<float>> inputs(5, RowMatrix<float>::Constant(2, 3, 7.f));
  const std::vector<Index> too_long{5};
  require_mentions(error_message([&] { decoder.forward(x, shape, y, Routing::top_k, too_long, &inputs); }),
                   {"lengths[0]", "[0, 4]", "5"});
  CHECK(inputs.size() == 5);
  CHECK(inputs[0] == RowMatrix<float>::Constant(2, 3, 7.f));
  RowMatrix<float> token = random_matrix<float>(1, 32, 13), out(1, 32);
  decoder.reset(1, 8, 0);  // no room in MoD layers: the step fails in layer 1, after layer 0 ran
  decoder.prefill(x, shape, y, Routing::top_k, std::vector<Index>{0}, &inputs);
  CHECK(inputs.size() == std::size_t(decoder.layers()));  // a successful call fills it
  inputs.assign(5, RowMatrix<float>::Constant(2, 3, 7.f));
  for (Index l = 0; l < decoder.layers(); ++l) decoder.router_threshold(l).threshold = -std::numeric_limits<float>::infinity();
  require_mentions(error_message([&] { decoder.step(token, out, Routing::router, &inputs); }),
                   {"CachedAttention", "tokens of sequence 0", "<= 0"});
  CHECK(inputs.size() == 5);
  CHECK(inputs[0] == RowMatrix<float>::Constant(2, 3, 7.f));
  decoder.forward(x, shape, y, Routing::top_k, {}, &inputs);
  CHECK(inputs.size() == std::size_t(decoder.layers()));
  CHECK(inputs[0] == x);

  // Config fields are named as fields, not by the classes they are passed on to.
  auto config = small_config();
  config.capacity = 0;
  require_mentions(error_message([&] { Decoder<float>(config, 1); }), {"Decoder", "config.capacity", "(0, 1]", "0"});
  config = small_config();
  config.predictor_hidden = 0;
  require_mentions(error_message([&] { Decoder<float>(config, 1); }), {"Decoder", "config.predictor_hidden", ">= 1", "0"});
  config = small_config();
  config.layers = 0;
  require_mentions(error_message([&] { Decoder<float>(config, 1); }), {"Decoder", "config.layers", ">= 1", "0"});
  config = small_config();
  config.mod_every = -1;
  require_mentions(error_message([&] { Decoder<float>(config, 1); }), {"Decoder", "config.mod_every", ">= 0", "-1"});
  config = small_config();
  config.mlp.d_model = 16;
  require_mentions(error_message([&] { Decoder<float>(config, 1); }), {"Decoder", "config.mlp.d_model", "expected 32", "got 16"});
  require_mentions(error_message([&] { (void)decoder.is_routed(4); }), {"Decoder", "layer", "in [0, 4)", "4"});

  // mod_every: layer l is MoD when (l + 1) % mod_every == 0; 0 makes none MoD.
  for (const Index every : {Index(0), Index(1), Index(2), Index(3)}) {
    config = small_config();
    config.mod_every = every;
    const Decoder<float> d(config, 1);
    for (Index l = 0; l < d.layers(); ++l) {
      INFO("mod_every ", every, ", layer ", l);
      CHECK(d.is_routed(l) == (every > 0 && (l + 1) % every == 0));
    }
  }

  // Steps and prefills need reset() first.
  Decoder<float> fresh(small_config(), 2);
  RowMatrix<float> one(1, 32), one_out(1, 32);
  require_mentions(error_message([&] { fresh.step(one, one_out, Routing::router); }), {"decoder", "reset(batch, ...) called first"});
  require_mentions(error_message([&] { fresh.prefill(one, Shape{1, 1}, one_out, Routing::top_k); }),
                   {"reset(batch, ...) called first"});
}

TEST_CASE("KvCache and CachedAttention reject bad shapes, positions and sequences, naming them") {
  require_mentions(error_message([] { KvCache<float>(-1, 4, 2); }), {"KvCache", "batch", ">= 0", "-1"});
  require_mentions(error_message([] { KvCache<float>(1, 0, 2); }), {"KvCache", "width", ">= 1", "0"});
  require_mentions(error_message([] { KvCache<float>(1, 4, -3); }), {"capacity", ">= 0", "-3"});
  KvCache<float> cache(2, 4, 3);
  CHECK(cache.token_bytes() == 2 * 4 * sizeof(float) + sizeof(Position));
  const RowMatrix<float> kv = random_matrix<float>(2, 4, 5);
  const std::vector<Position> at{3, 7};
  cache.check_append("test", 0, 2, at);
  cache.append_unchecked(0, kv, kv, 0, 2, at);
  // New positions must come after every cached one, and ascend.
  const std::vector<Position> again{7}, later{9, 8};
  require_mentions(error_message([&] { cache.check_append("test", 0, 1, again); }),
                   {"test", "position of new token 0 of sequence 0", "> 7", "got 7"});
  require_mentions(error_message([&] { cache.check_append("test", 1, 2, later); }),
                   {"position of new token 1 of sequence 1", "> 9", "got 8"});
  require_mentions(error_message([&] { cache.check_append("test", 2, 0, {}); }), {"sequence", "[0, 2)", "2"});
  CHECK(cache.size(0) == 2);
  cache.clear();  // forgets the tokens, keeps the room
  CHECK(cache.size(0) == 0);
  CHECK(cache.tokens() == 0);
  CHECK(cache.capacity() == 3);
  cache.check_append("test", 0, 1, again);  // position 7 is fine again after clear()

  const auto attention = layers::Attention<float>::random({16, 4, 2, 4}, 1);  // kv width 8
  require_mentions(error_message([&] { (void)layers::CachedAttention<float>(attention, cache); }),
                   {"CachedAttention", "cache.width()", "expected 8", "got 4"});
  KvCache<float> two(2, 8, 4);
  const layers::CachedAttention<float> cached(attention, two);
  const RowMatrix<float> x = random_matrix<float>(1, 16, 6);
  const std::vector<Position> positions{0};
  const std::vector<Index> offsets{0, 1};  // one sequence for a cache of two
  RowMatrix<float> out(1, 16);
  require_mentions(error_message([&] { cached(Routed<float>{x, positions, offsets, nullptr}, out); }),
                   {"CachedAttention", "in.batch() (sequences, one per cache sequence)", "expected 2", "got 1"});
  CHECK(two.tokens() == 0);
}

TEST_CASE("decoder: restore() returns to a checkpoint and decoding again gives the same output") {
  Decoder<float> decoder(small_config(), 46);
  const Shape shape{1, 10};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 12);
  decoder.reset(1, 16, 16);
  RowMatrix<float> y(10, 32);
  decoder.prefill(x, shape, y, Routing::top_k);
  const auto mark = decoder.checkpoint();
  const std::size_t bytes = decoder.kv_bytes();
  RowMatrix<float> token = random_matrix<float>(1, 32, 13), first(1, 32), second(1, 32);
  decoder.step(token, first, Routing::router);
  CHECK(decoder.kv_bytes() > bytes);
  decoder.restore(mark);
  CHECK(decoder.kv_bytes() == bytes);
  decoder.step(token, second, Routing::router);
  CHECK(bit_equal(first, second));
}

// A checkpoint of another batch size, a default-built one, or one from a later point than the
// decoder's state read past the checkpoint's vectors or cut caches before failing. Now every
// size is checked first, under its name, and nothing changes.
TEST_CASE("decoder: restore() rejects a checkpoint that is not of this decoder's past") {
  Decoder<float> decoder(small_config(), 47);
  decoder.reset(1, 16, 16);
  const Shape shape{1, 6};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 14);
  RowMatrix<float> y(6, 32), out(1, 32);
  decoder.prefill(x, shape, y, Routing::top_k);
  const auto single = decoder.checkpoint();
  const RowMatrix<float> token = random_matrix<float>(1, 32, 15);
  decoder.step(token, out, Routing::router);
  const auto later = decoder.checkpoint();
  decoder.restore(single);
  const std::size_t bytes = decoder.kv_bytes();
  const std::vector<Index> positions(decoder.positions().begin(), decoder.positions().end());
  auto unchanged = [&] {
    return decoder.kv_bytes() == bytes &&
           std::equal(positions.begin(), positions.end(), decoder.positions().begin(), decoder.positions().end());
  };
  require_mentions(error_message([&] { decoder.restore(Decoder<float>::Checkpoint{}); }),
                   {"Decoder::restore", "checkpoint.sizes.size()", "got 0"});
  require_mentions(error_message([&] { decoder.restore(later); }), {"checkpoint.sizes[", "in [0, "});
  auto bad_position = single;
  bad_position.positions[0] = 1000;
  require_mentions(error_message([&] { decoder.restore(bad_position); }),
                   {"checkpoint.positions[0]", "in [0, 6]", "got 1000"});
  CHECK(unchanged());

  RowMatrix<float> two(2, 32);
  two << token, token;
  decoder.reset(2, 16, 16);
  RowMatrix<float> two_out(2, 32);
  decoder.step(two, two_out, Routing::router);
  const std::string got = "got " + std::to_string(single.sizes.size());
  require_mentions(error_message([&] { decoder.restore(single); }),
                   {"checkpoint.sizes.size() (layers * batch)", got.c_str()});

  // A checkpoint from before a reset() of the same shape: after a new, longer prompt its
  // sizes fit, but the caches hold other tokens now.
  decoder.reset(1, 16, 16);
  const RowMatrix<float> other = random_matrix<float>(10, 32, 16);
  RowMatrix<float> other_y(10, 32);
  decoder.prefill(other, Shape{1, 10}, other_y, Routing::top_k);
  const std::size_t other_bytes = decoder.kv_bytes();
  require_mentions(error_message([&] { decoder.restore(single); }),
                   {"Decoder::restore", "checkpoint.epoch", "since the last reset()"});
  CHECK(decoder.kv_bytes() == other_bytes);
  CHECK(decoder.positions()[0] == 10);
  decoder.restore(decoder.checkpoint());  // one of this reset's: fine
}

// A checkpoint of a branch abandoned by restoring an earlier one: once later steps have
// overwritten its tokens, its sizes and positions fit again, but its caches are gone. Before,
// restore() took it and decoding went on over the other branch's tokens.
TEST_CASE("decoder: restore() rejects a checkpoint of an abandoned branch, and only that") {
  Decoder<float> decoder(small_config(), 48);
  for (Index l = 0; l < decoder.layers(); ++l) decoder.router_threshold(l).threshold = -std::numeric_limits<float>::infinity();
  decoder.reset(2, 32, 32);
  const Shape shape{2, 6};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 17);
  RowMatrix<float> y(shape.rows(), 32), out(2, 32), again(2, 32);
  decoder.prefill(x, shape, y, Routing::router);
  const auto prompt = decoder.checkpoint();  // positions 6
  const RowMatrix<float> a = random_matrix<float>(2, 32, 18), b = random_matrix<float>(2, 32, 19);
  decoder.step(a, out, Routing::router);
  const auto after_a = decoder.checkpoint();  // 7, on branch a
  decoder.step(a, out, Routing::router);
  const auto after_aa = decoder.checkpoint();  // 8

  decoder.restore(prompt);  // back to 6: branch a abandoned
  decoder.restore(prompt);  // the same point again: fine
  // Before any step, after_a's tokens are still gone from the caches: its sizes say so.
  require_mentions(error_message([&] { decoder.restore(after_a); }), {"checkpoint.sizes[", "in [0, "});
  decoder.step(b, out, Routing::router);
  const auto after_b = decoder.checkpoint();  // 7, on branch b
  decoder.step(b, out, Routing::router);     // 8: after_a and after_aa fit again by size
  const std::size_t bytes = decoder.kv_bytes();
  const std::vector<Index> positions(decoder.positions().begin(), decoder.positions().end());
  auto unchanged = [&] {
    return decoder.kv_bytes() == bytes &&
           std::equal(positions.begin(), positions.end(), decoder.positions().begin(), decoder.positions().end());
  };
  require_mentions(error_message([&] { decoder.restore(after_a); }),
                   {"Decoder::restore", "checkpoint", "expected one on the current line of decoding",
                    "got one of an abandoned branch", "sequence 0 went back to position 6"});
  CHECK(unchanged());
  require_mentions(error_message([&] { decoder.restore(after_aa); }), {"abandoned branch", "position 6"});
  CHECK(unchanged());

  // Checkpoints of the current line still work: the one of branch b, and the prompt's (its
  // position is not above where the branch went back to).
  decoder.restore(after_b);
  decoder.step(b, again, Routing::router);
  CHECK(bit_equal(again, out));
  decoder.restore(prompt);
  decoder.step(a, out, Routing::router);
  // after_b's branch is abandoned now; after_a's was abandoned before, and branch a's new
  // tokens at the same positions do not revive it.
  decoder.step(a, out, Routing::router);
  require_mentions(error_message([&] { decoder.restore(after_b); }), {"abandoned branch", "position 6"});
  require_mentions(error_message([&] { decoder.restore(after_a); }), {"abandoned branch", "position 6"});

  // Going back to a point and forward again many times keeps one record per position: the
  // benchmarks' pattern (restore, step, restore, ...) stays valid and allocation-bounded.
  const auto here = decoder.checkpoint();
  for (int i = 0; i < 100; ++i) {
    decoder.step(b, out, Routing::router);
    decoder.restore(here);
  }
  decoder.step(b, again, Routing::router);
  CHECK(bit_equal(again, out));

  // Only sequences taken back below a checkpoint's position count: a checkpoint whose
  // positions all stay at or below every later rewind is fine.
  decoder.restore(prompt);
  decoder.restore(prompt);
  CHECK(decoder.positions()[0] == 6);
  CHECK(decoder.positions()[1] == 6);

  // A forged checkpoint from the future is rejected by name.
  auto forged = decoder.checkpoint();
  forged.rewinds += 5;
  require_mentions(error_message([&] { decoder.restore(forged); }), {"checkpoint.rewinds", "(restores that took a sequence back, so far)"});
}

namespace {

// An MLP that throws: the second function of a sequential block failing after the attention
// appended to its cache.
struct ThrowingMlp {
  void operator()(const Routed<float>&, MatrixRef<float>) const {
    throw std::runtime_error("mlp failed");
  }
};

}  // namespace

TEST_CASE("A Block over a CachedAttention whose MLP throws leaves the cache as it was") {
  const layers::AttentionConfig config{32, 4, 2, 8, 10000.0, 1e-6};
  const auto attention = layers::Attention<float>::random(config, 81);
  const auto mlp = layers::SwiGluMlp<float>::random({32, 64, 1e-6}, 82);
  KvCache<float> cache(2, config.kv_width(), 24);  // two rounds of 8 tokens, then the nested block's 8
  const Vector<float> router_weight = random_vector<float>(32, 83);
  Block<float, decltype(sequential(layers::CachedAttention<float>(attention, cache), ThrowingMlp{}))> failing(
      Router<float>(router_weight, 0.f), Capacity::fraction(0.5),
      sequential(layers::CachedAttention<float>(attention, cache), ThrowingMlp{}));
  Block<float, decltype(sequential(layers::CachedAttention<float>(attention, cache), mlp))> working(
      Router<float>(router_weight, 0.f), Capacity::fraction(0.5),
      sequential(layers::CachedAttention<float>(attention, cache), mlp));
  const Shape shape{2, 8};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 32, 84);
  RowMatrix<float> y = RowMatrix<float>::Constant(shape.rows(), 32, 7.f);
  Workspace<float> workspace;

  // Into an empty cache, then into one that holds a prompt already.
  for (int round = 0; round < 2; ++round) {
    const Index size0 = cache.size(0), size1 = cache.size(1);
    const std::vector<Position> cached0(cache.positions(0).begin(), cache.positions(0).end());
    const std::vector<Index> start_index{round * 8, round * 8};
    CHECK_THROWS_WITH_AS(failing.forward_causal(x, shape, y, workspace, RouterThreshold<float>{-1e30f}, {}, start_index),
                         "mlp failed", std::runtime_error);
    CHECK(cache.size(0) == size0);
    CHECK(cache.size(1) == size1);
    CHECK(std::equal(cached0.begin(), cached0.end(), cache.positions(0).begin(), cache.positions(0).end()));
    CHECK((y.array() == 7.f).all());  // y untouched
    // The same call with a working MLP appends every token (the threshold routes all).
    RowMatrix<float> z(shape.rows(), 32);
    working.forward_causal(x, shape, z, workspace, RouterThreshold<float>{-1e30f}, {}, start_index);
    CHECK(cache.size(0) == size0 + 8);
    CHECK(cache.size(1) == size1 + 8);
  }

  // A Sequential nested as another's attention is taken back too (Sequential::undo), whether
  // the Block is used as const or not.
  using Inner = decltype(sequential(layers::CachedAttention<float>(attention, cache), mlp));
  static_assert(detail::UndoesCall<Inner, float> && detail::UndoesCall<const Inner, float>);
  static_assert(!detail::UndoesCall<decltype(sequential(mlp, mlp)), float>);
  const Block<float, decltype(sequential(std::declval<Inner>(), ThrowingMlp{}))> nested(
      Router<float>(router_weight, 0.f), Capacity::fraction(0.5),
      sequential(sequential(layers::CachedAttention<float>(attention, cache), mlp), ThrowingMlp{}));
  const Index size0 = cache.size(0), size1 = cache.size(1);
  // The call throws the MLP's error and leaves the cache and y as they were.
  auto fails_cleanly = [&](const auto& block) {
    CHECK_THROWS_WITH_AS(block.forward_causal(x, shape, y, workspace, RouterThreshold<float>{-1e30f}, {},
                                              std::vector<Index>{size0, size1}),
                         "mlp failed", std::runtime_error);
    CHECK(cache.size(0) == size0);
    CHECK(cache.size(1) == size1);
    CHECK((y.array() == 7.f).all());
  };
  fails_cleanly(nested);

  // The cached attention as the second function of the nested Sequential: undone too.
  using Reversed = decltype(sequential(mlp, layers::CachedAttention<float>(attention, cache)));
  static_assert(detail::UndoesCall<Reversed, float> && detail::UndoesCall<const Reversed, float>);
  const Block<float, decltype(sequential(std::declval<Reversed>(), ThrowingMlp{}))> reversed(
      Router<float>(router_weight, 0.f), Capacity::fraction(0.5),
      sequential(sequential(mlp, layers::CachedAttention<float>(attention, cache)), ThrowingMlp{}));
  fails_cleanly(reversed);
}

TEST_CASE("CachedAttention::undo drops exactly a call's tokens and checks they are the last ones") {
  const layers::AttentionConfig config{16, 2, 1, 8, 10000.0, 1e-6};
  const auto attention = layers::Attention<float>::random(config, 91);
  KvCache<float> cache(2, config.kv_width(), 8);
  const layers::CachedAttention<float> cached(attention, cache);
  const RowMatrix<float> x = random_matrix<float>(5, 16, 92);
  RowMatrix<float> out(5, 16);
  const std::vector<Position> positions{0, 1, 2, 0, 3};
  const std::vector<Index> offsets{0, 3, 5};
  const Routed<float> first{x, positions, offsets, nullptr};
  cached(first, out);
  const RowMatrix<float> x2 = random_matrix<float>(2, 16, 93);
  RowMatrix<float> out2(2, 16);
  const std::vector<Position> positions2{5, 4};
  const std::vector<Index> offsets2{0, 1, 2};
  const Routed<float> second{x2, positions2, offsets2, nullptr};
  cached(second, out2);
  CHECK(cache.size(0) == 4);
  CHECK(cache.size(1) == 3);
  // The first call's tokens are not the last ones any more: rejected, nothing dropped.
  require_mentions(error_message([&] { cached.undo(first); }),
                   {"CachedAttention::undo", "in.positions of sequence 0", "the cache's last 3 tokens",
                    "got position 0 where the cache's token 1 is at 1"});
  CHECK(cache.size(0) == 4);
  cached.undo(second);
  CHECK(cache.size(0) == 3);
  CHECK(cache.size(1) == 2);
  CHECK(cache.positions(1)[1] == 3);
  cached.undo(first);
  CHECK(cache.tokens() == 0);
  require_mentions(error_message([&] { cached.undo(first); }), {"the cache's last 3 tokens", "got a cache of 0 tokens"});
  const std::vector<Index> backwards{0, 4, 3};
  require_mentions(error_message([&] { cached.undo(Routed<float>{x, positions, backwards, nullptr}); }),
                   {"CachedAttention::undo", "in.offsets[2]", "expected >= 4", "got 3"});
  const std::vector<Index> one_sequence{0, 3};
  require_mentions(error_message([&] { cached.undo(Routed<float>{x.topRows(3), std::span<const Position>(positions).first(3), one_sequence, nullptr}); }),
                   {"in.batch()", "expected 2", "got 1"});
}
