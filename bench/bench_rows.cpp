// Row kernels beside the contiguous operation on the same bytes: gather of k routed rows
// (random ascending positions in a sequence of S rows, as MoD selects them) beside one memcpy
// of k*d floats (and one vector loop over them), and the in-place gated scatter-add beside a
// contiguous y += a x.
#include <benchmark/benchmark.h>

#include <mixdepth/mixdepth.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace {

constexpr int source_rows = 4096;  // S: the sequence the k rows are routed from
// One routing, reused: the gather then reads the same bytes every iteration, as the memcpy
// beside it does (cycling routings would spread it over the whole S x d source).
constexpr int row_sets = 1;

std::vector<std::vector<mixdepth::Position>> routed_rows(int k) {
  std::mt19937 rng(777);
  std::vector<mixdepth::Position> all(source_rows);
  std::iota(all.begin(), all.end(), 0);
  std::vector<std::vector<mixdepth::Position>> sets(row_sets);
  for (auto& rows : sets) {
    std::shuffle(all.begin(), all.end(), rng);
    rows.assign(all.begin(), all.begin() + k);
    std::sort(rows.begin(), rows.end());
  }
  return sets;
}

// Every buffer starts on a cache line, as Block's do (its workspace's row buffers, and x
// itself when Eigen aligns for AVX-512). With plain std::vector the start depended on what
// the allocator had served before: a fresh mmap gave 16 bytes past a line, the heap after
// the block benchmarks other offsets, and the gather's time moved with it (bench/README.md).
using Buffer = mixdepth::detail::LineAlignedVector<float>;

Buffer filled(std::size_t n, float value) { return Buffer(n, value); }

void BM_Gather(benchmark::State& state) {
  const int k = int(state.range(0)), d = int(state.range(1));
  const auto sets = routed_rows(k);
  const auto src = filled(std::size_t(source_rows) * std::size_t(d), 1.5f);
  auto dst = filled(std::size_t(k) * std::size_t(d), 0.f);
  std::size_t i = 0;
  for (auto _ : state) {
    mixdepth::detail::gather_rows_unchecked<float>(src.data(), d, sets[i++ % row_sets].data(), k, d, dst.data(), d);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(k) * d * std::int64_t(sizeof(float)));
}

void BM_Memcpy(benchmark::State& state) {
  const int k = int(state.range(0)), d = int(state.range(1));
  const auto src = filled(std::size_t(source_rows) * std::size_t(d), 1.5f);
  auto dst = filled(std::size_t(k) * std::size_t(d), 0.f);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), sizeof(float) * std::size_t(k) * std::size_t(d));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(k) * d * std::int64_t(sizeof(float)));
}

// The same contiguous bytes as BM_Memcpy through one loop of vector loads and aligned stores,
// four batches an iteration, as the gather's inner loop copies a row (without its prefetches
// of the next row). glibc 2.36's memcpy copies with `rep movsb` from 2112 bytes up to the L2
// size on AMD CPUs, and with vector loops above it: where the string copy is the faster one
// (d = 256 on Zen 5), a copy built of vector stores trails memcpy by this much before any
// row is scattered.
void BM_VectorCopy(benchmark::State& state) {
  const int k = int(state.range(0)), d = int(state.range(1));
  using batch = xsimd::batch<float>;
  constexpr std::size_t step = 4 * batch::size;
  const std::size_t n = std::size_t(k) * std::size_t(d);
  if (n % step != 0) {
    state.SkipWithError("k * d must be a whole number of 4-batch steps");
    return;
  }
  const auto src = filled(std::size_t(source_rows) * std::size_t(d), 1.5f);
  auto dst = filled(n, 0.f);
  for (auto _ : state) {
    const float* in = src.data();
    float* out = dst.data();
    for (std::size_t c = 0; c < n; c += step) {
      const batch a0 = batch::load_aligned(in + c), a1 = batch::load_aligned(in + c + batch::size);
      const batch a2 = batch::load_aligned(in + c + 2 * batch::size), a3 = batch::load_aligned(in + c + 3 * batch::size);
      a0.store_aligned(out + c);
      a1.store_aligned(out + c + batch::size);
      a2.store_aligned(out + c + 2 * batch::size);
      a3.store_aligned(out + c + 3 * batch::size);
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(n) * std::int64_t(sizeof(float)));
}

// y.row(rows[j]) += g_j * update.row(j), in place, as Block's forward_inplace does.
void BM_ScatterAdd(benchmark::State& state) {
  const int k = int(state.range(0)), d = int(state.range(1));
  const auto sets = routed_rows(k);
  auto y = filled(std::size_t(source_rows) * std::size_t(d), 1.f);
  const auto update = filled(std::size_t(k) * std::size_t(d), 0.5f);
  const auto gates = filled(std::size_t(k), 1e-6f);
  std::size_t i = 0;
  for (auto _ : state) {
    mixdepth::detail::scatter_gated_unchecked<float>(y.data(), d, y.data(), d, sets[i++ % row_sets].data(), k, d,
                                                     update.data(), d, gates.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(k) * d * std::int64_t(sizeof(float)));
}

// y += a x over k*d contiguous floats: the same three streams (read x, read y, write y).
void BM_Axpy(benchmark::State& state) {
  const int k = int(state.range(0)), d = int(state.range(1));
  const std::size_t n = std::size_t(k) * std::size_t(d);
  auto y = filled(std::size_t(source_rows) * std::size_t(d), 1.f);
  const auto x = filled(n, 0.5f);
  const float a = 1e-6f;
  for (auto _ : state) {
    float* __restrict yp = y.data();
    const float* __restrict xp = x.data();
    for (std::size_t j = 0; j < n; ++j) yp[j] += a * xp[j];
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * std::int64_t(n) * std::int64_t(sizeof(float)));
}

void row_sizes(benchmark::internal::Benchmark* b) {
  for (int d : {256, 1024, 4096}) b->Args({512, d});
}

}  // namespace

BENCHMARK(BM_Gather)->Apply(row_sizes);
BENCHMARK(BM_Memcpy)->Apply(row_sizes);
BENCHMARK(BM_VectorCopy)->Apply(row_sizes);
BENCHMARK(BM_ScatterAdd)->Apply(row_sizes);
BENCHMARK(BM_Axpy)->Apply(row_sizes);
