// Runtime dispatch (MIXDEPTH_RUNTIME_DISPATCH, cmake/mixdepthDispatch.cmake): this program
// links a library made by mixdepth_add_dispatch_library() and checks that
//   - active() is the best compiled table the CPU runs, by the CPU's own flags
//     (/proc/cpuinfo, not the dispatcher's __builtin_cpu_supports), and the same table for
//     every thread that asks first at once;
//   - every compiled table the CPU runs equals the portable top-k, gather and gated scatter
//     (bit for bit) and a double-precision router (within rounding), on a few hundred inputs
//     each with ties, NaN, infinities, signed zeros and padding;
//   - select_top_k, gather_rows, scatter_gated and Router::score reach those tables.
// This unit is compiled with the project's flags (-march=native) but must not compile any
// kernel itself: check_units.sh verifies that from its object file.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <mixdepth/mixdepth.hpp>
#include <mixdepth/kernels/rows_portable.hpp>
#include <mixdepth/kernels/topk_portable.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <latch>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef MIXDEPTH_RUNTIME_DISPATCH
#error "the dispatch library must define MIXDEPTH_RUNTIME_DISPATCH for its users"
#endif

using namespace mixdepth;
namespace runtime = mixdepth::kernels::runtime;
using kernels::runtime::kernel_table;

namespace {

std::vector<const kernel_table*> compiled_tables() {
  std::size_t count = 0;
  const kernel_table* const* tables = runtime::compiled(count);
  return {tables, tables + count};
}

// The CPU's feature flags as the kernel reports them (empty where there is no /proc/cpuinfo).
std::set<std::string> cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

// The xsimd architecture name of the table that should win on this CPU, given its flags.
std::string expected_arch(const std::set<std::string>& flags, const std::set<std::string>& compiled) {
  auto has = [&](std::initializer_list<const char*> names) {
    for (const char* n : names)
      if (!flags.count(n)) return false;
    return true;
  };
  const bool avx512 = has({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "popcnt"});
  if (compiled.count("avx512vbmi2") && avx512 && has({"avx512_vbmi2"})) return "avx512vbmi2";
  if (compiled.count("avx512bw") && avx512) return "avx512bw";
  if (compiled.count("fma3+avx2") && has({"avx2", "fma", "popcnt"})) return "fma3+avx2";
  return "scalar";
}

// Scores that break selection code.
template <class T>
std::vector<T> make_scores(std::mt19937_64& rng, std::ptrdiff_t n, int kind) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> percent(0, 99);
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  const T specials[] = {nan, -nan, inf, -inf, T(0), T(-0.0), std::numeric_limits<T>::denorm_min(), T(1), T(-1)};
  std::vector<T> s(static_cast<std::size_t>(n));
  for (auto& v : s) {
    const int p = percent(rng);
    switch (kind) {
      case 0: v = T(normal(rng)); break;                            // distinct
      case 1: v = T(p % 4); break;                                  // heavy ties
      case 2: v = p < 30 ? (p % 2 ? nan : -nan) : T(normal(rng)); break;  // NaN
      case 3: v = p < 60 ? specials[p % 9] : T(normal(rng)); break;       // everything special
      case 4: v = p < 50 ? T(0) : T(-0.0); break;                   // signed zeros only
      default: v = T(-2.5); break;                                  // all equal
    }
  }
  return s;
}
constexpr int kinds = 6;

template <class T>
std::vector<std::int32_t> portable_top_k(const std::vector<T>& s, std::ptrdiff_t valid, std::ptrdiff_t k) {
  const auto n = static_cast<std::ptrdiff_t>(s.size());
  std::vector<kernels::TopKEntry<T>> scratch(static_cast<std::size_t>(kernels::top_k_portable_scratch<T>(n)));
  std::vector<std::int32_t> out(static_cast<std::size_t>(k));
  kernels::top_k_portable(s.data(), n, valid, k, out.data(), scratch.data());
  return out;
}

template <class T>
void table_top_k(const kernel_table& table, const T* s, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k,
                 std::int32_t* out, kernels::rank_key_t<T>* scratch) {
  if constexpr (std::is_same_v<T, float>)
    table.top_k_float(s, n, valid, k, out, scratch);
  else
    table.top_k_double(s, n, valid, k, out, scratch);
}

// Bit for bit, except that any NaN equals any NaN (which operand's payload a + b keeps when
// both are NaN is up to the compiler and the instruction).
template <class T>
bool same_values(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(std::isnan(a[i]) && std::isnan(b[i])) && std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return false;
  return true;
}

const std::ptrdiff_t sizes[] = {1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 47, 48, 49, 63, 64, 65, 100, 127, 128, 129,
                                200, 255, 257, 500, 1000, 1023, 4096, 5000, 20000};

// Runs f(table) for every compiled table this CPU supports; returns how many ran.
template <class F>
int for_each_runnable(F&& f) {
  int ran = 0;
  for (const kernel_table* table : compiled_tables()) {
    if (!runtime::supported(*table)) {
      MESSAGE("table ", std::string(table->arch), " is compiled but this CPU does not run it: skipped");
      continue;
    }
    f(*table);
    ++ran;
  }
  return ran;
}

}  // namespace

TEST_CASE("dispatch: the library lists its tables, best first, the scalar one last") {
  const auto tables = compiled_tables();
  REQUIRE(!tables.empty());
  std::set<std::string> archs;
  for (const kernel_table* t : tables) {
    INFO("table ", std::string(t->arch));
    CHECK(std::string(t->name) == MIXDEPTH_TEST_DISPATCH_TARGET);
    CHECK(archs.insert(t->arch).second);
    CHECK(bool(t->top_k_float));
    CHECK(bool(t->scatter_gated_double));
  }
  CHECK(std::string(tables.back()->arch) == "scalar");
  CHECK(runtime::supported(*tables.back()));
  // A copy is not one of them.
  kernel_table foreign = *tables.back();
  foreign.name = "foreign";
  CHECK_FALSE(runtime::supported(foreign));
  // What CMake compiled (MIXDEPTH_TEST_DISPATCH_ARCHS: avx512vbmi2;avx512;avx2;scalar on x86-64).
  CHECK(tables.size() == std::size_t(MIXDEPTH_TEST_DISPATCH_COUNT));
}

TEST_CASE("dispatch: active() is the best table this CPU runs, by /proc/cpuinfo") {
  const auto tables = compiled_tables();
  const kernel_table& active = runtime::active();
  MESSAGE("active table: ", std::string(active.arch));
  // The first supported one, in the library's (best-first) order.
  const kernel_table* first = nullptr;
  for (const kernel_table* t : tables)
    if (runtime::supported(*t)) {
      first = t;
      break;
    }
  CHECK(first == &active);
  CHECK(&runtime::active() == &active);  // chosen once

  const std::set<std::string> flags = cpu_flags();
  if (flags.empty()) {
    MESSAGE("no /proc/cpuinfo flags: the CPU check is not verified independently");
    return;
  }
  std::set<std::string> compiled;
  for (const kernel_table* t : tables) compiled.insert(t->arch);
  CHECK(std::string(active.arch) == expected_arch(flags, compiled));
  // supported() agrees with the flags for every table.
  for (const kernel_table* t : tables) {
    INFO("table ", std::string(t->arch));
    const std::string arch = t->arch;
    const bool expected = arch == "scalar" || expected_arch(flags, {arch}) == arch;
    CHECK(runtime::supported(*t) == expected);
  }
#if defined(__x86_64__)
  // The machine this project is developed on has AVX-512 (an AVX-512 Xeon or EPYC): there the
  // AVX-512 table must win. MIXDEPTH_TEST_EXPECT_ARCH (environment) overrides.
  if (const char* want = std::getenv("MIXDEPTH_TEST_EXPECT_ARCH"))
    CHECK(std::string(active.arch) == want);
  else if (flags.count("avx512bw") && flags.count("avx512vl") && flags.count("avx512dq"))
    CHECK(std::string(active.arch) == (flags.count("avx512_vbmi2") ? "avx512vbmi2" : "avx512bw"));
#endif
}

TEST_CASE("dispatch: threads that ask first at the same time get the same table") {
  // doctest_discover_tests runs each case in its own process, so these calls are the first.
  constexpr int threads = 8;
  std::latch start(threads);
  std::vector<const kernel_table*> seen(threads, nullptr);
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&, i] {
      start.arrive_and_wait();
      seen[std::size_t(i)] = &runtime::active();
    });
  for (auto& t : pool) t.join();
  for (const kernel_table* t : seen) CHECK(t == &runtime::active());
}

TEST_CASE_TEMPLATE("dispatch: every table the CPU runs equals the portable top-k", T, float, double) {
  std::mt19937_64 rng(20);
  long checked = 0;
  const int ran = for_each_runnable([&](const kernel_table& table) {
    int failures = 0;
    for (std::ptrdiff_t n : sizes) {
      for (int kind = 0; kind < kinds && failures < 5; ++kind) {
        const auto s = make_scores<T>(rng, n, kind);
        const std::ptrdiff_t some = std::ptrdiff_t(rng() % std::uint64_t(n + 1));
        for (std::ptrdiff_t k : {std::ptrdiff_t(0), std::ptrdiff_t(1), n / 8, n / 2, n - 1, n, some}) {
          if (k < 0) continue;
          for (std::ptrdiff_t valid : {n, std::ptrdiff_t(rng() % std::uint64_t(n + 1))}) {
            const auto expected = portable_top_k(s, valid, k);
            std::vector<kernels::rank_key_t<T>> scratch(std::size_t(kernels::top_k_scratch_size<T>(n)));
            std::vector<std::int32_t> actual(std::size_t(k) + 16, -7);
            table_top_k(table, s.data(), n, valid, k, actual.data(), scratch.data());
            const bool same = std::equal(expected.begin(), expected.end(), actual.begin()) &&
                              std::all_of(actual.begin() + k, actual.end(), [](std::int32_t v) { return v == -7; });
            if (!same) {
              INFO("table=", std::string(table.arch), " n=", n, " kind=", kind, " k=", k, " valid=", valid);
              CHECK(same);
              ++failures;
            }
            ++checked;
          }
        }
      }
    }
  });
  CHECK(ran >= 1);
  CHECK(checked >= 300 * ran);
}

TEST_CASE_TEMPLATE("dispatch: every table the CPU runs equals the portable gather and scatter", T, float, double) {
  std::mt19937_64 rng(21);
  long checked = 0;
  for_each_runnable([&](const kernel_table& table) {
    for (std::ptrdiff_t d : {1, 3, 8, 15, 16, 17, 33, 64, 100, 257}) {
      for (int round = 0; round < 12; ++round) {
        const std::ptrdiff_t rows_in = 1 + std::ptrdiff_t(rng() % 40), n = std::ptrdiff_t(rng() % (rows_in + 1));
        const std::ptrdiff_t stride = d + std::ptrdiff_t(rng() % 3), update_stride = d + std::ptrdiff_t(rng() % 3);
        const auto x = make_scores<T>(rng, rows_in * stride, round % kinds);
        const auto update = make_scores<T>(rng, std::max<std::ptrdiff_t>(n, 1) * update_stride, (round + 3) % kinds);
        const auto gates = make_scores<T>(rng, std::max<std::ptrdiff_t>(n, 1), (round + 1) % kinds);
        std::vector<std::int32_t> rows(static_cast<std::size_t>(rows_in));
        for (std::ptrdiff_t i = 0; i < rows_in; ++i) rows[std::size_t(i)] = std::int32_t(i);
        std::shuffle(rows.begin(), rows.end(), rng);
        rows.resize(std::size_t(n));  // distinct rows: the scatter writes each once
        INFO("table=", std::string(table.arch), " d=", d, " n=", n);

        std::vector<T> expected(std::size_t(std::max<std::ptrdiff_t>(n, 1) * d), T(5)), actual = expected;
        kernels::gather_rows_portable(x.data(), stride, rows.data(), n, d, expected.data(), d);
        if constexpr (std::is_same_v<T, float>)
          table.gather_rows_float(x.data(), stride, rows.data(), n, d, actual.data(), d);
        else
          table.gather_rows_double(x.data(), stride, rows.data(), n, d, actual.data(), d);
        CHECK(std::memcmp(expected.data(), actual.data(), sizeof(T) * expected.size()) == 0);

        for (bool in_place : {false, true}) {
          std::vector<T> want = in_place ? x : std::vector<T>(x.size(), T(3)), got = want;
          const T* source = in_place ? nullptr : x.data();
          kernels::scatter_gated_portable(source ? source : want.data(), stride, want.data(), stride, rows.data(), n,
                                          d, update.data(), update_stride, gates.data());
          if constexpr (std::is_same_v<T, float>)
            table.scatter_gated_float(source ? source : got.data(), stride, got.data(), stride, rows.data(), n, d,
                                      update.data(), update_stride, gates.data());
          else
            table.scatter_gated_double(source ? source : got.data(), stride, got.data(), stride, rows.data(), n, d,
                                       update.data(), update_stride, gates.data());
          CHECK(same_values(want, got));
        }
        ++checked;
      }
    }
  });
  CHECK(checked >= 100);
}

TEST_CASE_TEMPLATE("dispatch: every table the CPU runs scores like x w + bias in double precision", T, float, double) {
  std::mt19937_64 rng(22);
  std::normal_distribution<double> normal;
  long checked = 0;
  for_each_runnable([&](const kernel_table& table) {
    for (std::ptrdiff_t d : {1, 4, 7, 16, 31, 64, 65, 256, 1000}) {
      for (std::ptrdiff_t rows : {1, 3, 4, 5, 9, 17}) {
        const std::ptrdiff_t stride = d + std::ptrdiff_t(rng() % 4);
        std::vector<T> x(static_cast<std::size_t>(rows * stride)), w(static_cast<std::size_t>(d));
        for (auto& v : x) v = T(normal(rng));
        for (auto& v : w) v = T(normal(rng));
        const T bias = T(-0.5);
        std::vector<T> logits(std::size_t(rows) + 1, T(-99));
        if constexpr (std::is_same_v<T, float>)
          table.router_scores_float(x.data(), stride, rows, d, w.data(), bias, logits.data());
        else
          table.router_scores_double(x.data(), stride, rows, d, w.data(), bias, logits.data());
        for (std::ptrdiff_t r = 0; r < rows; ++r) {
          double sum = double(bias), magnitude = std::fabs(double(bias));
          for (std::ptrdiff_t c = 0; c < d; ++c) {
            const double term = double(x[std::size_t(r * stride + c)]) * double(w[std::size_t(c)]);
            sum += term;
            magnitude += std::fabs(term);
          }
          const double bound = double(std::numeric_limits<T>::epsilon()) * (double(d) / 4 + 4) * magnitude;
          INFO("table=", std::string(table.arch), " d=", d, " rows=", rows, " row=", r);
          CHECK(std::fabs(double(logits[std::size_t(r)]) - sum) <= bound);
        }
        CHECK(logits[std::size_t(rows)] == T(-99));
        ++checked;
      }
    }
  });
  CHECK(checked >= 50);
}

TEST_CASE_TEMPLATE("dispatch: select_top_k, gather_rows, scatter_gated and Router::score go through active()", T,
                   float, double) {
  std::mt19937_64 rng(23);
  long checked = 0;
  TopKScratch<T> scratch;
  for (Index seq_len : {1, 5, 16, 33, 128, 1000, 4097}) {
    for (int kind = 0; kind < kinds; ++kind) {
      const Shape shape{3, seq_len};
      const auto s = make_scores<T>(rng, shape.rows(), kind);
      const Index lengths[] = {seq_len, Index(rng() % std::uint64_t(seq_len + 1)), 0};
      for (Index k : {Index(0), Index(1), seq_len / 8, seq_len / 2, seq_len, seq_len + 3}) {
        const Index kept = std::min(k, seq_len);
        std::vector<Position> out(std::size_t(shape.batch * kept), -1);
        select_top_k<T>(s, shape, k, out, lengths, scratch);
        for (Index b = 0; b < shape.batch; ++b) {
          const std::vector<T> one(s.begin() + b * seq_len, s.begin() + (b + 1) * seq_len);
          const auto expected = portable_top_k(one, lengths[b], kept);
          INFO("seq_len=", seq_len, " kind=", kind, " k=", k, " b=", b);
          CHECK(std::equal(expected.begin(), expected.end(), out.begin() + b * kept));
        }
        ++checked;
      }
    }
  }
  CHECK(checked >= 200);

  // The Eigen-facing row functions, on one small case each.
  const Index d = 19;
  RowMatrix<T> x = RowMatrix<T>::Random(12, d);
  const std::vector<Position> rows = {11, 0, 5, 6};
  RowMatrix<T> gathered(4, d);
  gather_rows<T>(x, rows, gathered);
  for (std::size_t j = 0; j < rows.size(); ++j) CHECK(gathered.row(Index(j)) == x.row(rows[j]));

  RowMatrix<T> update = RowMatrix<T>::Random(4, d), y = RowMatrix<T>::Zero(12, d);
  const std::vector<T> gates = {T(0.5), T(-1), T(2), T(0.25)};
  scatter_gated<T>(x, rows, update, gates, y);
  RowMatrix<T> expected = RowMatrix<T>::Zero(12, d);
  kernels::scatter_gated_portable(x.data(), d, expected.data(), d, rows.data(), 4, d, update.data(), d, gates.data());
  CHECK(y == expected);

  Router<T> router(Vector<T>::Random(d), T(0.125));
  Vector<T> logits(12);
  router.score(x, logits);
  const Vector<T> reference = (x * router.weight()).array() + router.bias();
  const Vector<T> magnitude = (x.cwiseAbs() * router.weight().cwiseAbs()).array() + std::fabs(router.bias());
  const T eps = std::numeric_limits<T>::epsilon();
  // Both sums round: the kernel's (about d/4 + 4 roundings deep) and Eigen's (up to d).
  CHECK(((logits - reference).cwiseAbs().array() <= T(2 * d + 8) * eps * magnitude.array()).all());
}
