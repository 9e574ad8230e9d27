#pragma once
// How many tokens of a sequence a MoD block processes.
#include <cmath>
#include <string>

#include "error.hpp"

namespace mixdepth {

class Capacity {
 public:
  // k = ceil(c * seq_len) for 0 < c <= 1. A product that is exact in decimal (0.1 * 30 = 3)
  // is not rounded up by the binary error of c (0.1 * 30 == 3.0000000000000004 in double).
  static Capacity fraction(double c) {
    if (!(c > 0.0 && c <= 1.0)) detail::fail("Capacity::fraction", "c", "in (0, 1]", c);
    return Capacity(Kind::fraction, c, 0);
  }
  // k = min(n, seq_len) for n >= 0.
  static Capacity tokens(Index n) {
    if (n < 0) detail::fail("Capacity::tokens", "n", ">= 0", n);
    return Capacity(Kind::tokens, 0.0, n);
  }

  Index operator()(Index seq_len) const {
    if (seq_len < 0) detail::fail("Capacity", "seq_len", ">= 0", seq_len);
    if (kind_ == Kind::tokens) return tokens_ < seq_len ? tokens_ : seq_len;
    const double product = fraction_ * static_cast<double>(seq_len);
    const double nearest = std::nearbyint(product);
    // c carries a relative error of at most 2^-53 from its decimal literal and the product
    // adds one more rounding; anything within a few ulps of an integer is that integer.
    // (A positive product never rounds down to 0: ceil of a tiny c * seq_len is 1.)
    const double slack = 4.0 * 0x1p-52 * nearest;
    const double k =
        nearest >= 1.0 && std::fabs(product - nearest) <= slack ? nearest : std::ceil(product);
    // Compared as doubles first: near the top of Index's range the product can round up to
    // 2^63, which no Index holds.
    if (k >= static_cast<double>(seq_len)) return seq_len;
    return static_cast<Index>(k);
  }

  bool is_fraction() const { return kind_ == Kind::fraction; }
  double fraction_value() const { return fraction_; }
  Index tokens_value() const { return tokens_; }

 private:
  enum class Kind { fraction, tokens };
  Capacity(Kind kind, double fraction, Index tokens)
      : kind_(kind), fraction_(fraction), tokens_(tokens) {}
  Kind kind_;
  double fraction_;
  Index tokens_;
};

}  // namespace mixdepth
