// The reference layers' matrix product (detail::product: mixdepth's GEMM kernel, packing
// buffers from an arena) beside Eigen's own `noalias() = a * b` on the same row-major
// operands, at the block's shapes: m tokens x d 512 times the projections (512 x 512, the
// SwiGLU 512 x 1536 and 1536 x 512). m = 1 is a decoding step's projection: the kernel's
// one-row path beside Eigen's matrix-vector product. Counter GFLOPs: 2 m k n per iteration.
// BM_FmaPeak measures the ceiling: the core's fused multiply-add throughput.
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

// Twelve independent chains of vector fused multiply-adds (more than latency x pipes), in
// registers: the core's peak single-precision GFLOP/s for this build's instruction set.
void BM_FmaPeak(benchmark::State& state) {
  using batch = xsimd::batch<float>;
  constexpr int chains = 12, steps = 1000;
  const batch scale(0.999f), shift(1e-4f);
  batch a0(0.f), a1(0.1f), a2(0.2f), a3(0.3f), a4(0.4f), a5(0.5f), a6(0.6f), a7(0.7f), a8(0.8f), a9(0.9f),
      a10(1.f), a11(1.1f);
  for (auto _ : state) {
    for (int i = 0; i < steps; ++i) {
      a0 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a0, scale, shift), a1 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a1, scale, shift), a2 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a2, scale, shift);
      a3 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a3, scale, shift), a4 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a4, scale, shift), a5 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a5, scale, shift);
      a6 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a6, scale, shift), a7 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a7, scale, shift), a8 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a8, scale, shift);
      a9 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a9, scale, shift), a10 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a10, scale, shift), a11 = mixdepth::kernels::shim::fma<xsimd::default_arch>(a11, scale, shift);
    }
  }
  const batch sum = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
  benchmark::DoNotOptimize(xsimd::hadd(sum));
  const double flops = 2.0 * chains * steps * double(batch::size);
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int m : {1, 256, 2048}) {
    b->Args({m, 512, 512});
    b->Args({m, 512, 1536});
    b->Args({m, 1536, 512});
  }
  b->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_FmaPeak);
BENCHMARK(BM_Product)->Apply(shapes);
BENCHMARK(BM_EigenProduct)->Apply(shapes);
