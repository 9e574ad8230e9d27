// mixdepth demo: a small transformer stack (8 pre-norm blocks of GQA attention with RoPE and
// a SwiGLU MLP), dense versus Mixture-of-Depths (every other block routes 12.5% of tokens),
// on synthetic data. Prints the routed fraction per layer, the forward time of both stacks
// and the speedup beside the ideal one (the FLOP ratio).
//
//   mixdepth_demo [seq_len] [batch]      defaults: 1024 2
#include <mixdepth/mixdepth.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace mixdepth;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Index layers_count = 8;
constexpr Index d_model = 256;
constexpr Index heads = 4, kv_heads = 2, head_dim = 64, mlp_hidden = 768;
constexpr double capacity = 0.125;

using Layer = Sequential<layers::Attention<float>, layers::SwiGluMlp<float>>;

Layer make_layer(std::uint64_t seed) {
  const layers::AttentionConfig attention{d_model, heads, kv_heads, head_dim};
  const layers::SwiGluConfig mlp{d_model, mlp_hidden};
  return sequential(layers::Attention<float>::random(attention, seed),
                    layers::SwiGluMlp<float>::random(mlp, seed + 1000));
}

// Floating-point operations of one block over n tokens of one sequence (multiply-add = 2):
// projections, causal attention (half of the n x n score and value products), the MLP.
double block_flops(double n) {
  const double projections = 2 * n * d_model * (2.0 * heads * head_dim + 2.0 * kv_heads * head_dim);
  const double attention = 2 * 2 * heads * head_dim * n * (n + 1) / 2;
  const double mlp = 2 * n * 3.0 * d_model * mlp_hidden;
  return projections + attention + mlp;
}

struct Stack {
  std::vector<Block<float, Layer>> blocks;  // one per layer; dense layers use only its function
  std::vector<bool> routed;                 // which layers are MoD
};

// Runs the stack in place on x; records the fraction of tokens each layer processed.
void run(Stack& stack, RowMatrix<float>& x, Shape shape, Workspace<float>& ws,
         std::vector<double>* fractions) {
  for (std::size_t l = 0; l < stack.blocks.size(); ++l) {
    auto& block = stack.blocks[l];
    if (stack.routed[l]) {
      block.forward_inplace(x, shape, ws);
    } else {
      forward_dense<float>(block.function(), x, shape, x, ws);
    }
    if (fractions) (*fractions)[l] = double(ws.routed_rows().size()) / double(shape.rows());
  }
}

double best_seconds(Stack& stack, const RowMatrix<float>& input, Shape shape, Workspace<float>& ws,
                    int repeats, RowMatrix<float>& out) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    out = input;
    const auto start = Clock::now();
    run(stack, out, shape, ws, nullptr);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const Index seq_len = argc > 1 ? std::atol(argv[1]) : 1024;
  const Index batch = argc > 2 ? std::atol(argv[2]) : 2;
  if (seq_len < 1 || batch < 1) {
    std::fprintf(stderr, "usage: %s [seq_len >= 1] [batch >= 1]\n", argv[0]);
    return 2;
  }
  const Shape shape{batch, seq_len};

  // Both stacks share weights: the dense one runs every layer on every token.
  Stack dense, mod;
  for (Index l = 0; l < layers_count; ++l) {
    Router<float> router(RowMatrix<float>::Random(d_model, 1).col(0) * 0.1f);
    dense.blocks.emplace_back(router, Capacity::fraction(1.0), make_layer(std::uint64_t(l) * 7 + 1));
    dense.routed.push_back(false);
    mod.blocks.emplace_back(router, Capacity::fraction(capacity), make_layer(std::uint64_t(l) * 7 + 1));
    mod.routed.push_back(l % 2 == 1);
  }

  RowMatrix<float> x = RowMatrix<float>::Random(shape.rows(), d_model);
  Workspace<float> ws;
  std::vector<double> fractions(layers_count);
  RowMatrix<float> warm = x;
  run(mod, warm, shape, ws, &fractions);  // warm-up, and the routed fraction per layer
  run(dense, warm = x, shape, ws, nullptr);

  RowMatrix<float> dense_out, mod_out;
  const double dense_s = best_seconds(dense, x, shape, ws, 3, dense_out);
  const double mod_s = best_seconds(mod, x, shape, ws, 3, mod_out);

  const Index k = Capacity::fraction(capacity)(seq_len);
  const double dense_flops = double(batch) * layers_count * block_flops(double(seq_len));
  const double mod_flops = double(batch) * (layers_count / 2) * (block_flops(double(seq_len)) + block_flops(double(k)));

  std::printf("mixdepth %s demo: %ld layers, d=%ld, %ld query / %ld KV heads, SwiGLU %ld; batch %ld x %ld tokens\n",
              MIXDEPTH_VERSION_STRING, long(layers_count), long(d_model), long(heads), long(kv_heads),
              long(mlp_hidden), long(batch), long(seq_len));
  std::printf("\nlayer  kind     routed tokens\n");
  for (Index l = 0; l < layers_count; ++l)
    std::printf("%5ld  %-7s  %6.2f%%\n", long(l), mod.routed[std::size_t(l)] ? "MoD" : "dense",
                100.0 * fractions[std::size_t(l)]);
  std::printf("\n%-22s %10s %12s %10s\n", "stack", "time (ms)", "GFLOP", "GFLOP/s");
  std::printf("%-22s %10.2f %12.2f %10.1f\n", "dense", 1e3 * dense_s, dense_flops * 1e-9, dense_flops * 1e-9 / dense_s);
  std::printf("%-22s %10.2f %12.2f %10.1f\n", "MoD (12.5%, every 2nd)", 1e3 * mod_s, mod_flops * 1e-9, mod_flops * 1e-9 / mod_s);
  std::printf("\nspeedup %.2fx (ideal, the FLOP ratio: %.2fx)\n", dense_s / mod_s, dense_flops / mod_flops);

  // A sanity check the test command relies on: finite outputs, exactly k tokens per sequence
  // in every MoD layer.
  const bool finite = dense_out.allFinite() && mod_out.allFinite();
  bool exact = true;
  for (Index l = 1; l < layers_count; l += 2)
    exact = exact && fractions[std::size_t(l)] == double(k) / double(seq_len);
  if (!finite || !exact) {
    std::fprintf(stderr, "demo check failed: finite=%d exact_capacity=%d\n", finite, exact);
    return 1;
  }
  return 0;
}
