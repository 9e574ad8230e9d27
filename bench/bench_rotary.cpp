// Rotary position embedding of a MoD block's routed queries and keys: 256 rows of 8 heads of
// 64 at scattered positions below 2048 (BM_Block_MoD/2048/125's attention), rotated in place
// by layers::RotaryEmbedding, whose angles' cosines and sines come from
// kernels::rotary_cos_sin. Beside it, BM_RotaryCosSin_Libm: the same angles (position times
// frequency, in double) through std::cos and std::sin (one glibc sincos call per angle, as
// GCC compiles them), one row's worth per position, as RotaryEmbedding computed them before
// the kernel, and
// BM_RotaryCosSin: the kernel on the same angles. Counter `angles`: per second.
#include <benchmark/benchmark.h>

#include <mixdepth/mixdepth.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace {

using namespace mixdepth;

constexpr Index rows = 256, heads = 8, head_dim = 64, half = head_dim / 2;

std::vector<Position> scattered_positions() {
  std::vector<Position> all(2048);
  std::iota(all.begin(), all.end(), Position{0});
  std::mt19937 rng(5);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<Position> chosen(all.begin(), all.begin() + rows);
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

void count_angles(benchmark::State& state) {
  state.counters["angles"] = benchmark::Counter(double(rows * half), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_RotaryEmbedding(benchmark::State& state) {
  const layers::RotaryEmbedding<float> rope(head_dim, 10000.0);
  const auto positions = scattered_positions();
  RowMatrix<float> queries = RowMatrix<float>::Random(rows, heads * head_dim);
  RowMatrix<float> keys = RowMatrix<float>::Random(rows, heads * head_dim);
  Arena<float> arena;
  for (auto _ : state) {
    rope.rotate_unchecked(MatrixRef<float>(queries), MatrixRef<float>(keys), layers::detail::PositionList{positions},
                          arena);
    benchmark::DoNotOptimize(queries.data());
    benchmark::DoNotOptimize(keys.data());
    benchmark::ClobberMemory();
  }
  count_angles(state);
}

template <bool libm>
void angles(benchmark::State& state) {
  const layers::RotaryEmbedding<float> rope(head_dim, 10000.0);
  std::vector<double> frequency(half);
  for (Index i = 0; i < half; ++i) frequency[std::size_t(i)] = rope.inverse_frequency(i);
  const auto positions = scattered_positions();
  std::vector<float> cosine(half), sine(half);
  for (auto _ : state) {
    for (const Position p : positions) {
      if constexpr (libm) {
        for (Index i = 0; i < half; ++i) {
          const double angle = double(p) * frequency[std::size_t(i)];
          cosine[std::size_t(i)] = static_cast<float>(std::cos(angle));
          sine[std::size_t(i)] = static_cast<float>(std::sin(angle));
        }
      } else {
        kernels::rotary_cos_sin<kernels::static_arch>(double(p), frequency.data(), half, cosine.data(), sine.data());
      }
      benchmark::DoNotOptimize(cosine.data());
      benchmark::DoNotOptimize(sine.data());
      benchmark::ClobberMemory();
    }
  }
  count_angles(state);
}

void BM_RotaryCosSin(benchmark::State& state) { angles<false>(state); }
void BM_RotaryCosSin_Libm(benchmark::State& state) { angles<true>(state); }

}  // namespace

BENCHMARK(BM_RotaryEmbedding)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RotaryCosSin)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RotaryCosSin_Libm)->Unit(benchmark::kMicrosecond);
