// Block<T, F>: the invariants of Eq. 1 (README.md, Semantics) and its argument checks.
#include "test_helpers.hpp"
#include "test_kernels_common.hpp"

#include <algorithm>
#include <cmath>
#include <set>

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

// A row-local block function: f(x)_i = 2 tanh(x_i) + 0.5, never zero.
struct RowLocal {
  template <class T>
  void operator()(const Routed<T>& in, std::type_identity_t<MatrixRef<T>> out) const {
    out = (T(2) * in.x.array().tanh() + T(0.5)).matrix();
  }
  template <class M>
  static auto dense(const M& x) {
    using T = typename M::Scalar;
    RowMatrix<T> f = (T(2) * x.array().tanh() + T(0.5)).matrix();
    return f;
  }
};

// Records what it was given, then acts like RowLocal.
template <class T>
struct Recorder {
  std::vector<Position> positions;
  std::vector<Index> offsets;
  RowMatrix<T> seen;
  void operator()(const Routed<T>& in, MatrixRef<T> out) {
    positions.assign(in.positions.begin(), in.positions.end());
    offsets.assign(in.offsets.begin(), in.offsets.end());
    seen = in.x;
    RowLocal{}(in, out);
  }
};

struct Zero {
  template <class T>
  void operator()(const Routed<T>&, std::type_identity_t<MatrixRef<T>> out) const {
    out.setZero();
  }
};

template <class T, class F>
Block<T, F> make_block(Index d, Capacity capacity, F f, Gate gate = Gate::identity, std::uint64_t seed = 7) {
  return Block<T, F>(Router<T>(random_vector<T>(d, seed), T(0.1)), capacity, std::move(f), gate);
}

// The selection by the contract's rules (brute force, not select_top_k) over each sequence's
// logits, as positions within the sequence, sequence after sequence.
template <class T>
std::vector<Position> expected_selection(std::span<const T> logits, Shape shape, Index k) {
  std::vector<Position> all;
  for (Index b = 0; b < shape.batch; ++b) {
    const std::vector<T> sequence(logits.begin() + b * shape.seq_len, logits.begin() + (b + 1) * shape.seq_len);
    const auto top = kernels_testing::brute_force_top_k(sequence, k, shape.seq_len);
    all.insert(all.end(), top.begin(), top.end());
  }
  return all;
}

// Router logits against x w + bias in long double, each within a few roundings of the sum
// of |x_c w_c| (a logit near zero cannot be held to its own size).
template <class T>
bool logits_match(std::span<const T> logits, const RowMatrix<T>& x, const Router<T>& router) {
  if (Index(logits.size()) != x.rows()) return false;
  const long double eps = std::numeric_limits<T>::epsilon();
  for (Index r = 0; r < x.rows(); ++r) {
    long double sum = router.bias(), magnitude = std::fabs(static_cast<long double>(router.bias()));
    for (Index c = 0; c < x.cols(); ++c) {
      const long double term = static_cast<long double>(x(r, c)) * router.weight()[c];
      sum += term;
      magnitude += std::fabs(term);
    }
    if (!(std::fabs(logits[std::size_t(r)] - sum) <= 4 * eps * (magnitude + 1))) return false;
  }
  return true;
}

template <class T>
Index changed_rows(const RowMatrix<T>& x, const RowMatrix<T>& y, Index first, Index count) {
  Index changed = 0;
  for (Index r = first; r < first + count; ++r) changed += !rows_bit_equal(x, r, y, r);
  return changed;
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-14;
}

}  // namespace

TEST_CASE_TEMPLATE("exactly min(k, S) rows change per sequence, all others are bit-identical", T, float, double) {
  const Index d = 24;
  for (Index s : {1, 5, 16, 33}) {
    for (Index k : {0, 1, 3, 16, 40}) {
      const Shape shape{3, s};
      const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 100 + s);
      RowMatrix<T> y(shape.rows(), d);
      auto block = make_block<T>(d, Capacity::tokens(k), RowLocal{});
      Workspace<T> ws;
      block.forward(x, shape, y, ws);
      for (Index b = 0; b < shape.batch; ++b) {
        INFO("S=", s, " k=", k, " b=", b);
        CHECK(changed_rows(x, y, b * s, s) == std::min(k, s));
      }
      // the logits are x w + b, and the changed rows exactly their top-k by the contract's
      // rules (a brute-force sort, not the library's top-k)
      CHECK(logits_match(ws.logits(), x, block.router()));
      CHECK(std::vector<Position>(ws.selected().begin(), ws.selected().end()) ==
            expected_selection(ws.logits(), shape, k));
      for (std::size_t j = 0; j < ws.routed_rows().size(); ++j)
        CHECK_FALSE(rows_bit_equal(x, ws.routed_rows()[j], y, ws.routed_rows()[j]));
    }
  }
}

TEST_CASE_TEMPLATE("k = S equals the dense block x + g(r) f(x), for both gates", T, float, double) {
  const Index d = 16;
  const Shape shape{2, 12};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 5);
  for (Gate gate : {Gate::identity, Gate::sigmoid}) {
    auto block = make_block<T>(d, Capacity::fraction(1.0), RowLocal{}, gate);
    RowMatrix<T> y(shape.rows(), d);
    Workspace<T> ws;
    block.forward(x, shape, y, ws);
    const RowMatrix<T> f = RowLocal::dense(x);
    const Vector<T> w = block.router().weight();
    for (Index r = 0; r < shape.rows(); ++r) {
      const double logit = static_cast<double>((x.row(r) * w)(0)) + static_cast<double>(block.router().bias());
      const double g = gate == Gate::identity ? logit : 1.0 / (1.0 + std::exp(-logit));
      for (Index c = 0; c < d; ++c) {
        const double expected = static_cast<double>(x(r, c)) + g * static_cast<double>(f(r, c));
        CHECK(static_cast<double>(y(r, c)) == doctest::Approx(expected).epsilon(tolerance<T>() * 10).scale(1.0));
      }
    }
  }
}

TEST_CASE_TEMPLATE("k = 0 is the identity and f = 0 gives y == x, bit for bit (x holds no -0.0)", T, float, double) {
  const Index d = 8;
  const Shape shape{4, 10};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 9);
  RowMatrix<T> y = RowMatrix<T>::Constant(shape.rows(), d, T(-99));
  Workspace<T> ws;
  auto none = make_block<T>(d, Capacity::tokens(0), RowLocal{});
  none.forward(x, shape, y, ws);
  CHECK(bit_equal(x, y));
  CHECK(ws.routed_rows().empty());
  auto zero = make_block<T>(d, Capacity::fraction(0.5), Zero{});
  y.setConstant(T(-99));
  zero.forward(x, shape, y, ws);
  CHECK(bit_equal(x, y));  // the router weight is never multiplied into the residual
  CHECK(ws.routed_rows().size() == 20);
}

TEST_CASE_TEMPLATE("routed rows get y = x + g(r) f exactly once (no doubled residual)", T, float, double) {
  const Index d = 12;
  const Shape shape{2, 20};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 11);
  RowMatrix<T> y(shape.rows(), d);
  auto block = make_block<T>(d, Capacity::fraction(0.25), RowLocal{}, Gate::sigmoid);
  Workspace<T> ws;
  block.forward(x, shape, y, ws);
  const auto rows = ws.routed_rows();
  REQUIRE(rows.size() == 10);
  CHECK(logits_match(ws.logits(), x, block.router()));
  const RowMatrix<T> f = RowLocal::dense(x);  // f of every row, computed apart from the block
  for (std::size_t j = 0; j < rows.size(); ++j) {
    const T g = sigmoid(ws.logits()[std::size_t(rows[j])]);
    CHECK(ws.gates()[j] == g);
    // The update is f of that row, up to Eigen's vectorised tanh against its scalar one (which
    // of the two a coefficient gets depends on where it falls in the matrix): f = 2 tanh + 0.5
    // lies in [-1.5, 2.5], where 24 epsilon is 12 ulps of the largest values.
    CHECK((ws.update().row(Index(j)) - f.row(rows[j])).cwiseAbs().template maxCoeff<Eigen::PropagateNaN>() <=
          24 * std::numeric_limits<T>::epsilon());
    for (Index c = 0; c < d; ++c) {
      const T product = g * ws.update()(Index(j), c);
      CHECK(y(rows[j], c) == x(rows[j], c) + product);
    }
  }
}

TEST_CASE_TEMPLATE("the block function sees original positions, ascending, with per-sequence offsets", T, float, double) {
  const Index d = 6;
  const Shape shape{3, 17};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 21);
  RowMatrix<T> y(shape.rows(), d);
  auto block = make_block<T>(d, Capacity::fraction(0.3), Recorder<T>{});
  Workspace<T> ws;
  block.forward(x, shape, y, ws);
  const auto& rec = block.function();
  const Index k = Capacity::fraction(0.3)(17);
  REQUIRE(rec.offsets == std::vector<Index>{0, k, 2 * k, 3 * k});
  CHECK(logits_match(ws.logits(), x, block.router()));
  CHECK(rec.positions == expected_selection(ws.logits(), shape, k));  // positions within each sequence, not compacted indices
  for (Index b = 0; b < 3; ++b) {
    CHECK(std::is_sorted(rec.positions.begin() + b * k, rec.positions.begin() + (b + 1) * k));
    for (Index j = rec.offsets[std::size_t(b)]; j < rec.offsets[std::size_t(b + 1)]; ++j)
      CHECK(rows_bit_equal(rec.seen, j, x, b * 17 + rec.positions[std::size_t(j)]));
  }
}

TEST_CASE_TEMPLATE("forward_inplace equals forward bit for bit, const or not", T, float, double) {
  const Index d = 20;
  const Shape shape{3, 31};
  const std::vector<Index> lengths = {31, 9, 0};
  for (bool padded : {false, true}) {
    const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 33);
    RowMatrix<T> y(shape.rows(), d);
    const auto block = make_block<T>(d, Capacity::fraction(0.4), RowLocal{}, Gate::sigmoid);
    Workspace<T> ws;
    const std::span<const Index> lens = padded ? std::span<const Index>(lengths) : std::span<const Index>();
    block.forward(x, shape, y, ws, lens);
    RowMatrix<T> inplace = x;
    block.forward_inplace(inplace, shape, ws, lens);
    CHECK(bit_equal(y, inplace));
  }
}

TEST_CASE_TEMPLATE("padding is never routed to f and comes through unchanged", T, float, double) {
  const Index d = 8;
  const Shape shape{3, 12};
  const std::vector<Index> lengths = {12, 3, 0};
  RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 44);
  x.row(12 + 5).setConstant(T(1e3));  // a padding row with a huge score must still be skipped
  RowMatrix<T> y(shape.rows(), d);
  Vector<T> w = Vector<T>::Ones(d);
  Block<T, Recorder<T>> block(Router<T>(w), Capacity::fraction(0.5), Recorder<T>{});
  Workspace<T> ws;
  block.forward(x, shape, y, ws, lengths);
  const auto& rec = block.function();
  CHECK(rec.offsets == std::vector<Index>{0, 6, 9, 9});  // min(k, L_b) routed rows
  for (Index b = 0; b < 3; ++b)
    for (Index i = lengths[std::size_t(b)]; i < 12; ++i) CHECK(rows_bit_equal(x, b * 12 + i, y, b * 12 + i));
  CHECK(changed_rows(x, y, 12, 12) == 3);
  CHECK(changed_rows(x, y, 24, 12) == 0);
  // select_top_k still reports exactly k per sequence, padding last
  CHECK(ws.selected().size() == 18);
  CHECK(ws.selected()[6] == 0);
  CHECK(ws.selected()[9] == 3);  // first padding position of sequence 1
}

TEST_CASE_TEMPLATE("sequences never influence each other, permuting sequences permutes outputs", T, float, double) {
  const Index d = 10, s = 14;
  const Shape shape{4, s};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 55);
  const auto block = make_block<T>(d, Capacity::fraction(0.25), RowLocal{}, Gate::identity);
  Workspace<T> ws;
  RowMatrix<T> y(shape.rows(), d);
  block.forward(x, shape, y, ws);

  const std::vector<Index> perm = {2, 0, 3, 1};
  RowMatrix<T> xp(shape.rows(), d), yp(shape.rows(), d);
  for (Index b = 0; b < 4; ++b) xp.middleRows(b * s, s) = x.middleRows(perm[std::size_t(b)] * s, s);
  block.forward(xp, shape, yp, ws);
  for (Index b = 0; b < 4; ++b)
    CHECK(bit_equal(RowMatrix<T>(yp.middleRows(b * s, s)), RowMatrix<T>(y.middleRows(perm[std::size_t(b)] * s, s))));

  RowMatrix<T> changed = x;
  changed.middleRows(2 * s, s) = random_matrix<T>(s, d, 56);
  RowMatrix<T> yc(shape.rows(), d);
  block.forward(changed, shape, yc, ws);
  for (Index b : {0, 1, 3})
    CHECK(bit_equal(RowMatrix<T>(yc.middleRows(b * s, s)), RowMatrix<T>(y.middleRows(b * s, s))));
}

TEST_CASE("tied router scores still route exactly k tokens (lowest positions)") {
  const Index d = 4;
  const Shape shape{2, 8};
  const RowMatrix<float> x = RowMatrix<float>::Ones(shape.rows(), d);  // every logit equal
  RowMatrix<float> y(shape.rows(), d);
  Block<float, Recorder<float>> block(Router<float>(Vector<float>::Ones(d)), Capacity::tokens(3), Recorder<float>{});
  Workspace<float> ws;
  block.forward(x, shape, y, ws);
  CHECK(block.function().positions == std::vector<Position>{0, 1, 2, 0, 1, 2});
}

TEST_CASE("strided views and Eigen Tensor adapters work without copies") {
  const Index d = 6;
  const Shape shape{2, 5};
  RowMatrix<float> wide = random_matrix<float>(shape.rows(), d + 3, 77);
  const RowMatrix<float> x = wide.leftCols(d);
  const auto block = make_block<float>(d, Capacity::fraction(0.4), RowLocal{});
  Workspace<float> ws;
  RowMatrix<float> expected(shape.rows(), d);
  block.forward(x, shape, expected, ws);

  RowMatrix<float> wide_out = RowMatrix<float>::Zero(shape.rows(), d + 3);
  block.forward(wide.leftCols(d), shape, wide_out.rightCols(d), ws);
  CHECK(bit_equal(RowMatrix<float>(wide_out.rightCols(d)), expected));
  CHECK((wide_out.leftCols(3).array() == 0.f).all());

  Tensor3<float> input(2, 5, d), output(2, 5, d);
  as_matrix(input) = x;
  CHECK(as_matrix(input).data() == input.data());  // zero-copy
  CHECK(shape_of(input) == shape);
  block.forward(as_matrix(std::as_const(input)), shape_of(input), as_matrix(output), ws);
  CHECK(bit_equal(RowMatrix<float>(as_matrix(std::as_const(output))), expected));
  auto view = as_tensor(MatrixRef<float>(expected), shape);
  CHECK(view.data() == expected.data());
  CHECK(view(1, 2, 3) == expected(7, 3));
  require_mentions(error_message([&] { as_tensor(MatrixRef<float>(expected), Shape{3, 5}); }),
                   {"as_tensor", "m.rows()", "15", "10"});
  // Matrices, maps, refs and blocks of whole rows, writable unless const; each a view.
  static_assert(std::is_same_v<decltype(as_tensor(expected, shape)), TensorMap3<float>>);
  static_assert(std::is_same_v<decltype(as_tensor(std::as_const(expected), shape)), ConstTensorMap3<float>>);
  CHECK(as_tensor(expected, shape).data() == expected.data());
  CHECK(as_tensor(expected.middleRows(5, 5), Shape{1, 5}).data() == expected.data() + 5 * d);
  const MatrixCRef<float> named_ref(expected);
  CHECK(as_tensor(named_ref, shape).data() == expected.data());
  require_mentions(error_message([&] { as_tensor(wide_out.rightCols(d), shape); }),
                   {"as_tensor", "m.outerStride()", "expected 6", "got 9"});
  // What would make a tensor over a copy that dies with the statement does not compile
  // (before, as_tensor<float>(MatrixXf(...)) compiled and returned a dangling view).
  using detail::tensor_viewable;
  static_assert(tensor_viewable<RowMatrix<float>&> && tensor_viewable<const RowMatrix<float>&>);
  static_assert(tensor_viewable<MatrixRef<float>> && tensor_viewable<RowMatrixMap<float>>);
  static_assert(!tensor_viewable<RowMatrix<float>>);        // a temporary matrix
  static_assert(!tensor_viewable<MatrixCRef<float>>);       // a temporary Ref<const>, maybe a copy
  static_assert(!tensor_viewable<Eigen::MatrixXf&>);         // column-major
  static_assert(!tensor_viewable<decltype(expected + expected)>);  // an expression
}

TEST_CASE("Block rejects bad input with a message naming it, and leaves y untouched") {
  const Index d = 5;
  const Shape shape{2, 4};
  const auto block = make_block<float>(d, Capacity::fraction(0.5), RowLocal{});
  Workspace<float> ws;
  RowMatrix<float> x = random_matrix<float>(8, d, 1);
  RowMatrix<float> y = RowMatrix<float>::Constant(8, d, 42.f);
  auto untouched = [&] { return (y.array() == 42.f).all(); };

  RowMatrix<float> wrong_d = random_matrix<float>(8, d + 1, 2);
  RowMatrix<float> y_wrong_d = RowMatrix<float>::Constant(8, d + 1, 42.f);
  require_mentions(error_message([&] { block.forward(wrong_d, shape, y_wrong_d, ws); }),
                   {"Block::forward", "x.cols()", "expected 5", "got 6"});
  CHECK((y_wrong_d.array() == 42.f).all());
  require_mentions(error_message([&] { block.forward(x, Shape{3, 4}, y, ws); }),
                   {"x.rows()", "expected 12", "got 8"});
  RowMatrix<float> short_y(7, d);
  require_mentions(error_message([&] { block.forward(x, shape, short_y, ws); }), {"y.rows()", "expected 8", "got 7"});
  require_mentions(error_message([&] { block.forward(x, shape, x, ws); }), {"y", "disjoint", "overlapping x"});
  RowMatrix<float> big = random_matrix<float>(9, d, 3);
  require_mentions(error_message([&] { block.forward(big.topRows(8), shape, big.bottomRows(8), ws); }),
                   {"overlapping"});
  const std::vector<Index> too_long = {4, 5};
  require_mentions(error_message([&] { block.forward(x, shape, y, ws, too_long); }), {"lengths[1]", "[0, 4]", "got 5"});
  const std::vector<Index> one = {4};
  require_mentions(error_message([&] { block.forward(x, shape, y, ws, one); }), {"lengths.size()", "got 1"});
  require_mentions(error_message([&] { block.forward(x, Shape{-1, 4}, y, ws); }), {"shape.batch", "-1"});
  CHECK(untouched());

  RowMatrix<float> before = x;
  require_mentions(error_message([&] { block.forward_inplace(x, Shape{2, 3}, ws); }),
                   {"Block::forward_inplace", "x.rows()", "expected 6", "got 8"});
  CHECK(bit_equal(x, before));
}

TEST_CASE("gather_rows and scatter_gated equal plain loops, and reject bad input before writing") {
  const Index d = 6;
  const RowMatrix<float> x = random_matrix<float>(9, d, 20);
  const std::vector<Position> rows{1, 4, 8};
  RowMatrix<float> gathered = RowMatrix<float>::Constant(3, d, 9.f);
  gather_rows<float>(x, rows, gathered);
  for (Index j = 0; j < 3; ++j) CHECK(rows_bit_equal(gathered, j, x, rows[std::size_t(j)]));

  const RowMatrix<float> update = random_matrix<float>(3, d, 21);
  const std::vector<float> gates{0.5f, -2.f, 3.f};
  RowMatrix<float> y = RowMatrix<float>::Constant(9, d, 9.f);
  scatter_gated<float>(x, rows, update, gates, y);
  for (Index r = 0; r < 9; ++r) {
    const auto j = std::find(rows.begin(), rows.end(), Position(r)) - rows.begin();
    for (Index c = 0; c < d; ++c) {
      const float expected = j < 3 ? x(r, c) + gates[std::size_t(j)] * update(j, c) : 9.f;  // other rows untouched
      CHECK(y(r, c) == expected);
    }
  }

  gathered.setConstant(9.f);
  auto gathered_untouched = [&] { return (gathered.array() == 9.f).all(); };
  const std::vector<Position> outside{1, 9, 2};
  require_mentions(error_message([&] { gather_rows<float>(x, outside, gathered); }),
                   {"gather_rows", "rows[1]", "[0, 9)", "got 9"});
  RowMatrix<float> two_rows(2, d);
  require_mentions(error_message([&] { gather_rows<float>(x, rows, two_rows); }), {"out.rows()", "expected 3", "got 2"});
  CHECK(gathered_untouched());
  // An output inside the source: the copy would read rows it had already overwritten.
  RowMatrix<float> buffer = random_matrix<float>(9, d, 22);
  const RowMatrix<float> buffer_before = buffer;
  const std::vector<Position> swap{1, 0};
  require_mentions(error_message([&] { gather_rows<float>(buffer, swap, buffer.topRows(2)); }),
                   {"gather_rows", "out", "memory disjoint from x", "overlapping"});
  CHECK(bit_equal(buffer, buffer_before));

  y.setConstant(9.f);
  require_mentions(error_message([&] { scatter_gated<float>(x, rows, update, std::span(gates).first(2), y); }),
                   {"scatter_gated", "gates.size()", "expected 3", "got 2"});
  require_mentions(error_message([&] { scatter_gated<float>(x, outside, update, gates, y); }), {"rows[1]", "got 9"});
  require_mentions(error_message([&] { scatter_gated<float>(buffer.topRows(8), rows, update, gates, buffer.bottomRows(8)); }),
                   {"y", "a partial overlap"});
  // update or gates in y's memory: a row written early would be read as a later update.
  require_mentions(error_message([&] { scatter_gated<float>(buffer, rows, buffer.topRows(3), gates, buffer); }),
                   {"scatter_gated", "update", "memory disjoint from y", "overlapping"});
  require_mentions(error_message([&] { scatter_gated<float>(x, rows, update, std::span<const float>(buffer.data(), 3), buffer); }),
                   {"scatter_gated", "gates", "memory disjoint from y", "overlapping"});
  CHECK((y.array() == 9.f).all());
  CHECK(bit_equal(buffer, buffer_before));
}

// A row given twice: in place the two updates would add up, out of place the second would
// overwrite the first, so the two disagreed. Rows in any other order are fine.
TEST_CASE("scatter_gated rejects a repeated row index, in any order, and takes distinct unsorted rows") {
  const Index d = 5;
  const RowMatrix<float> x = random_matrix<float>(6, d, 23);
  const RowMatrix<float> update = random_matrix<float>(3, d, 24);
  const std::vector<float> gates{0.5f, -2.f, 3.f};
  RowMatrix<float> y = RowMatrix<float>::Constant(6, d, 9.f);
  const std::vector<Position> repeated{2, 0, 2};
  require_mentions(error_message([&] { scatter_gated<float>(x, repeated, update, gates, y); }),
                   {"scatter_gated", "rows[2]", "rows[0] is 2", "got 2"});
  const std::vector<Position> adjacent{1, 1, 4};
  require_mentions(error_message([&] { scatter_gated<float>(x, adjacent, update, gates, y); }), {"rows[1]", "got 1"});
  RowMatrix<float> in_place = x;
  require_mentions(error_message([&] { scatter_gated<float>(in_place, repeated, update, gates, in_place); }),
                   {"rows[2]"});
  CHECK((y.array() == 9.f).all());
  CHECK(bit_equal(in_place, x));

  const std::vector<Position> unsorted{5, 0, 3};
  scatter_gated<float>(x, unsorted, update, gates, y);
  for (std::size_t j = 0; j < 3; ++j)
    for (Index c = 0; c < d; ++c) CHECK(y(unsorted[j], c) == x(unsorted[j], c) + gates[j] * update(Index(j), c));
  CHECK((y.row(1).array() == 9.f).all());
}

TEST_CASE("Workspace::reserve rejects negative sizes, naming them") {
  Workspace<float> ws;
  require_mentions(error_message([&] { ws.reserve(Shape{-1, 4}, 8, 2); }), {"Workspace::reserve", "shape.batch", "-1"});
  require_mentions(error_message([&] { ws.reserve(Shape{2, 4}, -8, 2); }), {"Workspace::reserve", "dim", ">= 0", "-8"});
  require_mentions(error_message([&] { ws.reserve(Shape{2, 4}, 8, -2); }), {"Workspace::reserve", "k", ">= 0", "-2"});
  ws.reserve(Shape{2, 4}, 8, 2);  // good sizes: no throw
}

TEST_CASE("a moved-from Workspace is empty, and the one moved to holds the forward's results") {
  const Index d = 6;
  const Shape shape{2, 8};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 31);
  RowMatrix<float> y(shape.rows(), d), y_again(shape.rows(), d);
  const auto block = make_block<float>(d, Capacity::fraction(0.5), RowLocal{});
  ThreadPool pool(2);
  auto check_empty = [](const Workspace<float>& ws) {
    CHECK(ws.shape() == Shape{});
    CHECK(ws.k() == 0);
    CHECK(ws.logits().empty());
    CHECK(ws.selected().empty());
    CHECK(ws.routed_rows().empty());
    CHECK(ws.routed_positions().empty());
    CHECK(ws.offsets().empty());
    CHECK(ws.gates().empty());
    CHECK(ws.routed_x().size() == 0);
    CHECK(ws.update().size() == 0);
    CHECK(ws.thread_pool() == nullptr);
  };
  Workspace<float> ws;
  ws.set_thread_pool(&pool);
  block.forward(x, shape, y, ws);
  const std::vector<Position> selected(ws.selected().begin(), ws.selected().end());
  const RowMatrix<float> update = ws.update();
  REQUIRE(selected.size() == 8);

  Workspace<float> moved(std::move(ws));
  check_empty(ws);  // NOLINT(bugprone-use-after-move): the state after a move is the point
  CHECK(moved.thread_pool() == &pool);
  CHECK(std::vector<Position>(moved.selected().begin(), moved.selected().end()) == selected);
  CHECK(bit_equal(RowMatrix<float>(moved.update()), update));

  Workspace<float> assigned;
  assigned = std::move(moved);
  check_empty(moved);  // NOLINT(bugprone-use-after-move)
  CHECK(std::vector<Position>(assigned.selected().begin(), assigned.selected().end()) == selected);
  CHECK(bit_equal(RowMatrix<float>(assigned.update()), update));

  block.forward(x, shape, y_again, ws);  // a moved-from workspace takes a forward as a new one
  CHECK(bit_equal(y_again, y));
  CHECK(std::vector<Position>(ws.selected().begin(), ws.selected().end()) == selected);
}

TEST_CASE_TEMPLATE("forward_dense is the plain residual block x + f(x), in place or not, with padding", T, float, double) {
  const Index d = 11;
  const Shape shape{2, 9};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 88);
  RowLocal f;
  Workspace<T> ws;
  RowMatrix<T> y(shape.rows(), d);
  forward_dense<T>(f, x, shape, y, ws);
  const RowMatrix<T> update = RowLocal::dense(x);
  RowMatrix<T> expected = x;
  expected += update;
  CHECK(bit_equal(y, expected));
  RowMatrix<T> inplace = x;
  forward_dense<T>(f, inplace, shape, inplace, ws);
  CHECK(bit_equal(inplace, expected));

  const std::vector<Index> lengths = {9, 4};
  forward_dense<T>(f, x, shape, y, ws, lengths);
  for (Index r = 0; r < shape.rows(); ++r) {
    const bool padding = r >= 9 + 4;
    for (Index c = 0; c < d; ++c)
      CHECK(y(r, c) == (padding ? x(r, c) : x(r, c) + update(r, c)));
  }
  require_mentions(error_message([&] { forward_dense<T>(f, x, Shape{3, 9}, y, ws); }),
                   {"forward_dense", "x.rows()", "27", "18"});
}

// The workspace describes the last forward only: a dense one after a routed one must not
// leave the routed forward's logits and inputs readable as if they were its own.
TEST_CASE_TEMPLATE("after forward_dense the workspace holds no logits, and routed_x only with padding", T, float, double) {
  const Index d = 6;
  const Shape shape{2, 5};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 91);
  RowMatrix<T> y(shape.rows(), d);
  Workspace<T> ws;
  auto block = make_block<T>(d, Capacity::tokens(2), RowLocal{});
  block.forward(x, shape, y, ws);
  CHECK(ws.logits().size() == std::size_t(shape.rows()));
  CHECK(ws.routed_x().rows() == 4);
  RowLocal f;
  forward_dense<T>(f, x, shape, y, ws);
  CHECK(ws.logits().empty());
  CHECK(ws.routed_x().rows() == 0);  // f read x in place
  CHECK(ws.update().rows() == shape.rows());
  const std::vector<Index> lengths = {5, 3};
  forward_dense<T>(f, x, shape, y, ws, lengths);
  CHECK(ws.logits().empty());
  REQUIRE(ws.routed_x().rows() == 8);
  CHECK(reinterpret_cast<std::uintptr_t>(ws.routed_x().data()) % 64 == 0);  // cache-line aligned, as x's rows are
  CHECK(reinterpret_cast<std::uintptr_t>(ws.update().data()) % 64 == 0);
  CHECK(bit_equal(ws.routed_x().topRows(5), x.topRows(5)));
  CHECK(bit_equal(ws.routed_x().bottomRows(3), x.middleRows(5, 3)));
  block.forward(x, shape, y, ws);
  CHECK(ws.logits().size() == std::size_t(shape.rows()));
  CHECK(ws.routed_x().rows() == 4);
}
