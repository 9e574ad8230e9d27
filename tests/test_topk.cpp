// select_top_k against an independent brute-force reference and the contract's rules.
#include "test_helpers.hpp"
#include "test_kernels_common.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

using namespace mixdepth;
using namespace mixdepth::testing;
using mixdepth::kernels_testing::brute_force_top_k;

namespace {

template <class T>
std::vector<Position> top_k_of(const std::vector<T>& s, Index k, Index valid = -1) {
  const Index n = static_cast<Index>(s.size());
  std::vector<Position> out(static_cast<std::size_t>(std::min(k, n)), -7);
  std::vector<Index> lengths;
  if (valid >= 0) lengths.push_back(valid);
  select_top_k<T>(s, {1, n}, k, out, lengths);
  return out;
}

template <class T>
std::vector<T> random_scores(std::mt19937_64& rng, Index n, int distribution) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> pick(0, 9);
  const T inf = std::numeric_limits<T>::infinity();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T denormal = std::numeric_limits<T>::denorm_min();
  std::vector<T> s(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    T v = static_cast<T>(normal(rng));
    switch (distribution) {
      case 0: break;                                        // random
      case 1: v = T(pick(rng) % 3); break;                  // few distinct values
      case 2: v = T(1.5); break;                            // all equal
      case 3: {                                              // specials
        const int p = pick(rng);
        v = p == 0 ? nan : p == 1 ? inf : p == 2 ? -inf : p == 3 ? T(0) : p == 4 ? T(-0.0)
            : p == 5 ? denormal : p == 6 ? -denormal : v;
        break;
      }
      case 4: v = T(i); break;                               // sorted
      case 5: v = T(n - i); break;                           // reversed
      default: v = pick(rng) < 5 ? nan : v;                  // half NaN
    }
    s[std::size_t(i)] = v;
  }
  return s;
}

}  // namespace

TEST_CASE_TEMPLATE("select_top_k equals a brute-force sort on many inputs", T, float, double) {
  std::mt19937_64 rng(20261123);
  int checked = 0;
  for (Index n : {1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257}) {
    for (int distribution = 0; distribution < 7; ++distribution) {
      const auto s = random_scores<T>(rng, n, distribution);
      for (Index k = 0; k <= n + 1; k += (n > 40 ? 9 : 1)) {
        for (Index valid : {n, n / 2, Index{0}}) {
          const auto expected = brute_force_top_k(s, k, valid);
          const auto actual = top_k_of(s, k, valid);
          if (actual != expected) {
            INFO("n=", n, " k=", k, " valid=", valid, " distribution=", distribution);
            REQUIRE(actual == expected);
          }
          ++checked;
        }
      }
    }
  }
  CHECK(checked > 1000);
}

TEST_CASE("select_top_k: ties go to the lower position, and exactly k are taken") {
  CHECK(top_k_of<float>({1, 1, 1, 1}, 2) == std::vector<Position>{0, 1});
  CHECK(top_k_of<float>({0, 2, 2, 2, 1}, 2) == std::vector<Position>{1, 2});
  // the strict-threshold bug (score > kth) would take fewer than k here
  CHECK(top_k_of<float>({3, 5, 5, 5, 5}, 3) == std::vector<Position>{1, 2, 3});
}

TEST_CASE("select_top_k: -0.0 and +0.0 are equal") {
  CHECK(top_k_of<float>({-0.0f, 0.0f}, 1) == std::vector<Position>{0});
  CHECK(top_k_of<float>({0.0f, -0.0f}, 1) == std::vector<Position>{0});
  CHECK(top_k_of<double>({-1.0, -0.0, 0.0, -0.0}, 2) == std::vector<Position>{1, 2});
}

TEST_CASE("select_top_k: NaN ranks below every number, infinities order as numbers") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(top_k_of<float>({nan, -inf}, 1) == std::vector<Position>{1});
  CHECK(top_k_of<float>({nan, 1.f, nan}, 2) == std::vector<Position>{0, 1});  // NaN ties: lower position
  CHECK(top_k_of<float>({-inf, inf, 3.f, nan}, 2) == std::vector<Position>{1, 2});
  CHECK(top_k_of<float>({-nan, nan, -inf}, 2) == std::vector<Position>{0, 2});  // sign of NaN is irrelevant
}

TEST_CASE("select_top_k: padding is taken last, lowest position first, even below NaN") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(top_k_of<float>({5, 4, 3, 100}, 3, 3) == std::vector<Position>{0, 1, 2});
  CHECK(top_k_of<float>({5, 4, 3, 100, 200}, 4, 3) == std::vector<Position>{0, 1, 2, 3});
  CHECK(top_k_of<float>({nan, 9}, 1, 1) == std::vector<Position>{0});
  CHECK(top_k_of<float>({1, 2, 3}, 2, 0) == std::vector<Position>{0, 1});
}

TEST_CASE("select_top_k: k > S takes the whole sequence, S = 1 and k = 0 work") {
  CHECK(top_k_of<float>({3, 1, 2}, 10) == std::vector<Position>{0, 1, 2});
  CHECK(top_k_of<float>({3}, 1) == std::vector<Position>{0});
  CHECK(top_k_of<float>({3}, 5) == std::vector<Position>{0});
  CHECK(top_k_of<float>({3, 1}, 0).empty());
}

TEST_CASE("select_top_k works per sequence, never across the batch") {
  // sequence 0 has all the large scores; sequence 1 still gets its own k
  const std::vector<float> scores = {9, 8, 7, 6, 0.1f, 0.3f, 0.2f, 0.0f};
  std::vector<Position> out(4);
  select_top_k<float>(scores, {2, 4}, 2, out);
  CHECK(out == std::vector<Position>{0, 1, 1, 2});
  const std::vector<Index> lengths = {4, 1};
  select_top_k<float>(scores, {2, 4}, 2, out, lengths);
  CHECK(out == std::vector<Position>{0, 1, 0, 1});
}

TEST_CASE("select_top_k rejects bad arguments and writes nothing") {
  const std::vector<float> scores(8, 1.f);
  std::vector<Position> out(4, -1);
  auto untouched = [&] { return std::all_of(out.begin(), out.end(), [](Position p) { return p == -1; }); };
  require_mentions(error_message([&] { select_top_k<float>(std::span(scores).first(7), {2, 4}, 2, out); }),
                   {"select_top_k", "scores.size()", "8", "got 7"});
  require_mentions(error_message([&] { select_top_k<float>(scores, {2, 4}, -1, out); }), {"k", ">= 0", "-1"});
  require_mentions(error_message([&] { select_top_k<float>(scores, {2, 4}, 3, out); }),
                   {"out.size()", "expected 6", "got 4"});
  const std::vector<Index> wrong_count = {4};
  require_mentions(error_message([&] { select_top_k<float>(scores, {2, 4}, 2, out, wrong_count); }),
                   {"lengths.size()", "2", "got 1"});
  const std::vector<Index> too_long = {4, 5};
  require_mentions(error_message([&] { select_top_k<float>(scores, {2, 4}, 2, out, too_long); }),
                   {"lengths[1]", "[0, 4]", "got 5"});
  const std::vector<Index> negative = {-1, 2};
  require_mentions(error_message([&] { select_top_k<float>(scores, {2, 4}, 2, out, negative); }),
                   {"lengths[0]", "got -1"});
  require_mentions(error_message([&] { select_top_k<float>(scores, {-2, 4}, 2, out); }),
                   {"shape.batch", "got -2"});
  // Empty sequences count too: a batch beyond Position's range would overflow the batch's
  // per-sequence offsets (a Block's workspace keeps batch + 1 of them).
  require_mentions(error_message([&] { select_top_k<float>({}, {std::numeric_limits<Index>::max(), 0}, 0, {}); }),
                   {"shape.batch", "<= 2147483647", "got 9223372036854775807"});
  CHECK(untouched());
}

TEST_CASE("TopKScratch rejects a negative sequence length with mixdepth::Error") {
  TopKScratch<float> scratch;
  require_mentions(error_message([&] { scratch.reserve(-1000); }),
                   {"TopKScratch::reserve", "seq_len", ">= 0", "got -1000"});
  require_mentions(error_message([&] { scratch.keys(-5); }), {"seq_len", "got -5"});
  CHECK(scratch.bytes() == 0);
}
