#pragma once
// Portable row gather and gated scatter over row-major buffers with `d` columns.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mixdepth::kernels {

// Rows are `d` elements long; row r of a buffer starts at r * stride (stride >= d).

// dst row j = src row rows[j], for j in [0, n).
template <class T>
void gather_rows_portable(const T* src, std::ptrdiff_t src_stride, const std::int32_t* rows,
                          std::ptrdiff_t n, std::ptrdiff_t d, T* dst, std::ptrdiff_t dst_stride) {
  for (std::ptrdiff_t j = 0; j < n; ++j)
    std::memcpy(dst + j * dst_stride, src + std::ptrdiff_t{rows[j]} * src_stride,
                sizeof(T) * std::size_t(d));
}

// y row rows[j] = x row rows[j] + gates[j] * update row j, for j in [0, n); x may equal y.
// The product is rounded before the sum: no fused multiply-add unless the compiler contracts
// (GCC does by default; mixdepth's own builds pass -ffp-contract=off).
template <class T>
void scatter_gated_portable(const T* x, std::ptrdiff_t x_stride, T* y, std::ptrdiff_t y_stride,
                            const std::int32_t* rows, std::ptrdiff_t n, std::ptrdiff_t d,
                            const T* update, std::ptrdiff_t update_stride, const T* gates) {
  for (std::ptrdiff_t j = 0; j < n; ++j) {
    const T* xr = x + std::ptrdiff_t{rows[j]} * x_stride;
    T* yr = y + std::ptrdiff_t{rows[j]} * y_stride;
    const T* fr = update + j * update_stride;
    const T g = gates[j];
    for (std::ptrdiff_t c = 0; c < d; ++c) {
      const T product = g * fr[c];
      yr[c] = xr[c] + product;
    }
  }
}

}  // namespace mixdepth::kernels
