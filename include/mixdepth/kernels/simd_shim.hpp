#pragma once
// The operations xsimd 8.1 lacks, written once per architecture: lane masks as integer bits,
// compress (selected lanes packed to the front, in lane order), the positions of set bits,
// horizontal max/min, a prefetch hint, a barrier that keeps a product from being fused
// into an FMA, and a guard that keeps denormal inputs from being read as zero.
//
// AVX-512 uses mask registers and vpcompress; AVX2 uses movemask and a permutation table;
// every other xsimd architecture goes through memory with plain loops. Every function here
// is a template over `Arch`, and the tables are members of class templates over `Arch`, so
// two objects compiled with different -m flags never share (and the linker never merges) a
// copy compiled for the wrong instruction set.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "arch.hpp"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#include <immintrin.h>
#endif

namespace mixdepth::kernels::shim {

// ---- denormal inputs read as numbers ------------------------------------------------------

// While one lives, the SSE/AVX compares read denormal inputs as the numbers they are: the
// MXCSR's denormals-are-zero bit (DAZ), if set, is cleared, and set again on exit (only that
// bit: exception flags the kernel raised stay raised, as without DAZ). Executables
// linked with -ffast-math or -Ofast set it at startup (crtfastmath.o), as some shared
// libraries built that way do when loaded. Under DAZ a vector compare says a denormal equals
// zero while its integer key says otherwise, and a kernel that counts with one and writes
// with the other would disagree with itself. Costs one stmxcsr when DAZ is off.
template <class Arch>
class denormals_as_numbers {
 public:
  denormals_as_numbers() noexcept {
#if defined(__SSE__)
    saved_ = _mm_getcsr();
    if (saved_ & daz) _mm_setcsr(saved_ & ~daz);
#endif
  }
  ~denormals_as_numbers() {
#if defined(__SSE__)
    if (saved_ & daz) _mm_setcsr(_mm_getcsr() | daz);
#endif
  }
  denormals_as_numbers(const denormals_as_numbers&) = delete;
  denormals_as_numbers& operator=(const denormals_as_numbers&) = delete;

 private:
  static constexpr unsigned daz = 0x0040;  // MXCSR bit 6
  [[maybe_unused]] unsigned saved_ = 0;
};

// ---- population count of a lane mask ----------------------------------------------------

template <class Arch>
struct popcount_table {
  static constexpr std::array<std::uint8_t, 256> counts = [] {
    std::array<std::uint8_t, 256> c{};
    for (int i = 0; i < 256; ++i) c[std::size_t(i)] = std::uint8_t((i & 1) + c[std::size_t(i / 2)]);
    return c;
  }();
};

// __builtin_popcount is one instruction only with -mpopcnt (-mavx2 does not imply it);
// otherwise it is a libgcc call per vector, so count bytes with a table.
template <class Arch>
inline int popcount(std::uint32_t bits) noexcept {
#if defined(__POPCNT__) || defined(__aarch64__)
  return __builtin_popcount(bits);
#else
  const auto& c = popcount_table<Arch>::counts;
  return c[bits & 0xff] + c[(bits >> 8) & 0xff] + c[(bits >> 16) & 0xff] + c[bits >> 24];
#endif
}

// The lowest `count` set bits of `bits` (count <= popcount(bits)).
template <class Arch>
inline std::uint32_t lowest_set_bits(std::uint32_t bits, std::ptrdiff_t count) noexcept {
  std::uint32_t kept = 0;
  for (; count > 0; --count) {
    kept |= bits & (0u - bits);
    bits &= bits - 1;
  }
  return kept;
}

// ---- AVX2 permutation tables --------------------------------------------------------------

// For every mask of `lanes` bits: the indices of its set lanes in order, 4 bits each (entry
// j in bits [4j, 4j+4)). Unused entries repeat index 0; compress only reads the first
// popcount of them.
template <class Arch, int lanes>
struct set_lane_table {
  static constexpr std::array<std::uint32_t, (1u << lanes)> nibbles = [] {
    std::array<std::uint32_t, (1u << lanes)> t{};
    for (std::uint32_t m = 0; m < (1u << lanes); ++m) {
      std::uint32_t packed = 0;
      int out = 0;
      for (int lane = 0; lane < lanes; ++lane)
        if (m >> lane & 1u) packed |= std::uint32_t(lane) << (4 * out++);
      t[m] = packed;
    }
    return t;
  }();
};

#if XSIMD_WITH_AVX2
// The set-lane indices of an 8-bit mask as eight int32 lanes.
template <class Arch>
inline __m256i avx2_set_lanes8(std::uint32_t bits) noexcept {
  const __m256i packed =
      _mm256_set1_epi32(static_cast<int>(set_lane_table<Arch, 8>::nibbles[bits]));
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  return _mm256_and_si256(_mm256_srlv_epi32(packed, shifts), _mm256_set1_epi32(7));
}
// The set-lane indices of a 4-bit mask as four int32 lanes.
template <class Arch>
inline __m128i avx2_set_lanes4(std::uint32_t bits) noexcept {
  const __m128i packed =
      _mm_set1_epi32(static_cast<int>(set_lane_table<Arch, 4>::nibbles[bits]));
  const __m128i shifts = _mm_setr_epi32(0, 4, 8, 12);
  return _mm_and_si128(_mm_srlv_epi32(packed, shifts), _mm_set1_epi32(3));
}
#endif

// ---- lane masks as bits ---------------------------------------------------------------------

// Bit i set when lane i of `mask` is true.
template <class Arch, class T>
inline std::uint32_t mask_bits(const xsimd::batch_bool<T, Arch>& mask) noexcept {
  constexpr std::size_t lanes = xsimd::batch<T, Arch>::size;
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>()) {
    std::uint32_t bits = _cvtmask16_u32(static_cast<__mmask16>(mask.data));
#if defined(__GNUC__)
    // Pin the bits to a general register: GCC 12 at -O1 otherwise keeps them in a mask
    // register and may spill it with a 16-bit kmovw into this 32-bit variable, whose upper
    // half then holds garbage.
    __asm__("" : "+r"(bits));
#endif
    return bits;
  } else
#endif
#if XSIMD_WITH_AVX2
  if constexpr (arch_traits::has_avx2<Arch>()) {
    const auto reg = mask.data;  // __m256, __m256d or __m256i with all-ones lanes
    if constexpr (std::is_same_v<T, float>)
      return static_cast<std::uint32_t>(_mm256_movemask_ps(reg));
    else if constexpr (std::is_same_v<T, double>)
      return static_cast<std::uint32_t>(_mm256_movemask_pd(reg));
    else if constexpr (sizeof(T) == 4)
      return static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(reg)));
    else
      return static_cast<std::uint32_t>(_mm256_movemask_pd(_mm256_castsi256_pd(reg)));
  } else
#endif
  {
    bool lane[lanes];
    mask.store_unaligned(lane);
    std::uint32_t bits = 0;
    for (std::size_t i = 0; i < lanes; ++i) bits |= std::uint32_t(lane[i]) << i;
    return bits;
  }
}


// ---- partial loads ---------------------------------------------------------------------------

// The first `count` (< lanes) elements at p into a batch, zero above; reads nothing past
// p + count (masked loads on AVX-512 and AVX2).
template <class Arch, class V>
inline xsimd::batch<V, Arch> load_first(const V* p, std::ptrdiff_t count) noexcept {
  using batch = xsimd::batch<V, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>()) {
    const auto mask = static_cast<__mmask16>((1u << count) - 1);
    if constexpr (std::is_same_v<V, float>)
      return _mm512_maskz_loadu_ps(mask, p);
    else if constexpr (std::is_same_v<V, double>)
      return _mm512_maskz_loadu_pd(static_cast<__mmask8>(mask), p);
    else if constexpr (sizeof(V) == 4)
      return _mm512_maskz_loadu_epi32(mask, p);
    else
      return _mm512_maskz_loadu_epi64(static_cast<__mmask8>(mask), p);
  } else
#endif
#if XSIMD_WITH_AVX2
  if constexpr (arch_traits::has_avx2<Arch>()) {
    if constexpr (sizeof(V) == 4) {
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      if constexpr (std::is_same_v<V, float>)
        return _mm256_maskload_ps(p, mask);
      else
        return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), mask);
    } else {
      const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
      if constexpr (std::is_same_v<V, double>)
        return _mm256_maskload_pd(p, mask);
      else
        return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), mask);
    }
  } else
#endif
  {
    V lane[batch::size] = {};
    std::memcpy(lane, p, sizeof(V) * std::size_t(count));
    return batch::load_unaligned(lane);
  }
}

// ---- select ---------------------------------------------------------------------------------

// Lane-wise mask ? a : b on integer batches. xsimd 8.1's own select for AVX-512 integer
// batches does not compile at -O0 with GCC (it hands batch objects to intrinsics that are
// macros there), so AVX-512 goes straight to the blend intrinsics.
template <class Arch, class K>
inline xsimd::batch<K, Arch> select(const xsimd::batch_bool<K, Arch>& mask, const xsimd::batch<K, Arch>& a,
                                    const xsimd::batch<K, Arch>& b) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>() && std::is_integral_v<K> && sizeof(K) == 4) {
    const __m512i a_reg = a.data, b_reg = b.data;
    return _mm512_mask_blend_epi32(static_cast<__mmask16>(mask.data), b_reg, a_reg);
  } else if constexpr (arch_traits::has_avx512<Arch>() && std::is_integral_v<K> && sizeof(K) == 8) {
    const __m512i a_reg = a.data, b_reg = b.data;
    return _mm512_mask_blend_epi64(static_cast<__mmask8>(mask.data), b_reg, a_reg);
  } else
#endif
  {
    return xsimd::select(mask, a, b);
  }
}

// ---- compress -----------------------------------------------------------------------------

// Pair indices that move 64-bit lanes with _mm256_permutevar8x32_epi32: for every 4-bit mask,
// the int32 halves (2l, 2l+1) of its set lanes l in order.
template <class Arch>
struct set_lane_pair_table {
  static constexpr std::array<std::array<std::int32_t, 8>, 16> pairs = [] {
    std::array<std::array<std::int32_t, 8>, 16> t{};
    for (std::uint32_t m = 0; m < 16; ++m) {
      int out = 0;
      for (int lane = 0; lane < 4; ++lane)
        if (m >> lane & 1u) {
          t[m][std::size_t(2 * out)] = 2 * lane;
          t[m][std::size_t(2 * out + 1)] = 2 * lane + 1;
          ++out;
        }
    }
    return t;
  }();
};

// Writes the lanes of `values` selected by `bits` to dst[0, popcount(bits)), in lane order.
// Writes a whole vector: dst must have room for every lane.
template <class Arch, class K>
inline void compress_store(K* dst, const xsimd::batch<K, Arch>& values, std::uint32_t bits) noexcept {
  static_assert(std::is_integral_v<K> && (sizeof(K) == 4 || sizeof(K) == 8));
  constexpr std::size_t lanes = xsimd::batch<K, Arch>::size;
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>()) {
    // Compress in a register, then one plain store: vpcompress to memory is microcoded
    // and slow on AMD Zen 4.
    if constexpr (sizeof(K) == 4)
      _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(static_cast<__mmask16>(bits), values));
    else
      _mm512_storeu_si512(dst, _mm512_maskz_compress_epi64(static_cast<__mmask8>(bits), values));
  } else
#endif
#if XSIMD_WITH_AVX2
  if constexpr (arch_traits::has_avx2<Arch>()) {
    __m256i index;
    if constexpr (sizeof(K) == 4)
      index = avx2_set_lanes8<Arch>(bits);
    else
      index = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(set_lane_pair_table<Arch>::pairs[bits].data()));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                        _mm256_permutevar8x32_epi32(values, index));
  } else
#endif
  {
    K lane[lanes];
    values.store_unaligned(lane);
    std::size_t out = 0;
    for (std::size_t i = 0; i < lanes; ++i)
      if (bits >> i & 1u) dst[out++] = lane[i];
  }
}

// Writes base + i for every set bit i of `bits` (a mask of `lanes` lanes) to
// dst[0, popcount(bits)), ascending. Writes min(lanes, room) int32: dst needs that much room
// (room >= popcount(bits)); a whole vector store when room >= lanes, a masked one otherwise.
template <class Arch, int lanes>
inline void store_set_positions(std::int32_t* dst, std::int32_t base, std::uint32_t bits,
                                std::ptrdiff_t room = lanes) noexcept {
  static_assert(lanes >= 1 && lanes <= 16);
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>() && lanes >= 8) {
    const __m512i positions = _mm512_add_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(base));
    const __m512i packed = _mm512_maskz_compress_epi32(static_cast<__mmask16>(bits), positions);
    if (lanes == 16 && room >= 16)
      _mm512_storeu_si512(dst, packed);
    else
      _mm512_mask_storeu_epi32(dst, __mmask16((1u << (room < lanes ? room : lanes)) - 1), packed);
    return;
  }
#endif
#if XSIMD_WITH_AVX2
  if constexpr (arch_traits::has_avx2<Arch>() && lanes == 8) {
    const __m256i packed = _mm256_add_epi32(avx2_set_lanes8<Arch>(bits), _mm256_set1_epi32(base));
    if (room >= 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), packed);
    else
      _mm256_maskstore_epi32(dst, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(room)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                             packed);
    return;
  } else if constexpr (arch_traits::has_avx2<Arch>() && lanes == 4) {
    const __m128i packed = _mm_add_epi32(avx2_set_lanes4<Arch>(bits), _mm_set1_epi32(base));
    if (room >= 4)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), packed);
    else
      _mm_maskstore_epi32(dst, _mm_cmpgt_epi32(_mm_set1_epi32(int(room)), _mm_setr_epi32(0, 1, 2, 3)), packed);
    return;
  }
#endif
  std::ptrdiff_t out = 0;
  for (int i = 0; i < lanes && out < room; ++i)
    if (bits >> i & 1u) dst[out++] = base + i;
}

// The same with the mask as a batch_bool, returning popcount(mask): AVX-512 feeds the mask
// register straight to the compress instead of a round trip through a general register.
template <class Arch, class K>
inline int compress_store(K* dst, const xsimd::batch<K, Arch>& values,
                          const xsimd::batch_bool<K, Arch>& mask) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>()) {
    if constexpr (sizeof(K) == 4)
      _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(static_cast<__mmask16>(mask.data), values));
    else
      _mm512_storeu_si512(dst, _mm512_maskz_compress_epi64(static_cast<__mmask8>(mask.data), values));
    return popcount<Arch>(mask_bits<Arch>(mask));
  } else
#endif
  {
    const std::uint32_t bits = mask_bits<Arch>(mask);
    compress_store<Arch>(dst, values, bits);
    return popcount<Arch>(bits);
  }
}

// Writes base + j for every set bit j of the 64 in `bits`, ascending, to dst, never past
// dst[room) (room >= popcount(bits)); returns how many. One byte compress for 64 lanes, then
// a widening store per 16 positions: a quarter of the compresses and stores of
// store_set_positions on sparse masks.
template <class Arch>
inline int store_set_positions_64(std::int32_t* dst, std::int32_t base, std::uint64_t bits,
                                  std::ptrdiff_t room) noexcept {
  static_assert(arch_traits::has_byte_compress<Arch>(), "store_set_positions_64 needs AVX-512 VBMI2");
#if MIXDEPTH_WITH_AVX512VBMI2
  const __m512i lane = _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45,
                                       44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26,
                                       25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
                                       4, 3, 2, 1, 0);
  const __m512i packed = _mm512_maskz_compress_epi8(static_cast<__mmask64>(bits), lane);
  const __m512i offset = _mm512_set1_epi32(base);
  const int count = __builtin_popcountll(bits);
  auto store = [&](std::ptrdiff_t at, __m128i bytes) {
    const __m512i positions = _mm512_add_epi32(_mm512_cvtepu8_epi32(bytes), offset);
    if (room - at >= 16)
      _mm512_storeu_si512(dst + at, positions);
    else if (room - at > 0)  // (never otherwise, if the precondition holds; then nothing is written)
      _mm512_mask_storeu_epi32(dst + at, static_cast<__mmask16>((1u << (room - at)) - 1), positions);
  };
  if (count > 0) store(0, _mm512_castsi512_si128(packed));
  if (count > 16) store(16, _mm512_extracti32x4_epi32(packed, 1));
  if (count > 32) store(32, _mm512_extracti32x4_epi32(packed, 2));
  if (count > 48) store(48, _mm512_extracti32x4_epi32(packed, 3));
  return count;
#else
  (void)dst, (void)base, (void)bits, (void)room;
  return 0;
#endif
}

// store_set_positions with the mask as a batch_bool of `lanes` lanes; returns popcount(mask).
template <class Arch, int lanes, class K>
inline int store_set_positions(std::int32_t* dst, std::int32_t base,
                               const xsimd::batch_bool<K, Arch>& mask) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>() && lanes == 16) {  // straight from the mask register
    const __m512i positions = _mm512_add_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(base));
    _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(static_cast<__mmask16>(mask.data), positions));
    return popcount<Arch>(mask_bits<Arch>(mask));
  } else
#endif
  {
    const std::uint32_t bits = mask_bits<Arch>(mask);
    store_set_positions<Arch, lanes>(dst, base, bits);
    return popcount<Arch>(bits);
  }
}

// acc lane = min(acc, v) (max) where mask holds, acc elsewhere; signed integer lanes.
template <class Arch, class K>
inline xsimd::batch<K, Arch> masked_min(const xsimd::batch<K, Arch>& acc, const xsimd::batch_bool<K, Arch>& mask,
                                        const xsimd::batch<K, Arch>& v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>()) {
    const __m512i a = acc.data, b = v.data;
    if constexpr (sizeof(K) == 4)
      return _mm512_mask_min_epi32(a, static_cast<__mmask16>(mask.data), a, b);
    else
      return _mm512_mask_min_epi64(a, static_cast<__mmask8>(mask.data), a, b);
  } else
#endif
  {
    return select<Arch>(mask & (v < acc), v, acc);
  }
}
template <class Arch, class K>
inline xsimd::batch<K, Arch> masked_max(const xsimd::batch<K, Arch>& acc, const xsimd::batch_bool<K, Arch>& mask,
                                        const xsimd::batch<K, Arch>& v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>()) {
    const __m512i a = acc.data, b = v.data;
    if constexpr (sizeof(K) == 4)
      return _mm512_mask_max_epi32(a, static_cast<__mmask16>(mask.data), a, b);
    else
      return _mm512_mask_max_epi64(a, static_cast<__mmask8>(mask.data), a, b);
  } else
#endif
  {
    return select<Arch>(mask & (v > acc), v, acc);
  }
}

// ---- horizontal max and min -----------------------------------------------------------------

namespace detail {

enum class reduction { max, min, add };

template <class Arch, class T, reduction op>
inline T reduce(const xsimd::batch<T, Arch>& v) noexcept {
  using batch = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = batch::size;
  constexpr bool is_max = op == reduction::max;
  [[maybe_unused]] auto pick = [](const batch& a, const batch& b) {
    return is_max ? xsimd::max(a, b) : xsimd::min(a, b);
  };
#if XSIMD_WITH_AVX512F
  // Fold lane i with lane i ^ step: 128-bit block shuffles for the steps that cross blocks,
  // in-block shuffles for the others (cheaper than a full permute), then lane 0 is moved out
  // of the register directly (no store and reload). The zero-masked forms of the
  // intrinsics, because the plain ones trip a false -Wuninitialized in GCC 12.2 (PR 105593).
  if constexpr (arch_traits::has_avx512<Arch>() && (sizeof(T) == 4 || sizeof(T) == 8)) {
    constexpr __mmask16 all = 0xffff;
    constexpr __mmask8 all8 = 0xff;
    auto combine = [](const batch& x, const batch& other) -> batch {
      if constexpr (std::is_same_v<T, float>) {
        if constexpr (op == reduction::add) return _mm512_maskz_add_ps(all, x, other);
        return is_max ? _mm512_maskz_max_ps(all, x, other) : _mm512_maskz_min_ps(all, x, other);
      } else if constexpr (std::is_same_v<T, double>) {
        if constexpr (op == reduction::add) return _mm512_maskz_add_pd(all8, x, other);
        return is_max ? _mm512_maskz_max_pd(all8, x, other) : _mm512_maskz_min_pd(all8, x, other);
      } else if constexpr (sizeof(T) == 4) {
        if constexpr (op == reduction::add) return _mm512_maskz_add_epi32(all, x, other);
        return is_max ? _mm512_maskz_max_epi32(all, x, other) : _mm512_maskz_min_epi32(all, x, other);
      } else {
        if constexpr (op == reduction::add) return _mm512_maskz_add_epi64(all8, x, other);
        return is_max ? _mm512_maskz_max_epi64(all8, x, other) : _mm512_maskz_min_epi64(all8, x, other);
      }
    };
    // Swaps 128-bit blocks (imm8 over four blocks).
    auto blocks = [](const batch& x, auto imm) -> batch {
      constexpr int i = decltype(imm)::value;
      if constexpr (std::is_same_v<T, float>) return _mm512_maskz_shuffle_f32x4(all, x, x, i);
      else if constexpr (std::is_same_v<T, double>) return _mm512_maskz_shuffle_f64x2(all8, x, x, i);
      else return _mm512_maskz_shuffle_i32x4(all, x, x, i);
    };
    // Swaps elements inside each 128-bit block (imm8 over its four 32-bit lanes).
    auto within = [](const batch& x, auto imm) -> batch {
      constexpr int i = decltype(imm)::value;
      if constexpr (std::is_same_v<T, float>) return _mm512_maskz_permute_ps(all, x, i);
      else if constexpr (std::is_same_v<T, double>) return _mm512_maskz_permute_pd(all8, x, 0x55);  // swap the two
      else return _mm512_maskz_shuffle_epi32(all, x, _MM_PERM_ENUM(i));
    };
    using swap_halves = std::integral_constant<int, 0x4e>;  // positions 2 apart
    using swap_pairs = std::integral_constant<int, 0xb1>;   // positions 1 apart
    batch m = combine(v, blocks(v, swap_halves{}));         // 256-bit halves
    m = combine(m, blocks(m, swap_pairs{}));                // 128-bit blocks
    m = combine(m, within(m, swap_halves{}));               // 64-bit halves of a block
    if constexpr (sizeof(T) == 4) m = combine(m, within(m, swap_pairs{}));  // 32-bit neighbours
    if constexpr (std::is_same_v<T, float>) return _mm512_cvtss_f32(m);
    else if constexpr (std::is_same_v<T, double>) return _mm512_cvtsd_f64(m);
    else if constexpr (sizeof(T) == 4) return T(_mm_cvtsi128_si32(_mm512_castsi512_si128(m)));
#if defined(__x86_64__)
    else return T(_mm_cvtsi128_si64(_mm512_castsi512_si128(m)));
#else
    else return m.get(0);  // no 64-bit general registers on i386
#endif
  }
#endif
#if XSIMD_WITH_AVX2
  if constexpr (arch_traits::has_avx2<Arch>() && op == reduction::add) {
    return xsimd::hadd(v);
  } else if constexpr (arch_traits::has_avx2<Arch>() && (sizeof(T) == 4 || sizeof(T) == 8)) {
    // Fold halves: 128-bit halves, then 64-bit, then (32-bit lanes only) 32-bit neighbours.
    using bits_batch = xsimd::batch<float, Arch>;
    auto swapped = [](const batch& x, auto shuffle) {
      if constexpr (std::is_same_v<T, float>) {
        return batch(shuffle(x.data));
      } else {
        const __m256 r = xsimd::bitwise_cast<bits_batch>(x).data;
        return xsimd::bitwise_cast<batch>(bits_batch(shuffle(r)));
      }
    };
    batch m = pick(v, swapped(v, [](__m256 r) { return _mm256_permute2f128_ps(r, r, 1); }));
    m = pick(m, swapped(m, [](__m256 r) { return _mm256_permute_ps(r, 0x4e); }));
    if constexpr (sizeof(T) == 4) m = pick(m, swapped(m, [](__m256 r) { return _mm256_permute_ps(r, 0xb1); }));
    return m.get(0);
  }
#endif
  T lane[lanes];
  v.store_unaligned(lane);
  T best = lane[0];
  for (std::size_t i = 1; i < lanes; ++i) {
    if constexpr (op == reduction::add)
      best += lane[i];
    else if (is_max ? lane[i] > best : lane[i] < best)
      best = lane[i];
  }
  return best;
}

}  // namespace detail

// The largest and smallest lane (numbers and integer keys; NaN lanes are unspecified), and
// the sum of the lanes (xsimd::hadd splits AVX-512 integer batches in halves).
template <class Arch, class T>
inline T reduce_max(const xsimd::batch<T, Arch>& v) noexcept {
  return detail::reduce<Arch, T, detail::reduction::max>(v);
}
template <class Arch, class T>
inline T reduce_min(const xsimd::batch<T, Arch>& v) noexcept {
  return detail::reduce<Arch, T, detail::reduction::min>(v);
}
template <class Arch, class T>
inline T reduce_add(const xsimd::batch<T, Arch>& v) noexcept {
  return detail::reduce<Arch, T, detail::reduction::add>(v);
}

// ---- prefetch ----------------------------------------------------------------------------------

// Prefetches the line at p for reading, into L1 (to_l2 false) or L2 only (prefetcht1).
template <class Arch>
inline void prefetch_line(const void* p, bool to_l2) noexcept {
#if defined(__GNUC__)
  if (to_l2)
    __builtin_prefetch(p, 0, 2);
  else
    __builtin_prefetch(p, 0, 3);
#else
  (void)p;
  (void)to_l2;
#endif
}

// ---- rounding barrier -------------------------------------------------------------------------

// Returns `value` unchanged, but the compiler can no longer see that it is a product, so it
// cannot fuse it into a following addition: GCC contracts a*b+c into an FMA by default, even
// for intrinsics and in ISO C++ mode. Costs no instruction. `value`: a float, a double or an
// xsimd batch of them.
template <class Arch, class V>
inline V rounded(V value) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#if defined(__AVX512F__)
#define MIXDEPTH_VECTOR_REGISTER_CONSTRAINT "+v"
#else
#define MIXDEPTH_VECTOR_REGISTER_CONSTRAINT "+x"
#endif
  if constexpr (std::is_floating_point_v<V>) {
    __asm__("" : MIXDEPTH_VECTOR_REGISTER_CONSTRAINT(value));
  } else {
    auto reg = value.data;
    __asm__("" : MIXDEPTH_VECTOR_REGISTER_CONSTRAINT(reg));
    value = V(reg);
  }
#undef MIXDEPTH_VECTOR_REGISTER_CONSTRAINT
#elif defined(__GNUC__) && defined(__aarch64__)
  if constexpr (std::is_floating_point_v<V>) {
    __asm__("" : "+w"(value));
  } else {
    auto reg = value.data;
    __asm__("" : "+w"(reg));
    value = V(reg);
  }
#endif
  // Elsewhere the caller's -ffp-contract=off (or the compiler's default) must keep it apart.
  return value;
}

// ---- fused multiply-add ------------------------------------------------------------------------

// a * b + c with one rounding. xsimd 8.1 has no AVX-512 fma: on avx512f/bw its xsimd::fma is
// a multiply and an add (two roundings, two instructions, and -ffp-contract=off keeps them
// apart), so AVX-512 goes straight to the intrinsics; FMA3 architectures get xsimd's own.
// Elsewhere (sse2, avx2 without fma3, and architectures arch_traits::has_fused_fma does not
// list, such as fma4 and NEON) it is a multiply and an add, each rounded whatever the
// contraction flags: a compiler allowed to contract (and to use FMA,
// say under -march=native) would otherwise fuse it in some loops and not others, and the
// same coefficient would round differently in two code paths (kernels/gemm.hpp).
template <class Arch, class T>
inline xsimd::batch<T, Arch> fma(const xsimd::batch<T, Arch>& a, const xsimd::batch<T, Arch>& b,
                                 const xsimd::batch<T, Arch>& c) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (arch_traits::has_avx512<Arch>() && std::is_same_v<T, float>) {
    const __m512 a_reg = a.data, b_reg = b.data, c_reg = c.data;
    return _mm512_fmadd_ps(a_reg, b_reg, c_reg);
  } else if constexpr (arch_traits::has_avx512<Arch>() && std::is_same_v<T, double>) {
    const __m512d a_reg = a.data, b_reg = b.data, c_reg = c.data;
    return _mm512_fmadd_pd(a_reg, b_reg, c_reg);
  } else
#endif
      if constexpr (arch_traits::has_fused_fma<Arch>()) {
    return xsimd::fma(a, b, c);
  } else {
    return rounded<Arch>(a * b) + c;
  }
}

}  // namespace mixdepth::kernels::shim
