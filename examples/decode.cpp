// Causal routing and decoding with Mixture-of-Depths (the paper's section 3.5): an 8-layer
// model in which every other layer is a MoD block at 12.5% capacity.
//   1. For each MoD layer, a causal predictor learns that layer's own top-k decisions
//      (training on synthetic sequences until held-out accuracy stops improving).
//   2. Its threshold is calibrated so that it routes 12.5% of tokens.
//   3. Dense and MoD models generate tokens autoregressively (the next token is sampled from
//      softmax(E y / sqrt(d)) over a table E of token embeddings, y the last output); we print
//      predictor accuracy, the routed fraction per layer, tokens per second and KV-cache bytes.
// Generated sequences are not the training distribution, so the routed fractions while
// generating scatter around 12.5%; the test command checks they stay in (0, 50%].
#include <mixdepth/mixdepth.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace mixdepth;
using layers::Routing;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Index d_model = 128;
constexpr double capacity = 0.125;

layers::DecoderConfig model_config(bool mod) {
  layers::DecoderConfig c;
  c.layers = 8;
  c.attention = {.d_model = d_model, .n_heads = 4, .n_kv_heads = 2, .head_dim = 32};
  c.mlp = {.d_model = d_model, .hidden = 384};
  c.capacity = capacity;
  c.mod_every = mod ? 2 : 0;
  c.predictor_hidden = 64;
  return c;
}

RowMatrix<float> synthetic(Index rows, std::uint64_t seed) {
  std::srand(unsigned(seed));
  return RowMatrix<float>::Random(rows, d_model);
}

// Targets of every MoD layer: the top-k membership of its router's logits, per sequence.
std::vector<std::uint8_t> targets_of(const layers::Decoder<float>& model, Index l, const RowMatrix<float>& input,
                                     Shape shape) {
  Vector<float> logits(input.rows());
  model.router(l).score(input, logits);
  std::vector<std::uint8_t> targets(std::size_t(input.rows()));
  top_k_targets<float>(std::span<const float>(logits.data(), std::size_t(logits.size())), shape,
                       Capacity::fraction(capacity)(shape.seq_len), targets);
  return targets;
}

// A yardstick for the predictor: the router's own logit against one global threshold
// (routing 12.5% of the held-out tokens), scored against the per-sequence top-k. Not a
// bound: a deep layer's input carries context the router's logit alone does not use, and
// the predictor can beat it there.
double router_threshold_accuracy(const layers::Decoder<float>& model, Index l, const RowMatrix<float>& input,
                                 const std::vector<std::uint8_t>& targets) {
  Vector<float> logits(input.rows());
  model.router(l).score(input, logits);
  std::vector<float> sorted(logits.data(), logits.data() + logits.size());
  const auto k = std::size_t(std::llround(capacity * double(sorted.size())));
  std::nth_element(sorted.begin(), sorted.end() - std::ptrdiff_t(k), sorted.end());
  const float threshold = sorted[sorted.size() - k];
  std::size_t right = 0;
  for (Index i = 0; i < logits.size(); ++i) right += (logits[i] >= threshold) == bool(targets[std::size_t(i)]);
  return double(right) / double(logits.size());
}

struct Generation {
  double tokens_per_second;
  std::size_t kv_bytes;
};

// Autoregressive generation over a vocabulary of embedding rows drawn like the training data:
// the next token is sampled from softmax(E y / sqrt(d)) of the last output y, and its
// embedding is the next input. The prompt is routed by top-k, generated tokens by `routing`.
Generation generate(layers::Decoder<float>& model, const RowMatrix<float>& embeddings, const RowMatrix<float>& prompt,
                    Index new_tokens, Routing routing) {
  const Shape shape{1, prompt.rows()};
  model.reset(1, prompt.rows() + new_tokens, prompt.rows() + new_tokens);
  RowMatrix<float> out(prompt.rows(), d_model);
  model.prefill(prompt, shape, out, Routing::top_k);
  RowMatrix<float> token = out.bottomRows(1), next(1, d_model);
  Vector<float> logits(embeddings.rows());
  std::mt19937 rng(123);
  const auto start = Clock::now();
  for (Index t = 0; t < new_tokens; ++t) {
    model.step(token, next, routing);
    logits.noalias() = embeddings * next.transpose();
    const double temperature = std::sqrt(double(d_model));  // a broad next-token distribution
    const Vector<double> p = ((logits.cast<double>().array() - double(logits.maxCoeff())) / temperature).exp().matrix();
    std::discrete_distribution<Index> sample(p.data(), p.data() + p.size());
    token = embeddings.row(sample(rng));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return {double(new_tokens) / seconds, model.kv_bytes()};
}

}  // namespace

int main() {
  layers::Decoder<float> mod(model_config(true), 7);
  layers::Decoder<float> dense(model_config(false), 7);  // the same weights, no routing
  const Shape train_shape{16, 256}, held_out_shape{4, 256};
  Arena<float> arena;

  std::printf("mixdepth decode example: 8 layers (MoD at layers 1, 3, 5, 7, capacity 12.5%%), d=%ld\n\n", long(d_model));
  std::printf("layer  predictor: epochs  held-out accuracy  precision  recall   (router logit, global threshold)\n");
  std::vector<RowMatrix<float>> held_inputs, train_inputs;
  RowMatrix<float> held_out = synthetic(held_out_shape.rows(), 99), out(held_out_shape.rows(), d_model);
  mod.forward(held_out, held_out_shape, out, Routing::top_k, {}, &held_inputs);
  double worst_accuracy = 1.0;
  for (Index l = 0; l < mod.layers(); ++l) {
    if (!mod.is_routed(l)) continue;
    const auto held_targets = targets_of(mod, l, held_inputs[std::size_t(l)], held_out_shape);
    PredictorAdam<float> adam(mod.predictor(l), AdamOptions{.learning_rate = 1e-2});
    double best = 0;
    int epochs = 0, since_best = 0;
    while (since_best < 10 && epochs < 200) {  // until held-out accuracy stops improving
      RowMatrix<float> batch = synthetic(train_shape.rows(), std::uint64_t(1000 * l + epochs)), y(train_shape.rows(), d_model);
      mod.forward(batch, train_shape, y, Routing::top_k, {}, &train_inputs);
      const auto targets = targets_of(mod, l, train_inputs[std::size_t(l)], train_shape);
      for (int s = 0; s < 10; ++s) mod.predictor(l).train_step(train_inputs[std::size_t(l)], train_shape, targets, adam, arena);
      const double accuracy = mod.predictor(l).evaluate(held_inputs[std::size_t(l)], held_out_shape, held_targets, arena).accuracy();
      ++epochs;
      if (accuracy > best + 1e-4) {
        best = accuracy;
        since_best = 0;
      } else {
        ++since_best;
      }
    }
    mod.predictor(l).calibrate_threshold(held_inputs[std::size_t(l)], held_out_shape, capacity, arena);
    const RoutingMetrics m = mod.predictor(l).evaluate(held_inputs[std::size_t(l)], held_out_shape, held_targets, arena);
    worst_accuracy = std::min(worst_accuracy, m.accuracy());
    std::printf("%5ld  %17d  %16.2f%%  %9.3f  %6.3f   (%.2f%%)\n", long(l), epochs, 100 * m.accuracy(), m.precision(),
                m.recall(), 100 * router_threshold_accuracy(mod, l, held_inputs[std::size_t(l)], held_targets));
  }

  const RowMatrix<float> prompt = synthetic(128, 5);
  const Index new_tokens = 256;
  const RowMatrix<float> embeddings = synthetic(1024, 8);
  const Generation dense_run = generate(dense, embeddings, prompt, new_tokens, Routing::router);
  const Generation mod_run = generate(mod, embeddings, prompt, new_tokens, Routing::predictor);

  std::printf("\nrouted fraction while generating (MoD layers):");
  for (Index l = 0; l < mod.layers(); ++l)
    if (mod.is_routed(l))
      std::printf("  layer %ld: %.1f%%", long(l),
                  100.0 * double(mod.cache(l).tokens() - Capacity::fraction(capacity)(prompt.rows())) / double(new_tokens));
  std::printf("\n\n%-6s %14s %16s\n", "model", "tokens/s", "KV cache bytes");
  std::printf("%-6s %14.1f %16zu\n", "dense", dense_run.tokens_per_second, dense_run.kv_bytes);
  std::printf("%-6s %14.1f %16zu\n", "MoD", mod_run.tokens_per_second, mod_run.kv_bytes);
  std::printf("\nMoD decodes %.2fx faster with %.0f%% of the dense KV cache\n",
              mod_run.tokens_per_second / dense_run.tokens_per_second,
              100.0 * double(mod_run.kv_bytes) / double(dense_run.kv_bytes));
  const double routed_share = double(mod.routed_layer_routed()) / double(mod.routed_layer_visits());
  // What the test command checks: the predictors learned, and routing stays near capacity.
  if (worst_accuracy < 0.9 || routed_share <= 0.0 || routed_share > 0.5 || mod_run.kv_bytes >= dense_run.kv_bytes) {
    std::fprintf(stderr, "decode example check failed: accuracy %.3f, routed %.3f\n", worst_accuracy, routed_share);
    return 1;
  }
  return 0;
}
