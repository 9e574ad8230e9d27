#pragma once
// Row gather (routed rows into a compact matrix) and the gated scatter of Eq. 1.
#include <algorithm>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dispatch.hpp"
#include "kernels/rows_portable.hpp"
#include "types.hpp"

namespace mixdepth {

namespace detail {

// The unchecked entry points Block calls once its own checks have passed; the kernel choice
// lives in kernels::dispatched. The defaulted Arch keeps units compiled with different -m
// flags apart (see kernels/dispatch.hpp).
template <class T, class Arch = kernels::entry_arch>
void gather_rows_unchecked(const T* src, Index src_stride, const Position* rows, Index n, Index d,
                           T* dst, Index dst_stride) {
  kernels::dispatched::gather_rows<T, Arch>(src, src_stride, rows, n, d, dst, dst_stride);
}

template <class T, class Arch = kernels::entry_arch>
void scatter_gated_unchecked(const T* x, Index x_stride, T* y, Index y_stride, const Position* rows,
                             Index n, Index d, const T* update, Index update_stride,
                             const T* gates) {
  kernels::dispatched::scatter_gated<T, Arch>(x, x_stride, y, y_stride, rows, n, d, update,
                                              update_stride, gates);
}

// Throws unless every index in rows is distinct, naming the first repeated one. (Arch: the
// caller's, so that units compiled with different -m flags keep their own copies.)
template <class Arch>
void require_distinct_rows(std::string_view where, std::span<const Position> rows) {
  std::vector<std::pair<Position, std::size_t>> sorted(rows.size());
  for (std::size_t j = 0; j < rows.size(); ++j) sorted[j] = {rows[j], j};
  std::sort(sorted.begin(), sorted.end());
  std::size_t first = rows.size(), second = 0;  // the repeat with the lowest second index
  for (std::size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i].first == sorted[i - 1].first && sorted[i].second < first) {
      first = sorted[i].second;
      second = sorted[i - 1].second;
    }
  if (first < rows.size())
    fail(where, "rows[" + std::to_string(first) + "]",
         "an index not given before (rows[" + std::to_string(second) + "] is " + std::to_string(rows[second]) + ")",
         rows[first]);
}

}  // namespace detail

// out.row(j) = x.row(rows[j]). Throws mixdepth::Error unless out is [rows.size(), x.cols()],
// shares no memory with x, and every row index is in [0, x.rows()).
template <class T, class Arch = kernels::entry_arch>
void gather_rows(MatrixCRef<T> x, std::span<const Position> rows, MatrixRef<T> out) {
  constexpr std::string_view where = "gather_rows";
  detail::require_equal(where, "out.rows()", static_cast<Index>(rows.size()), out.rows());
  detail::require_equal(where, "out.cols()", x.cols(), out.cols());
  if (detail::overlaps(x, out)) detail::fail(where, "out", "memory disjoint from x", "overlapping");
  for (std::size_t j = 0; j < rows.size(); ++j)
    if (rows[j] < 0 || rows[j] >= x.rows())
      detail::fail(where, "rows[" + std::to_string(j) + "]",
                   "in [0, " + std::to_string(x.rows()) + ")", rows[j]);
  if (out.cols() == 0) return;
  detail::gather_rows_unchecked<T, Arch>(x.data(), x.outerStride(), rows.data(),
                                static_cast<Index>(rows.size()), x.cols(), out.data(),
                                out.outerStride());
}

// y.row(rows[j]) = x.row(rows[j]) + gates[j] * update.row(j); other rows of y are not touched.
// x and y may be the same matrix (in place) but must not partially overlap, and update and
// gates must not share memory with y. Throws mixdepth::Error on mismatched sizes, on
// overlapping memory, on row indices outside [0, x.rows()) or on a row index given twice
// (in place the two updates would add up, out of place the last would win).
// Ascending rows, as every MoD selection is, are checked without allocating.
template <class T, class Arch = kernels::entry_arch>
void scatter_gated(MatrixCRef<T> x, std::span<const Position> rows, MatrixCRef<T> update,
                   std::span<const T> gates, MatrixRef<T> y) {
  constexpr std::string_view where = "scatter_gated";
  const auto n = static_cast<Index>(rows.size());
  detail::require_equal(where, "y.rows()", x.rows(), y.rows());
  detail::require_equal(where, "y.cols()", x.cols(), y.cols());
  detail::require_equal(where, "update.rows()", n, update.rows());
  detail::require_equal(where, "update.cols()", x.cols(), update.cols());
  detail::require_equal(where, "gates.size()", n, static_cast<Index>(gates.size()));
  if (x.data() != y.data() && detail::overlaps(x, y))
    detail::fail(where, "y", "the same matrix as x or disjoint from it", "a partial overlap");
  if (detail::overlaps(update, y)) detail::fail(where, "update", "memory disjoint from y", "overlapping");
  if (detail::overlaps(detail::vector_view(gates), y))
    detail::fail(where, "gates", "memory disjoint from y", "overlapping");
  bool ascending = true;
  for (Index j = 0; j < n; ++j) {
    if (rows[j] < 0 || rows[j] >= x.rows())
      detail::fail(where, "rows[" + std::to_string(j) + "]",
                   "in [0, " + std::to_string(x.rows()) + ")", rows[j]);
    ascending = ascending && (j == 0 || rows[j - 1] < rows[j]);
  }
  if (!ascending) detail::require_distinct_rows<Arch>(where, rows);
  if (x.cols() == 0) return;
  if (x.data() == y.data() && x.outerStride() != y.outerStride())
    detail::fail(where, "y.outerStride()", x.outerStride(), y.outerStride());
  detail::scatter_gated_unchecked<T, Arch>(x.data(), x.outerStride(), y.data(), y.outerStride(),
                                  rows.data(), n, x.cols(), update.data(), update.outerStride(),
                                  gates.data());
}

}  // namespace mixdepth
