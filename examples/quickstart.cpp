// The README's usage example: wrap your own block function in a Mixture-of-Depths block.
#include <mixdepth/mixdepth.hpp>

#include <iostream>

int main() {
  using namespace mixdepth;
  const Shape shape{2, 16};  // 2 sequences of 16 tokens
  const Index d = 8;

  RowMatrix<float> x = RowMatrix<float>::Random(shape.rows(), d);
  RowMatrix<float> y(shape.rows(), d);

  // Any callable (const Routed<T>&, MatrixRef<T>) works: here f(x~) = tanh(x~).
  auto f = [](const Routed<float>& routed, MatrixRef<float> update) {
    update = routed.x.array().tanh().matrix();
  };
  Block<float, decltype(f)> block(Router<float>(Vector<float>::Random(d)),
                                  Capacity::fraction(0.125), f);
  Workspace<float> workspace;  // owns every scratch buffer; reuse it across calls
  block.forward(x, shape, y, workspace);

  Index changed = 0;
  for (Index r = 0; r < shape.rows(); ++r) changed += (y.row(r) != x.row(r));
  std::cout << "rows changed: " << changed << " of " << shape.rows() << " (capacity 12.5%: "
            << block.capacity()(shape.seq_len) << " per sequence)\n";
  return changed == 2 * block.capacity()(shape.seq_len) ? 0 : 1;
}
