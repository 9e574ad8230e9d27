#pragma once
// The fast exact top-k of one sequence, templated over the architecture. Its output equals
// top_k_portable's for every input: the same positions, ascending, the same rules for ties,
// -0.0, NaN and padding.
//
// It works on rank keys: signed integers, strictly monotone in the contract's order (-0.0 and
// +0.0 share a key, every NaN has the key just above the sentinel). Padding never needs a
// key: when k reaches the valid length the answer is 0..k-1, otherwise only the valid prefix
// competes. The k-th largest key (the threshold) is found in levels, each of which shrinks
// the set that holds it; counts are exact, so a level never loses the threshold:
//   level 0, over the scores: order statistics of a small spread sample give a bracket
//     [lo, hi] that holds the threshold with high probability; one vector pass counts the
//     keys above hi and compresses the keys inside [lo, hi] into scratch. A miss (the
//     threshold is outside) costs one more pass that keeps the side holding it. When the
//     bracket holds only numbers (the usual case), "inside" is one unsigned compare and
//     "above" one more, or none when hi is +inf or above (k small next to the sample).
//   later levels, over compressed keys: one pass finds min and max (all equal: done, the
//     heavy-ties exit), one pass counts the keys above each of P pivots spread evenly over
//     [min, max] (P masked adds per vector, no branches), and one pass compresses the bucket
//     that holds the threshold. Inside a narrow bracket keys are close to uniform, so each
//     such level divides the set by about P + 1.
//   small sets (the sample too): every key's rank is counted against all the others with
//     vector compares, O(m^2 / width), again without data-dependent branches.
// Rank 1 is a horizontal max. A last pass over the scores writes the positions whose key is
// above the threshold plus the first (lowest-position) ties, already ascending, and stops
// after k; with AVX-512 VBMI2 one byte compress packs the positions of 64 lanes (a quarter
// of the compresses and stores). The search is symmetric in rank, so k > S/2 costs what
// k < S/2 does.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "arch.hpp"
#include "simd_shim.hpp"

namespace mixdepth::kernels {

template <class T>
using rank_key_t = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;

namespace top_k_detail {

inline constexpr std::ptrdiff_t pad = 64;           // room for whole-vector stores past the end
inline constexpr int max_sample_log2 = 7;           // level 0 samples at most 2^7 keys
inline constexpr std::ptrdiff_t max_sample = std::ptrdiff_t{1} << max_sample_log2;
inline constexpr std::ptrdiff_t small_limit = 128;  // sets this small are ranked directly
inline constexpr std::ptrdiff_t direct_limit = 48;  // a level hands sets this small to the ranking

}  // namespace top_k_detail

// Scratch the fast top-k needs for a sequence of `n` tokens, in rank keys. The same for
// every architecture, so a caller can size it before dispatching.
template <class T>
constexpr std::ptrdiff_t top_k_scratch_size(std::ptrdiff_t n) {
  return 2 * (n + top_k_detail::pad) + top_k_detail::max_sample + top_k_detail::pad;
}

namespace top_k_detail {

// Scalar rank keys; a separate copy per architecture (see simd_shim.hpp on ODR).
template <class T, class Arch>
struct rank_keys {
  using key = rank_key_t<T>;
  static constexpr key magnitude_mask = std::numeric_limits<key>::max();
  static constexpr key infinity_bits = sizeof(T) == 4 ? key(0x7f800000) : key(0x7ff0000000000000);
  static constexpr key sentinel = std::numeric_limits<key>::min();  // below every token
  static constexpr key nan_key = sentinel + 1;                        // below every number
  static constexpr key lowest = nan_key;
  static constexpr key highest = std::numeric_limits<key>::max();

  static key of(T value) noexcept {
    key bits;
    std::memcpy(&bits, &value, sizeof bits);
    const key magnitude = bits & magnitude_mask;
    if (magnitude > infinity_bits) return nan_key;
    return bits < 0 ? key(-magnitude) : magnitude;  // -0.0 and +0.0 both give 0
  }
  static key of(key value) noexcept { return value; }  // already a key (scratch buffers)
};

template <class Arch>
struct descending {
  template <class K>
  bool operator()(K a, K b) const noexcept {
    return a > b;
  }
};

template <class K>
struct key_range {
  K min, max;
};

template <class K>
struct bracket_counts {
  std::ptrdiff_t above;   // keys > hi
  std::ptrdiff_t inside;  // keys in [lo, hi], written to the destination
  key_range<K> range;     // of the keys inside (when inside > 0)
};

// Two order statistics of a small set: the keys at descending positions `first` and
// `second` (0-based), and how many keys are strictly greater than the first.
template <class K>
struct small_ranks {
  K first, second;
  std::ptrdiff_t greater_than_first;
  std::ptrdiff_t equal_to_first;  // including itself
};

// The passes of the search, per tier. Sources are either the scores (T) or rank keys.
// This one: plain loops, for architectures without compress.
template <class T, class Arch, top_k_tier tier = top_k_tier_of<Arch>()>
struct passes {
  using keys_of_t = rank_keys<T, Arch>;
  using key = rank_key_t<T>;
  static constexpr int pivots = 7;

  template <class S>
  static bracket_counts<key> bracket(const S* src, std::ptrdiff_t n, key lo, key hi, key* dst) noexcept {
    std::ptrdiff_t above = 0, inside = 0;
    key_range<key> range{keys_of_t::highest, keys_of_t::sentinel};
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      const key k = keys_of_t::of(src[i]);
      above += k > hi;
      if (k >= lo && k <= hi) {
        dst[inside++] = k;
        range.min = k < range.min ? k : range.min;
        range.max = k > range.max ? k : range.max;
      }
    }
    return {above, inside, range};
  }

  static bracket_counts<key> bracket_scores(const T* scores, std::ptrdiff_t n, key lo, key hi, key* dst) noexcept {
    return bracket(scores, n, lo, hi, dst);
  }

  static key_range<key> range(const key* src, std::ptrdiff_t n) noexcept {
    key_range<key> r{keys_of_t::highest, keys_of_t::sentinel};
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      r.min = src[i] < r.min ? src[i] : r.min;
      r.max = src[i] > r.max ? src[i] : r.max;
    }
    return r;
  }

  template <class S>
  static key max_key(const S* src, std::ptrdiff_t n) noexcept {
    key best = keys_of_t::sentinel;
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      const key k = keys_of_t::of(src[i]);
      best = k > best ? k : best;
    }
    return best;
  }

  // counts[b] = number of keys > pivot[b], for b in [0, pivots).
  static void count_above(const key* src, std::ptrdiff_t n, const key* pivot, std::ptrdiff_t* counts) noexcept {
    for (int b = 0; b < pivots; ++b) counts[b] = 0;
    for (std::ptrdiff_t i = 0; i < n; ++i)
      for (int b = 0; b < pivots; ++b) counts[b] += src[i] > pivot[b];
  }

  // count_first: fill greater_than_first and equal_to_first (the sample needs neither).
  template <bool count_first = true>
  static small_ranks<key> rank_small(key* a, std::ptrdiff_t m, std::ptrdiff_t first, std::ptrdiff_t second) noexcept {
    std::nth_element(a, a + second, a + m, descending<Arch>{});
    const key second_key = a[second];
    std::nth_element(a, a + first, a + second + 1, descending<Arch>{});
    const key first_key = a[first];
    std::ptrdiff_t greater = 0, equal = 0;
    for (std::ptrdiff_t i = 0; i < m; ++i) {
      greater += a[i] > first_key;
      equal += a[i] == first_key;
    }
    return {first_key, second_key, greater, equal};
  }

  static void write_positions(const T* scores, std::ptrdiff_t n, key threshold, std::ptrdiff_t ties,
                              bool /*every_tie*/, std::int32_t* out, std::ptrdiff_t k) noexcept {
    std::ptrdiff_t written = 0;
    for (std::ptrdiff_t i = 0; i < n && written < k; ++i) {
      const key key_i = keys_of_t::of(scores[i]);
      if (key_i > threshold || (key_i == threshold && ties-- > 0)) out[written++] = std::int32_t(i);
    }
  }
};

// AVX2 and AVX-512: xsimd batches plus the shim's masks and compress.
template <class T, class Arch, top_k_tier tier>
  requires(tier != top_k_tier::scalar)
struct passes<T, Arch, tier> {
  using keys_of_t = rank_keys<T, Arch>;
  using key = rank_key_t<T>;
  using values = xsimd::batch<T, Arch>;
  using keys = xsimd::batch<key, Arch>;
  using key_mask = xsimd::batch_bool<key, Arch>;
  static constexpr std::ptrdiff_t width = std::ptrdiff_t(values::size);
  static_assert(std::ptrdiff_t(keys::size) == width);
  static_assert(width <= pad);
  // A counter and a pivot register per pivot (AVX2 has 16 vector registers). Seven pivots
  // (8 buckets) per pass cost the fewest compares per halving of the set.
  static constexpr int pivots = 7;

  static constexpr std::array<key, width> lane_indices = [] {
    std::array<key, width> a{};
    for (std::ptrdiff_t i = 0; i < width; ++i) a[std::size_t(i)] = key(i);
    return a;
  }();

  static keys keys_of(const values& v) noexcept {
    const keys bits = xsimd::bitwise_cast<keys>(v);
    const keys magnitude = bits & keys(keys_of_t::magnitude_mask);
    const keys signed_key = shim::select<Arch>(bits < keys(0), keys(0) - magnitude, magnitude);
    return shim::select<Arch>(magnitude > keys(keys_of_t::infinity_bits), keys(keys_of_t::nan_key),
                              signed_key);
  }
  static keys load(const T* p) noexcept { return keys_of(values::load_unaligned(p)); }
  static keys load(const key* p) noexcept { return keys::load_unaligned(p); }
  // The first `count` (< width) elements; the other lanes hold `fill`.
  template <class S>
  static keys load_partial(const S* p, std::ptrdiff_t count, key fill) noexcept {
    const keys lane_index = keys::load_unaligned(lane_indices.data());
    const keys loaded = [&] {
      if constexpr (std::is_same_v<S, T>)
        return keys_of(shim::load_first<Arch>(p, count));
      else
        return shim::load_first<Arch>(p, count);
    }();
    return shim::select<Arch>(lane_index < keys(key(count)), loaded, keys(fill));
  }
  static std::uint32_t lanes_below(std::ptrdiff_t count) noexcept {
    return count >= width ? std::uint32_t((std::uint64_t{1} << width) - 1) : (std::uint32_t{1} << count) - 1;
  }

  // counter + 1 in the lanes where mask holds.
  static keys count_if(const keys& counter, const key_mask& mask) noexcept {
#if XSIMD_WITH_AVX512F
    if constexpr (tier == top_k_tier::avx512) {
      const __m512i c = counter.data;
      if constexpr (sizeof(key) == 4)
        return _mm512_mask_add_epi32(c, static_cast<__mmask16>(mask.data), c, _mm512_set1_epi32(1));
      else
        return _mm512_mask_add_epi64(c, static_cast<__mmask8>(mask.data), c, _mm512_set1_epi64(1));
    } else
#endif
    {
      return counter - keys(mask.data);  // AVX2 masks are all-ones lanes, i.e. -1
    }
  }

  // One vector of a bracket pass: its keys, which lie above hi, which inside [lo, hi].
  struct classified {
    keys key_of_lane;
    key_mask above;
    key_mask inside;
  };

  // Counts the keys > hi (without counting_above: none are, and it returns 0) and compresses
  // the keys in [lo, hi] to dst (room for n + width), with track_range their min and max for
  // the next level (else the range is empty, min > max: the next level finds it; the first
  // pass is the longest, so it skips the work). `classify(p)` reads a whole vector at p;
  // `classify_tail(p, count)` the last `count` < width elements. Two vectors per step: the
  // compress and store of one overlap with the other's.
  template <bool track_range, bool counting_above = true, class S, class Classify, class ClassifyTail>
  static bracket_counts<key> bracket_pass(const S* src, std::ptrdiff_t n, key* dst, Classify classify,
                                          ClassifyTail classify_tail) noexcept {
    keys above0(0), above1(0), min0(keys_of_t::highest), max0(keys_of_t::sentinel), min1 = min0, max1 = max0;
    std::ptrdiff_t inside = 0;
    std::ptrdiff_t i = 0;
    for (; i + 2 * width <= n; i += 2 * width) {
      const classified c0 = classify(src + i), c1 = classify(src + i + width);
      if constexpr (counting_above) {
        above0 = count_if(above0, c0.above);
        above1 = count_if(above1, c1.above);
      }
      if constexpr (track_range) {
        min0 = shim::masked_min<Arch>(min0, c0.inside, c0.key_of_lane);
        max0 = shim::masked_max<Arch>(max0, c0.inside, c0.key_of_lane);
        min1 = shim::masked_min<Arch>(min1, c1.inside, c1.key_of_lane);
        max1 = shim::masked_max<Arch>(max1, c1.inside, c1.key_of_lane);
      }
      const int count0 = shim::compress_store<Arch>(dst + inside, c0.key_of_lane, c0.inside);
      const int count1 = shim::compress_store<Arch>(dst + inside + count0, c1.key_of_lane, c1.inside);
      inside += count0 + count1;
    }
    auto single = [&](const classified& c) {
      if constexpr (counting_above) above0 = count_if(above0, c.above);
      if constexpr (track_range) {
        min0 = shim::masked_min<Arch>(min0, c.inside, c.key_of_lane);
        max0 = shim::masked_max<Arch>(max0, c.inside, c.key_of_lane);
      }
      inside += shim::compress_store<Arch>(dst + inside, c.key_of_lane, c.inside);
    };
    if (i + width <= n) {
      single(classify(src + i));
      i += width;
    }
    if (i < n) single(classify_tail(src + i, n - i));
    key_range<key> range{keys_of_t::highest, keys_of_t::sentinel};
    if constexpr (track_range)
      range = {shim::reduce_min<Arch>(shim::select<Arch>(min1 < min0, min1, min0)),
               shim::reduce_max<Arch>(shim::select<Arch>(max1 > max0, max1, max0))};
    std::ptrdiff_t above = 0;
    if constexpr (counting_above) above = std::ptrdiff_t(shim::reduce_add<Arch>(above0 + above1));
    return {above, inside, range};
  }

  // Over keys, or over scores whose keys are computed on the fly; lo <= hi.
  template <class S>
  static bracket_counts<key> bracket(const S* src, std::ptrdiff_t n, key lo, key hi, key* dst) noexcept {
    const keys low(lo), high(hi);
    const key span = span_of(lo, hi);
    auto from_keys = [&](const keys& k) { return classified{k, k > high, in_span(k, low, span)}; };
    return bracket_pass<std::is_same_v<S, key>>(
        src, n, dst, [&](const S* p) { return from_keys(load(p)); },
        [&](const S* p, std::ptrdiff_t count) { return from_keys(load_partial(p, count, keys_of_t::sentinel)); });
  }

  // hi - lo as an unsigned difference (it overflows a signed one), for in_span.
  static key span_of(key lo, key hi) noexcept {
    return key(std::make_unsigned_t<key>(hi) - std::make_unsigned_t<key>(lo));
  }
  // Lanes whose key lies in [lo, lo + span]: one unsigned compare of k - lo (keys below lo
  // wrap around to large unsigned values).
  static key_mask in_span(const keys& k, const keys& lo, key span) noexcept {
#if XSIMD_WITH_AVX512F
    if constexpr (tier == top_k_tier::avx512) {
      const __m512i offset = (k - lo).data;
      if constexpr (sizeof(key) == 4)
        return key_mask(_mm512_cmple_epu32_mask(offset, _mm512_set1_epi32(span)));
      else
        return key_mask(_mm512_cmple_epu64_mask(offset, _mm512_set1_epi64(span)));
    } else
#endif
    {
      // Unsigned order is signed order with the sign bits flipped.
      const keys flip(std::numeric_limits<key>::min());
      return ((k - lo) ^ flip) <= keys(key(span ^ std::numeric_limits<key>::min()));
    }
  }

  // Over scores, for a bracket of numbers ([lo, hi] inside [-inf, +inf]; the usual case,
  // since the sample rarely holds a NaN): one compare finds the lanes inside, one more the
  // lanes above hi, none when hi is +inf or above (nothing is above; NaN's key is the
  // lowest). Keys are computed with shifts and adds, no compares: for positive brackets they
  // are the bits themselves (negative numbers have bits below 0, positive NaNs above +inf's).
  // A NaN lane is never inside (its bits, or minus its magnitude, lie beyond +-inf) nor
  // above (the compare with hi is on numbers). Brackets that hold NaN's key take the general
  // pass. Out of line and flattened, as write_positions: one call per top-k, and keeping its
  // variants out of the flattened top_k keeps that small (GCC's variable tracking gives up on
  // it in sanitizer builds otherwise).
  [[gnu::noinline, gnu::flatten]] static bracket_counts<key> bracket_scores(const T* scores, std::ptrdiff_t n,
                                                                            key lo, key hi, key* dst) noexcept {
    constexpr key infinity = keys_of_t::infinity_bits;
    if (lo < -infinity || lo > infinity) return bracket(scores, n, lo, hi, dst);
    if (lo > 0)
      return hi < infinity ? bracket_numbers<true, true>(scores, n, lo, hi, dst)
                           : bracket_numbers<true, false>(scores, n, lo, infinity, dst);
    return hi < infinity ? bracket_numbers<false, true>(scores, n, lo, hi, dst)
                         : bracket_numbers<false, false>(scores, n, lo, infinity, dst);
  }

  template <bool positive, bool bounded>
  static bracket_counts<key> bracket_numbers(const T* scores, std::ptrdiff_t n, key lo, key hi, key* dst) noexcept {
    const keys low(lo);
    const key span = span_of(lo, hi);
    const values high_value(value_of(hi));
    constexpr int sign_shift = int(8 * sizeof(key)) - 1;
    auto classify_values = [&](const values& v) {
      const keys bits = xsimd::bitwise_cast<keys>(v);
      keys k = bits;
      if constexpr (!positive) {
        // minus the magnitude for negative numbers: (m ^ s) - s with s = 0 or -1.
        const keys sign = keys(0) - xsimd::bitwise_cast<keys>(xsimd::bitwise_cast<xsimd::batch<std::make_unsigned_t<key>, Arch>>(bits) >> sign_shift);
        k = ((bits & keys(keys_of_t::magnitude_mask)) ^ sign) - sign;
      }
      const key_mask above = bounded ? xsimd::bool_cast(v > high_value) : key_mask(false);
      return classified{k, above, in_span(k, low, span)};
    };
    // A NaN fill is neither above nor inside.
    auto tail_of = [](const T* p, std::ptrdiff_t count) {
      const keys lane_index = keys::load_unaligned(lane_indices.data());
      const auto beyond = xsimd::bool_cast(lane_index >= keys(key(count)));
      return xsimd::select(beyond, values(std::numeric_limits<T>::quiet_NaN()), shim::load_first<Arch>(p, count));
    };
    return bracket_pass<false, bounded>(
        scores, n, dst, [&](const T* p) { return classify_values(values::load_unaligned(p)); },
        [&](const T* p, std::ptrdiff_t count) { return classify_values(tail_of(p, count)); });
  }

  static key_range<key> range(const key* src, std::ptrdiff_t n) noexcept {
    keys low(keys_of_t::highest), high(keys_of_t::sentinel);
    const key_mask every(true);  // plain min and max (vpmins/vpmaxs on AVX-512)
    std::ptrdiff_t i = 0;
    for (; i + width <= n; i += width) {
      const keys k = load(src + i);
      low = shim::masked_min<Arch>(low, every, k);
      high = shim::masked_max<Arch>(high, every, k);
    }
    if (i < n) {
      low = shim::masked_min<Arch>(low, every, load_partial(src + i, n - i, keys_of_t::highest));
      high = shim::masked_max<Arch>(high, every, load_partial(src + i, n - i, keys_of_t::sentinel));
    }
    return {shim::reduce_min<Arch>(low), shim::reduce_max<Arch>(high)};
  }

  template <class S>
  static key max_key(const S* src, std::ptrdiff_t n) noexcept {
    keys best(keys_of_t::sentinel);
    // select, not xsimd::max: xsimd 8.1 splits integer max into halves on AVX-512.
    auto take = [&](const keys& k) { best = shim::select<Arch>(k > best, k, best); };
    std::ptrdiff_t i = 0;
    for (; i + width <= n; i += width) take(load(src + i));
    if (i < n) take(load_partial(src + i, n - i, keys_of_t::sentinel));
    return shim::reduce_max<Arch>(best);
  }

  static void count_above(const key* src, std::ptrdiff_t n, const key* pivot, std::ptrdiff_t* counts) noexcept {
    // Unrolled at every optimisation level, so the counters live in registers (at -O2 GCC
    // keeps a counted loop over them rolled, and the arrays in memory).
    keys p[pivots], c[pivots];
#pragma GCC unroll 16
    for (int b = 0; b < pivots; ++b) {
      p[b] = keys(pivot[b]);
      c[b] = keys(0);
    }
    auto step = [&](const keys& k) {
#pragma GCC unroll 16
      for (int b = 0; b < pivots; ++b) c[b] = count_if(c[b], k > p[b]);
    };
    std::ptrdiff_t i = 0;
    for (; i + width <= n; i += width) step(load(src + i));
    if (i < n) step(load_partial(src + i, n - i, keys_of_t::sentinel));
#pragma GCC unroll 16
    for (int b = 0; b < pivots; ++b) counts[b] = std::ptrdiff_t(shim::reduce_add<Arch>(c[b]));
  }

  // Counts, for every key, the keys greater than it (g) with vector compares. The key at
  // descending position q is the smallest key with g <= q: the keys above it number at most
  // q, and every smaller key has at least q + 1 above it. So one masked min per vector finds
  // each order statistic, and equality never needs counting in the quadratic loop (a second,
  // linear pass counts the keys above and equal to the first statistic, when asked).
  // a must have room for whole vectors past m; the padding lanes hold the sentinel, which
  // has m keys above it and so is never picked.
  template <bool count_first = true>
  static small_ranks<key> rank_small(key* a, std::ptrdiff_t m, std::ptrdiff_t first, std::ptrdiff_t second) noexcept {
    for (std::ptrdiff_t i = m; i % width != 0; ++i) a[i] = keys_of_t::sentinel;
    const keys q1 = keys(key(first)), q2 = keys(key(second));
    keys low1(keys_of_t::highest), low2(keys_of_t::highest);
    for (std::ptrdiff_t j = 0; j < m; j += width) {
      const keys own = load(a + j);
      // Four counters: the counting chains are what limits this loop.
      keys g0(0), g1(0), g2(0), g3(0);
      std::ptrdiff_t i = 0;
      for (; i + 4 <= m; i += 4) {
        g0 = count_if(g0, keys(a[i]) > own);
        g1 = count_if(g1, keys(a[i + 1]) > own);
        g2 = count_if(g2, keys(a[i + 2]) > own);
        g3 = count_if(g3, keys(a[i + 3]) > own);
      }
      for (; i < m; ++i) g0 = count_if(g0, keys(a[i]) > own);
      const keys greater = (g0 + g1) + (g2 + g3);
      low1 = shim::masked_min<Arch>(low1, greater <= q1, own);
      low2 = shim::masked_min<Arch>(low2, greater <= q2, own);
    }
    small_ranks<key> result{shim::reduce_min<Arch>(low1), shim::reduce_min<Arch>(low2), 0, 0};
    if constexpr (count_first) {
      const keys value(result.first);
      keys above(0), equal(0);
      for (std::ptrdiff_t j = 0; j < m; j += width) {
        const keys own = load(a + j);
        above = count_if(above, own > value);
        equal = count_if(equal, own == value);
      }
      result.greater_than_first = std::ptrdiff_t(shim::reduce_add<Arch>(above));
      result.equal_to_first = std::ptrdiff_t(shim::reduce_add<Arch>(equal));
    }
    return result;
  }

  // The number a key stands for (the inverse of keys_of on numbers).
  static T value_of(key k) noexcept {
    const key bits = k >= 0 ? k : key(key(-k) | std::numeric_limits<key>::min());
    T value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  // Positions of the keys above the threshold plus the first `ties` equal to it, compared as
  // numbers: no key computation. A NaN threshold: "above" is every number, "equal" every NaN.
  // every_tie: the ties are all the keys equal to the threshold, so take keys >= it.
  [[gnu::noinline, gnu::flatten]] static void write_positions(const T* scores, std::ptrdiff_t n, key threshold,
                                                               std::ptrdiff_t ties, bool every_tie, std::int32_t* out,
                                                               std::ptrdiff_t k) noexcept {
    if (threshold == keys_of_t::nan_key)
      write_positions_as<true, false>(scores, n, values(T(0)), ties, out, k);
    else if (every_tie)
      write_positions_as<false, true>(scores, n, values(value_of(threshold)), 0, out, k);
    else
      write_positions_as<false, false>(scores, n, values(value_of(threshold)), ties, out, k);
  }

  template <bool nan_threshold, bool inclusive>
  static void write_positions_as(const T* scores, std::ptrdiff_t n, const values& t, std::ptrdiff_t ties,
                                 std::int32_t* out, std::ptrdiff_t k) noexcept {
    auto above = [&](const values& v) {
      if constexpr (nan_threshold)
        return v == v;
      else if constexpr (inclusive)
        return v >= t;
      else
        return v > t;
    };
    auto equal = [&](const values& v) {
      if constexpr (nan_threshold)
        return xsimd::isnan(v);  // not v != v: xsimd's != is the ordered compare
      else
        return v == t;
    };
    std::ptrdiff_t written = 0;
    // Writes the positions of the lanes in `take` (bits) of the vector at i, never past out[k).
    auto store_bits = [&](std::uint32_t take, std::ptrdiff_t i) {
      shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i), take, k - written);
      written += shim::popcount<Arch>(take);
    };
    // Adds the lowest ties among `equal_bits` to `take`.
    auto with_ties = [&](std::uint32_t take, std::uint32_t equal_bits) {
      if (equal_bits == 0) return take;
      std::ptrdiff_t count = shim::popcount<Arch>(equal_bits);
      if (count > ties) {
        equal_bits = shim::lowest_set_bits<Arch>(equal_bits, ties);
        count = ties;
      }
      ties -= count;
      return take | equal_bits;
    };
    std::ptrdiff_t i = 0;
    // Until the ties are used up.
    for (; ties > 0 && i + width <= n; i += width) {
      const values v = values::load_unaligned(scores + i);
      store_bits(with_ties(shim::mask_bits<Arch>(above(v)), shim::mask_bits<Arch>(equal(v))), i);
      if (written >= k) return;
    }
    // Then only the keys above, exactly k - written of them from here on. With byte
    // compress, 64 lanes per step.
    if constexpr (arch_traits::has_byte_compress<Arch>()) {
      constexpr std::ptrdiff_t block = 64, vectors = block / width;
      for (; i + block <= n && written < k; i += block) {
        std::uint64_t bits = 0;
#pragma GCC unroll 8
        for (std::ptrdiff_t v = 0; v < vectors; ++v)
          bits |= std::uint64_t(shim::mask_bits<Arch>(above(values::load_unaligned(scores + i + v * width))))
                  << (v * width);
        written += shim::store_set_positions_64<Arch>(out + written, std::int32_t(i), bits, k - written);
      }
    }
    // Two vectors per step while both stores fit.
    for (; i + 2 * width <= n && k - written >= 2 * width; i += 2 * width) {
      const auto take0 = above(values::load_unaligned(scores + i));
      const auto take1 = above(values::load_unaligned(scores + i + width));
      written += shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i), take0);
      written += shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i + width), take1);
    }
    for (; i + width <= n && written < k; i += width)
      store_bits(shim::mask_bits<Arch>(above(values::load_unaligned(scores + i))), i);
    if (i < n && written < k) {
      const values v = shim::load_first<Arch>(scores + i, n - i);
      const std::uint32_t valid = lanes_below(n - i);
      std::uint32_t take = shim::mask_bits<Arch>(above(v)) & valid;
      if (ties > 0) take = with_ties(take, shim::mask_bits<Arch>(equal(v)) & valid);
      store_bits(take, i);
    }
  }
};

template <class T, class Arch>
struct search {
  using key = rank_key_t<T>;
  using unsigned_key = std::make_unsigned_t<key>;
  using keys_of_t = rank_keys<T, Arch>;
  using pass = passes<T, Arch>;

  struct threshold {
    key value;               // the key of the k-th largest
    std::ptrdiff_t greater;  // how many keys are larger
    std::ptrdiff_t equal;    // how many keys equal it, or -1 when unknown
  };

  // What a level leaves: the threshold, or a smaller set (in its destination) holding it,
  // with the min and max of that set.
  // A set always holds every key equal to the threshold, so a level that finds it can often
  // say how many there are (`equal`, -1 when unknown).
  struct level_result {
    bool done;
    key value;
    std::ptrdiff_t equal;
    std::ptrdiff_t size;
    std::ptrdiff_t rank;
    key_range<key> range;
  };

  static level_result found(key value, std::ptrdiff_t equal = -1) noexcept { return {true, value, equal, 0, 0, {}}; }
  static level_result narrowed(const bracket_counts<key>& kept, std::ptrdiff_t rank) noexcept {
    return {false, 0, -1, kept.inside, rank, kept.range};
  }

  // The set a[0, n) (keys, room past the end) decided directly.
  static level_result direct(key* a, std::ptrdiff_t n, std::ptrdiff_t rank, std::ptrdiff_t& greater) noexcept {
    if (n <= small_limit) {
      const small_ranks<key> r = pass::rank_small(a, n, rank - 1, rank - 1);
      greater += r.greater_than_first;
      return found(r.first, r.equal_to_first);
    }
    return found(select_rank(a, n, rank, greater));
  }

  // Only after many levels on adversarial inputs: out of line, so top_k's flattening leaves
  // std::nth_element's code where it is.
  [[gnu::noinline]] static key select_rank(key* a, std::ptrdiff_t n, std::ptrdiff_t rank,
                                           std::ptrdiff_t& greater) noexcept {
    std::nth_element(a, a + (rank - 1), a + n, descending<Arch>{});
    const key value = a[rank - 1];
    for (std::ptrdiff_t i = 0; i < rank - 1; ++i) greater += a[i] > value;
    return value;
  }

  // Where level 0 samples: m keys, m the largest power of two <= sqrt(n), clamped to
  // [32, max_sample] (a power of two, so neither a square root nor a division sits on the
  // path to the first load). Sample i lies at the start of stride i (stride = n / m in 32.32
  // fixed point) plus the fraction h / 2^32 of whole = floor(n / m), with h a multiplicative
  // hash of i. The offset is below whole, so the position stays below n.
  struct sample_grid {
    int log2_m;
    std::ptrdiff_t m;
    std::uint64_t stride;
    std::uint64_t whole;

    explicit sample_grid(std::ptrdiff_t n) noexcept
        : log2_m(std::clamp((int(std::bit_width(std::uint64_t(n))) - 1) / 2, 5, max_sample_log2)),
          m(std::ptrdiff_t{1} << log2_m),
          stride(std::uint64_t(n) << (32 - log2_m)),
          whole(std::uint64_t(n) >> log2_m) {}

    std::ptrdiff_t position(std::ptrdiff_t i) const noexcept {
      const std::uint64_t h = std::uint32_t(std::uint32_t(i) * 2654435761u);
      return std::ptrdiff_t(((std::uint64_t(i) * stride) >> 32) + ((h * whole) >> 32));
    }
  };

  // Level 0, over the scores [0, n): a sampled bracket, one pass, one more on a miss.
  static level_result first_level(const T* scores, std::ptrdiff_t n, std::ptrdiff_t rank,
                                  std::ptrdiff_t& greater, key* dst, key* sample) noexcept {
    if (n <= direct_limit) {
      for (std::ptrdiff_t i = 0; i < n; ++i) dst[i] = keys_of_t::of(scores[i]);
      return direct(dst, n, rank, greater);
    }
    if (rank == 1) return found(pass::max_key(scores, n));

    // Sample at spread positions (a hashed offset inside each stride avoids aliasing with
    // periodic inputs); two of the sample's order statistics bracket the threshold.
    const sample_grid grid(n);
    const std::ptrdiff_t m = grid.m;
    for (std::ptrdiff_t i = 0; i < m; ++i) sample[i] = keys_of_t::of(scores[grid.position(i)]);
    const double p = double(rank) / double(n);
    const double expected = p * double(m) - 0.5;  // the threshold's descending sample position
    const double spread = 2.5 * std::sqrt(double(m) * p * (1.0 - p)) + 1.0;
    const auto high_index = std::ptrdiff_t(std::floor(expected - spread));
    const auto low_index = std::ptrdiff_t(std::ceil(expected + spread));
    const small_ranks<key> r = pass::template rank_small<false>(sample, m, high_index < 0 ? 0 : high_index,
                                                               low_index >= m ? m - 1 : low_index);
    const key hi = high_index < 0 ? keys_of_t::highest : r.first;
    const key lo = low_index >= m ? keys_of_t::lowest : r.second;

    const bracket_counts<key> counts = pass::bracket_scores(scores, n, lo, hi, dst);
    if (counts.above >= rank) {  // a miss: the threshold is above hi
      return narrowed(pass::bracket_scores(scores, n, hi + 1, keys_of_t::highest, dst), rank);
    }
    if (counts.above + counts.inside < rank) {  // a miss: it is below lo
      greater += counts.above + counts.inside;
      return narrowed(pass::bracket_scores(scores, n, keys_of_t::lowest, lo - 1, dst),
                      rank - counts.above - counts.inside);
    }
    greater += counts.above;
    if (lo == hi) return found(lo, counts.inside);  // every candidate ties: heavy ties end here
    return narrowed(counts, rank - counts.above);
  }

  // A later level, over keys src[0, n): buckets between evenly spread pivots.
  static level_result next_level(const key* src, std::ptrdiff_t n, std::ptrdiff_t rank, key_range<key> r,
                                 std::ptrdiff_t& greater, key* dst) noexcept {
    if (r.min > r.max) r = pass::range(src, n);  // not tracked by the pass that wrote the set
    if (r.min == r.max) return found(r.min, n);
    if (rank == 1) return found(r.max);
    // Pivot b = min + span * (b + 1) / (P + 1), in unsigned arithmetic (the span of 64-bit
    // keys overflows a signed difference). Above pivot P-1 lies at least max, at or below
    // pivot 0 at least min: every bucket split makes progress. (The range comes from the
    // pass that wrote the set.)
    constexpr int pivots = pass::pivots;
    const unsigned_key span = unsigned_key(unsigned_key(r.max) - unsigned_key(r.min));
    key pivot[pivots];
    for (int b = 0; b < pivots; ++b) {
      const unsigned_key step = span / (pivots + 1) * unsigned_key(b + 1) +
                                span % (pivots + 1) * unsigned_key(b + 1) / (pivots + 1);
      pivot[b] = key(unsigned_key(r.min) + step);
    }
    std::ptrdiff_t above[pivots];
    pass::count_above(src, n, pivot, above);
    // The bucket (pivot[b-1], pivot[b]] holding the threshold: above[b] < rank <= above[b-1],
    // with above[-1] = n and pivot[-1] = min - 1, above[P] = 0 and pivot[P] = max.
    int b = 0;
    while (b < pivots && above[b] >= rank) ++b;
    const key lo = b == 0 ? r.min : key(pivot[b - 1] + 1);
    const key hi = b == pivots ? r.max : pivot[b];
    const std::ptrdiff_t above_bucket = b == pivots ? 0 : above[b];
    const bracket_counts<key> kept = pass::bracket(src, n, lo, hi, dst);
    greater += above_bucket;
    return narrowed(kept, rank - above_bucket);
  }

  // The rank-th largest key among the scores [0, n), with 1 <= rank <= n.
  static threshold find(const T* scores, std::ptrdiff_t n, std::ptrdiff_t rank, key* scratch) noexcept {
    key* const buffer[2] = {scratch, scratch + n + pad};
    key* const sample = scratch + 2 * (n + pad);
    std::ptrdiff_t greater = 0;
    level_result r = first_level(scores, n, rank, greater, buffer[0], sample);
    for (int depth = 1; !r.done; ++depth) {
      key* src = buffer[(depth - 1) & 1];
      // Every level shrinks the set; the depth cap only bounds adversarial inputs.
      r = r.size <= direct_limit || depth > 48 ? direct(src, r.size, r.rank, greater)
                                               : next_level(src, r.size, r.rank, r.range, greater, buffer[depth & 1]);
    }
    return {r.value, greater, r.equal};
  }
};

}  // namespace top_k_detail

// Writes the positions of the k highest-ranked of scores[0, n) to out[0, k), ascending: the
// same output as top_k_portable (positions >= valid are padding). Requires 0 <= k <= n,
// 0 <= valid <= n, n < 2^31, and `scratch` with top_k_scratch_size<T>(n) keys.
// Flattened: the passes, their lambdas and the shim's helpers inline into it at -O2 as they
// do at -O3 (GCC's -O2 inlining limits would otherwise leave calls in the inner loops),
// except the out-of-line bracket_scores, write_positions and select_rank.
template <class Arch, class T>
[[gnu::flatten]] void top_k(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k,
                            std::int32_t* out, rank_key_t<T>* scratch) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  (void)n;
  if (k <= 0) return;
  if (k >= valid) {  // every valid token, then padding from the lowest position
    for (std::ptrdiff_t i = 0; i < k; ++i) out[i] = std::int32_t(i);
    return;
  }
  using search = top_k_detail::search<T, Arch>;
  // The SIMD passes compare scores both as numbers and as integer keys; the two agree only
  // while denormals are read as numbers. (The scalar passes use keys alone.)
  struct no_guard {};
  [[maybe_unused]] const std::conditional_t<top_k_tier_of<Arch>() == top_k_tier::scalar, no_guard,
                                            shim::denormals_as_numbers<Arch>>
      exact{};
  const auto t = search::find(scores, valid, k, scratch);
  // When every tie is taken (one tie, for continuous scores), the answer is the keys >= t.
  top_k_detail::passes<T, Arch>::write_positions(scores, valid, t.value, k - t.greater, t.equal == k - t.greater,
                                                 out, k);
}

}  // namespace mixdepth::kernels
