// libFuzzer harness: top_k_portable against a brute-force sort by the contract's rules
// (tests/support/brute_force_top_k.hpp), and the SIMD top-k against top_k_portable, bit for
// bit, on raw score bytes (so NaNs with any payload, infinities, signed zeros and denormals
// all occur), plus mixdepth::select_top_k over the same scores split into two padded
// sequences. Under ctest, fuzz_replay_main.cpp replays the committed corpus through it.
//
// Input layout (a shorter input is ignored):
//   byte 0      flags: bit 0  double scores (else float)
//                      bit 1  n from bytes 1-3 (else n = the number of whole scores given)
//                      bit 2  valid from bytes 7-9 (else valid = n)
//                      bit 3  perturb the tiles (see below)
//                      bit 4  also run select_top_k
//   bytes 1-3   n (only with bit 1): bytes 1-2, a 16-bit little-endian fraction of kMaxN,
//               shifted right by the low 4 bits of byte 3 (so short inputs stay common: a
//               long one costs milliseconds under the sanitizers)
//   bytes 4-6   k, modulo n + 1
//   bytes 7-9   valid, modulo n + 1 (only with bit 2)
//   bytes 10..  the scores, raw native-endian bytes; a partial last score is ignored
// An n above the number of scores given tiles them (no scores: zeros); with bit 3 every
// tile after the first adds its index to the bit patterns, which gives long inputs many
// distinct but close keys (the bracket levels' hard case) from a short fuzz input.
//
// Each input runs every architecture this binary was compiled for that the kernels tell
// apart: kernels::static_arch (AVX-512 under -march=native here, with VBMI2 where the CPU
// has it), AVX-512 without VBMI2 (the other last pass), AVX2+FMA, and the plain loops. Any
// difference, an output slot left unwritten (outputs start as sentinels, -1 here and -2 in
// the reference), or a write outside out[0, k) (AddressSanitizer: every buffer is allocated
// to its exact size), aborts.
#include <mixdepth/kernels/topk_portable.hpp>
#include <mixdepth/kernels/topk_simd.hpp>
#include <mixdepth/topk.hpp>

#include "brute_force_top_k.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

namespace {

namespace kernels = mixdepth::kernels;

constexpr std::ptrdiff_t kMaxN = 70000;
constexpr std::size_t kHeader = 10;

std::uint32_t read24(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16;
}

std::ptrdiff_t long_n(const std::uint8_t* p) {
  const std::uint32_t fraction = std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8;
  return std::ptrdiff_t((std::uint64_t(fraction) * kMaxN / 0xffff) >> (p[2] & 15));
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

[[noreturn]] void fail() {
  std::fflush(stderr);
  __builtin_trap();
}

// The portable answer for scores[0, n).
template <class T>
std::unique_ptr<std::int32_t[]> portable(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid,
                                         std::ptrdiff_t k) {
  auto out = std::make_unique<std::int32_t[]>(std::size_t(k));
  std::fill_n(out.get(), k, -2);
  const auto scratch = std::make_unique<kernels::TopKEntry<T>[]>(
      std::size_t(kernels::top_k_portable_scratch<T>(n)));
  kernels::top_k_portable(scores, n, valid, k, out.get(), scratch.get());
  return out;
}

template <class T>
void report(const char* what, const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k,
            const std::int32_t* expected, const std::int32_t* actual) {
  std::ptrdiff_t at = 0;
  while (at < k && expected[at] == actual[at]) ++at;
  std::fprintf(stderr, "MISMATCH %s T=%s n=%td valid=%td k=%td: first difference at out[%td]: expected %d, got %d\n",
               what, type_name<T>(), n, valid, k, at, at < k ? expected[at] : -1, at < k ? actual[at] : -1);
  if (at < k) {
    const auto show = [&](std::int32_t i) {
      if (i < 0 || i >= n) return;
      std::fprintf(stderr, "  scores[%d] = %.17g\n", i, double(scores[i]));
    };
    show(expected[at]);
    show(actual[at]);
  }
}

template <class Arch, class T>
void check_arch(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k,
                const std::int32_t* expected) {
  // Exact sizes: AddressSanitizer reports any access past the scratch or the output.
  const auto scratch = std::make_unique<kernels::rank_key_t<T>[]>(std::size_t(kernels::top_k_scratch_size<T>(n)));
  const auto out = std::make_unique<std::int32_t[]>(std::size_t(k));
  std::fill_n(out.get(), k, -1);
  kernels::top_k<Arch, T>(scores, n, valid, k, out.get(), scratch.get());
  if (k > 0 && std::memcmp(out.get(), expected, sizeof(std::int32_t) * std::size_t(k)) != 0) {
    report(Arch::name(), scores, n, valid, k, expected, out.get());
    fail();
  }
}

// select_top_k over the scores as two sequences of n / 2 tokens, with lengths derived from
// valid, and k up to n (it clamps k to seq_len).
template <class T>
void check_select(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k) {
  const mixdepth::Shape shape{2, n / 2};
  const std::ptrdiff_t len = shape.seq_len;
  const std::ptrdiff_t kept = k < len ? k : len;
  const mixdepth::Index lengths[2] = {valid < len ? valid : len, len == 0 ? 0 : (valid * 7 + k) % (len + 1)};
  std::vector<mixdepth::Position> out(std::size_t(shape.batch * kept), -1);
  mixdepth::TopKScratch<T> scratch;
  mixdepth::select_top_k<T>(std::span<const T>(scores, std::size_t(shape.rows())), shape, k, out, lengths,
                            scratch);
  for (int b = 0; b < 2; ++b) {
    const auto expected = portable(scores + b * len, len, lengths[b], kept);
    const std::int32_t* actual = out.data() + b * kept;
    if (kept > 0 && std::memcmp(actual, expected.get(), sizeof(std::int32_t) * std::size_t(kept)) != 0) {
      report("select_top_k", scores + b * len, len, lengths[b], kept, expected.get(), actual);
      fail();
    }
  }
}

template <class T>
void run(std::uint8_t flags, const std::uint8_t* header, const std::uint8_t* data, std::size_t size) {
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  const std::ptrdiff_t given = std::ptrdiff_t(size / sizeof(T));
  const std::ptrdiff_t n = (flags & 2) ? long_n(header) : given;
  const std::ptrdiff_t k = std::ptrdiff_t(read24(header + 3) % std::uint32_t(n + 1));
  const std::ptrdiff_t valid = (flags & 4) ? std::ptrdiff_t(read24(header + 6) % std::uint32_t(n + 1)) : n;

  // Exactly n scores on the heap: reads past the end are AddressSanitizer reports.
  const auto scores = std::make_unique<T[]>(std::size_t(n));
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    Bits bits = 0;
    if (given > 0) std::memcpy(&bits, data + std::size_t(i % given) * sizeof(T), sizeof(T));
    if (flags & 8) bits += Bits(given > 0 ? i / given : i);
    std::memcpy(&scores[std::size_t(i)], &bits, sizeof(T));
  }

  const auto expected = portable(scores.get(), n, valid, k);
  const auto brute = mixdepth::kernels_testing::brute_force_top_k(scores.get(), n, k, valid);
  if (k > 0 && std::memcmp(brute.data(), expected.get(), sizeof(std::int32_t) * std::size_t(k)) != 0) {
    report("top_k_portable", scores.get(), n, valid, k, brute.data(), expected.get());
    fail();
  }
  check_arch<kernels::static_arch>(scores.get(), n, valid, k, expected.get());
#if XSIMD_WITH_AVX512BW && !defined(MIXDEPTH_FORCE_SCALAR)
  if constexpr (!std::is_same_v<kernels::static_arch, xsimd::avx512bw>)
    check_arch<xsimd::avx512bw>(scores.get(), n, valid, k, expected.get());
#endif
#if XSIMD_WITH_FMA3_AVX2 && !defined(MIXDEPTH_FORCE_SCALAR)
  if constexpr (!std::is_same_v<kernels::static_arch, xsimd::fma3<xsimd::avx2>>)
    check_arch<xsimd::fma3<xsimd::avx2>>(scores.get(), n, valid, k, expected.get());
#endif
  if constexpr (!std::is_same_v<kernels::static_arch, kernels::scalar_arch>)
    check_arch<kernels::scalar_arch>(scores.get(), n, valid, k, expected.get());
  if (flags & 16) check_select(scores.get(), n, valid, k);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < kHeader) return 0;
  const std::uint8_t flags = data[0];
  if (flags & 1)
    run<double>(flags, data + 1, data + kHeader, size - kHeader);
  else
    run<float>(flags, data + 1, data + kHeader, size - kHeader);
  return 0;
}
