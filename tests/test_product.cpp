// detail::product / add_product, the reference layers' matrix products: the GEMM kernel behind
// Eigen-typed operands (transposes, blocks, scalar factors, a column-major result) against a
// double-precision product, within the rounding bound of a k-term dot product; the same bits
// with and without an arena; one row, one column or a tiny block alone has the bits it has in
// a larger product; Eigen's own code, bit for bit, for vector types.
#include "test_helpers.hpp"

#include <mixdepth/product.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

using Wide = Eigen::MatrixXd;
using ColMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

template <class M>
Wide widen(const M& m) {
  return m.template cast<double>();
}

// |got - want| <= eps ((k + 2) |alpha| (|a| |b|) + 2 |c0| + |want|), coefficient-wise.
template <class Got>
bool within_rounding(const Got& got, const Wide& want, const Wide& magnitude, const Wide& before, double alpha,
                     Index k) {
  const double eps = double(std::numeric_limits<float>::epsilon());
  const Wide error = (widen(got) - want).cwiseAbs();
  const Wide bound =
      eps * (double(k + 2) * std::fabs(alpha) * magnitude + 2 * before.cwiseAbs() + want.cwiseAbs());
  return (error.array() <= bound.array()).all();
}

}  // namespace

TEST_CASE("product() computes alpha A B through the GEMM kernel for every operand layout") {
  Arena<float> arena;
  const RowMatrix<float> a = random_matrix<float>(300, 200, 3), b = random_matrix<float>(200, 260, 4);
  const RowMatrix<float> bt = random_matrix<float>(260, 200, 5), at = random_matrix<float>(200, 300, 6);
  const Wide magnitude = widen(a).cwiseAbs() * widen(b).cwiseAbs();
  const Wide zero = Wide::Zero(300, 260);

  RowMatrix<float> got(300, 260);
  detail::product(got, a, b, &arena);
  CHECK(within_rounding(got, widen(a) * widen(b), magnitude, zero, 1, 200));

  detail::product(got, a, b, &arena, -0.25f);
  CHECK(within_rounding(got, -0.25 * widen(a) * widen(b), magnitude, zero, -0.25, 200));

  detail::product(got, (2.0f * a), b, &arena);  // a scalar factor folds into alpha
  CHECK(within_rounding(got, 2.0 * widen(a) * widen(b), magnitude, zero, 2, 200));

  detail::product(got, at.transpose(), bt.transpose(), &arena);
  CHECK(within_rounding(got, widen(at).transpose() * widen(bt).transpose(),
                        widen(at).transpose().cwiseAbs() * widen(bt).transpose().cwiseAbs(), zero, 1, 200));

  ColMatrix col(300, 260);  // a column-major result is the transposed row-major product
  detail::product(col, a, b, &arena);
  CHECK(within_rounding(col, widen(a) * widen(b), magnitude, zero, 1, 200));

  // Blocks: a window of each operand into a window of the result, the rest untouched.
  RowMatrix<float> big = RowMatrix<float>::Constant(310, 270, 9.f);
  detail::product(big.block(3, 5, 290, 250), a.block(4, 1, 290, 190), b.block(2, 7, 190, 250), &arena);
  const Wide a_block = widen(a).block(4, 1, 290, 190), b_block = widen(b).block(2, 7, 190, 250);
  CHECK(within_rounding(big.block(3, 5, 290, 250), a_block * b_block, a_block.cwiseAbs() * b_block.cwiseAbs(),
                        Wide::Zero(290, 250), 1, 190));
  CHECK((big.topRows(3).array() == 9.f).all());
  CHECK((big.leftCols(5).array() == 9.f).all());
  CHECK((big.rightCols(15).array() == 9.f).all());
  CHECK((big.bottomRows(17).array() == 9.f).all());
}

TEST_CASE("add_product() adds alpha A B to the result") {
  Arena<float> arena;
  const RowMatrix<float> a = random_matrix<float>(150, 530, 7), e = random_matrix<float>(150, 90, 8);
  RowMatrix<float> got = random_matrix<float>(530, 90, 9);
  const Wide before = widen(got);
  detail::add_product(got, a.transpose(), e, &arena, 0.5f);  // depth 150, two panels of columns
  CHECK(within_rounding(got, before + 0.5 * widen(a).transpose() * widen(e),
                        widen(a).transpose().cwiseAbs() * widen(e).cwiseAbs(), before, 0.5, 150));
}

TEST_CASE("Arena: a moved-from arena is empty and usable, the moved-to one keeps the memory taken") {
  // Before, the defaulted moves left the source's chunk index behind, past its now empty
  // chunk list, and its next take() indexed out of bounds.
  auto aligned = [](const float* p) { return reinterpret_cast<std::uintptr_t>(p) % Arena<float>::alignment == 0; };
  Arena<float> source;
  float* first = source.take(100).data();
  first[99] = 5.f;
  (void)source.take(5000);  // a second chunk: the position is chunk 1
  Arena<float> moved(std::move(source));
  CHECK(first[99] == 5.f);
  CHECK(moved.capacity() >= 5100);
  CHECK(source.capacity() == 0);
  const auto again = source.take(300);
  CHECK(again.size() == 300);
  CHECK(aligned(again.data()));
  again[299] = 1.f;
  Arena<float> assigned;
  (void)assigned.take(10);
  assigned = std::move(moved);
  CHECK(assigned.capacity() >= 5100);
  CHECK(moved.capacity() == 0);
  CHECK(aligned(moved.take(7).data()));
}

TEST_CASE("Arena: rewinding to a mark whose chunk a reset() merged away throws and changes nothing") {
  Arena<float> arena;
  (void)arena.take(16);
  (void)arena.take(64);
  (void)arena.take(1000);  // a second chunk, then a third
  const auto stale = arena.mark();
  REQUIRE(stale.chunk >= 1);
  arena.reset();  // one chunk now
  const float* first = arena.take(8).data();
  const std::string named = "chunk " + std::to_string(stale.chunk);
  require_mentions(error_message([&] { arena.rewind(stale); }),
                   {"Arena::rewind", "m", "within this arena's 1 chunk(s)", named.c_str()});
  CHECK(arena.take(8).data() == first + 16);  // the position stayed where it was
  const auto fresh = arena.mark();
  (void)arena.take(100);
  arena.rewind(fresh);
  CHECK(arena.take(8).data() == first + 32);
  Arena<float> empty;
  empty.rewind(empty.mark());  // an empty arena's own mark is fine
  CHECK(empty.take(4).size() == 4);
}

TEST_CASE("Arena: in the test build every new chunk starts as NaN, the merged one after reset() too") {
  // The suite's guard against code that reads scratch before writing it: such a result then
  // carries a NaN instead of a zero that happened to be there (MIXDEPTH_POISON_SCRATCH).
#ifndef MIXDEPTH_POISON_SCRATCH
  FAIL("the tests must be built with MIXDEPTH_POISON_SCRATCH (tests/CMakeLists.txt)");
#endif
  auto all_nan = [](auto span) { return std::all_of(span.begin(), span.end(), [](auto v) { return std::isnan(v); }); };
  Arena<float> floats;
  CHECK(all_nan(floats.take(100)));
  CHECK(all_nan(floats.take(5000)));  // a second chunk
  floats.reset();                      // one merged chunk, new
  CHECK(all_nan(floats.take(5100)));
  Arena<double> doubles;
  CHECK(all_nan(doubles.take(33)));
}

TEST_CASE("product() gives the same bits with the caller's arena and without one") {
  Arena<float> arena;
  const RowMatrix<float> a = random_matrix<float>(97, 600, 10), b = random_matrix<float>(600, 130, 11);
  RowMatrix<float> with(97, 130), without(97, 130);
  detail::product(with, a, b, &arena);
  detail::product(without, a, b, nullptr);
  CHECK(bit_equal(with, without));
}

TEST_CASE("product(): a row, a column or a tiny block computed alone has the bits it has in a larger "
          "product, vector types stay Eigen's, bit for bit") {
  Arena<float> arena;
  const RowMatrix<float> a = random_matrix<float>(30, 20, 12), b = random_matrix<float>(20, 26, 13);
  for (const Index depth : {Index(1), Index(5), Index(20)}) {
    INFO("depth ", depth);
    const auto a_k = a.leftCols(depth);
    const auto b_k = b.topRows(depth);
    RowMatrix<float> whole(30, 26);
    detail::product(whole, a_k, b_k, &arena, 0.75f);
    const Wide magnitude = widen(RowMatrix<float>(a_k)).cwiseAbs() * widen(RowMatrix<float>(b_k)).cwiseAbs();
    CHECK(within_rounding(whole, 0.75 * widen(RowMatrix<float>(a_k)) * widen(RowMatrix<float>(b_k)), magnitude,
                          Wide::Zero(30, 26), 0.75, depth));
    RowMatrix<float> row(1, 26), column(30, 1), tiny(3, 4);
    for (Index r = 0; r < 30; ++r) {  // one row: Eigen would run its GEMV here
      detail::product(row, a_k.middleRows(r, 1), b_k, &arena, 0.75f);
      CHECK(rows_bit_equal(row, 0, whole, r));
    }
    for (Index j = 0; j < 26; ++j) {
      detail::product(column, a_k, b_k.middleCols(j, 1), &arena, 0.75f);
      CHECK(bit_equal(column, whole.col(j)));
    }
    // rows + cols + depth < 20: Eigen would multiply coefficient by coefficient
    detail::product(tiny, a_k.middleRows(2, 3), b_k.middleCols(6, 4), &arena, 0.75f);
    CHECK(bit_equal(tiny, whole.block(2, 6, 3, 4)));
  }
  // Operands that are vectors at compile time are Eigen's GEMV.
  const Eigen::VectorXf v = random_matrix<float>(20, 1, 14);
  Eigen::VectorXf want(30), got(30);
  want.noalias() = a * v;
  detail::product(got, a, v, &arena);
  CHECK(bit_equal(want, got));
}

TEST_CASE("product() rejects mismatched shapes and a result over an operand, writing nothing") {
  Arena<float> arena;
  const RowMatrix<float> a = random_matrix<float>(20, 30, 5), b = random_matrix<float>(30, 40, 6);
  RowMatrix<float> dst = RowMatrix<float>::Constant(20, 40, 42.f);
  auto untouched = [&] { return (dst.array() == 42.f).all(); };
  // With NDEBUG these went unchecked and the kernel read past the operands.
  require_mentions(error_message([&] { detail::product(dst, a, b.topRows(29), &arena); }),
                   {"product", "rhs.rows()", "expected 30 (lhs.cols())", "got 29"});
  require_mentions(error_message([&] { detail::add_product(dst.topRows(19), a, b, &arena); }),
                   {"add_product", "dst.rows()", "expected 20 (lhs.rows())", "got 19"});
  require_mentions(error_message([&] { detail::product(dst.leftCols(39), a, b, &arena); }),
                   {"product", "dst.cols()", "expected 40 (rhs.cols())", "got 39"});
  CHECK(untouched());

  // dst over lhs, over a transposed rhs, and a column block interleaved with the operand's
  // columns (the memory spanned overlaps, though no coefficient is shared): all refused.
  RowMatrix<float> both = random_matrix<float>(20, 70, 7);
  const RowMatrix<float> before = both;
  require_mentions(error_message([&] { detail::product(both.leftCols(30), both.leftCols(30), random_matrix<float>(30, 30, 8), &arena); }),
                   {"product", "dst", "memory apart from lhs", "overlapping"});
  RowMatrix<float> square = random_matrix<float>(30, 30, 9);
  const RowMatrix<float> square_before = square;
  require_mentions(error_message([&] { detail::add_product(square, random_matrix<float>(30, 30, 10), square.transpose(), &arena); }),
                   {"add_product", "dst", "memory apart from rhs", "overlapping"});
  require_mentions(error_message([&] { detail::product(both.rightCols(40), both.leftCols(30), b, &arena, 2.f); }),
                   {"product", "dst", "memory apart from lhs"});
  CHECK(bit_equal(both, before));
  CHECK(bit_equal(square, square_before));
  // Operands that share memory with each other are fine, as is a dst beside them.
  RowMatrix<float> wide = RowMatrix<float>::Zero(60, 30);
  wide.topRows(30) = random_matrix<float>(30, 30, 11);
  detail::product(wide.bottomRows(30), wide.topRows(30), wide.topRows(30).transpose(), &arena);
  const Wide want = widen(RowMatrix<float>(wide.topRows(30))) * widen(RowMatrix<float>(wide.topRows(30))).transpose();
  CHECK((widen(RowMatrix<float>(wide.bottomRows(30))) - want).cwiseAbs().maxCoeff<Eigen::PropagateNaN>() < 1e-3);
}
