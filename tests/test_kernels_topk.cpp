// The SIMD top-k against top_k_portable, bit for bit, on every architecture this build can
// run: sizes 1..70000 (every vector-width boundary for small sizes), all k for small sizes
// and a spread of k for large ones, sixteen distributions, with and without padding.
#include "test_kernels_common.hpp"

#include <mixdepth/kernels/order_key.hpp>
#include <mixdepth/kernels/topk_portable.hpp>
#include <mixdepth/topk.hpp>

#include <algorithm>
#include <bit>
#include <set>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

using namespace mixdepth;
using namespace mixdepth::kernels_testing;

namespace {

// The portable answer for one input.
template <class T>
std::vector<std::int32_t> portable_top_k(const std::vector<T>& s, std::ptrdiff_t k, std::ptrdiff_t valid) {
  const auto n = static_cast<std::ptrdiff_t>(s.size());
  static thread_local std::vector<kernels::TopKEntry<T>> entries;
  entries.resize(std::size_t(n));
  std::vector<std::int32_t> expected(static_cast<std::size_t>(k));
  kernels::top_k_portable(s.data(), n, valid, k, expected.data(), entries.data());
  return expected;
}

// Runs the kernel of every architecture on one input; returns how many differ from the
// portable answer (and reports each).
template <class T>
int mismatches(const std::vector<T>& s, std::ptrdiff_t k, std::ptrdiff_t valid, const char* what) {
  const auto n = static_cast<std::ptrdiff_t>(s.size());
  const std::vector<std::int32_t> expected = portable_top_k(s, k, valid);
  static thread_local std::vector<kernels::rank_key_t<T>> scratch;
  int failures = 0;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    scratch.assign(std::size_t(kernels::top_k_scratch_size<T>(n)), 0);
    // Guards on both sides of the output catch writes outside out[0, k).
    constexpr std::int32_t guard = -77;
    std::vector<std::int32_t> actual(static_cast<std::size_t>(k + 64), guard);
    kernels::top_k<Arch>(s.data(), n, valid, k, actual.data() + 32, scratch.data());
    bool guards_intact = true;
    for (int i = 0; i < 32; ++i)
      guards_intact = guards_intact && actual[std::size_t(i)] == guard && actual[std::size_t(32 + k + i)] == guard;
    const bool same = guards_intact && std::equal(expected.begin(), expected.end(), actual.begin() + 32);
    if (!same) {
      INFO("arch=", std::string(Arch::name()), " T=", std::string(sizeof(T) == 4 ? "float" : "double"), " n=", n, " k=", k, " valid=", valid,
           " distribution=", std::string(what), " guards intact=", guards_intact);
      CHECK(same);
      ++failures;
    }
  });
  return failures;
}

// Every distribution at sizes [n_begin, n_end); every k or a spread of k; valid = n and a
// random length. Returns the number of inputs checked (each on every architecture).
template <class T>
long run_sizes(std::ptrdiff_t n_begin, std::ptrdiff_t n_end, bool all_k, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  long checked = 0;
  int failures = 0;
  for (std::ptrdiff_t n = n_begin; n < n_end && failures < 5; ++n) {
    for (int d = 0; d < int(distribution::count); ++d) {
      const auto s = make_scores<T>(rng, n, distribution(d));
      std::vector<std::ptrdiff_t> ks;
      if (all_k) {
        for (std::ptrdiff_t k = 0; k <= n; ++k) ks.push_back(k);
      } else {
        ks = {0, 1, 2, 3, n / 8, n / 4, n / 2 - 1, n / 2, n / 2 + 1, n - 2, n - 1, n,
              std::ptrdiff_t(rng() % std::uint64_t(n + 1))};
      }
      const std::ptrdiff_t some_valid = std::ptrdiff_t(rng() % std::uint64_t(n + 1));
      for (std::ptrdiff_t k : ks) {
        if (k < 0 || k > n) continue;
        for (std::ptrdiff_t valid : {n, some_valid}) {
          failures += mismatches(s, k, valid, name_of(distribution(d)));
          ++checked;
        }
      }
    }
  }
  return checked;
}

}  // namespace

TEST_CASE_TEMPLATE("kernel top_k equals top_k_portable: every size to 300, every k to 100", T, float, double) {
  const long checked = run_sizes<T>(1, 101, true, 1) + run_sizes<T>(101, 301, false, 11);
  MESSAGE(checked, " inputs, each on ", arch_count(), " architectures");
  CHECK(checked > 200000);
}

TEST_CASE_TEMPLATE("kernel top_k equals top_k_portable: vector-width boundaries to 1100", T, float, double) {
  long checked = 0;
  std::mt19937_64 rng(2);
  for (std::ptrdiff_t base = 320; base <= 1100; base += 48)
    for (std::ptrdiff_t n : {base - 1, base, base + 1}) checked += run_sizes<T>(n, n + 1, false, rng());
  MESSAGE(checked, " inputs, each on ", arch_count(), " architectures");
  CHECK(checked > 10000);
}

TEST_CASE_TEMPLATE("kernel top_k equals top_k_portable: sizes to 70000", T, float, double) {
  long checked = 0;
  std::mt19937_64 rng(3);
  for (std::ptrdiff_t n : {1500, 2047, 4096, 4097, 8191, 16384, 32768, 70000})
    checked += run_sizes<T>(n, n + 1, false, rng());
  MESSAGE(checked, " inputs, each on ", arch_count(), " architectures");
  CHECK(checked > 2000);
}

TEST_CASE_TEMPLATE("kernel top_k equals top_k_portable: random shapes and mixtures", T, float, double) {
  // Mixtures of two distributions in blocks, random sizes, k and lengths: what the fixed grid
  // above does not reach (e.g. a bracket that misses, sets whose keys are far from uniform).
  std::mt19937_64 rng(4);
  int failures = 0;
  for (int trial = 0; trial < 3000 && failures < 5; ++trial) {
    const auto n = std::ptrdiff_t(1 + rng() % (trial % 10 == 0 ? 20000 : 600));
    auto s = make_scores<T>(rng, n, distribution(rng() % int(distribution::count)));
    const auto other = make_scores<T>(rng, n, distribution(rng() % int(distribution::count)));
    const auto block = std::ptrdiff_t(1 + rng() % 64);
    for (std::ptrdiff_t i = 0; i < n; ++i)
      if ((i / block) % 2) s[std::size_t(i)] = other[std::size_t(i)];
    const auto k = std::ptrdiff_t(rng() % std::uint64_t(n + 1));
    const auto valid = rng() % 2 ? n : std::ptrdiff_t(rng() % std::uint64_t(n + 1));
    failures += mismatches(s, k, valid, "mixture");
  }
  CHECK(failures == 0);
}

// top_k_portable, the kernels' reference above, shares order_key.hpp with them: here it meets
// the contract written with plain comparisons, on every distribution, at sizes across the
// vector widths and the sampling thresholds, with and without padding.
TEST_CASE_TEMPLATE("top_k_portable equals a brute-force sort by the contract's rules, sizes to 2500", T, float, double) {
  std::mt19937_64 rng(5);
  long checked = 0;
  int failures = 0;
  std::vector<std::ptrdiff_t> sizes;
  for (std::ptrdiff_t n = 1; n <= 70; ++n) sizes.push_back(n);
  for (std::ptrdiff_t n : {127, 128, 129, 255, 256, 257, 511, 512, 1000, 1023, 1024, 1025, 2047, 2048, 2500})
    sizes.push_back(n);
  for (const std::ptrdiff_t n : sizes) {
    for (int d = 0; d < int(distribution::count) && failures < 5; ++d) {
      const auto s = make_scores<T>(rng, n, distribution(d));
      const std::ptrdiff_t some_valid = std::ptrdiff_t(rng() % std::uint64_t(n + 1));
      for (std::ptrdiff_t k : {std::ptrdiff_t(0), std::ptrdiff_t(1), n / 8, n / 2, n - 1, n,
                               std::ptrdiff_t(rng() % std::uint64_t(n + 1))}) {
        if (k < 0) continue;
        for (std::ptrdiff_t valid : {n, some_valid}) {
          const bool same = portable_top_k(s, k, valid) == brute_force_top_k(s, k, valid);
          if (!same) {
            INFO("n=", n, " k=", k, " valid=", valid, " distribution=", std::string(name_of(distribution(d))));
            CHECK(same);
            ++failures;
          }
          ++checked;
        }
      }
    }
  }
  MESSAGE(checked, " inputs");
  CHECK(checked > 10000);
  CHECK(failures == 0);
}

TEST_CASE("rank keys order values exactly as order_key does, for float and double") {
  auto check = [](auto zero) {
    using T = decltype(zero);
    using Keys = kernels::top_k_detail::rank_keys<T, kernels::static_arch>;
    const T nan = std::numeric_limits<T>::quiet_NaN();
    const T inf = std::numeric_limits<T>::infinity();
    const T tiny = std::numeric_limits<T>::denorm_min();
    const T max = std::numeric_limits<T>::max();
    const std::vector<T> values = {nan, -nan, -inf, -max, T(-1), -tiny, T(-0.0), T(0), tiny,
                                   std::numeric_limits<T>::min(), T(1), T(1.5), max, inf};
    for (T a : values)
      for (T b : values) {
        const bool by_order_key = kernels::order_key(a) < kernels::order_key(b);
        const bool by_rank_key = Keys::of(a) < Keys::of(b);
        const bool same_key = Keys::of(a) == Keys::of(b);
        INFO("a=", a, " b=", b);
        CHECK(by_order_key == by_rank_key);
        CHECK(same_key == (kernels::order_key(a) == kernels::order_key(b)));
        CHECK(Keys::of(a) > Keys::sentinel);
      }
  };
  check(0.0f);
  check(0.0);
}

// Not an output property (any sample gives the same answer) but what keeps a periodic input
// from hiding the threshold's side from the sample: the positions rise, stay in [0, n), and
// their offsets inside each stride spread out instead of repeating one phase. The sample
// size is the power of two that sample_grid's comment states.
TEST_CASE("kernel top_k samples at hashed offsets inside each stride") {
  using search = kernels::top_k_detail::search<float, kernels::static_arch>;
  long checked = 0;
  for (std::ptrdiff_t n : {49, 64, 100, 255, 256, 1000, 1024, 2000, 4096, 4099, 9000, 16384, 65536, 70001, 1 << 30}) {
    const search::sample_grid grid(n);
    const std::ptrdiff_t m = grid.m;
    // m: a power of two in [32, 128], the largest one with m^2 <= n unless a bound holds it.
    INFO("n=", n, " m=", m);
    CHECK((m & (m - 1)) == 0);
    CHECK(m >= 32);
    CHECK(m <= 128);
    CHECK((m == 32 || m * m <= n));
    CHECK((m == 128 || 4 * m * m > n));
    std::set<std::ptrdiff_t> offsets;
    std::ptrdiff_t previous = -1;
    for (std::ptrdiff_t i = 0; i < m; ++i) {
      const std::ptrdiff_t p = grid.position(i);
      INFO("n=", n, " i=", i, " p=", p);
      CHECK(p > previous);
      CHECK(p < n);
      offsets.insert(p - i * n / m);
      previous = p;
    }
    INFO("n=", n, " m=", m, " distinct offsets=", offsets.size());
    CHECK(std::ptrdiff_t(offsets.size()) >= std::min<std::ptrdiff_t>(n / m, m) / 4);
    ++checked;
  }
  CHECK(checked == 15);
}

TEST_CASE("kernel top_k writes nothing for k = 0 and 0..k-1 once k reaches the valid length") {
  std::vector<float> s = {3, 1, 2, 5};
  std::vector<std::int32_t> out(4, -1);
  std::vector<kernels::rank_key_t<float>> scratch(std::size_t(kernels::top_k_scratch_size<float>(4)));
  kernels::top_k<kernels::static_arch>(s.data(), 4, 4, 0, out.data(), scratch.data());
  CHECK(out == std::vector<std::int32_t>{-1, -1, -1, -1});
  kernels::top_k<kernels::static_arch>(s.data(), 4, 2, 3, out.data(), scratch.data());
  CHECK(out == std::vector<std::int32_t>{0, 1, 2, -1});
}

TEST_CASE("TopKScratch grows for longer sequences and select_top_k reuses it") {
  TopKScratch<double> scratch;
  std::mt19937_64 rng(5);
  for (Index n : {10, 5000, 100, 20000, 3}) {
    const auto s = make_scores<double>(rng, n, distribution::normal);
    const Index k = n / 3 + 1;
    std::vector<Position> out(static_cast<std::size_t>(std::min(k, n)));
    select_top_k<double>(s, {1, n}, k, out, {}, scratch);
    CHECK(scratch.bytes() >= sizeof(std::int64_t) * std::size_t(kernels::top_k_scratch_size<double>(n)));
    CHECK(std::is_sorted(out.begin(), out.end()));
    CHECK(std::set<Position>(out.begin(), out.end()).size() == out.size());
  }
}

#if defined(__SSE__)
namespace {

// Sets MXCSR's DAZ and FTZ bits (as an executable linked with -ffast-math or -Ofast runs)
// for its lifetime.
struct FastMathMxcsr {
  unsigned saved = _mm_getcsr();
  FastMathMxcsr() { _mm_setcsr(saved | 0x8040u); }
  ~FastMathMxcsr() { _mm_setcsr(saved); }
};

// Scores that are mostly denormals of both signs, with zeros of both signs, a few normal
// numbers and NaNs: under DAZ a float compare reads every denormal as zero.
template <class T>
std::vector<T> denormal_scores(std::mt19937_64& rng, std::ptrdiff_t n) {
  using Bits = kernels::order_key_t<T>;
  constexpr Bits sign = Bits{1} << (8 * sizeof(T) - 1);
  constexpr Bits fraction = (Bits{1} << (std::numeric_limits<T>::digits - 1)) - 1;
  std::vector<T> s(static_cast<std::size_t>(n));
  for (auto& v : s) {
    const auto pick = rng() % 32;
    const Bits bits = Bits(rng()) & (pick < 24 ? (sign | fraction) : pick < 26 ? (sign | Bits{15}) : sign);
    v = std::bit_cast<T>(bits);
    if (pick == 30) v = T(rng() % 2 ? 1 : -1) * std::numeric_limits<T>::min();
    if (pick == 31 && rng() % 4 == 0) v = std::numeric_limits<T>::quiet_NaN();
  }
  return s;
}

}  // namespace

// crtfastmath.o sets DAZ at startup in any program linked with -ffast-math: the kernels'
// vector compares then read denormals as zero while their integer keys do not. The answer
// must not change (nor may any write leave out[0, k), which the guards in mismatches() check),
// the portable reference must not change either, and the caller's MXCSR must come back as it
// was.
TEST_CASE_TEMPLATE("kernel top_k gives the same answer with denormals-are-zero set", T, float, double) {
  std::mt19937_64 rng(sizeof(T) == 4 ? 411 : 412);
  long checked = 0;
  for (std::ptrdiff_t n : {1, 2, 15, 16, 17, 63, 64, 65, 100, 129, 255, 1000, 4096, 5003}) {
    for (int round = 0; round < 3; ++round) {
      const auto s = denormal_scores<T>(rng, n);
      const std::ptrdiff_t some_valid = std::ptrdiff_t(rng() % std::uint64_t(n + 1));
      for (std::ptrdiff_t k : {std::ptrdiff_t{1}, std::ptrdiff_t{2}, n / 8, n / 2, n - 1, std::ptrdiff_t(rng() % std::uint64_t(n + 1))}) {
        if (k < 0 || k > n) continue;
        for (std::ptrdiff_t valid : {n, some_valid}) {
          const auto expected = portable_top_k(s, k, valid);  // the default MXCSR
          unsigned inside = 0;
          {
            const FastMathMxcsr fast_math;
            const auto reference = portable_top_k(s, k, valid);
            INFO("n=", n, " k=", k, " valid=", valid);
            CHECK(reference == expected);
            CHECK(mismatches(s, k, valid, "denormals under DAZ") == 0);
            inside = _mm_getcsr();
          }
          CHECK((inside & 0x8040u) == 0x8040u);  // the kernels restored the caller's flags
          ++checked;
        }
      }
    }
  }
  CHECK(checked > 400);
}
#endif
