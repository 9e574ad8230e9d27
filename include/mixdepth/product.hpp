#pragma once
// Matrix products whose packing buffers come from an Arena, so that a warmed-up forward pass
// makes no heap allocation.
//
// Eigen 3.4 packs both operands of a large product into blocking buffers; it puts them on
// the stack up to EIGEN_STACK_ALLOCATION_LIMIT (128 KB) and on the heap beyond, on every
// call. product() runs the very same kernel (general_matrix_matrix_product, with the
// blocking sizes Eigen's own product would choose) but hands it buffers taken from the
// caller's arena, so the result is bit for bit the one of `dst.noalias() = lhs * rhs`.
// Where Eigen would not use that kernel (tiny products evaluated coefficient by coefficient,
// a vector result through GEMV, an empty inner dimension) Eigen's own product runs: those
// paths keep nothing on the heap beyond what a 128 KB stack buffer holds.
//
//   product(dst, lhs, rhs, arena)            dst  = lhs * rhs
//   product(dst, lhs, rhs, arena, alpha)     dst  = alpha * lhs * rhs
//   add_product(dst, lhs, rhs, arena[, a])   dst += a * lhs * rhs
//
// lhs and rhs are any expressions with direct access and unit inner stride (matrices, Maps,
// Refs, blocks of them, and their transposes; a scalar factor such as `s * A` is folded into
// alpha as Eigen does). dst must have unit inner stride and must not alias either operand
// (as with noalias()). With a null arena, Eigen's product runs unchanged (and may allocate).
// The arena is rewound before returning.
#include <type_traits>

#include <Eigen/Core>

#include "arena.hpp"
#include "types.hpp"

// The code below drives Eigen's internal GEMM interface (level3_blocking,
// computeProductBlockingSizes, general_matrix_matrix_product::run, blas_traits), which is not
// part of Eigen's public API and has changed between releases. It is written against the
// Eigen 3.4 that Debian 12 ships (3.4.0); any other Eigen must fail here, at compile time,
// rather than compute something subtly different.
static_assert(EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4,
              "mixdepth/product.hpp uses Eigen 3.4 internals; check it against this Eigen");

namespace mixdepth::detail {

// The blocking of one GEMM call: Eigen's sizes, buffers from an arena.
template <class T>
class ArenaBlocking : public Eigen::internal::level3_blocking<T, T> {
 public:
  // Mirrors gemm_blocking_space<StorageOrder, T, T, Dynamic, Dynamic, Dynamic>(rows, cols,
  // depth, 1, true): a row-major result is computed as the column-major transposed product,
  // so rows and columns trade places first.
  ArenaBlocking(Index rows, Index cols, Index depth, bool row_major_result, Arena<T>& arena) {
    this->m_mc = row_major_result ? cols : rows;
    this->m_nc = row_major_result ? rows : cols;
    this->m_kc = depth;
    Eigen::internal::computeProductBlockingSizes<T, T, 1, Index>(this->m_kc, this->m_mc, this->m_nc, Index{1});
    this->m_blockA = arena.take(this->m_mc * this->m_kc).data();
    this->m_blockB = arena.take(this->m_kc * this->m_nc).data();
  }
};

// Eigen's own product, for the cases it does not send to the GEMM kernel (or no arena).
template <bool accumulate, class Dst, class Lhs, class Rhs>
void eigen_product(Dst& dst, const Lhs& lhs, const Rhs& rhs, typename Dst::Scalar alpha) {
  using T = typename Dst::Scalar;
  if (alpha == T(1)) {
    if constexpr (accumulate) dst.noalias() += lhs * rhs;
    else dst.noalias() = lhs * rhs;
  } else {
    if constexpr (accumulate) dst.noalias() += (alpha * lhs) * rhs;
    else dst.noalias() = (alpha * lhs) * rhs;
  }
}

// dst += alpha * lhs * rhs through Eigen's GEMM kernel, as generic_product_impl<...,
// GemmProduct>::scaleAndAddTo does it, with the packing buffers from `arena`.
template <class Dst, class Lhs, class Rhs>
void gemm_add(Dst& dst, const Lhs& a_lhs, const Rhs& a_rhs, typename Dst::Scalar alpha,
              Arena<typename Dst::Scalar>& arena) {
  namespace internal = Eigen::internal;
  using T = typename Dst::Scalar;
  using LhsTraits = internal::blas_traits<Lhs>;
  using RhsTraits = internal::blas_traits<Rhs>;
  static_assert(LhsTraits::HasUsableDirectAccess && RhsTraits::HasUsableDirectAccess,
                "product(): operands need direct access with unit inner stride (Eigen would copy them)");
  using LhsClean = typename internal::remove_all<typename LhsTraits::DirectLinearAccessType>::type;
  using RhsClean = typename internal::remove_all<typename RhsTraits::DirectLinearAccessType>::type;
  constexpr int lhs_order = (LhsClean::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
  constexpr int rhs_order = (RhsClean::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
  constexpr int dst_order = (Dst::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
  using Gemm = internal::general_matrix_matrix_product<
      Index, T, lhs_order, bool(LhsTraits::NeedToConjugate), T, rhs_order,
      bool(RhsTraits::NeedToConjugate), dst_order, Dst::InnerStrideAtCompileTime>;

  const auto& lhs = LhsTraits::extract(a_lhs);
  const auto& rhs = RhsTraits::extract(a_rhs);
  const T actual_alpha = internal::combine_scalar_factors(alpha, a_lhs, a_rhs);
  const auto mark = arena.mark();
  ArenaBlocking<T> blocking(dst.rows(), dst.cols(), lhs.cols(), dst_order == Eigen::RowMajor, arena);
  Gemm::run(dst.rows(), dst.cols(), lhs.cols(), lhs.data(), lhs.outerStride(), rhs.data(),
            rhs.outerStride(), dst.data(), dst.innerStride(), dst.outerStride(), actual_alpha,
            blocking);
  arena.rewind(mark);
}

// Whether Eigen picks its GEMM implementation for these types at all (a vector at compile
// time goes to GEMV or a lazy product).
template <class Lhs, class Rhs>
inline constexpr bool gemm_product_type =
    int(Eigen::internal::product_type<Lhs, Rhs>::value) == int(Eigen::GemmProduct);

// Whether Eigen 3.4 would evaluate this product with its GEMM kernel (see
// generic_product_impl<..., GemmProduct>::evalTo/addTo and scaleAndAddTo).
template <class Lhs, class Rhs>
bool eigen_uses_gemm(Index rows, Index cols, Index depth) {
  if constexpr (!gemm_product_type<Lhs, Rhs>) {
    return false;
  } else {
    if (depth + rows + cols < EIGEN_GEMM_TO_COEFFBASED_THRESHOLD && depth > 0) return false;
    return rows > 1 && cols > 1 && depth > 0;  // 1 row or column: GEMV; empty: nothing to do
  }
}

template <bool accumulate, class Dst, class Lhs, class Rhs>
void product_impl(Dst& dst, const Lhs& lhs, const Rhs& rhs, Arena<typename Dst::Scalar>* arena,
                  typename Dst::Scalar alpha) {
  using T = typename Dst::Scalar;
  static_assert(std::is_same_v<T, typename Lhs::Scalar> && std::is_same_v<T, typename Rhs::Scalar>,
                "product(): one scalar type");
  eigen_assert(lhs.cols() == rhs.rows() && dst.rows() == lhs.rows() && dst.cols() == rhs.cols());
  if (arena == nullptr || !eigen_uses_gemm<Lhs, Rhs>(dst.rows(), dst.cols(), lhs.cols())) {
    eigen_product<accumulate>(dst, lhs, rhs, alpha);
    return;
  }
  if constexpr (gemm_product_type<Lhs, Rhs>) {
    if constexpr (!accumulate) dst.setZero();  // the kernel accumulates, as Eigen's evalTo
    gemm_add(dst, lhs, rhs, alpha, *arena);
  }
}

// dst = alpha * lhs * rhs (see the top of this file).
template <class Dst, class Lhs, class Rhs>
void product(Dst&& dst, const Lhs& lhs, const Rhs& rhs,
             Arena<typename std::remove_reference_t<Dst>::Scalar>* arena,
             typename std::remove_reference_t<Dst>::Scalar alpha = 1) {
  product_impl<false>(dst, lhs, rhs, arena, alpha);
}

// dst += alpha * lhs * rhs.
template <class Dst, class Lhs, class Rhs>
void add_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs,
                 Arena<typename std::remove_reference_t<Dst>::Scalar>* arena,
                 typename std::remove_reference_t<Dst>::Scalar alpha = 1) {
  product_impl<true>(dst, lhs, rhs, arena, alpha);
}

}  // namespace mixdepth::detail
