// The rotary angles' cosines and sines on every architecture this build can run, against
// the C library's std::cos and std::sin of the same double angle: within 2 ulp in double,
// and the same float after rounding, over small and large positions, every tail length and
// several head sizes. Both bounds are what xsimd 8.1 and glibc 2.36 (Debian 12) measured; a
// different libm or xsimd may need them looked at again.
#include "test_kernels_common.hpp"

#include <mixdepth/kernels/rotary.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

using namespace mixdepth;
using namespace mixdepth::kernels_testing;

namespace {

// How many doubles lie between a and b: 0 when equal (+0 and -0 too), the largest count
// when either is NaN.
std::uint64_t ulps_apart(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<std::uint64_t>::max();
  // Doubles in order as unsigned integers: negatives mirrored below 2^63, -0 and +0 both 2^63.
  auto ordered = [](double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    constexpr std::uint64_t sign = std::uint64_t{1} << 63;
    return (bits & sign) != 0 ? sign - (bits & ~sign) : sign + bits;
  };
  const std::uint64_t x = ordered(a), y = ordered(b);
  return x > y ? x - y : y - x;
}

std::vector<double> frequencies(std::ptrdiff_t n, double theta) {
  std::vector<double> f(static_cast<std::size_t>(n));
  for (std::ptrdiff_t i = 0; i < n; ++i)
    f[std::size_t(i)] = std::pow(theta, -2.0 * double(i) / double(2 * n));
  return f;
}

std::vector<double> positions() {
  std::vector<double> p;
  for (int i = 0; i < 3000; ++i) p.push_back(i);
  for (double x = 3000; x < 2.2e9; x *= 1.37) p.push_back(std::floor(x));
  for (double x : {65535.0, 65536.0, 1048576.0, 16777216.0, 16777217.0, 2147483647.0}) p.push_back(x);
  return p;
}

}  // namespace

TEST_CASE("kernel rotary_cos_sin: the C library's cos and sin, within 2 ulp in double and equal in float") {
  const auto all_positions = positions();
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    INFO("arch ", Arch::name());
    std::uint64_t worst = 0;
    long checked = 0;
    for (const std::ptrdiff_t n : {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 70}) {
      for (const double theta : {10000.0, 500000.0}) {
        const auto f = frequencies(n, theta);
        std::vector<double> cd(std::size_t(n) + 1), sd(std::size_t(n) + 1);
        std::vector<float> cf(std::size_t(n) + 1), sf(std::size_t(n) + 1);
        for (const double position : all_positions) {
          const double guard = 12345.0;
          cd[std::size_t(n)] = sd[std::size_t(n)] = guard;
          cf[std::size_t(n)] = sf[std::size_t(n)] = float(guard);
          kernels::rotary_cos_sin<Arch, double>(position, f.data(), n, cd.data(), sd.data());
          kernels::rotary_cos_sin<Arch, float>(position, f.data(), n, cf.data(), sf.data());
          REQUIRE(cd[std::size_t(n)] == guard);  // nothing written past n
          REQUIRE(sd[std::size_t(n)] == guard);
          REQUIRE(cf[std::size_t(n)] == float(guard));
          REQUIRE(sf[std::size_t(n)] == float(guard));
          for (std::ptrdiff_t i = 0; i < n; ++i) {
            const double angle = position * f[std::size_t(i)];
            const double c = std::cos(angle), s = std::sin(angle);
            const std::uint64_t apart = std::max(ulps_apart(cd[std::size_t(i)], c), ulps_apart(sd[std::size_t(i)], s));
            worst = std::max(worst, apart);
            if (apart > 2 || cf[std::size_t(i)] != float(c) || sf[std::size_t(i)] != float(s)) {
              INFO("n=", n, " theta=", theta, " position=", position, " i=", i);
              CHECK(apart <= 2);
              CHECK(cf[std::size_t(i)] == float(c));
              CHECK(sf[std::size_t(i)] == float(s));
            }
            ++checked;
          }
        }
      }
    }
    CHECK(checked > 0);
    if constexpr (!kernels::arch_traits::is_xsimd<Arch>()) CHECK(worst == 0);  // plain loops call it
  });
}
