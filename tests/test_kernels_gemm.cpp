// The GEMM kernel on every architecture this build can run, against a double-precision
// (long double for double) reference within the rounding bound of a k-term dot product:
// shapes across every tile, panel and block edge, transposed operands, alpha, accumulation,
// an empty depth, a C of NaN that overwriting must ignore; plus the promise of
// kernels/gemm.hpp that a coefficient does not depend on the other rows and columns of the
// product, and that edge tiles write nothing outside C. This file is an executable of its
// own compiled with -ffp-contract=fast (tests/CMakeLists.txt), as a user's code may be: the
// kernel's bits must not depend on it (the reference's bound covers any contraction); nor
// may the router kernel's promise that a row alone gets its bits in a batch. CI's
// 32-bit step compiles it with the other kernel tests, contraction off.
#include "test_kernels_common.hpp"

#include <mixdepth/kernels/gemm.hpp>
#include <mixdepth/kernels/rows_simd.hpp>

#include <algorithm>
#include <cmath>

using namespace mixdepth;
using namespace mixdepth::kernels_testing;

namespace {

template <class T>
using wide_t = std::conditional_t<std::is_same_v<T, float>, double, long double>;

// Operands in memory with their strides: A m x k, B k x n, either one stored transposed.
template <class T>
struct Operands {
  std::ptrdiff_t m, n, k;
  std::vector<T> a, b;
  std::ptrdiff_t a_rs, a_cs, b_rs, b_cs;
  T at_a(std::ptrdiff_t i, std::ptrdiff_t p) const { return a[std::size_t(i * a_rs + p * a_cs)]; }
  T at_b(std::ptrdiff_t p, std::ptrdiff_t j) const { return b[std::size_t(p * b_rs + j * b_cs)]; }
};

// A rows x cols operand with random values, stored row by row or (transposed) column by
// column, each stored line `pad` elements longer than it needs.
template <class T>
void store_operand(std::mt19937_64& rng, std::ptrdiff_t rows, std::ptrdiff_t cols, bool transposed,
                   std::ptrdiff_t pad, std::vector<T>& values, std::ptrdiff_t& row_stride,
                   std::ptrdiff_t& col_stride) {
  const std::ptrdiff_t lines = transposed ? cols : rows, line = (transposed ? rows : cols) + pad;
  values = normal_values<T>(rng, std::max<std::ptrdiff_t>(lines, 1) * line);
  row_stride = transposed ? 1 : line;
  col_stride = transposed ? line : 1;
}

template <class T>
Operands<T> make_operands(std::mt19937_64& rng, std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k,
                          bool a_transposed, bool b_transposed) {
  Operands<T> o{m, n, k, {}, {}, 0, 0, 0, 0};
  const std::ptrdiff_t pad = std::ptrdiff_t(rng() % 3);  // leading dimensions beyond the extent
  store_operand(rng, m, k, a_transposed, pad, o.a, o.a_rs, o.a_cs);
  store_operand(rng, k, n, b_transposed, pad, o.b, o.b_rs, o.b_cs);
  return o;
}

// C = alpha A B (+ C0) on Arch, with C's rows `ldc` apart inside a buffer whose gaps and tail
// hold a sentinel that must survive.
template <class Arch, class T>
std::vector<T> run(const Operands<T>& o, T alpha, bool accumulate, const std::vector<T>& c0, std::ptrdiff_t ldc) {
  std::vector<T> c = c0;
  const std::ptrdiff_t work_size = kernels::gemm_workspace<Arch, T>(o.m, o.n, o.k);
  std::vector<T, xsimd::aligned_allocator<T, 64>> work(std::size_t(std::max<std::ptrdiff_t>(work_size, 1)));
  kernels::gemm<Arch, T>(o.m, o.n, o.k, alpha, o.a.data(), o.a_rs, o.a_cs, o.b.data(), o.b_rs, o.b_cs, accumulate,
                         c.data(), ldc, work.data());
  return c;
}

constexpr double sentinel = -12345.0;

// Checks every coefficient against the wide reference and every gap against the sentinel.
template <class T>
void check_against_reference(const char* arch, const Operands<T>& o, T alpha, bool accumulate,
                             const std::vector<T>& c0, const std::vector<T>& c, std::ptrdiff_t ldc) {
  using W = wide_t<T>;
  const double eps = double(std::numeric_limits<T>::epsilon());
  long bad = 0;
  for (std::ptrdiff_t i = 0; i < o.m; ++i) {
    for (std::ptrdiff_t j = 0; j < o.n; ++j) {
      W sum = 0, magnitude = 0;
      for (std::ptrdiff_t p = 0; p < o.k; ++p) {
        const W term = W(o.at_a(i, p)) * W(o.at_b(p, j));
        sum += term;
        magnitude += std::fabs(term);
      }
      const W before = accumulate ? W(c0[std::size_t(i * ldc + j)]) : W(0);
      const W want = before + W(alpha) * sum;
      // Any order of a k-term sum with fused multiply-adds: |error| <= k eps sum|a b| (to
      // first order), then the scaling by alpha and the addition of C0, one rounding each.
      const double bound = eps * (double(o.k + 2) * std::fabs(double(alpha)) * double(magnitude) +
                                  2 * std::fabs(double(before)) + std::fabs(double(want)));
      const double error = std::fabs(double(W(c[std::size_t(i * ldc + j)]) - want));
      if (!(error <= bound) && bad++ < 3) {
        INFO("arch=", std::string(arch), " m=", o.m, " n=", o.n, " k=", o.k, " i=", i, " j=", j, " error=", error,
             " bound=", bound);
        CHECK(error <= bound);
      }
    }
    for (std::ptrdiff_t j = o.n; j < ldc; ++j)
      if (c[std::size_t(i * ldc + j)] != T(sentinel) && bad++ < 3) CHECK(c[std::size_t(i * ldc + j)] == T(sentinel));
  }
  for (std::size_t t = std::size_t(o.m * ldc); t < c.size(); ++t)
    if (c[t] != T(sentinel) && bad++ < 3) CHECK(c[t] == T(sentinel));
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE_TEMPLATE("kernel gemm equals A B in wider precision, within rounding, on every tile edge", T, float,
                   double) {
  std::mt19937_64 rng(21);
  // 6 rows per tile (a last strip of 1-5 rows runs a tile of its height); 64/32/16/8 columns
  // per tile; 512/256 deep per panel; 384 rows and 1536 columns per block: sizes on both
  // sides of each.
  const std::ptrdiff_t ms[] = {1, 2, 3, 4, 5, 6, 7, 13, 64, 383, 385};
  const std::ptrdiff_t ns[] = {1, 3, 8, 15, 16, 17, 31, 33, 63, 64, 65, 130, 1537};
  const std::ptrdiff_t ks[] = {0, 1, 2, 7, 64, 255, 257, 513};
  long cases = 0;
  for (std::ptrdiff_t m : ms)
    for (std::ptrdiff_t n : ns)
      for (std::ptrdiff_t k : ks) {
        if (m * n * k > 3'000'000) continue;  // keeps the wide reference quick
        const bool a_t = rng() % 2, b_t = rng() % 3 == 0, accumulate = rng() % 3 == 0;
        const T alpha = (rng() % 2) ? T(1) : T(-0.375);
        const Operands<T> o = make_operands<T>(rng, m, n, k, a_t, b_t);
        const std::ptrdiff_t ldc = n + std::ptrdiff_t(rng() % 3);
        std::vector<T> c0(std::size_t(m * ldc + 5), T(sentinel));
        for (std::ptrdiff_t i = 0; i < m; ++i)
          for (std::ptrdiff_t j = 0; j < n; ++j) c0[std::size_t(i * ldc + j)] = accumulate ? T(0.5 * j - i) : std::numeric_limits<T>::quiet_NaN();
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          const std::vector<T> c = run<Arch>(o, alpha, accumulate, c0, ldc);
          check_against_reference(Arch::name(), o, alpha, accumulate, c0, c, ldc);
        });
        ++cases;
      }
  CHECK(cases > 600);
}

TEST_CASE_TEMPLATE("kernel gemm: a coefficient depends on its row, its column and k only", T, float, double) {
  std::mt19937_64 rng(22);
  for (auto [m, n, k] : {std::array<std::ptrdiff_t, 3>{50, 150, 600}, {400, 70, 33}, {9, 1600, 20}}) {
    const Operands<T> o = make_operands<T>(rng, m, n, k, false, false);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      // alpha != 1 and, at k = 600 (float), two panels of depth: the second adds alpha acc to C.
      const T alpha = T(-0.375);
      const std::vector<T> full = run<Arch>(o, alpha, false, std::vector<T>(std::size_t(m * n)), n);
      // A window of rows and columns that starts off every tile boundary.
      const std::ptrdiff_t i0 = 1 + std::ptrdiff_t(rng() % std::uint64_t(m - 1)), j0 = 1 + std::ptrdiff_t(rng() % std::uint64_t(n - 1));
      const std::ptrdiff_t mm = std::min<std::ptrdiff_t>(m - i0, 11), nn = std::min<std::ptrdiff_t>(n - j0, 37);
      Operands<T> part = o;
      part.m = mm, part.n = nn;
      part.a.assign(o.a.begin() + i0 * o.a_rs, o.a.end());
      part.b.assign(o.b.begin() + j0, o.b.end());
      const std::vector<T> window = run<Arch>(part, alpha, false, std::vector<T>(std::size_t(mm * nn)), nn);
      bool same = true;
      for (std::ptrdiff_t i = 0; i < mm; ++i)
        for (std::ptrdiff_t j = 0; j < nn; ++j)
          same = same && std::memcmp(&window[std::size_t(i * nn + j)], &full[std::size_t((i0 + i) * n + j0 + j)],
                                     sizeof(T)) == 0;
      INFO("arch=", std::string(Arch::name()), " m=", m, " n=", n, " k=", k, " i0=", i0, " j0=", j0);
      CHECK(same);
    });
  }
}

// The extreme windows: one column (n = 1) and one row (m = 1), where a compiler that
// vectorizes the plain loops for n > 1 runs its scalar remainder instead.
TEST_CASE_TEMPLATE("kernel gemm: a row or a column computed alone has the bits it has in the whole product", T,
                   float, double) {
  std::mt19937_64 rng(24);
  const std::ptrdiff_t m = 4, n = 70, k = 600;
  const Operands<T> o = make_operands<T>(rng, m, n, k, false, false);
  for (const bool accumulate : {false, true}) {
    const std::vector<T> c0 = normal_values<T>(rng, m * n);
    const T alpha = accumulate ? T(1) : T(-0.3);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      const std::vector<T> full = run<Arch>(o, alpha, accumulate, c0, n);
      long differ = 0;
      for (std::ptrdiff_t j = 0; j < n; ++j) {
        Operands<T> column = o;
        column.n = 1;
        column.b.assign(o.b.begin() + j, o.b.end());
        // Room past the m coefficients, as a whole tile's store would need (GCC's
        // -Warray-bounds cannot see that a one-column product never makes one).
        std::vector<T> c(static_cast<std::size_t>(m + 64), T(0));
        for (std::ptrdiff_t i = 0; i < m; ++i) c[std::size_t(i)] = c0[std::size_t(i * n + j)];
        c = run<Arch>(column, alpha, accumulate, c, 1);
        for (std::ptrdiff_t i = 0; i < m; ++i)
          differ += std::memcmp(&c[std::size_t(i)], &full[std::size_t(i * n + j)], sizeof(T)) != 0;
      }
      for (std::ptrdiff_t i = 0; i < m; ++i) {
        Operands<T> row = o;
        row.m = 1;
        row.a.assign(o.a.begin() + i * o.a_rs, o.a.end());
        const std::vector<T> c = run<Arch>(row, alpha, accumulate,
                                           std::vector<T>(c0.begin() + i * n, c0.begin() + (i + 1) * n), n);
        differ += std::memcmp(c.data(), &full[std::size_t(i * n)], sizeof(T) * std::size_t(n)) != 0;
      }
      INFO("arch=", std::string(Arch::name()), " accumulate=", accumulate);
      CHECK(differ == 0);
    });
  }
}

// A product of one row takes its own path (streaming whole rows of B, the accumulators in
// registers up to 8 vectors wide, in memory beyond), which must give each coefficient the
// tile's operations: widths either side of every vector count and of a panel of columns,
// depths either side of a block of depth, A stored either way, B's rows padded.
TEST_CASE_TEMPLATE("kernel gemm: one row alone has the bits of the same row among others, at every width and depth",
                   T, float, double) {
  std::mt19937_64 rng(25);
  const std::ptrdiff_t m = 7, row = 3;
  long cases = 0, differ = 0;
  for (const std::ptrdiff_t n : {1, 7, 16, 33, 64, 100, 128, 129, 257, 1600})
    for (const std::ptrdiff_t k : {1, 9, 600})
      for (const bool a_transposed : {false, true}) {
        const Operands<T> o = make_operands<T>(rng, m, n, k, a_transposed, false);
        Operands<T> one = o;
        one.m = 1;
        one.a.assign(o.a.begin() + row * o.a_rs, o.a.end());
        for (const bool accumulate : {false, true}) {
          const std::vector<T> c0 = normal_values<T>(rng, m * n);
          const T alpha = accumulate ? T(0.7) : T(-0.3);
          for_each_arch([&](auto arch) {
            using Arch = decltype(arch);
            const std::vector<T> full = run<Arch>(o, alpha, accumulate, c0, n);
            const std::vector<T> alone = run<Arch>(
                one, alpha, accumulate, std::vector<T>(c0.begin() + row * n, c0.begin() + (row + 1) * n), n);
            const bool same = std::memcmp(alone.data(), &full[std::size_t(row * n)], sizeof(T) * std::size_t(n)) == 0;
            if (!same && differ++ < 3) {
              INFO("arch=", std::string(Arch::name()), " n=", n, " k=", k, " a_transposed=", a_transposed,
                   " accumulate=", accumulate);
              CHECK(same);
            }
            ++cases;
          });
        }
      }
  CHECK(cases == 10 * 3 * 2 * 2 * arch_count());
  CHECK(differ == 0);
}

TEST_CASE_TEMPLATE("kernel gemm: a NaN or infinity stays in its own row and column", T, float, double) {
  std::mt19937_64 rng(23);
  const std::ptrdiff_t m = 13, n = 70, k = 40;
  Operands<T> o = make_operands<T>(rng, m, n, k, false, false);
  o.a[std::size_t(7 * o.a_rs + 3)] = std::numeric_limits<T>::quiet_NaN();  // row 7
  o.b[std::size_t(5 * o.b_rs + 66)] = std::numeric_limits<T>::infinity();    // column 66
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    const std::vector<T> c = run<Arch>(o, T(1), false, std::vector<T>(std::size_t(m * n)), n);
    long wrong = 0;
    for (std::ptrdiff_t i = 0; i < m; ++i)
      for (std::ptrdiff_t j = 0; j < n; ++j) {
        const T v = c[std::size_t(i * n + j)];
        if (i == 7) wrong += !std::isnan(v);
        else if (j == 66) wrong += !std::isinf(v);
        else wrong += !std::isfinite(v);
      }
    INFO("arch=", std::string(Arch::name()));
    CHECK(wrong == 0);
  });
}

// The prefetch of kernels/gemm.hpp: after each panel, the next one the tiles read in place,
// found here by walking the driver's loops (columns, then depth, then rows, then panels)
// over shapes on both sides of every block edge, and every line it names inside B.
TEST_CASE_TEMPLATE("kernel gemm: next_panel names the next panel read in place, inside B", T, float, double) {
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    if constexpr (kernels::arch_traits::is_xsimd<Arch>()) {
      using Blocking = kernels::gemm_blocking<Arch, T>;
      constexpr std::ptrdiff_t N = Blocking::cols;
      long panels = 0, wrong = 0, outside = 0;
      const std::ptrdiff_t ms[] = {1, 7, Blocking::mc, Blocking::mc + 5};
      const std::ptrdiff_t ns[] = {N - 1, N, 3 * N + 5, Blocking::nc, Blocking::nc + N, Blocking::nc + N - 1};
      const std::ptrdiff_t ks[] = {1, Blocking::kc, Blocking::kc + 3, 2 * Blocking::kc};
      for (std::ptrdiff_t m : ms)
        for (std::ptrdiff_t n : ns)
          for (std::ptrdiff_t k : ks)
            for (const bool transposed : {false, true}) {
              const std::ptrdiff_t b_rs = transposed ? 1 : n + 3, b_cs = transposed ? k + 3 : 1;
              const std::vector<T> b(std::size_t(transposed ? n * b_cs : k * b_rs));
              const T* const last = b.data() + b.size();
              // Every panel position in the driver's order, and what the tiles read there.
              std::vector<kernels::detail_gemm::PanelPosition> order;
              std::vector<kernels::detail_gemm::PanelLines<Arch, T>> read;
              for (std::ptrdiff_t jc = 0; jc < n; jc += Blocking::nc)
                for (std::ptrdiff_t pc = 0; pc < k; pc += Blocking::kc)
                  for (std::ptrdiff_t ic = 0; ic < m; ic += Blocking::mc)
                    for (std::ptrdiff_t js = 0; js < std::min(Blocking::nc, n - jc); js += N) {
                      order.push_back({jc, pc, ic, js});
                      const bool in_place = !transposed && std::min(Blocking::nc, n - jc) - js >= N;
                      read.push_back(in_place ? kernels::detail_gemm::PanelLines<Arch, T>{
                                                    b.data() + pc * b_rs + jc + js, b_rs, std::min(Blocking::kc, k - pc)}
                                              : kernels::detail_gemm::PanelLines<Arch, T>{});
                    }
              for (std::size_t i = 0; i < order.size(); ++i) {
                const auto next = kernels::detail_gemm::next_panel<Arch, T>(m, n, k, b.data(), b_rs, b_cs, order[i]);
                const auto expected = i + 1 < order.size() ? read[i + 1] : kernels::detail_gemm::PanelLines<Arch, T>{};
                wrong += next.data != expected.data || next.depth != expected.depth || next.rows != expected.rows;
                if (next.count() > 0)  // the first line, and the end of the last row's N columns
                  outside += next.at(0) < b.data() || next.at(next.count() - 1) + std::min(next.line, N) > last;
                ++panels;
              }
            }
      INFO("arch=", std::string(Arch::name()));
      CHECK(panels > 500);
      CHECK(wrong == 0);
      CHECK(outside == 0);
    }
  });
}

// Under contraction, a multiply and an add that the kernel leaves to the compiler could be
// fused in the four-row loop and not in the one-row loop (it was, on SSE2 and AVX2 without
// FMA tags): every row scored alone must still get the bits it gets among others.
TEST_CASE_TEMPLATE("router_scores: a row alone has its bits in a batch, on every architecture, contraction on", T, float,
                   double) {
  std::mt19937_64 rng(31);
  std::normal_distribution<double> normal;
  long differ = 0, checked = 0;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    for (std::ptrdiff_t d = 1; d <= 700; d += 23) {
      const std::ptrdiff_t rows = 9;
      std::vector<T> x(static_cast<std::size_t>(rows * d)), w(static_cast<std::size_t>(d)),
          all(static_cast<std::size_t>(rows)), one(1);
      for (auto& v : x) v = T(normal(rng));
      for (auto& v : w) v = T(normal(rng));
      kernels::router_scores<Arch, T>(x.data(), d, rows, d, w.data(), T(0.25), all.data());
      for (std::ptrdiff_t r = 0; r < rows; ++r) {
        kernels::router_scores<Arch, T>(x.data() + r * d, d, 1, d, w.data(), T(0.25), one.data());
        differ += std::memcmp(&one[0], &all[std::size_t(r)], sizeof(T)) != 0;
        ++checked;
      }
    }
  });
  CHECK(checked > 0);
  CHECK(differ == 0);
}
