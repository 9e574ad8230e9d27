#pragma once
// Zero-copy views between Eigen Tensors [batch, seq_len, d] (row-major) and the [batch *
// seq_len, d] row-major matrices every mixdepth entry point takes.
#include <unsupported/Eigen/CXX11/Tensor>

#include "types.hpp"

namespace mixdepth {

template <class T>
using Tensor3 = Eigen::Tensor<T, 3, Eigen::RowMajor>;
template <class T>
using TensorMap3 = Eigen::TensorMap<Tensor3<T>>;
template <class T>
using ConstTensorMap3 = Eigen::TensorMap<const Tensor3<T>>;

// The Shape of a [batch, seq_len, d] tensor.
template <class TensorLike>
Shape shape_of(const TensorLike& t) {
  static_assert(TensorLike::NumDimensions == 3, "mixdepth: expected a rank-3 tensor [batch, seq_len, d]");
  return {static_cast<Index>(t.dimension(0)), static_cast<Index>(t.dimension(1))};
}

// The [batch * seq_len, d] matrix over the same memory.
template <class T>
RowMatrixMap<T> as_matrix(Tensor3<T>& t) {
  return {t.data(), static_cast<Index>(t.dimension(0) * t.dimension(1)), static_cast<Index>(t.dimension(2))};
}
template <class T>
ConstRowMatrixMap<T> as_matrix(const Tensor3<T>& t) {
  return {t.data(), static_cast<Index>(t.dimension(0) * t.dimension(1)), static_cast<Index>(t.dimension(2))};
}
template <class T>
RowMatrixMap<T> as_matrix(TensorMap3<T> t) {
  return {t.data(), static_cast<Index>(t.dimension(0) * t.dimension(1)), static_cast<Index>(t.dimension(2))};
}
template <class T>
ConstRowMatrixMap<T> as_matrix(ConstTensorMap3<T> t) {
  return {t.data(), static_cast<Index>(t.dimension(0) * t.dimension(1)), static_cast<Index>(t.dimension(2))};
}

// The [batch, seq_len, d] tensor over a contiguous row-major matrix. Throws mixdepth::Error
// when m.rows() != shape.rows() or the rows are not contiguous.
template <class T>
TensorMap3<T> as_tensor(MatrixRef<T> m, Shape shape) {
  constexpr std::string_view where = "as_tensor";
  detail::require_equal(where, "m.rows()", detail::checked_rows(where, shape), m.rows());
  detail::require_equal(where, "m.outerStride()", m.cols(), m.outerStride());
  return TensorMap3<T>(m.data(), shape.batch, shape.seq_len, m.cols());
}
template <class T>
ConstTensorMap3<T> as_tensor(MatrixCRef<T> m, Shape shape) {
  constexpr std::string_view where = "as_tensor";
  detail::require_equal(where, "m.rows()", detail::checked_rows(where, shape), m.rows());
  detail::require_equal(where, "m.outerStride()", m.cols(), m.outerStride());
  return ConstTensorMap3<T>(m.data(), shape.batch, shape.seq_len, m.cols());
}

}  // namespace mixdepth
