// A user's program with runtime dispatch: select_top_k through the best table this CPU runs,
// checked against the portable top-k.
#include <mixdepth/mixdepth.hpp>
#include <mixdepth/kernels/topk_portable.hpp>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#ifndef MIXDEPTH_RUNTIME_DISPATCH
#error "linking the dispatch library must define MIXDEPTH_RUNTIME_DISPATCH"
#endif

int main() {
  using namespace mixdepth;
  std::size_t count = 0;
  const auto* const* tables = kernels::runtime::compiled(count);
  const kernels::runtime::kernel_table& active = kernels::runtime::active();
  std::printf("library %s: %zu table(s), active: %s\n", active.name, count, active.arch);
  bool listed = false;
  for (std::size_t i = 0; i < count; ++i) listed = listed || tables[i] == &active;

  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  const Shape shape{4, 1000};
  std::vector<float> scores(static_cast<std::size_t>(shape.rows()));
  for (auto& s : scores) s = float(int(normal(rng) * 4));  // ties
  const Index k = 125;
  std::vector<Position> out(static_cast<std::size_t>(shape.batch * k));
  select_top_k<float>(scores, shape, k, out);

  bool same = true;
  std::vector<kernels::TopKEntry<float>> scratch(static_cast<std::size_t>(shape.seq_len));
  std::vector<std::int32_t> expected(static_cast<std::size_t>(k));
  for (Index b = 0; b < shape.batch; ++b) {
    kernels::top_k_portable(scores.data() + b * shape.seq_len, shape.seq_len, shape.seq_len, k, expected.data(),
                            scratch.data());
    same = same && std::equal(expected.begin(), expected.end(), out.begin() + b * k);
  }
  std::printf("select_top_k through %s: %s\n", active.arch, same ? "equals the portable top-k" : "DIFFERS");
  return listed && same ? 0 : 1;
}
