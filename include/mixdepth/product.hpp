#pragma once
// Matrix products for the reference layers: mixdepth's own blocked GEMM kernel
// (kernels/gemm.hpp) with its packing buffers taken from an Arena, so that a warmed-up
// forward pass makes no heap allocation.
//
//   product(dst, lhs, rhs, arena)            dst  = lhs * rhs
//   product(dst, lhs, rhs, arena, alpha)     dst  = alpha * lhs * rhs
//   add_product(dst, lhs, rhs, arena[, a])   dst += a * lhs * rhs
//
// lhs and rhs are any expressions with direct access and unit inner stride (matrices, Maps,
// Refs, blocks of them, and their transposes; a scalar factor such as `s * A` is folded into
// alpha as Eigen does). dst must not share memory with either operand (checked over the
// memory each view spans, so views that merely interleave are refused too). Shapes that do
// not match, or dst over an operand's memory, throw mixdepth::Error before anything is
// written. The arena is rewound before returning; with a null arena the packing buffers come
// from a local one (which allocates).
//
// The kernel runs every product of two operands that are matrices at compile time, whatever
// their run-time sizes (one row, one column and tiny products included), and is faster
// than Eigen's GEMM (bench/README.md: BM_Product beside BM_EigenProduct). A product with a
// vector type as an operand (Eigen's GEMV or inner product), an empty product, and a dst
// with non-unit inner stride stay Eigen's.
//
// Rounding is not Eigen's: the kernel accumulates with fused multiply-adds in its own order.
// Each coefficient depends only on its row of lhs, its column of rhs and the inner
// dimension, never on which other rows or columns are in the product (kernels/gemm.hpp): a
// row projected alone, as in a decoding step, has the bits it has inside a larger product.
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "arena.hpp"
#include "kernels/gemm.hpp"
#include "types.hpp"

// blas_traits (how Eigen strips a transpose or a scalar factor off an operand) and
// product_type are Eigen internals that have changed between releases; this is written
// against the Eigen 3.4 that Debian 12 ships. Any other Eigen must fail here, at compile
// time, rather than compute something subtly different.
static_assert(EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4,
              "mixdepth/product.hpp uses Eigen 3.4 internals; check it against this Eigen");

namespace mixdepth::detail {

// Eigen's own product, for the cases the kernel does not run.
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

// Row and column strides of a direct-access operand: element (i, j) is at
// data()[i * row + j * col].
struct Strides {
  Index row;
  Index col;
};

template <class Plain>
Strides strides_of(const Plain& m) {
  if constexpr (bool(Plain::Flags & Eigen::RowMajorBit))
    return {m.outerStride(), m.innerStride()};
  else
    return {m.innerStride(), m.outerStride()};
}

// dst = alpha * lhs * rhs (+ dst when accumulate) through kernels::gemm, packing buffers from
// `arena`.
template <class Arch, bool accumulate, class Dst, class Lhs, class Rhs>
void gemm_product(Dst& dst, const Lhs& a_lhs, const Rhs& a_rhs, typename Dst::Scalar alpha,
                  Arena<typename Dst::Scalar>& arena) {
  namespace internal = Eigen::internal;
  using T = typename Dst::Scalar;
  using LhsTraits = internal::blas_traits<Lhs>;
  using RhsTraits = internal::blas_traits<Rhs>;
  static_assert(LhsTraits::HasUsableDirectAccess && RhsTraits::HasUsableDirectAccess,
                "product(): operands need direct access with unit inner stride (Eigen would copy them)");
  static_assert(!Eigen::NumTraits<T>::IsComplex, "product(): real scalars only");
  const auto& lhs = LhsTraits::extract(a_lhs);
  const auto& rhs = RhsTraits::extract(a_rhs);
  const T actual_alpha = internal::combine_scalar_factors(alpha, a_lhs, a_rhs);
  Strides l = strides_of(lhs), r = strides_of(rhs);
  const T* l_data = lhs.data();
  const T* r_data = rhs.data();
  Index m = dst.rows(), n = dst.cols();
  const Index k = lhs.cols();
  const Index ldc = dst.outerStride();
  if constexpr (!bool(Dst::Flags & Eigen::RowMajorBit)) {
    // A column-major dst is the row-major transpose: dst^T = rhs^T lhs^T.
    std::swap(m, n);
    std::swap(l_data, r_data);
    const Strides lhs_t{r.col, r.row}, rhs_t{l.col, l.row};
    l = lhs_t;
    r = rhs_t;
  }
  const auto mark = arena.mark();
  T* work = arena.take(kernels::gemm_workspace<Arch, T>(m, n, k)).data();
  kernels::gemm<Arch, T>(m, n, k, actual_alpha, l_data, l.row, l.col, r_data, r.row, r.col, accumulate,
                         dst.data(), ldc, work);
  arena.rewind(mark);
}

// Whether Eigen picks its GEMM implementation for these types at all (a vector at compile
// time goes to GEMV or a lazy product).
template <class Lhs, class Rhs>
inline constexpr bool gemm_product_type =
    int(Eigen::internal::product_type<Lhs, Rhs>::value) == int(Eigen::GemmProduct);

// Whether the kernel runs this product: one Eigen evaluates as a matrix product (GEMM or,
// with one row or column at run time, GEMV; a lazy coefficient-wise product when tiny), not
// empty.
template <class Lhs, class Rhs>
bool kernel_runs(Index rows, Index cols, Index depth) {
  if constexpr (!gemm_product_type<Lhs, Rhs>)
    return false;
  else
    return rows > 0 && cols > 0 && depth > 0;
}

// Throws unless dst = lhs * rhs has matching shapes and dst's memory is apart from the
// operands' (an operand's scalar factor or transpose stripped, as the kernel reads it).
template <class Dst, class Lhs, class Rhs>
void check_product(std::string_view where, const Dst& dst, const Lhs& lhs, const Rhs& rhs) {
  auto require = [&](std::string_view argument, Index expected, std::string_view named, Index actual) {
    if (expected != actual)
      fail(where, argument, std::to_string(expected) + " (" + std::string(named) + ")", actual);
  };
  require("rhs.rows()", lhs.cols(), "lhs.cols()", rhs.rows());
  require("dst.rows()", lhs.rows(), "lhs.rows()", dst.rows());
  require("dst.cols()", rhs.cols(), "rhs.cols()", dst.cols());
  auto check_apart = [&](std::string_view operand, const auto& expression) {
    using Traits = Eigen::internal::blas_traits<std::decay_t<decltype(expression)>>;
    if constexpr (Traits::HasUsableDirectAccess) {
      if (overlaps(dst, Traits::extract(expression)))
        fail(where, "dst", std::string("memory apart from ") + std::string(operand), "overlapping");
    }
  };
  check_apart("lhs", lhs);
  check_apart("rhs", rhs);
}

template <class Arch, bool accumulate, class Dst, class Lhs, class Rhs>
void product_impl(Dst& dst, const Lhs& lhs, const Rhs& rhs, Arena<typename Dst::Scalar>* arena,
                  typename Dst::Scalar alpha) {
  using T = typename Dst::Scalar;
  static_assert(std::is_same_v<T, typename Lhs::Scalar> && std::is_same_v<T, typename Rhs::Scalar>,
                "product(): one scalar type");
  check_product(accumulate ? "add_product" : "product", dst, lhs, rhs);
  if (!kernel_runs<Lhs, Rhs>(dst.rows(), dst.cols(), lhs.cols()) || dst.innerStride() != 1) {
    eigen_product<accumulate>(dst, lhs, rhs, alpha);
    return;
  }
  if constexpr (gemm_product_type<Lhs, Rhs>) {
    if (arena != nullptr) {
      gemm_product<Arch, accumulate>(dst, lhs, rhs, alpha, *arena);
    } else {
      Arena<T> local;
      gemm_product<Arch, accumulate>(dst, lhs, rhs, alpha, local);
    }
  }
}

// dst = alpha * lhs * rhs (see the top of this file). Arch: the kernel's architecture, the
// unit's own by default (its name then carries the unit's instruction set).
template <class Dst, class Lhs, class Rhs, class Arch = kernels::static_arch>
void product(Dst&& dst, const Lhs& lhs, const Rhs& rhs,
             Arena<typename std::remove_reference_t<Dst>::Scalar>* arena,
             typename std::remove_reference_t<Dst>::Scalar alpha = 1) {
  product_impl<Arch, false>(dst, lhs, rhs, arena, alpha);
}

// dst += alpha * lhs * rhs.
template <class Dst, class Lhs, class Rhs, class Arch = kernels::static_arch>
void add_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs,
                 Arena<typename std::remove_reference_t<Dst>::Scalar>* arena,
                 typename std::remove_reference_t<Dst>::Scalar alpha = 1) {
  product_impl<Arch, true>(dst, lhs, rhs, arena, alpha);
}

}  // namespace mixdepth::detail
