#pragma once
// The same work in both units of the mixed-modes program (mixed_static.cpp without runtime
// dispatch, mixed_runtime.cpp with it): every function of mixdepth's that calls a kernel.
#include <mixdepth/mixdepth.hpp>

#include <cstdint>
#include <vector>

namespace mixed {

struct Result {
  std::vector<mixdepth::Position> top;  // select_top_k of the router logits
  std::vector<std::uint8_t> targets;    // top_k_targets of the same
  mixdepth::RowMatrix<float> block;     // Block::forward
  mixdepth::RowMatrix<float> dense;     // forward_dense
  mixdepth::RowMatrix<float> gathered;  // gather_rows then scatter_gated
  const char* kernels = "";             // which kernels ran: "static" or the table's name
};

Result run_static();
Result run_runtime();

// The workload is the unit's own (internal linkage): shared, it would itself be one
// definition with two bodies.
namespace {

void twice(const mixdepth::Routed<float>& in, mixdepth::MatrixRef<float> out) { out = 2.f * in.x; }

// Dyadic inputs: every sum and product below is exact in float, so both units must agree bit
// for bit whatever kernels they run.
Result run(const char* kernels) {
  using namespace mixdepth;
  const Shape shape{2, 40};
  const Index d = 24;
  RowMatrix<float> x(shape.rows(), d);
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = float((i * 7 + j * 3) % 17 - 8) / 8.f;
  Vector<float> weight(d);
  for (Index j = 0; j < d; ++j) weight[j] = float(j % 5 - 2) / 4.f;
  Result r;
  r.kernels = kernels;
  const Router<float> router(weight, 0.25f);
  Vector<float> logits(shape.rows());
  router.score(x, logits);
  r.top.resize(std::size_t(shape.batch * 10));
  select_top_k<float>(std::span<const float>(logits.data(), std::size_t(logits.size())), shape, 10, r.top);
  r.targets.resize(std::size_t(shape.rows()));
  top_k_targets<float>(std::span<const float>(logits.data(), std::size_t(logits.size())), shape, 10, r.targets);
  Block<float, void (*)(const Routed<float>&, MatrixRef<float>)> block(router, Capacity::tokens(10), &twice);
  Workspace<float> ws;
  r.block.resize(shape.rows(), d);
  block.forward(x, shape, r.block, ws);
  auto f = &twice;
  r.dense.resize(shape.rows(), d);
  forward_dense<float>(f, x, shape, r.dense, ws);
  std::vector<Position> rows(r.top.begin(), r.top.begin() + 10);
  RowMatrix<float> picked(10, d);
  gather_rows<float>(x, rows, picked);
  r.gathered = x;
  const Vector<float> gates = Vector<float>::Constant(10, 0.5f);
  scatter_gated<float>(x, rows, picked, std::span<const float>(gates.data(), 10), r.gathered);
  return r;
}

}  // namespace
}  // namespace mixed
