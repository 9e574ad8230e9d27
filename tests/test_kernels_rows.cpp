// Row kernels on every architecture this build can run: router scores against a
// double-precision reference (their summation order differs, so with a tolerance); gather
// and gated scatter against the portable kernels, bit for bit, in place and out of place,
// with strided rows.
#include "test_kernels_common.hpp"

#include <mixdepth/kernels/rows_portable.hpp>

#include <algorithm>
#include <iterator>
#include <numeric>

using namespace mixdepth;
using namespace mixdepth::kernels_testing;

namespace {

// Values whose sums round: specials where they keep bit patterns interesting.
template <class T>
std::vector<T> special_values(std::mt19937_64& rng, std::ptrdiff_t n) {
  auto v = normal_values<T>(rng, n);
  const T specials[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity(), T(0), T(-0.0), std::numeric_limits<T>::denorm_min(),
                        T(1e30), T(-1e-30)};
  for (std::size_t i = 0; i < v.size(); i += 7) v[i] = specials[(i / 7) % 8];
  return v;
}

const std::ptrdiff_t widths[] = {1,  2,  3,  4,  5,  7,  8,  9,  15, 16,  17,  23,  24,  31,   32,   33,
                                 47, 48, 63, 64, 65, 96, 127, 128, 129, 255, 257, 512, 1000, 1024, 4096};

}  // namespace

TEST_CASE_TEMPLATE("kernel router_scores equals x w + bias in double precision, within rounding", T, float, double) {
  std::mt19937_64 rng(10);
  long checked = 0;
  for (std::ptrdiff_t d : widths) {
    for (std::ptrdiff_t rows : {1, 2, 3, 4, 5, 7, 8, 9, 13}) {
      const std::ptrdiff_t stride = d + std::ptrdiff_t(rng() % 5);  // strided rows too
      const auto x = normal_values<T>(rng, rows * stride);
      const auto w = normal_values<T>(rng, d);
      const T bias = T(0.25);
      std::vector<double> reference(static_cast<std::size_t>(rows));
      std::vector<double> magnitude(static_cast<std::size_t>(rows));  // sum |x_i w_i|, the error scale
      for (std::ptrdiff_t r = 0; r < rows; ++r) {
        double sum = 0, abs_sum = 0;
        for (std::ptrdiff_t c = 0; c < d; ++c) {
          const double term = double(x[std::size_t(r * stride + c)]) * double(w[std::size_t(c)]);
          sum += term;
          abs_sum += std::fabs(term);
        }
        reference[std::size_t(r)] = sum + double(bias);
        magnitude[std::size_t(r)] = abs_sum + std::fabs(double(bias));
      }
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        std::vector<T> logits(static_cast<std::size_t>(rows + 1), T(-99));
        kernels::router_scores<Arch>(x.data(), stride, rows, d, w.data(), bias, logits.data());
        const double eps = double(std::numeric_limits<T>::epsilon());
        for (std::ptrdiff_t r = 0; r < rows; ++r) {
          const double error = std::fabs(double(logits[std::size_t(r)]) - reference[std::size_t(r)]);
          const double bound = eps * (double(d) / 4 + 4) * magnitude[std::size_t(r)];
          if (!(error <= bound)) {
            INFO("arch=", std::string(Arch::name()), " d=", d, " rows=", rows, " row=", r, " error=", error, " bound=", bound);
            CHECK(error <= bound);
          }
        }
        CHECK(logits[std::size_t(rows)] == T(-99));  // nothing past the last row
        ++checked;
      });
    }
  }
  CHECK(checked == long(std::size(widths)) * 9 * arch_count());
}

// A decode step scores one row; the forward over the sequence scores it among the others
// (four at a time, then the rest one by one). Its logit must not change: otherwise a token
// whose logit lies near a threshold could be routed in one and skipped in the other. (Before,
// the last rows of a call summed with two accumulators, the groups of four with one.)
TEST_CASE_TEMPLATE("kernel router_scores gives a row the same logit alone as among other rows", T, float, double) {
  std::mt19937_64 rng(11);
  long checked = 0;
  for (std::ptrdiff_t d : widths) {
    const std::ptrdiff_t rows = 11;
    const auto x = normal_values<T>(rng, rows * d);
    const auto w = normal_values<T>(rng, d);
    const T bias = T(-0.5);
    for_each_arch([&](auto arch) {
      using Arch = decltype(arch);
      std::vector<T> together(static_cast<std::size_t>(rows));
      kernels::router_scores<Arch>(x.data(), d, rows, d, w.data(), bias, together.data());
      for (std::ptrdiff_t first = 0; first < rows; ++first)
        for (std::ptrdiff_t count = 1; first + count <= rows; ++count) {
          std::vector<T> part(static_cast<std::size_t>(count));
          kernels::router_scores<Arch>(x.data() + first * d, d, count, d, w.data(), bias, part.data());
          for (std::ptrdiff_t r = 0; r < count; ++r) {
            const bool same = std::memcmp(&part[std::size_t(r)], &together[std::size_t(first + r)], sizeof(T)) == 0;
            if (!same) {
              INFO("arch=", std::string(Arch::name()), " d=", d, " rows [", first, ", ", first + count, ") row ", first + r);
              CHECK(same);
            }
          }
        }
      ++checked;
    });
  }
  CHECK(checked == long(std::size(widths)) * arch_count());
}

TEST_CASE_TEMPLATE("kernel gather_rows equals the portable gather bit for bit", T, float, double) {
  std::mt19937_64 rng(11);
  long checked = 0;
  for (std::ptrdiff_t d : widths) {
    const std::ptrdiff_t source_rows = 40, src_stride = d + std::ptrdiff_t(rng() % 3);
    const std::ptrdiff_t dst_stride = d + std::ptrdiff_t(rng() % 3);
    const auto src = special_values<T>(rng, source_rows * src_stride);
    for (std::ptrdiff_t n : {0, 1, 5, 17, 40}) {
      std::vector<std::int32_t> rows(static_cast<std::size_t>(n));
      for (auto& r : rows) r = std::int32_t(rng() % source_rows);  // repeats allowed
      std::sort(rows.begin(), rows.end());
      std::vector<T> expected(static_cast<std::size_t>(std::max<std::ptrdiff_t>(n, 1) * dst_stride), T(7));
      kernels::gather_rows_portable(src.data(), src_stride, rows.data(), n, d, expected.data(), dst_stride);
      // The output starts `shift` elements into its buffer, for every shift up to one
      // AVX-512 batch of floats, so the rows start at every alignment the stores peel a head
      // for; the elements around them stay untouched.
      for (std::ptrdiff_t shift = 0; shift <= 16; ++shift) {
        std::vector<T> padded_expected(expected.size() + 2 * 17, T(7));
        std::copy(expected.begin(), expected.end(), padded_expected.begin() + shift);
        for_each_arch([&](auto arch) {
          using Arch = decltype(arch);
          std::vector<T> actual(padded_expected.size(), T(7));  // gaps between strided rows stay untouched
          kernels::gather_rows<Arch>(src.data(), src_stride, rows.data(), n, d, actual.data() + shift, dst_stride);
          INFO("arch=", std::string(Arch::name()), " d=", d, " n=", n, " shift=", shift);
          CHECK(same_bits(actual, padded_expected));
          ++checked;
        });
      }
    }
  }
  CHECK(checked == long(std::size(widths)) * 5 * 17 * arch_count());
}

TEST_CASE_TEMPLATE("kernel scatter_gated equals the portable scatter bit for bit (NaN payloads aside), in place and out of place", T, float,
                   double) {
  std::mt19937_64 rng(12);
  long checked = 0;
  for (std::ptrdiff_t d : widths) {
    const std::ptrdiff_t total_rows = 30, x_stride = d + std::ptrdiff_t(rng() % 3);
    const std::ptrdiff_t y_stride = d + std::ptrdiff_t(rng() % 3), update_stride = d + std::ptrdiff_t(rng() % 3);
    const auto x = special_values<T>(rng, total_rows * x_stride);
    for (std::ptrdiff_t n : {0, 1, 6, 30}) {
      std::vector<std::int32_t> rows(static_cast<std::size_t>(total_rows));
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), rng);
      rows.resize(static_cast<std::size_t>(n));
      std::sort(rows.begin(), rows.end());  // distinct, ascending, as Block routes them
      const auto update = special_values<T>(rng, std::max<std::ptrdiff_t>(n, 1) * update_stride);
      auto gates = special_values<T>(rng, std::max<std::ptrdiff_t>(n, 1));
      for (auto& g : gates) g = std::fabs(g) > T(100) ? T(0.5) : g;  // keep most products finite

      std::vector<T> expected(static_cast<std::size_t>(total_rows * y_stride), T(3));
      kernels::scatter_gated_portable(x.data(), x_stride, expected.data(), y_stride, rows.data(), n, d, update.data(),
                                      update_stride, gates.data());
      std::vector<T> expected_in_place = x;
      kernels::scatter_gated_portable(expected_in_place.data(), x_stride, expected_in_place.data(), x_stride,
                                      rows.data(), n, d, update.data(), update_stride, gates.data());
      for_each_arch([&](auto arch) {
        using Arch = decltype(arch);
        INFO("arch=", std::string(Arch::name()), " d=", d, " n=", n);
        std::vector<T> out_of_place(expected.size(), T(3));
        kernels::scatter_gated<Arch>(x.data(), x_stride, out_of_place.data(), y_stride, rows.data(), n, d,
                                     update.data(), update_stride, gates.data());
        CHECK(same_values(out_of_place, expected));
        std::vector<T> in_place = x;
        kernels::scatter_gated<Arch>(in_place.data(), x_stride, in_place.data(), x_stride, rows.data(), n, d,
                                     update.data(), update_stride, gates.data());
        CHECK(same_values(in_place, expected_in_place));
        ++checked;
      });
    }
  }
  CHECK(checked == long(std::size(widths)) * 4 * arch_count());
}

TEST_CASE("kernel scatter_gated rounds the product before the sum (no fused multiply-add)") {
  // g*f = (1 - 2^-23)(1 + 2^-23) = 1 - 2^-46 exactly, which rounds to 1: x + rounded = 0,
  // while a fused multiply-add keeps the tail and gives -2^-46.
  const float f = 1.0f + 0x1p-23f, g = 1.0f - 0x1p-23f;
  const float x = -1.0f;
  const std::int32_t row = 0;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    for (std::ptrdiff_t d : {1, 8, 16, 33}) {
      std::vector<float> xs(std::size_t(d), x), fs(std::size_t(d), f), ys(std::size_t(d), 9.0f);
      kernels::scatter_gated<Arch>(xs.data(), d, ys.data(), d, &row, 1, d, fs.data(), d, &g);
      INFO("arch=", std::string(Arch::name()), " d=", d);
      for (float y : ys) CHECK(y == 0.0f);  // rounded: -1 + 1 = 0; fused would give -2^-46
    }
  });
}
