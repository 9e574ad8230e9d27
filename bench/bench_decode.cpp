// Decoding benchmarks: one decode step for one sequence with 1024 tokens of context cached,
// 8 layers, d = 512, 8 query and 2 KV heads of 64, SwiGLU hidden 1536. BM_Decode_Dense runs
// every layer on every token; BM_Decode_MoD routes every other layer with a causal
// predictor calibrated to route 12.5% of decoded tokens (on a random pool of its own, not
// the prompt; the prompt goes through top-k). Each iteration decodes another token of a
// pool of 64 and then rolls the caches back, so the context stays at 1024 tokens.
// Counters: flops (expected operations of one step, from the routed fraction measured),
// kv_bytes (cache bytes held after the prefill), routed (fraction of MoD-layer visits that
// were routed during the run), allocs (heap allocations per step, every malloc counted, after
// a warm-up step).
#include <benchmark/benchmark.h>

#include <mixdepth/mixdepth.hpp>

#include "heap_counter.hpp"

#include <cmath>
#include <memory>
#include <vector>

namespace {

using namespace mixdepth;
using layers::Routing;

constexpr Index d_model = 512, heads = 8, kv_heads = 2, head_dim = 64, mlp_hidden = 1536;
constexpr Index predictor_hidden = 64, pool_size = 64, calibration_size = 256;

layers::DecoderConfig config(bool mod) {
  layers::DecoderConfig c;
  c.layers = 8;
  c.attention = {.d_model = d_model, .n_heads = heads, .n_kv_heads = kv_heads, .head_dim = head_dim};
  c.mlp = {.d_model = d_model, .hidden = mlp_hidden};
  c.capacity = 0.125;
  c.mod_every = mod ? 2 : 0;
  c.predictor_hidden = predictor_hidden;
  return c;
}

// Operations of one layer for one new token attending over `context` cached tokens (itself
// included); a multiply-add counts as 2.
double layer_step_flops(double context) {
  const double projections = 2.0 * d_model * (2.0 * heads * head_dim + 2.0 * kv_heads * head_dim);
  const double attention = 2.0 * 2.0 * heads * head_dim * context;
  const double mlp = 2.0 * 3.0 * d_model * mlp_hidden;
  return projections + attention + mlp;
}

void run(benchmark::State& state, bool mod) {
  const Index context = state.range(0);
  layers::Decoder<float> decoder(config(mod), 2026);
  decoder.reset(1, context + 1, context + 1);
  const Shape prompt{1, context};
  const RowMatrix<float> x = RowMatrix<float>::Random(context, d_model);
  RowMatrix<float> y(context, d_model);
  std::vector<RowMatrix<float>> inputs;
  // The prompt goes through top-k routing: 12.5% of it enters each MoD layer's cache.
  decoder.prefill(x, prompt, y, Routing::top_k);
  // Each predictor is calibrated to route 12.5% of the tokens it sees while decoding, on a
  // calibration pool distinct from the measured one, layer by layer (a layer's inputs
  // depend on the thresholds of the MoD layers before it).
  const RowMatrix<float> calibration = RowMatrix<float>::Random(calibration_size, d_model);
  const auto prompt_mark = decoder.checkpoint();
  Arena<float> arena;
  for (Index l = 0; l < decoder.layers(); ++l) {
    if (!decoder.is_routed(l)) continue;
    RowMatrix<float> seen(calibration_size, d_model), token_out(1, d_model);
    for (Index t = 0; t < calibration_size; ++t) {
      decoder.step(calibration.row(t), token_out, Routing::predictor, &inputs);
      seen.row(t) = inputs[std::size_t(l)];
      decoder.restore(prompt_mark);
    }
    decoder.predictor(l).calibrate_threshold(seen, {calibration_size, 1}, 0.125, arena);
  }
  const double kv_bytes = double(decoder.kv_bytes());
  std::vector<Index> cached(std::size_t(decoder.layers()));
  for (Index l = 0; l < decoder.layers(); ++l) cached[std::size_t(l)] = decoder.cache(l).size(0);

  const RowMatrix<float> pool = RowMatrix<float>::Random(pool_size, d_model);
  RowMatrix<float> out(1, d_model);
  const auto context_mark = decoder.checkpoint();
  decoder.step(pool.row(0), out, Routing::predictor);  // warm-up
  decoder.restore(context_mark);
  const long visits_before = decoder.routed_layer_visits(), routed_before = decoder.routed_layer_routed();
  const long heap_before = heap_counter::count();
  Index i = 0;
  for (auto _ : state) {
    decoder.step(pool.row(i++ % pool_size), out, Routing::predictor);
    benchmark::DoNotOptimize(out.data());
    decoder.restore(context_mark);
  }
  state.counters["allocs"] = heap_counter::per_iteration(heap_before, double(state.iterations()));
  const long visits = decoder.routed_layer_visits() - visits_before;
  const double routed = visits > 0 ? double(decoder.routed_layer_routed() - routed_before) / double(visits) : 1.0;
  double flops = 0;
  for (Index l = 0; l < decoder.layers(); ++l) {
    const double full = layer_step_flops(double(cached[std::size_t(l)] + 1));
    if (!decoder.is_routed(l)) {
      flops += full;
    } else {  // router and predictor always; the layer for the routed fraction
      flops += 2.0 * d_model + 2.0 * (d_model * predictor_hidden + predictor_hidden) + routed * full;
    }
  }
  state.counters["flops"] = flops;
  state.counters["kv_bytes"] = kv_bytes;
  state.counters["routed"] = mod ? routed : 1.0;
}

void BM_Decode_Dense(benchmark::State& state) { run(state, false); }
void BM_Decode_MoD(benchmark::State& state) { run(state, true); }

// The measured loop of the two decode-attention benchmarks: one warm-up step, then a step per
// iteration (step(token) decodes pool token `token`), and their counters: allocs, heap
// allocations per step; flops, the attention sub-layer's part of layer_step_flops.
template <class Step>
void time_attention_steps(benchmark::State& state, Step& step, Index context, Index kv) {
  step(0);  // warm-up
  const long heap_before = heap_counter::count();
  Index i = 0;
  for (auto _ : state) step(i++);
  state.counters["allocs"] = heap_counter::per_iteration(heap_before, double(state.iterations()));
  const double projections = 2.0 * d_model * (2.0 * heads * head_dim + 2.0 * kv * head_dim);
  state.counters["flops"] = projections + 2.0 * 2.0 * heads * head_dim * double(context + 1);
}

// One layer's attention for one decoded token: CachedAttention (projections, the append to
// the cache, attention over `context` cached tokens plus itself, output projection), then a
// truncation back to `context`. d = 512, 8 query heads of 64, range(1) KV heads. The new
// token cycles through a pool of 64. Counters: flops, the attention sub-layer's part of
// layer_step_flops (its four projections and the attention itself); allocs, heap
// allocations per step after a warm-up step.
void BM_Decode_Attention(benchmark::State& state) {
  const Index context = state.range(0), kv = state.range(1);
  const layers::AttentionConfig c{.d_model = d_model, .n_heads = heads, .n_kv_heads = kv, .head_dim = head_dim};
  const auto attention = layers::Attention<float>::random(c, 2026);
  KvCache<float> cache(1, c.kv_width(), context + 1);
  const layers::CachedAttention<float> cached(attention, cache);
  Arena<float> scratch;
  const RowMatrix<float> prompt = RowMatrix<float>::Random(context, d_model);
  std::vector<Position> positions(static_cast<std::size_t>(context));
  for (Index t = 0; t < context; ++t) positions[std::size_t(t)] = Position(t);
  const std::vector<Index> prompt_offsets{0, context}, step_offsets{0, 1};
  RowMatrix<float> prompt_out(context, d_model);
  cached(Routed<float>{prompt, positions, prompt_offsets, &scratch}, prompt_out);
  scratch.reset();  // one chunk from now on (the merge would otherwise fall in the first step)
  const RowMatrix<float> pool = RowMatrix<float>::Random(pool_size, d_model);
  const std::vector<Position> step_position{Position(context)};
  RowMatrix<float> out(1, d_model);
  auto step = [&](Index token) {
    cached(Routed<float>{pool.row(token % pool_size), step_position, step_offsets, &scratch}, out);
    benchmark::DoNotOptimize(out.data());
    cache.truncate(0, context);
  };
  time_attention_steps(state, step, context, kv);
}

// The baseline beside BM_Decode_Attention: the same step with the attention written directly
// in Eigen over a cache that keeps each token's keys and values in a row ([tokens, kv_width],
// as a plain implementation would). Attention::project for the new token (mixdepth's, as in
// the step above, so the ratio is the attention's), its keys and values copied into the next
// row, then per query head a matrix-vector product for the scores, a softmax and one for the
// context, and the output projection. Every cached token is visible, so it applies no mask.
// Counters as BM_Decode_Attention's.
void BM_Decode_Attention_Eigen(benchmark::State& state) {
  const Index context = state.range(0), kv = state.range(1);
  const layers::AttentionConfig c{.d_model = d_model, .n_heads = heads, .n_kv_heads = kv, .head_dim = head_dim};
  const auto attention = layers::Attention<float>::random(c, 2026);
  const Index tokens = context + 1, group = heads / kv;
  RowMatrix<float> keys = RowMatrix<float>::Random(tokens, c.kv_width());
  RowMatrix<float> values = RowMatrix<float>::Random(tokens, c.kv_width());
  Arena<float> scratch;
  const RowMatrix<float> pool = RowMatrix<float>::Random(pool_size, d_model);
  const std::vector<Position> step_position{Position(context)};
  RowMatrix<float> query(1, c.query_width()), key(1, c.kv_width()), value(1, c.kv_width());
  RowMatrix<float> context_row(1, c.query_width()), out(1, d_model);
  Eigen::VectorXf scores(tokens), head_context(head_dim);
  const float scale = 1.f / std::sqrt(float(head_dim));
  auto step = [&](Index token) {
    attention.project(pool.row(token % pool_size), step_position, query, key, value, &scratch);
    keys.row(context) = key.row(0);
    values.row(context) = value.row(0);
    for (Index h = 0; h < heads; ++h) {
      const Index g = h / group;
      scores.noalias() = keys.middleCols(g * head_dim, head_dim) *
                         query.row(0).segment(h * head_dim, head_dim).transpose();
      scores *= scale;
      scores = (scores.array() - scores.maxCoeff()).exp().matrix();
      head_context.noalias() = values.middleCols(g * head_dim, head_dim).transpose() * scores;
      context_row.row(0).segment(h * head_dim, head_dim) = head_context.transpose() / scores.sum();
    }
    out.noalias() = context_row * attention.weights().output;
    benchmark::DoNotOptimize(out.data());
  };
  time_attention_steps(state, step, context, kv);
}

}  // namespace

BENCHMARK(BM_Decode_Dense)->Arg(1024)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Decode_MoD)->Arg(1024)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Decode_Attention)->ArgsProduct({{1024, 8192}, {2, 8}})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Decode_Attention_Eigen)->ArgsProduct({{1024, 8192}, {2, 8}})->Unit(benchmark::kMicrosecond);
