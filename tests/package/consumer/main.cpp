// A user's program: one Mixture-of-Depths block over a small batch.
#include <mixdepth/mixdepth.hpp>

#include <cstdio>
#include <cstring>

int main() {
  using namespace mixdepth;
  if (std::strcmp(MIXDEPTH_VERSION_STRING, CONSUMER_EXPECTED_VERSION) != 0) {
    std::printf("version.hpp says %s, CMake says %s\n", MIXDEPTH_VERSION_STRING,
                CONSUMER_EXPECTED_VERSION);
    return 1;
  }

  const Shape shape{2, 32};
  const Index d = 16;
  RowMatrix<float> x = RowMatrix<float>::Random(shape.rows(), d);
  RowMatrix<float> y(shape.rows(), d);
  auto f = [](const Routed<float>& routed, MatrixRef<float> update) { update = routed.x * 0.5f; };
  Block<float, decltype(f)> block(Router<float>(Vector<float>::Random(d)),
                                  Capacity::fraction(0.125), f);
  Workspace<float> workspace;
  block.forward(x, shape, y, workspace);

  Index changed = 0;
  for (Index r = 0; r < shape.rows(); ++r) changed += (y.row(r) != x.row(r));
  const Index expected = shape.batch * block.capacity()(shape.seq_len);
  std::printf("mixdepth %s: %td of %td rows routed and changed (expected %td)\n",
              MIXDEPTH_VERSION_STRING, changed, shape.rows(), expected);
  return changed == expected ? 0 : 1;
}
