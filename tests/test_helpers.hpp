#pragma once
// Shared helpers for the doctest suite: seeded data, plain references, exception checks.
#include <doctest/doctest.h>

#include <mixdepth/mixdepth.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace mixdepth::testing {

// The larger of two errors, NaN when either is NaN (std::max keeps its first argument when
// the second is NaN): a worst error must fail a `<= tolerance` check once any error is NaN,
// as results computed from never-written scratch are under MIXDEPTH_POISON_SCRATCH.
inline double worse(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
  return a < b ? b : a;
}

template <class T>
RowMatrix<T> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  RowMatrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(normal(rng));
  return m;
}

template <class T>
Vector<T> random_vector(Index n, std::uint64_t seed) {
  RowMatrix<T> m = random_matrix<T>(n, 1, seed);
  return Eigen::Map<Vector<T>>(m.data(), n);
}

// Bitwise equality of two rows (distinguishes -0.0 from +0.0 and compares NaN payloads).
template <class A, class B>
bool rows_bit_equal(const A& a, Index ra, const B& b, Index rb) {
  if (a.cols() != b.cols()) return false;
  for (Index c = 0; c < a.cols(); ++c)
    if (std::memcmp(&a.coeffRef(ra, c), &b.coeffRef(rb, c), sizeof(a.coeff(ra, c))) != 0)
      return false;
  return true;
}

template <class A, class B>
bool bit_equal(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index r = 0; r < a.rows(); ++r)
    if (!rows_bit_equal(a, r, b, r)) return false;
  return true;
}

// Runs `call`, requires it to throw mixdepth::Error, and returns the message.
template <class Call>
std::string error_message(Call&& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  } catch (...) {
    FAIL("threw something other than mixdepth::Error");
    return {};
  }
  FAIL("did not throw mixdepth::Error");
  return {};
}

// Requires the message to name each of the given fragments.
inline void require_mentions(const std::string& message, std::initializer_list<const char*> parts) {
  for (const char* p : parts) {
    INFO("message: ", message, " | expected to contain: ", std::string(p));
    CHECK(message.find(p) != std::string::npos);
  }
}

}  // namespace mixdepth::testing
