// Whole-block benchmarks: the dense pre-norm transformer block (x + f(x)) beside the MoD
// block at capacities of 12.5%, 25% and 50%, one sequence, d = 512, 8 heads of 64, SwiGLU
// hidden 1536, the reference layers. Counter `flops`: floating-point operations of one
// iteration (see bench/README.md for how they are counted); `allocs`: heap allocations
// (every malloc, Eigen's included) per iteration after warm-up.
#include <benchmark/benchmark.h>

#include <mixdepth/mixdepth.hpp>

#include "heap_counter.hpp"

namespace {

using namespace mixdepth;

constexpr Index d_model = 512, heads = 8, kv_heads = 8, head_dim = 64, mlp_hidden = 1536;

using Layer = Sequential<layers::Attention<float>, layers::SwiGluMlp<float>>;

Layer make_layer() {
  return sequential(layers::Attention<float>::random({d_model, heads, kv_heads, head_dim}, 11),
                    layers::SwiGluMlp<float>::random({d_model, mlp_hidden}, 12));
}

// One pre-norm block over n tokens of one causal sequence; a multiply-add counts as 2.
// Projections Q, K, V, O; scores and weighted values over the n (n + 1) / 2 causal pairs per
// head; the three MLP products. Norms, softmax, RoPE and SiLU are left out (O(n d)).
double block_flops(double n) {
  const double projections = 2 * n * d_model * (2.0 * heads * head_dim + 2.0 * kv_heads * head_dim);
  const double attention = 2 * 2 * heads * head_dim * n * (n + 1) / 2;
  const double mlp = 2 * n * 3.0 * d_model * mlp_hidden;
  return projections + attention + mlp;
}

void BM_Block_Dense(benchmark::State& state) {
  const Shape shape{1, state.range(0)};
  Layer layer = make_layer();
  const RowMatrix<float> x = RowMatrix<float>::Random(shape.rows(), d_model);
  RowMatrix<float> y(shape.rows(), d_model);
  Workspace<float> ws;
  forward_dense<float>(layer, x, shape, y, ws);  // warm-up: the workspace grows
  const long before = heap_counter::count();
  for (auto _ : state) {
    forward_dense<float>(layer, x, shape, y, ws);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["allocs"] = heap_counter::per_iteration(before, double(state.iterations()));
  state.counters["flops"] = block_flops(double(shape.seq_len));
  state.counters["GFLOPs"] = benchmark::Counter(block_flops(double(shape.seq_len)) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Block_MoD(benchmark::State& state) {
  const Shape shape{1, state.range(0)};
  const double fraction = double(state.range(1)) / 1000.0;
  Block<float, Layer> block(Router<float>(RowMatrix<float>::Random(d_model, 1).col(0)),
                            Capacity::fraction(fraction), make_layer());
  const RowMatrix<float> x = RowMatrix<float>::Random(shape.rows(), d_model);
  RowMatrix<float> y(shape.rows(), d_model);
  Workspace<float> ws;
  block.forward(x, shape, y, ws);
  const long before = heap_counter::count();
  for (auto _ : state) {
    block.forward(x, shape, y, ws);
    benchmark::DoNotOptimize(y.data());
  }
  const double k = double(block.capacity()(shape.seq_len));
  const double flops = block_flops(k) + 2.0 * double(shape.seq_len) * d_model;  // + the router
  state.counters["allocs"] = heap_counter::per_iteration(before, double(state.iterations()));
  state.counters["flops"] = flops;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_Block_Dense)->Args({512, 0})->Args({2048, 0})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Block_MoD)
    ->ArgsProduct({{512, 2048}, {125, 250, 500}})
    ->Unit(benchmark::kMicrosecond);
