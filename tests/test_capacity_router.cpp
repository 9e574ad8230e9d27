// Capacity rounding, the router, the gate and argument checking of the small pieces.
#include "test_helpers.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

using namespace mixdepth;
using namespace mixdepth::testing;

TEST_CASE("Capacity::fraction gives ceil(c*S) without rounding exact decimal products up") {
  CHECK(Capacity::fraction(0.1)(30) == 3);       // 0.1 * 30 == 3.0000000000000004 in double
  CHECK(Capacity::fraction(0.3)(10) == 3);
  CHECK(Capacity::fraction(0.7)(10) == 7);
  CHECK(Capacity::fraction(0.125)(2048) == 256);  // the paper's setting
  CHECK(Capacity::fraction(0.1)(31) == 4);        // 3.1 rounds up
  CHECK(Capacity::fraction(1.0)(17) == 17);
  CHECK(Capacity::fraction(1e-12)(10) == 1);      // any positive fraction takes a token
  CHECK(Capacity::fraction(0.5)(0) == 0);

  // Exhaustively against integer arithmetic: c = p / q parsed as a decimal double.
  for (int q : {10, 100, 1000, 10000}) {
    for (int p = 1; p <= q; p += (q >= 1000 ? 7 : 1)) {
      const double c = static_cast<double>(p) / q;
      const Capacity capacity = Capacity::fraction(c);
      for (Index s = 0; s <= 2100; s += (s < 300 ? 1 : 37)) {
        const Index exact = (Index{p} * s + q - 1) / q;  // ceil(p*s/q)
        if (capacity(s) != exact) {
          INFO("c = ", p, "/", q, " S = ", s);
          REQUIRE(capacity(s) == exact);
        }
      }
    }
  }
}

TEST_CASE("Capacity::tokens gives min(n, S)") {
  CHECK(Capacity::tokens(0)(10) == 0);
  CHECK(Capacity::tokens(4)(10) == 4);
  CHECK(Capacity::tokens(40)(10) == 10);
  CHECK(Capacity::tokens(3)(0) == 0);
  CHECK(Capacity::tokens(5).tokens_value() == 5);
  CHECK_FALSE(Capacity::tokens(5).is_fraction());
  CHECK(Capacity::fraction(0.25).is_fraction());
}

// Near the top of Index's range c * S rounds up to 2^63 in double, which no Index holds
// (converting it was undefined behaviour): the answer is capped at S before converting.
TEST_CASE("Capacity::fraction stays within S for sequence lengths near the largest Index") {
  // Opaque to the optimiser, which may fold an undefined conversion of a constant into
  // anything: given a constant the old code returned S, given a run-time value INT64_MIN.
  volatile Index opaque = std::numeric_limits<Index>::max();
  const Index largest = opaque;
  CHECK(Capacity::fraction(1.0)(largest) == largest);
  CHECK(Capacity::fraction(1.0)(largest - 100) == largest - 100);
  // (1 - 2^-53) * (2^63 - 1) = 2^63 - 1025 + 2^-53, whose ceiling is 2^63 - 1024.
  CHECK(Capacity::fraction(1.0 - 0x1p-53)(largest) == largest - 1023);
  const Index half = Capacity::fraction(0.5)(largest);
  CHECK(half > 0);
  CHECK(half <= largest / 2 + 1);
  CHECK(half >= largest / 2 - 1024);  // within double's spacing at 2^62
  CHECK(Capacity::fraction(0x1p-60)(largest) == 8);
}

TEST_CASE("Capacity rejects values outside its range with a message naming them") {
  require_mentions(error_message([] { Capacity::fraction(0.0); }), {"Capacity::fraction", "c", "(0, 1]", "got 0"});
  require_mentions(error_message([] { Capacity::fraction(1.5); }), {"c", "(0, 1]", "1.5"});
  require_mentions(error_message([] { Capacity::fraction(-0.25); }), {"-0.25"});
  require_mentions(error_message([] { Capacity::fraction(std::nan("")); }), {"nan"});
  require_mentions(error_message([] { Capacity::tokens(-3); }), {"Capacity::tokens", "n", ">= 0", "-3"});
  require_mentions(error_message([] { Capacity::tokens(2)(-1); }), {"seq_len", "-1"});
  // mixdepth::Error is an std::invalid_argument
  CHECK_THROWS_AS(Capacity::fraction(2.0), std::invalid_argument);
}

TEST_CASE_TEMPLATE("Router::score computes x w + bias for every row", T, float, double) {
  const Index rows = 37, d = 19;
  const RowMatrix<T> x = random_matrix<T>(rows, d, 1);
  const Vector<T> w = random_vector<T>(d, 2);
  const Router<T> router(w, T(0.75));
  Vector<T> logits(rows);
  router.score(x, logits);
  for (Index i = 0; i < rows; ++i) {
    long double expected = 0.75L;
    for (Index c = 0; c < d; ++c) expected += static_cast<long double>(x(i, c)) * w(c);
    CHECK(static_cast<double>(logits(i)) ==
          doctest::Approx(static_cast<double>(expected)).epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-12));
  }
  CHECK(router.dim() == d);
  CHECK(router.bias() == T(0.75));

  // A strided view (a column block of a wider matrix) scores the same.
  RowMatrix<T> wide = random_matrix<T>(rows, d + 5, 3);
  wide.leftCols(d) = x;
  Vector<T> strided(rows);
  router.score(wide.leftCols(d), strided);
  CHECK(bit_equal(strided, logits));
}

TEST_CASE("Router takes the contract's constructor: a braced {weight, bias} builds one where a Router is expected") {
  const auto dim_and_bias = [](const Router<double>& r) { return std::pair{r.dim(), r.bias()}; };
  CHECK(dim_and_bias({Vector<double>::Ones(3), 0.5}) == std::pair{Index(3), 0.5});
  CHECK(dim_and_bias({Vector<double>::Ones(2)}) == std::pair{Index(2), 0.0});
  require_mentions(error_message([&] { (void)dim_and_bias({Vector<double>()}); }), {"Router", "weight.size()", ">= 1"});
}

TEST_CASE("Router rejects mismatched shapes and leaves the logits untouched") {
  const Router<float> router(Vector<float>::Ones(4));
  RowMatrix<float> x = RowMatrix<float>::Ones(3, 5);
  Vector<float> logits = Vector<float>::Constant(3, 42.f);
  require_mentions(error_message([&] { router.score(x, logits); }),
                   {"Router::score", "x.cols()", "expected 4", "got 5"});
  CHECK((logits.array() == 42.f).all());
  RowMatrix<float> ok = RowMatrix<float>::Ones(3, 4);
  Vector<float> short_logits = Vector<float>::Constant(2, 42.f);
  require_mentions(error_message([&] { router.score(ok, short_logits); }),
                   {"logits.size()", "expected 3", "got 2"});
  CHECK((short_logits.array() == 42.f).all());
  require_mentions(error_message([] { Router<float> empty(Vector<float>(0)); }), {"weight.size()"});
  // Logits written into x itself: what a later row reads would depend on the kernel's order.
  std::vector<float> buffer(8 * 4 + 8, 1.f);
  const Eigen::Map<const RowMatrix<float>> shared_x(buffer.data(), 8, 4);
  Eigen::Map<Vector<float>> inside(buffer.data() + 12, 8);
  require_mentions(error_message([&] { router.score(shared_x, inside); }),
                   {"Router::score", "logits", "memory disjoint from x", "overlapping"});
  CHECK(std::all_of(buffer.begin(), buffer.end(), [](float v) { return v == 1.f; }));
}

TEST_CASE_TEMPLATE("Gates: identity passes r through, sigmoid is stable for large |r|", T, float, double) {
  CHECK(apply_gate(Gate::identity, T(-2.5)) == T(-2.5));
  CHECK(apply_gate(Gate::sigmoid, T(0)) == T(0.5));
  CHECK(apply_gate(Gate::sigmoid, T(1000)) == T(1));
  CHECK(apply_gate(Gate::sigmoid, T(-1000)) == T(0));
  CHECK_FALSE(std::isnan(apply_gate(Gate::sigmoid, -std::numeric_limits<T>::infinity())));
  // Relative to the value alone (scale 0): doctest's default would accept anything within
  // the epsilon of 0 for the tiny values at r = -30 and the derivative at r = 20.
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  for (double r : {-30.0, -3.0, -0.5, 0.25, 4.0, 20.0, 30.0}) {
    const long double sl = 1.0L / (1.0L + std::exp(-static_cast<long double>(r)));
    const long double derivative = std::exp(-static_cast<long double>(r)) * sl * sl;  // s (1 - s), no cancellation
    CHECK(static_cast<double>(sigmoid(T(r))) == doctest::Approx(double(sl)).epsilon(tolerance).scale(0));
    CHECK(static_cast<double>(gate_derivative(Gate::sigmoid, T(r))) ==
          doctest::Approx(double(derivative)).epsilon(tolerance).scale(0));
  }
  CHECK(gate_derivative(Gate::identity, T(7)) == T(1));
}
