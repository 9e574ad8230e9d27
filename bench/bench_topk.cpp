// Top-k benchmarks: mixdepth's select_top_k beside the PyTorch CPU algorithm
// (std::nth_element on (score, index) pairs, then std::sort of the k indices).
#include <benchmark/benchmark.h>

#include <mixdepth/mixdepth.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace {

// Different sequences, cycled: at least 64, and at least 256 KB of scores. With only 64
// short sequences the branch predictor learns std::nth_element's branches for the whole
// pool (on Zen 5, 64 x 256 scores run 8x faster than fresh ones), which no real input gets.
int pool_size(int n) { return std::max(64, (256 << 10) / (n * int(sizeof(float)))); }

std::vector<std::vector<float>> score_pool(int n, int distinct) {
  std::mt19937 rng(12345);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> few(0, distinct - 1);
  std::vector<std::vector<float>> pool(std::size_t(pool_size(n)), std::vector<float>(std::size_t(n)));
  for (auto& seq : pool)
    for (auto& v : seq) v = distinct > 0 ? float(few(rng)) : normal(rng);
  return pool;
}

void run_mixdepth(benchmark::State& state, int distinct) {
  const int n = int(state.range(0)), k = int(state.range(1));
  const auto pool = score_pool(n, distinct);
  std::vector<mixdepth::Position> out(static_cast<std::size_t>(k));
  mixdepth::TopKScratch<float> scratch;
  std::size_t i = 0;
  for (auto _ : state) {
    mixdepth::select_top_k<float>(pool[i++ % pool.size()], {1, n}, k, out, {}, scratch);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// PyTorch 1.13's CPU top-k (aten/src/ATen/native/TopKImpl.h) for these shapes (k * 64 > n,
// so no partial sort): (score, int64 index) pairs, std::nth_element with NaN ranked first,
// then the k indices sorted (mixdepth's output order). Its buffer of pairs, which PyTorch
// allocates on every call, is allocated once here, outside the timed loop.
void run_std(benchmark::State& state, int distinct) {
  const int n = int(state.range(0)), k = int(state.range(1));
  const auto pool = score_pool(n, distinct);
  std::vector<std::pair<float, std::int64_t>> pairs(static_cast<std::size_t>(n));
  std::vector<std::int64_t> out(static_cast<std::size_t>(k));
  std::size_t i = 0;
  for (auto _ : state) {
    const auto& seq = pool[i++ % pool.size()];
    for (int j = 0; j < n; ++j) pairs[std::size_t(j)] = {seq[std::size_t(j)], j};
    std::nth_element(pairs.begin(), pairs.begin() + (k - 1), pairs.end(), [](const auto& a, const auto& b) {
      return (std::isnan(a.first) && !std::isnan(b.first)) || a.first > b.first;
    });
    for (int j = 0; j < k; ++j) out[std::size_t(j)] = pairs[std::size_t(j)].second;
    std::sort(out.begin(), out.end());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void BM_TopK(benchmark::State& s) { run_mixdepth(s, 0); }
void BM_TopK_Std(benchmark::State& s) { run_std(s, 0); }
void BM_TopK_Ties(benchmark::State& s) { run_mixdepth(s, 4); }
void BM_TopK_Std_Ties(benchmark::State& s) { run_std(s, 4); }

void top_k_sizes(benchmark::internal::Benchmark* b) {
  for (auto [n, k] : {std::pair{256, 32}, {1024, 128}, {4096, 512}, {16384, 2048}, {32768, 4096},
                      {4096, 2048}})
    b->Args({n, k});
}

}  // namespace

BENCHMARK(BM_TopK)->Apply(top_k_sizes);
BENCHMARK(BM_TopK_Std)->Apply(top_k_sizes);
BENCHMARK(BM_TopK_Ties)->Apply(top_k_sizes);
BENCHMARK(BM_TopK_Std_Ties)->Apply(top_k_sizes);
