// The README's usage example: a Mixture-of-Depths block around attention + MLP, and one
// around a block function of your own.
#include <mixdepth/mixdepth.hpp>

#include <cstdio>

int main() {
  using namespace mixdepth;
  const Shape shape{2, 64};  // 2 sequences of 64 tokens, stored as 128 rows
  const Index d = 128;
  RowMatrix<float> x = RowMatrix<float>::Random(shape.rows(), d);
  RowMatrix<float> y(shape.rows(), d);
  Workspace<float> workspace;  // owns every scratch buffer: reuse it, one per thread

  // 1. The reference layers: f = a + m(x~ + a), pre-norm GQA attention with RoPE, SwiGLU MLP.
  auto f = sequential(layers::Attention<float>::random({.d_model = d, .n_heads = 4, .n_kv_heads = 2, .head_dim = 32}, 1),
                      layers::SwiGluMlp<float>::random({.d_model = d, .hidden = 384}, 2));
  Block<float, decltype(f)> block(Router<float>(Vector<float>::Random(d) * 0.1f),
                                  Capacity::fraction(0.125), std::move(f));
  block.forward(x, shape, y, workspace);  // 8 tokens of each sequence go through f

  // 2. Any callable (const Routed<T>&, MatrixRef<T>) is a block function; it receives only
  //    the routed rows, with their original positions, and returns the residual-free update.
  auto scaled_tanh = [](const Routed<float>& routed, MatrixRef<float> update) {
    update = routed.x.array().tanh().matrix();
  };
  Block<float, decltype(scaled_tanh)> custom(Router<float>(Vector<float>::Random(d)), Capacity::tokens(4),
                                             scaled_tanh, Gate::sigmoid);
  custom.forward_inplace(y, shape, workspace);  // y = y + sigmoid(r) * tanh(y) on 4 tokens each

  Index changed = 0;
  for (Index r = 0; r < shape.rows(); ++r) changed += (y.row(r) != x.row(r));
  std::printf("rows changed: %ld of %ld (at most 8 + 4 per sequence)\n", long(changed), long(shape.rows()));
  return changed > 0 && changed <= 2 * (8 + 4) ? 0 : 1;
}
