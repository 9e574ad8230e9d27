#pragma once
// Dense matrix product C = alpha A B (or C += alpha A B) for the reference layers' projections
// and attention, over raw pointers and strides. Raw pointers and sizes only.
//
// A is m x k with element (i, p) at a[i * a_rs + p * a_cs]; B is k x n with element (p, j) at
// b[p * b_rs + j * b_cs] (so a transposed operand is only a swap of its two strides); C is
// m x n, row-major, with row stride ldc. C must not overlap A or B.
//
// On an xsimd architecture the product is blocked for caches in panels of up to `kc` rows of
// depth and `nc` columns of B, and `mc` rows of A, and a register tile of rows x cols
// accumulates with fused multiply-adds (AVX-512: 6 x 64 floats in 24 registers; 6 x 16 on
// AVX2). Operands whose rows are contiguous (the layers' row-major activations and weights)
// are read in place; a transposed operand is packed first, and so is the last partial panel
// of B (zero-padded to a whole tile). The last strip of a block, when it has fewer rows than
// a tile, runs a tile of its own height. A product of one row with a B of contiguous rows
// streams whole rows of B instead (row_times_b), with the same operations per coefficient.
// Plain loops (scalar_arch) run i-p-j with one multiply and one add per element (each
// rounded) and no blocking.
//
// The rows of a panel of B read in place lie a whole row of B apart (6 KiB in a 512 x 1536
// weight), a stride the hardware prefetcher does not follow across pages, and weights are
// often cold (each layer's are read once per forward). So while the strips of one panel run,
// they prefetch the next panel read in place into L2, each strip its share of the lines.
//
// Rounding: C(i, j) is a function of row i of A, column j of B and k alone (an edge tile
// accumulates each coefficient in the same order as a full one): the same row gives the
// same result whichever other rows come with it, and the result does not depend on the
// position of the row in the product. Depth is summed in order within each kc block of
// depth, with the blocks added to C in order.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

#include "arch.hpp"
#include "simd_shim.hpp"

namespace mixdepth::kernels {

// Register tile and cache blocking of gemm<Arch, T>.
template <class Arch, class T>
struct gemm_blocking {
  static constexpr bool simd = arch_traits::is_xsimd<Arch>();
  static constexpr std::ptrdiff_t lanes = [] {
    if constexpr (simd)
      return std::ptrdiff_t(xsimd::batch<T, Arch>::size);
    else
      return std::ptrdiff_t{1};
  }();
  // Accumulator vectors per tile row: 4 with 32 vector registers (AVX-512), else 2.
  static constexpr int vectors = arch_traits::has_avx512<Arch>() ? 4 : 2;
  static constexpr std::ptrdiff_t rows = 6;                           // tile rows (of A and C)
  static constexpr std::ptrdiff_t cols = vectors * lanes;             // tile columns (of B and C)
  static constexpr std::ptrdiff_t kc = std::ptrdiff_t(2048 / sizeof(T));  // depth per packed panel
  static constexpr std::ptrdiff_t mc = 384;                           // rows of A packed at once
  static constexpr std::ptrdiff_t nc = 1536;                          // columns of B packed at once
  static_assert(mc % rows == 0 && nc % cols == 0);
};

namespace detail_gemm {

// Every helper here takes Arch, plain loops too, and the kernel calls no standard algorithm
// that moves floats (std::fill, std::copy): the compiler vectorizes such code for the unit's
// instruction set, and a helper whose name does not carry Arch would be one weak symbol that
// the linker hands to units compiled for other instruction sets (ODR; README.md,
// "Instruction sets and the one-definition rule").

template <class Arch>
constexpr std::ptrdiff_t round_up(std::ptrdiff_t x, std::ptrdiff_t to) { return (x + to - 1) / to * to; }

template <class Arch, class T>
void fill_zero(T* first, std::ptrdiff_t count) noexcept {
  for (std::ptrdiff_t i = 0; i < count; ++i) first[i] = T(0);
}

}  // namespace detail_gemm

// Elements of scratch gemm<Arch, T> needs for an m x n x k product: the packed panels (or,
// for one row, a row of accumulators when that is more), or one row of n accumulators for
// plain loops; 0 for an empty product.
template <class Arch, class T>
constexpr std::ptrdiff_t gemm_workspace(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k) {
  using B = gemm_blocking<Arch, T>;
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  if constexpr (!B::simd) {
    return n;  // one row of accumulators
  } else {
    const std::ptrdiff_t kc = std::min(k, B::kc);
    const std::ptrdiff_t packed_b = kc * detail_gemm::round_up<Arch>(std::min(n, B::nc), B::cols);
    const std::ptrdiff_t packed_a = detail_gemm::round_up<Arch>(std::min(m, B::mc), B::rows) * kc;
    // one row: a row of accumulators (row_times_b), or the panels (a transposed B)
    const std::ptrdiff_t row = m == 1 ? detail_gemm::round_up<Arch>(n, B::lanes) : 0;
    return std::max(packed_b + packed_a, row);
  }
}

namespace detail_gemm {

// out[p * cols + j] = B(p, j) for p < kc, j < width; columns width..cols-1 are zero.
template <class Arch, class T>
void pack_b_panel(const T* b, std::ptrdiff_t b_rs, std::ptrdiff_t b_cs, std::ptrdiff_t kc,
                  std::ptrdiff_t width, std::ptrdiff_t cols, T* out) noexcept {
  if (b_cs == 1) {
    for (std::ptrdiff_t p = 0; p < kc; ++p) {
      T* o = out + p * cols;
      std::memcpy(o, b + p * b_rs, sizeof(T) * std::size_t(width));
      fill_zero<Arch>(o + width, cols - width);
    }
  } else {
    for (std::ptrdiff_t p = 0; p < kc; ++p) fill_zero<Arch>(out + p * cols + width, cols - width);
    for (std::ptrdiff_t j = 0; j < width; ++j) {
      const T* column = b + j * b_cs;
      for (std::ptrdiff_t p = 0; p < kc; ++p) out[p * cols + j] = column[p * b_rs];
    }
  }
}

// out[p * rows + i] = A(i, p) for i < height, p < kc (a tile of that height reads no more).
template <class Arch, class T>
void pack_a_strip(const T* a, std::ptrdiff_t a_rs, std::ptrdiff_t a_cs, std::ptrdiff_t kc,
                  std::ptrdiff_t height, std::ptrdiff_t rows, T* out) noexcept {
  for (std::ptrdiff_t i = 0; i < height; ++i) {
    const T* row = a + i * a_rs;
    for (std::ptrdiff_t p = 0; p < kc; ++p) out[p * rows + i] = row[p * a_cs];
  }
}

// An operand as the tile reads it: element (i, p) of an A strip, or row p of a B panel, at
// data + i * row + p * depth.
template <class T>
struct Slice {
  const T* data;
  std::ptrdiff_t row;
  std::ptrdiff_t depth;
};

// Lines of a B panel read in place (rows of `cols` elements, `depth` apart), numbered row by
// row: line q is at data + (q / per_row) * depth + (q % per_row) * line.
template <class Arch, class T>
struct PanelLines {
  static constexpr std::ptrdiff_t line = std::ptrdiff_t(64 / sizeof(T));  // elements per cache line
  static constexpr std::ptrdiff_t per_row = std::max<std::ptrdiff_t>(1, gemm_blocking<Arch, T>::cols / line);
  const T* data = nullptr;
  std::ptrdiff_t depth = 0;
  std::ptrdiff_t rows = 0;

  std::ptrdiff_t count() const { return rows * per_row; }
  const T* at(std::ptrdiff_t q) const { return data + (q / per_row) * depth + (q % per_row) * line; }
};

// Where the driver of gemm() is: panel js (its first column) of the block of columns jc,
// depth pc and rows ic. The driver runs jc, then pc, then ic, then js.
struct PanelPosition {
  std::ptrdiff_t jc, pc, ic, js;
};

// The panel the tiles read after the one at `at`, when they read it in place; empty when
// they pack it (a transposed B, a last partial panel) or when `at` is the last.
template <class Arch, class T>
PanelLines<Arch, T> next_panel(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, const T* b, std::ptrdiff_t b_rs,
                               std::ptrdiff_t b_cs, PanelPosition at) noexcept {
  using Blocking = gemm_blocking<Arch, T>;
  constexpr std::ptrdiff_t N = Blocking::cols;
  if (at.js + N < std::min(Blocking::nc, n - at.jc)) {
    at.js += N;
  } else if (at.ic + Blocking::mc < m) {
    at.js = 0;
  } else if (at.pc + Blocking::kc < k) {
    at.pc += Blocking::kc;
    at.js = 0;
  } else if (at.jc + Blocking::nc < n) {
    at.jc += Blocking::nc;
    at.pc = 0;
    at.js = 0;
  } else {
    return {};
  }
  if (b_cs != 1 || std::min(Blocking::nc, n - at.jc) - at.js < N) return {};
  return {b + at.pc * b_rs + at.jc + at.js, b_rs, std::min(Blocking::kc, k - at.pc)};
}

// The lines [first, first + count) of a panel that one tile prefetches into L2, `burst` per
// step of depth.
template <class Arch, class T>
struct TilePrefetch {
  PanelLines<Arch, T> panel;
  std::ptrdiff_t first = 0;
  std::ptrdiff_t count = 0;
  std::ptrdiff_t burst = 1;
};

// The register tile: acc = A strip x B panel over kc for the strip's H rows, then
// C = alpha acc (+ C when add) for those rows and the first `width` columns. Each operand is
// either packed or read in place (an A strip of contiguous rows, a B panel of contiguous
// columns). Meanwhile it prefetches its share of the next panel (`ahead`), which only moves
// data.
template <class Arch, class T, int H>
void tile(std::ptrdiff_t kc, Slice<T> a_strip, Slice<T> b_panel, T alpha, bool add, T* c, std::ptrdiff_t ldc,
          std::ptrdiff_t width, const TilePrefetch<Arch, T>& ahead) noexcept {
  using Blocking = gemm_blocking<Arch, T>;
  using batch = xsimd::batch<T, Arch>;
  constexpr int V = Blocking::vectors;
  constexpr std::ptrdiff_t L = Blocking::lanes, N = Blocking::cols;
  static_assert(H >= 1 && H <= Blocking::rows);
  batch acc[H][V];
#pragma GCC unroll 8
  for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[i][v] = batch(T(0));
  for (std::ptrdiff_t p = 0, q = 0; p < kc; ++p) {
    for (const std::ptrdiff_t end = std::min(q + ahead.burst, ahead.count); q < end; ++q)
      shim::prefetch_line<Arch>(ahead.panel.at(ahead.first + q), true);
    batch b[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) b[v] = batch::load_unaligned(b_panel.data + p * b_panel.depth + v * L);
    const T* a = a_strip.data + p * a_strip.depth;
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i) {
      const batch ai(a[i * a_strip.row]);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[i][v] = shim::fma<Arch>(ai, b[v], acc[i][v]);
    }
  }
  // alpha * acc is rounded before it is added to C, in both paths below, whatever the
  // compiler's contraction flags: full and edge tiles must round alike.
  const batch scale(alpha);
  if (width == N) {
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) {
        T* out = c + i * ldc + v * L;
        const batch scaled = shim::rounded<Arch>(acc[i][v] * scale);
        (add ? batch::load_unaligned(out) + scaled : scaled).store_unaligned(out);
      }
    return;
  }
  alignas(64) T spill[H * N];
#pragma GCC unroll 8
  for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) shim::rounded<Arch>(acc[i][v] * scale).store_aligned(spill + i * N + v * L);
  for (std::ptrdiff_t i = 0; i < H; ++i) {
    T* out = c + i * ldc;
    const T* in = spill + i * N;
    if (add)
      for (std::ptrdiff_t j = 0; j < width; ++j) out[j] += in[j];
    else
      for (std::ptrdiff_t j = 0; j < width; ++j) out[j] = in[j];
  }
}

// tile<Arch, T, height>: a strip of fewer rows than a whole tile (the last of a block) runs
// a tile of its own height instead of multiplying zero rows.
template <class Arch, class T, std::size_t... H>
void tile_of_height(std::index_sequence<H...>, std::ptrdiff_t height, std::ptrdiff_t kc, Slice<T> a_strip,
                    Slice<T> b_panel, T alpha, bool add, T* c, std::ptrdiff_t ldc, std::ptrdiff_t width,
                    const TilePrefetch<Arch, T>& ahead) noexcept {
  (void)((height == std::ptrdiff_t(H + 1) &&
          (tile<Arch, T, int(H + 1)>(kc, a_strip, b_panel, alpha, add, c, ldc, width, ahead), true)) ||
         ...);
}

// row_times_b's depth loop for a row of B of W whole vectors (and one partial vector after
// them when Partial): the accumulators stay in registers for the whole block of depth (a
// narrow row is a short chain per step, and a sweep through memory would add a store and a
// load to it), then go to `acc`.
template <class Arch, class T, int W, bool Partial>
void narrow_row_times_b(std::ptrdiff_t kc, std::ptrdiff_t n, const T* a, std::ptrdiff_t a_cs, const T* b,
                        std::ptrdiff_t b_rs, T* acc) noexcept {
  using batch = xsimd::batch<T, Arch>;
  constexpr std::ptrdiff_t L = std::ptrdiff_t(batch::size);
  batch sum[W + 1];
#pragma GCC unroll 9
  for (int v = 0; v <= W; ++v) sum[v] = batch(T(0));
  alignas(64) T tail[L];
  fill_zero<Arch>(tail, L);
  for (std::ptrdiff_t p = 0; p < kc; ++p) {
    const batch ap(a[p * a_cs]);
    const T* row = b + p * b_rs;
#pragma GCC unroll 8
    for (int v = 0; v < W; ++v) sum[v] = shim::fma<Arch>(ap, batch::load_unaligned(row + v * L), sum[v]);
    if constexpr (Partial) {
      std::memcpy(tail, row + W * L, sizeof(T) * std::size_t(n - W * L));
      sum[W] = shim::fma<Arch>(ap, batch::load_aligned(tail), sum[W]);
    }
  }
#pragma GCC unroll 9
  for (int v = 0; v < W + int(Partial); ++v) sum[v].store_aligned(acc + v * L);
}

// narrow_row_times_b for n's count of whole vectors (W) and whether a partial one follows.
template <class Arch, class T, std::size_t... W>
void narrow_row_of_width(std::index_sequence<W...>, std::ptrdiff_t kc, std::ptrdiff_t n, const T* a,
                         std::ptrdiff_t a_cs, const T* b, std::ptrdiff_t b_rs, T* acc) noexcept {
  constexpr std::ptrdiff_t L = gemm_blocking<Arch, T>::lanes;
  const std::ptrdiff_t whole = n / L;
  const bool partial = whole * L < n;
  (void)((whole == std::ptrdiff_t(W) &&
          (partial ? narrow_row_times_b<Arch, T, int(W), true>(kc, n, a, a_cs, b, b_rs, acc)
                   : narrow_row_times_b<Arch, T, int(W), false>(kc, n, a, a_cs, b, b_rs, acc),
           true)) ||
         ...);
}

// row_times_b's depth loop for a wider row: sweeps over the accumulators in memory.
template <class Arch, class T>
void wide_row_times_b(std::ptrdiff_t kc, std::ptrdiff_t n, const T* a, std::ptrdiff_t a_cs, const T* b,
                      std::ptrdiff_t b_rs, T* acc) noexcept {
  using batch = xsimd::batch<T, Arch>;
  constexpr std::ptrdiff_t L = std::ptrdiff_t(batch::size);
  const std::ptrdiff_t whole = n / L * L, padded = round_up<Arch>(n, L);
  fill_zero<Arch>(acc, padded);
  // P rows of B per sweep over the accumulators: each one loaded and stored once for P
  // fused multiply-adds (still in order of depth), and P streams of B read at once.
  constexpr std::ptrdiff_t P = 8;
  std::ptrdiff_t p = 0;
  for (; p + P <= kc; p += P) {
    batch ap[P];
    const T* row[P];
#pragma GCC unroll 8
    for (std::ptrdiff_t q = 0; q < P; ++q) {
      ap[q] = batch(a[(p + q) * a_cs]);
      row[q] = b + (p + q) * b_rs;
    }
    for (std::ptrdiff_t j = 0; j < whole; j += L) {
      batch sum = batch::load_aligned(acc + j);
#pragma GCC unroll 8
      for (std::ptrdiff_t q = 0; q < P; ++q) sum = shim::fma<Arch>(ap[q], batch::load_unaligned(row[q] + j), sum);
      sum.store_aligned(acc + j);
    }
  }
  for (; p < kc; ++p) {
    const batch ap(a[p * a_cs]);
    const T* row = b + p * b_rs;
    for (std::ptrdiff_t j = 0; j < whole; j += L)
      shim::fma<Arch>(ap, batch::load_unaligned(row + j), batch::load_aligned(acc + j)).store_aligned(acc + j);
  }
  if (whole < n) {  // the last partial vector of columns, zero-padded, in order of depth
    batch sum = batch::load_aligned(acc + whole);
    alignas(64) T tail[L];
    fill_zero<Arch>(tail, L);
    for (std::ptrdiff_t q = 0; q < kc; ++q) {
      std::memcpy(tail, b + q * b_rs + whole, sizeof(T) * std::size_t(n - whole));
      sum = shim::fma<Arch>(batch(a[q * a_cs]), batch::load_aligned(tail), sum);
    }
    sum.store_aligned(acc + whole);
  }
}

// One row of A against a B with contiguous rows (m = 1: a decoding step's projections and
// attention scores). Every coefficient gets the fused multiply-adds a tile gives it, in the
// same order (over each kc block of depth from zero, then C = alpha acc, or C + alpha acc
// after the first block; the last partial vector of columns zero-padded like a packed
// panel), so the row has the bits it has inside a larger product. But it streams whole rows
// of B, as a matrix-vector product does, with the accumulators (`acc`, n rounded up to
// whole vectors) in L1: a register tile of one row would read B in panels, a row of B
// apart at every step of depth, and wait on memory.
template <class Arch, class T>
void row_times_b(std::ptrdiff_t n, std::ptrdiff_t k, T alpha, const T* a, std::ptrdiff_t a_cs, const T* b,
                 std::ptrdiff_t b_rs, bool accumulate, T* c, T* acc) noexcept {
  using Blocking = gemm_blocking<Arch, T>;
  using batch = xsimd::batch<T, Arch>;
  constexpr std::ptrdiff_t L = Blocking::lanes;
  const std::ptrdiff_t whole = n / L * L, padded = round_up<Arch>(n, L);
  const batch scale(alpha);
  for (std::ptrdiff_t pc = 0; pc < k; pc += Blocking::kc) {
    const std::ptrdiff_t kc = std::min(Blocking::kc, k - pc);
    constexpr std::ptrdiff_t narrow = 8;  // vectors of accumulators kept in registers
    if (padded <= narrow * L) {
      narrow_row_of_width<Arch>(std::make_index_sequence<std::size_t(narrow + 1)>{}, kc, n, a + pc * a_cs, a_cs,
                                b + pc * b_rs, b_rs, acc);
    } else {
      wide_row_times_b<Arch>(kc, n, a + pc * a_cs, a_cs, b + pc * b_rs, b_rs, acc);
    }
    const bool add = accumulate || pc > 0;
    for (std::ptrdiff_t j = 0; j < whole; j += L) {
      const batch scaled = shim::rounded<Arch>(batch::load_aligned(acc + j) * scale);
      (add ? batch::load_unaligned(c + j) + scaled : scaled).store_unaligned(c + j);
    }
    if (whole < n) {
      shim::rounded<Arch>(batch::load_aligned(acc + whole) * scale).store_aligned(acc + whole);
      for (std::ptrdiff_t j = whole; j < n; ++j) c[j] = add ? c[j] + acc[j] : acc[j];
    }
  }
}

}  // namespace detail_gemm

// C = alpha A B, or C += alpha A B when `accumulate` (see the top of this file). `work` holds
// gemm_workspace<Arch, T>(m, n, k) elements, aligned to 64 bytes.
template <class Arch, class T>
void gemm(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, T alpha, const T* a, std::ptrdiff_t a_rs,
          std::ptrdiff_t a_cs, const T* b, std::ptrdiff_t b_rs, std::ptrdiff_t b_cs, bool accumulate, T* c,
          std::ptrdiff_t ldc, T* work) noexcept {
  static_assert(std::is_floating_point_v<T>, "kernels::gemm: float or double");
  using Blocking = gemm_blocking<Arch, T>;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (std::ptrdiff_t i = 0; i < m; ++i) detail_gemm::fill_zero<Arch>(c + i * ldc, n);
    return;
  }
  if constexpr (!Blocking::simd) {
    // Every product is rounded before its addition, whatever the compiler's contraction
    // flags (which would fuse some of them and not others, depending on how it vectorizes
    // the loop, so that a row's bits would depend on n).
    T* row = work;  // n accumulators
    for (std::ptrdiff_t i = 0; i < m; ++i) {
      detail_gemm::fill_zero<Arch>(row, n);
      for (std::ptrdiff_t p = 0; p < k; ++p) {
        const T ap = a[i * a_rs + p * a_cs];
        const T* bp = b + p * b_rs;
        for (std::ptrdiff_t j = 0; j < n; ++j) row[j] += shim::rounded<Arch>(ap * bp[j * b_cs]);
      }
      T* out = c + i * ldc;
      for (std::ptrdiff_t j = 0; j < n; ++j) {
        const T scaled = shim::rounded<Arch>(alpha * row[j]);
        out[j] = accumulate ? out[j] + scaled : scaled;
      }
    }
  } else {
    if (m == 1 && b_cs == 1) {
      detail_gemm::row_times_b<Arch>(n, k, alpha, a, a_cs, b, b_rs, accumulate, c, work);
      return;
    }
    constexpr std::ptrdiff_t R = Blocking::rows, N = Blocking::cols;
    const std::ptrdiff_t kc_max = std::min(k, Blocking::kc);
    T* packed_b = work;
    T* packed_a = work + kc_max * detail_gemm::round_up<Arch>(std::min(n, Blocking::nc), N);
    for (std::ptrdiff_t jc = 0; jc < n; jc += Blocking::nc) {
      const std::ptrdiff_t nc = std::min(Blocking::nc, n - jc);
      for (std::ptrdiff_t pc = 0; pc < k; pc += Blocking::kc) {
        const std::ptrdiff_t kc = std::min(Blocking::kc, k - pc);
        const bool add = accumulate || pc > 0;
        // Whole panels of a B with contiguous rows are read in place, and every strip of an A
        // with contiguous rows (a last, shorter strip too: its tile has its height); a last
        // partial panel is packed zero-padded to full width, and a transposed operand packed.
        const bool b_in_place = b_cs == 1, a_in_place = a_cs == 1;
        for (std::ptrdiff_t js = 0; js < nc; js += N)
          if (!b_in_place || nc - js < N)
            detail_gemm::pack_b_panel<Arch>(b + pc * b_rs + (jc + js) * b_cs, b_rs, b_cs, kc, std::min(N, nc - js), N,
                                            packed_b + js * kc);
        auto b_panel = [&](std::ptrdiff_t js) {
          return b_in_place && nc - js >= N ? detail_gemm::Slice<T>{b + pc * b_rs + jc + js, 0, b_rs}
                                            : detail_gemm::Slice<T>{packed_b + js * kc, 0, N};
        };
        for (std::ptrdiff_t ic = 0; ic < m; ic += Blocking::mc) {
          const std::ptrdiff_t mc = std::min(Blocking::mc, m - ic);
          const std::ptrdiff_t strips = (mc + R - 1) / R;
          if (!a_in_place)
            for (std::ptrdiff_t is = 0; is < mc; is += R)
              detail_gemm::pack_a_strip<Arch>(a + (ic + is) * a_rs + pc * a_cs, a_rs, a_cs, kc, std::min(R, mc - is),
                                              R, packed_a + is * kc);
          auto a_strip = [&](std::ptrdiff_t is) {
            return a_in_place ? detail_gemm::Slice<T>{a + (ic + is) * a_rs + pc, a_rs, 1}
                              : detail_gemm::Slice<T>{packed_a + is * kc, 1, R};
          };
          for (std::ptrdiff_t js = 0; js < nc; js += N) {
            // The strips of this panel share out the next panel's lines: a panel read in place
            // may be far away (weights used once per forward), and its rows are a whole row of
            // B apart (a page or more from 1024 floats), where the hardware prefetcher does not
            // follow.
            detail_gemm::TilePrefetch<Arch, T> ahead{detail_gemm::next_panel<Arch, T>(m, n, k, b, b_rs, b_cs, {jc, pc, ic, js})};
            const std::ptrdiff_t per_strip = (ahead.panel.count() + strips - 1) / strips;
            ahead.burst = (per_strip + kc - 1) / kc;
            for (std::ptrdiff_t is = 0; is < mc; is += R) {
              ahead.first = (is / R) * per_strip;
              ahead.count = std::clamp<std::ptrdiff_t>(ahead.panel.count() - ahead.first, 0, per_strip);
              detail_gemm::tile_of_height<Arch, T>(std::make_index_sequence<std::size_t(R)>{}, std::min(R, mc - is), kc,
                                                   a_strip(is), b_panel(js), alpha, add, c + (ic + is) * ldc + jc + js,
                                                   ldc, std::min(N, nc - js), ahead);
            }
          }
        }
      }
    }
  }
}

}  // namespace mixdepth::kernels
