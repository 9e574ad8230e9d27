// The per-architecture shim (simd_shim.hpp) against plain loops: mask bits, compress,
// positions of set bits, horizontal max/min/sum, popcount.
#include "test_kernels_common.hpp"

#include <cstring>

using namespace mixdepth;
using namespace mixdepth::kernels_testing;

namespace {

template <class Arch, class K>
void check_key_operations(std::mt19937_64& rng) {
  if constexpr (kernels::arch_traits::is_xsimd<Arch>()) {
    using batch = xsimd::batch<K, Arch>;
    constexpr std::size_t lanes = batch::size;
    for (int trial = 0; trial < 300; ++trial) {
      K in[lanes], threshold_lane[lanes];
      for (std::size_t i = 0; i < lanes; ++i) {
        in[i] = K(std::int64_t(rng() % 7) - 3) * (trial % 2 ? K(1) : std::numeric_limits<K>::max() / 4);
        threshold_lane[i] = K(0);
      }
      const batch v = batch::load_unaligned(in);
      const auto mask = v > batch::load_unaligned(threshold_lane);
      std::uint32_t expected_bits = 0;
      for (std::size_t i = 0; i < lanes; ++i) expected_bits |= std::uint32_t(in[i] > 0) << i;
      INFO("arch=", std::string(Arch::name()), " lanes=", lanes);
      CHECK(kernels::shim::mask_bits<Arch>(mask) == expected_bits);
      CHECK(kernels::shim::popcount<Arch>(expected_bits) == __builtin_popcount(expected_bits));

      K out[lanes + 1];
      out[lanes] = K(42);
      const int count = kernels::shim::compress_store<Arch>(out, v, mask);
      CHECK(count == __builtin_popcount(expected_bits));
      std::size_t j = 0;
      for (std::size_t i = 0; i < lanes; ++i)
        if (in[i] > 0) CHECK(out[j++] == in[i]);
      CHECK(out[lanes] == K(42));
      const std::uint32_t random_bits = std::uint32_t(rng()) & std::uint32_t((std::uint64_t{1} << lanes) - 1);
      kernels::shim::compress_store<Arch>(out, v, random_bits);
      j = 0;
      for (std::size_t i = 0; i < lanes; ++i)
        if (random_bits >> i & 1u) CHECK(out[j++] == in[i]);

      std::int32_t positions[lanes + 1];
      positions[lanes] = -5;
      kernels::shim::store_set_positions<Arch, int(lanes)>(positions, 1000, random_bits);
      j = 0;
      for (std::size_t i = 0; i < lanes; ++i)
        if (random_bits >> i & 1u) CHECK(positions[j++] == 1000 + std::int32_t(i));
      CHECK(positions[lanes] == -5);

      K most = in[0], least = in[0], sum = 0;
      for (std::size_t i = 0; i < lanes; ++i) {
        most = std::max(most, in[i]);
        least = std::min(least, in[i]);
        sum = K(sum + in[i] / 8);
      }
      CHECK(kernels::shim::reduce_max<Arch>(v) == most);
      CHECK(kernels::shim::reduce_min<Arch>(v) == least);
      CHECK(kernels::shim::reduce_add<Arch>(v / batch(K(8))) == sum);
      const auto kept = kernels::shim::lowest_set_bits<Arch>(random_bits, 2);
      CHECK(__builtin_popcount(kept) == std::min(2, __builtin_popcount(random_bits)));
      CHECK((kept & ~random_bits) == 0u);
    }
  }
}

template <class Arch, class T>
void check_float_reductions(std::mt19937_64& rng) {
  if constexpr (kernels::arch_traits::is_xsimd<Arch>()) {
    using batch = xsimd::batch<T, Arch>;
    constexpr std::size_t lanes = batch::size;
    for (int trial = 0; trial < 100; ++trial) {
      T in[lanes];
      for (auto& x : in) x = T(std::int64_t(rng() % 2001) - 1000) / T(8);  // exact sums
      const batch v = batch::load_unaligned(in);
      T most = in[0], least = in[0], sum = 0;
      for (T x : in) {
        most = std::max(most, x);
        least = std::min(least, x);
        sum += x;
      }
      INFO("arch=", std::string(Arch::name()));
      CHECK(kernels::shim::reduce_max<Arch>(v) == most);
      CHECK(kernels::shim::reduce_min<Arch>(v) == least);
      CHECK(kernels::shim::reduce_add<Arch>(v) == sum);
    }
  }
}

// On AVX-512 the floating-point sum folds lane i with lane i ^ step, step = lanes/2 .. 1:
// pinned on sums that round, so a change of order shows.
template <class Arch, class T>
void check_sum_fold_order(std::mt19937_64& rng, long& checked) {
  if constexpr (kernels::arch_traits::has_avx512<Arch>()) {
    using batch = xsimd::batch<T, Arch>;
    constexpr std::size_t lanes = batch::size;
    std::normal_distribution<T> normal;
    for (int trial = 0; trial < 200; ++trial) {
      T in[lanes];
      for (auto& x : in) x = normal(rng) * T(1 << (rng() % 20));  // mixed magnitudes: sums round
      T fold[lanes];
      std::copy(in, in + lanes, fold);
      for (std::size_t step = lanes / 2; step >= 1; step /= 2) {
        T next[lanes];
        for (std::size_t i = 0; i < lanes; ++i) next[i] = fold[i] + fold[i ^ step];
        std::copy(next, next + lanes, fold);
      }
      const T actual = kernels::shim::reduce_add<Arch>(batch::load_unaligned(in));
      INFO("arch=", std::string(Arch::name()), " trial=", trial);
      CHECK(std::memcmp(&actual, &fold[0], sizeof(T)) == 0);
      ++checked;
    }
  }
}

}  // namespace

TEST_CASE("shim: the AVX-512 sum folds lanes in a fixed order (lane i with i ^ step)") {
  std::mt19937_64 rng(21);
  long checked = 0;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    check_sum_fold_order<Arch, float>(rng, checked);
    check_sum_fold_order<Arch, double>(rng, checked);
  });
#if XSIMD_WITH_AVX512F
  CHECK(checked > 0);
#endif
  MESSAGE("fold-order sums checked: ", checked);
}

TEST_CASE("shim: mask bits, compress, set positions and reductions agree with plain loops") {
  std::mt19937_64 rng(20);
  int architectures = 0;
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    check_key_operations<Arch, std::int32_t>(rng);
    check_key_operations<Arch, std::int64_t>(rng);
    check_float_reductions<Arch, float>(rng);
    check_float_reductions<Arch, double>(rng);
    ++architectures;
  });
  CHECK(architectures >= 1);
}

TEST_CASE("static dispatch picks the architecture this unit is compiled for") {
#if defined(MIXDEPTH_FORCE_SCALAR)
  CHECK(std::string(kernels::static_arch::name()) == "scalar");
#elif XSIMD_WITH_AVX512BW
  CHECK(kernels::top_k_tier_of<kernels::static_arch>() == kernels::top_k_tier::avx512);
#elif XSIMD_WITH_AVX2
  CHECK(kernels::top_k_tier_of<kernels::static_arch>() == kernels::top_k_tier::avx2);
#else
  CHECK(kernels::top_k_tier_of<kernels::static_arch>() == kernels::top_k_tier::scalar);
#endif
  MESSAGE("static_arch = ", std::string(kernels::static_arch::name()));
}
