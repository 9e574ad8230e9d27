#pragma once
// Vocabulary types shared by every mixdepth header: sizes, positions, matrix views, Shape.
#include <Eigen/Core>

#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>

#include "error.hpp"

namespace mixdepth {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using MatrixCRef = Eigen::Ref<const RowMatrix<T>>;
template <class T>
using MatrixRef = Eigen::Ref<RowMatrix<T>>;
template <class T>
using RowMatrixMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using ConstRowMatrixMap = Eigen::Map<const RowMatrix<T>>;
// A row-major matrix whose rows lie outerStride() elements apart (Arena::aligned_rows).
template <class T>
using StridedRowMatrixMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstStridedRowMatrixMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// A batch of `batch` sequences of `seq_len` tokens each, stored as rows b*seq_len + i.
struct Shape {
  Index batch = 0;
  Index seq_len = 0;
  constexpr Index rows() const { return batch * seq_len; }
  friend constexpr bool operator==(const Shape&, const Shape&) = default;
};

namespace detail {

// Checks a Shape and returns its row count; rows must fit a Position (kernels use int32).
inline Index checked_rows(std::string_view where, Shape shape) {
  if (shape.batch < 0) fail(where, "shape.batch", ">= 0", shape.batch);
  if (shape.seq_len < 0) fail(where, "shape.seq_len", ">= 0", shape.seq_len);
  // Even empty sequences count: a batch is looped over and has per-sequence offsets.
  if (shape.batch > Index{std::numeric_limits<Position>::max()})
    fail(where, "shape.batch", "<= 2147483647", shape.batch);
  if (shape.seq_len > 0 &&
      shape.batch > Index{std::numeric_limits<Position>::max()} / shape.seq_len)
    fail(where, "shape.batch * shape.seq_len", "<= 2147483647 rows",
         std::to_string(shape.batch) + " * " + std::to_string(shape.seq_len));
  return shape.rows();
}

// Per-sequence lengths: empty (every token valid) or one length in [0, seq_len] per sequence.
inline void check_lengths(std::string_view where, Shape shape, std::span<const Index> lengths) {
  if (lengths.empty()) return;
  if (static_cast<Index>(lengths.size()) != shape.batch)
    fail(where, "lengths.size()", std::to_string(shape.batch) + " (shape.batch) or 0",
         lengths.size());
  for (std::size_t b = 0; b < lengths.size(); ++b)
    if (lengths[b] < 0 || lengths[b] > shape.seq_len)
      fail(where, "lengths[" + std::to_string(b) + "]",
           "in [0, " + std::to_string(shape.seq_len) + "] (shape.seq_len)", lengths[b]);
}

// True when the memory spanned by the two views overlaps.
template <class A, class B>
bool overlaps(const A& a, const B& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  auto span_of = [](const auto& m) {  // any direct-access view: blocks, Maps, Refs, transposes
    using M = std::decay_t<decltype(m)>;
    constexpr bool row_major = bool(M::Flags & Eigen::RowMajorBit);
    const Index outer = row_major ? m.rows() : m.cols(), inner = row_major ? m.cols() : m.rows();
    const auto* first = m.data();
    const auto* last = first + (outer - 1) * m.outerStride() + (inner - 1) * m.innerStride() + 1;
    return std::pair{reinterpret_cast<std::uintptr_t>(first), reinterpret_cast<std::uintptr_t>(last)};
  };
  const auto [a0, a1] = span_of(a);
  const auto [b0, b1] = span_of(b);
  return a0 < b1 && b0 < a1;
}

// A span as a vector view, for overlaps().
template <class T>
Eigen::Map<const Vector<std::remove_const_t<T>>> vector_view(std::span<T> s) {
  return {s.data(), static_cast<Index>(s.size())};
}

// Throws unless `out` (argument `out_name`) is the view `in` itself (the same first element
// and strides; the caller has checked the shapes) or shares no memory with it: for
// functions that may work in place but would read overwritten elements of a partial overlap.
template <class In, class Out>
void require_same_or_disjoint(std::string_view where, std::string_view out_name, std::string_view in_name,
                              const In& in, const Out& out) {
  const bool same = static_cast<const void*>(in.data()) == static_cast<const void*>(out.data()) &&
                    in.outerStride() == out.outerStride() && in.innerStride() == out.innerStride();
  if (!same && overlaps(in, out))
    fail(where, out_name, std::string(in_name) + " itself or memory disjoint from it", "a partial overlap");
}

}  // namespace detail
}  // namespace mixdepth
