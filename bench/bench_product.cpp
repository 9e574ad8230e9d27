// The reference layers' matrix product (detail::product: mixdepth's GEMM kernel, packing
// buffers from an arena) beside Eigen's own `noalias() = a * b` on the same row-major
// operands, at the block's shapes: m tokens x d 512 times the projections (512 x 512, the
// SwiGLU 512 x 1536 and 1536 x 512). Counter GFLOPs: 2 m k n per iteration.
#include <benchmark/benchmark.h>

#include <mixdepth/mixdepth.hpp>

namespace {

using mixdepth::RowMatrix;

struct Operands {
  RowMatrix<float> a, b, c;
  Operands(benchmark::State& state)
      : a(RowMatrix<float>::Random(state.range(0), state.range(1))),
        b(RowMatrix<float>::Random(state.range(1), state.range(2))),
        c(state.range(0), state.range(2)) {}
};

void count_flops(benchmark::State& state) {
  const double flops = 2.0 * double(state.range(0)) * double(state.range(1)) * double(state.range(2));
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Product(benchmark::State& state) {
  Operands o(state);
  mixdepth::Arena<float> arena;
  for (auto _ : state) {
    mixdepth::detail::product(o.c, o.a, o.b, &arena);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  count_flops(state);
}

void BM_EigenProduct(benchmark::State& state) {
  Operands o(state);
  for (auto _ : state) {
    o.c.noalias() = o.a * o.b;
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  count_flops(state);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int m : {256, 2048}) {
    b->Args({m, 512, 512});
    b->Args({m, 512, 1536});
    b->Args({m, 1536, 512});
  }
  b->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_Product)->Apply(shapes);
BENCHMARK(BM_EigenProduct)->Apply(shapes);
