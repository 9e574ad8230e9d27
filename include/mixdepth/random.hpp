#pragma once
// NormalSource: seeded standard normal numbers that depend on the seed, not on the C++
// standard library (std::normal_distribution is not specified bit for bit). Used by the
// reference layers' and the causal predictor's random initialisation. They go through the C
// library's log, sin and cos, which are not correctly rounded everywhere (glibc's are not):
// another C library can differ in the last bit of a few draws in a thousand. The
// expressions below give the compiler nothing to fuse, so the flags do not change them.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>

namespace mixdepth {

// Standard normal numbers by the Box-Muller transform over std::mt19937_64 (whose output the
// standard fixes exactly).
class NormalSource {
 public:
  explicit NormalSource(std::uint64_t seed) : engine_(seed) {}

  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // Two uniforms in (0, 1]: 53 random bits each, shifted off zero so log() stays finite.
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1p-53;
    const double u2 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace mixdepth
