#pragma once
// Zero-copy views between Eigen Tensors [batch, seq_len, d] (row-major) and the [batch *
// seq_len, d] row-major matrices every mixdepth entry point takes.
#include <string_view>
#include <type_traits>

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

namespace detail {

template <class M>
struct is_ref_to_const : std::false_type {};
template <class P, int Options, class Stride>
struct is_ref_to_const<Eigen::Ref<const P, Options, Stride>> : std::true_type {};

// A temporary that may hold the elements itself: a plain matrix, or a Ref<const ...>, which
// copies what it cannot view. A tensor over it would dangle once the statement ends.
template <class M>
inline constexpr bool owning_temporary =
    !std::is_lvalue_reference_v<M> &&
    (std::is_base_of_v<Eigen::PlainObjectBase<std::remove_cvref_t<M>>, std::remove_cvref_t<M>> ||
     is_ref_to_const<std::remove_cvref_t<M>>::value);

// An Eigen matrix with memory of its own (not an expression).
template <class M>
concept has_memory = std::is_base_of_v<Eigen::DenseBase<std::remove_cvref_t<M>>, std::remove_cvref_t<M>> &&
                     (int(std::remove_cvref_t<M>::Flags) & Eigen::DirectAccessBit) != 0;
template <class M>
concept row_major = (int(std::remove_cvref_t<M>::Flags) & Eigen::RowMajorBit) != 0;
template <class M>
concept not_a_temporary_owner = !owning_temporary<M>;

// What as_tensor takes: a row-major matrix with memory that outlives the call.
template <class M>
concept tensor_viewable = has_memory<M> && row_major<M> && not_a_temporary_owner<M>;

}  // namespace detail

// The [batch, seq_len, d] tensor over the memory of a row-major matrix with contiguous rows
// (a RowMatrix, a Map, a Ref, a block of whole rows), writable unless m is const. Throws
// mixdepth::Error when m.rows() != shape.rows() or the rows are not contiguous. Column-major
// matrices, expressions and temporary matrices do not satisfy detail::tensor_viewable: a
// view of the copy Eigen would make of them would dangle.
template <class M>
  requires detail::tensor_viewable<M>
auto as_tensor(M&& m, Shape shape) {
  using D = std::remove_cvref_t<M>;
  using T = typename D::Scalar;
  constexpr std::string_view where = "as_tensor";
  detail::require_equal(where, "m.rows()", detail::checked_rows(where, shape), Index(m.rows()));
  detail::require_equal(where, "m.innerStride()", Index{1}, Index(m.innerStride()));
  detail::require_equal(where, "m.outerStride()", Index(m.cols()), Index(m.outerStride()));
  constexpr bool writable = !std::is_const_v<std::remove_reference_t<M>> && (int(D::Flags) & Eigen::LvalueBit) != 0;
  if constexpr (writable)
    return TensorMap3<T>(m.data(), shape.batch, shape.seq_len, m.cols());
  else
    return ConstTensorMap3<T>(m.data(), shape.batch, shape.seq_len, m.cols());
}

}  // namespace mixdepth
