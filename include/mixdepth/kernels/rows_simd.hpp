#pragma once
// Row kernels over row-major buffers, templated over the architecture: router scores
// (one dot product per row), row gather and the gated scatter of Eq. 1. Raw pointers and
// sizes only. Rows are `d` elements long; row r of a buffer starts at r * stride.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "arch.hpp"
#include "simd_shim.hpp"

namespace mixdepth::kernels {

// logits[i] = x row i . weight + bias, for i in [0, rows). The summation order is not the
// portable one (several partial sums per row): compare with a tolerance. It is the same for
// every row, however many rows are scored together: a row's logit in a decode step equals
// its logit in a forward over the whole sequence, bit for bit. The vector products go
// through shim::fma (one rounding where the architecture fuses, two, kept apart, where it
// does not), so a unit's contraction flags cannot round the four-row and one-row loops
// differently.
template <class Arch, class T>
void router_scores(const T* x, std::ptrdiff_t x_stride, std::ptrdiff_t rows, std::ptrdiff_t d,
                   const T* weight, T bias, T* logits) noexcept {
  if constexpr (!arch_traits::is_xsimd<Arch>()) {
    for (std::ptrdiff_t r = 0; r < rows; ++r) {
      const T* xr = x + r * x_stride;
      T partial[4] = {T(0), T(0), T(0), T(0)};
      std::ptrdiff_t c = 0;
      for (; c + 4 <= d; c += 4)
        for (int j = 0; j < 4; ++j) partial[j] += xr[c + j] * weight[c + j];
      for (; c < d; ++c) partial[0] += xr[c] * weight[c];
      logits[r] = ((partial[0] + partial[1]) + (partial[2] + partial[3])) + bias;
    }
  } else {
    using batch = xsimd::batch<T, Arch>;
    constexpr std::ptrdiff_t width = std::ptrdiff_t(batch::size);
    const std::ptrdiff_t body = d - d % width;
    auto tail = [&](const T* xr) {
      T sum = T(0);
      for (std::ptrdiff_t c = body; c < d; ++c) sum += xr[c] * weight[c];
      return sum;
    };
    std::ptrdiff_t r = 0;
    // Four rows at a time share each load of the weight.
    for (; r + 4 <= rows; r += 4) {
      const T* x0 = x + r * x_stride;
      const T* x1 = x0 + x_stride;
      const T* x2 = x1 + x_stride;
      const T* x3 = x2 + x_stride;
      batch a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
      for (std::ptrdiff_t c = 0; c < body; c += width) {
        const batch w = batch::load_unaligned(weight + c);
        a0 = shim::fma<Arch>(batch::load_unaligned(x0 + c), w, a0);
        a1 = shim::fma<Arch>(batch::load_unaligned(x1 + c), w, a1);
        a2 = shim::fma<Arch>(batch::load_unaligned(x2 + c), w, a2);
        a3 = shim::fma<Arch>(batch::load_unaligned(x3 + c), w, a3);
      }
      logits[r] = shim::reduce_add<Arch>(a0) + tail(x0) + bias;
      logits[r + 1] = shim::reduce_add<Arch>(a1) + tail(x1) + bias;
      logits[r + 2] = shim::reduce_add<Arch>(a2) + tail(x2) + bias;
      logits[r + 3] = shim::reduce_add<Arch>(a3) + tail(x3) + bias;
    }
    // The last rows one by one, in the same order of operations as above.
    for (; r < rows; ++r) {
      const T* xr = x + r * x_stride;
      batch a(T(0));
      for (std::ptrdiff_t c = 0; c < body; c += width)
        a = shim::fma<Arch>(batch::load_unaligned(xr + c), batch::load_unaligned(weight + c), a);
      logits[r] = shim::reduce_add<Arch>(a) + tail(xr) + bias;
    }
  }
}

namespace rows_detail {

// Rows longer than this are prefetched into L2 only: the rows a step touches (the next
// row's lines, the rows read and the row written: four for the out-of-place scatter) would
// not fit a 32 KiB L1 together, and prefetches into L1 evicted what the kernel was about
// to use. On Zen 4, rows of 16 KiB, five alternating runs: the gather at 0.72-0.86 of
// memcpy with L1 prefetches, 0.81-0.92 (one outlier 1.75) with L2 ones; the scatter at
// 0.37-0.84 of axpy, then 0.74-1.15. At 4 KiB L1 prefetches measured the same or better,
// at 8 KiB the same (bench/README.md).
inline constexpr std::size_t l1_row_bytes = 8192;

}  // namespace rows_detail

// dst row j = src row rows[j], for j in [0, n): contiguous row copies (hardware gathers are
// slow on these CPUs). Each row jumps, so the hardware prefetcher would restart at every row;
// while row j is copied, row j + 1 is prefetched at the same offsets (into L2 only for rows
// above rows_detail::l1_row_bytes). The stores are aligned to the batch (a short head is
// copied first), and the copy loop is the kernel's own rather than memcpy: glibc picks
// `rep movsb` for rows of a few KiB, which measured ~0.6 of one contiguous memcpy at
// d = 1024 (bench/README.md).
template <class Arch, class T>
void gather_rows(const T* src, std::ptrdiff_t src_stride, const std::int32_t* rows, std::ptrdiff_t n,
                 std::ptrdiff_t d, T* dst, std::ptrdiff_t dst_stride) noexcept {
  if constexpr (!arch_traits::is_xsimd<Arch>()) {
    const std::size_t bytes = sizeof(T) * std::size_t(d);
    for (std::ptrdiff_t j = 0; j < n; ++j)
      std::memcpy(dst + j * dst_stride, src + std::ptrdiff_t{rows[j]} * src_stride, bytes);
  } else {
    using batch = xsimd::batch<T, Arch>;
    constexpr std::ptrdiff_t width = std::ptrdiff_t(batch::size);
    constexpr std::ptrdiff_t step = 4 * width;  // elements per unrolled iteration
    constexpr std::ptrdiff_t line = 64 / std::ptrdiff_t(sizeof(T));  // elements per cache line
    constexpr std::size_t align = Arch::alignment();
    const bool to_l2 = sizeof(T) * std::size_t(d) > rows_detail::l1_row_bytes;
    for (std::ptrdiff_t j = 0; j < n; ++j) {
      const T* __restrict in = src + std::ptrdiff_t{rows[j]} * src_stride;
      T* __restrict out = dst + j * dst_stride;
      const T* next = src + std::ptrdiff_t{rows[j + 1 < n ? j + 1 : j]} * src_stride;
      shim::prefetch_line<Arch>(next, to_l2);  // its first line: the loop below misses it for short rows and heads
      // Elements before the first batch-aligned store; a T* is T-aligned, so this is exact.
      const std::uintptr_t misalign = reinterpret_cast<std::uintptr_t>(out) % align;
      std::ptrdiff_t c = misalign == 0 ? 0 : std::ptrdiff_t((align - misalign) / sizeof(T));
      if (c > d) c = d;
      for (std::ptrdiff_t h = 0; h < c; ++h) out[h] = in[h];
      for (; c + step <= d; c += step) {
        for (std::ptrdiff_t p = 0; p < step; p += line) shim::prefetch_line<Arch>(next + c + p, to_l2);
        const batch a0 = batch::load_unaligned(in + c);
        const batch a1 = batch::load_unaligned(in + c + width);
        const batch a2 = batch::load_unaligned(in + c + 2 * width);
        const batch a3 = batch::load_unaligned(in + c + 3 * width);
        a0.store_aligned(out + c);
        a1.store_aligned(out + c + width);
        a2.store_aligned(out + c + 2 * width);
        a3.store_aligned(out + c + 3 * width);
      }
      for (; c + width <= d; c += width) batch::load_unaligned(in + c).store_aligned(out + c);
      for (; c < d; ++c) out[c] = in[c];
    }
  }
}

// y row rows[j] = x row rows[j] + gates[j] * update row j, for j in [0, n); x may equal y
// (in place). The product is rounded before the sum (no FMA), whatever the compiler flags,
// so the result equals scatter_gated_portable built with -ffp-contract=off, bit for bit.
template <class Arch, class T>
void scatter_gated(const T* x, std::ptrdiff_t x_stride, T* y, std::ptrdiff_t y_stride,
                   const std::int32_t* rows, std::ptrdiff_t n, std::ptrdiff_t d, const T* update,
                   std::ptrdiff_t update_stride, const T* gates) noexcept {
  [[maybe_unused]] const bool to_l2 = sizeof(T) * std::size_t(d) > rows_detail::l1_row_bytes;
  for (std::ptrdiff_t j = 0; j < n; ++j) {
    const T* xr = x + std::ptrdiff_t{rows[j]} * x_stride;
    T* yr = y + std::ptrdiff_t{rows[j]} * y_stride;
    const T* fr = update + j * update_stride;
    const T g = gates[j];
    std::ptrdiff_t c = 0;
    if constexpr (arch_traits::is_xsimd<Arch>()) {
      using batch = xsimd::batch<T, Arch>;
      constexpr std::ptrdiff_t width = std::ptrdiff_t(batch::size);
      constexpr std::ptrdiff_t line = 64 / std::ptrdiff_t(sizeof(T));  // elements per cache line
      // The next routed row of x, prefetched at the offsets being read now (as gather_rows).
      const T* next = x + std::ptrdiff_t{rows[j + 1 < n ? j + 1 : j]} * x_stride;
      const batch gate(g);
      for (; c + 2 * width <= d; c += 2 * width) {
        for (std::ptrdiff_t p = 0; p < 2 * width; p += line) shim::prefetch_line<Arch>(next + c + p, to_l2);
        const batch p0 = shim::rounded<Arch>(gate * batch::load_unaligned(fr + c));
        const batch p1 = shim::rounded<Arch>(gate * batch::load_unaligned(fr + c + width));
        (batch::load_unaligned(xr + c) + p0).store_unaligned(yr + c);
        (batch::load_unaligned(xr + c + width) + p1).store_unaligned(yr + c + width);
      }
      for (; c + width <= d; c += width) {
        const batch p = shim::rounded<Arch>(gate * batch::load_unaligned(fr + c));
        (batch::load_unaligned(xr + c) + p).store_unaligned(yr + c);
      }
    }
    for (; c < d; ++c) yr[c] = xr[c] + shim::rounded<Arch>(g * fr[c]);
  }
}

}  // namespace mixdepth::kernels
