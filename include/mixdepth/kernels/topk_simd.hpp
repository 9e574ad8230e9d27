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
//     threshold is outside) costs one more pass that keeps the side holding it.
//   later levels, over compressed keys: one pass finds min and max (all equal: done, the
//     heavy-ties exit), one pass counts the keys above each of P pivots spread evenly over
//     [min, max] (P masked adds per vector, no branches), and one pass compresses the bucket
//     that holds the threshold. Inside a narrow bracket keys are close to uniform, so each
//     such level divides the set by about P + 1.
//   small sets (the sample too): every key's rank is counted against all the others with
//     vector compares, O(m^2 / width), again without data-dependent branches.
// Rank 1 is a horizontal max. A last pass over the scores writes the positions whose key is
// above the threshold plus the first (lowest-position) ties, already ascending, and stops
// after k. The search is symmetric in rank, so k > S/2 costs what k < S/2 does.
#include <algorithm>
#include <array>
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
inline constexpr std::ptrdiff_t max_sample = 128;   // sample keys at level 0, at most
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

  static small_ranks<key> rank_small(key* a, std::ptrdiff_t m, std::ptrdiff_t first, std::ptrdiff_t second) noexcept {
    std::nth_element(a, a + second, a + m, descending<Arch>{});
    const key second_key = a[second];
    std::nth_element(a, a + first, a + second + 1, descending<Arch>{});
    const key first_key = a[first];
    std::ptrdiff_t greater = 0;
    for (std::ptrdiff_t i = 0; i < first; ++i) greater += a[i] > first_key;
    return {first_key, second_key, greater};
  }

  static void write_positions(const T* scores, std::ptrdiff_t n, key threshold, std::ptrdiff_t ties,
                              std::int32_t* out, std::ptrdiff_t k) noexcept {
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
    S lane[width] = {};
    std::memcpy(lane, p, sizeof(S) * std::size_t(count));
    const keys lane_index = keys::load_unaligned(lane_indices.data());
    return shim::select<Arch>(lane_index < keys(key(count)), load(lane), keys(fill));
  }
  static std::uint32_t lanes_below(std::ptrdiff_t count) noexcept {
    return count >= width ? std::uint32_t((std::uint64_t{1} << width) - 1) : (std::uint32_t{1} << count) - 1;
  }

  // counter + 1 in the lanes where mask holds.
  static keys count_if(const keys& counter, const key_mask& mask) noexcept {
    if constexpr (tier == top_k_tier::avx512)
      return shim::select<Arch>(mask, counter + keys(1), counter);
    else
      return counter - keys(mask.data);  // AVX2 masks are all-ones lanes, i.e. -1
  }

  // Counts the keys > hi and compresses the keys in [lo, hi] to dst (room for n + width),
  // tracking their min and max for the next level. Two vectors per step: the compress and
  // store of one overlap with the other's.
  template <class S>
  static bracket_counts<key> bracket(const S* src, std::ptrdiff_t n, key lo, key hi, key* dst) noexcept {
    const keys low(lo), high(hi);
    keys above0(0), above1(0), min0(keys_of_t::highest), max0(keys_of_t::sentinel), min1 = min0, max1 = max0;
    std::ptrdiff_t inside = 0;
    std::ptrdiff_t i = 0;
    for (; i + 2 * width <= n; i += 2 * width) {
      const keys k0 = load(src + i), k1 = load(src + i + width);
      above0 = count_if(above0, k0 > high);
      above1 = count_if(above1, k1 > high);
      const key_mask in0 = (k0 >= low) & (k0 <= high), in1 = (k1 >= low) & (k1 <= high);
      min0 = shim::masked_min<Arch>(min0, in0, k0);
      max0 = shim::masked_max<Arch>(max0, in0, k0);
      min1 = shim::masked_min<Arch>(min1, in1, k1);
      max1 = shim::masked_max<Arch>(max1, in1, k1);
      const int count0 = shim::compress_store<Arch>(dst + inside, k0, in0);
      const int count1 = shim::compress_store<Arch>(dst + inside + count0, k1, in1);
      inside += count0 + count1;
    }
    auto single = [&](const keys& k) {
      above0 = count_if(above0, k > high);
      const key_mask in = (k >= low) & (k <= high);
      min0 = shim::masked_min<Arch>(min0, in, k);
      max0 = shim::masked_max<Arch>(max0, in, k);
      inside += shim::compress_store<Arch>(dst + inside, k, in);
    };
    if (i + width <= n) {
      single(load(src + i));
      i += width;
    }
    if (i < n) single(load_partial(src + i, n - i, keys_of_t::sentinel));
    const key_range<key> range{shim::reduce_min<Arch>(shim::select<Arch>(min1 < min0, min1, min0)),
                               shim::reduce_max<Arch>(shim::select<Arch>(max1 > max0, max1, max0))};
    return {std::ptrdiff_t(shim::reduce_add<Arch>(above0 + above1)), inside, range};
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
    keys p[pivots], c[pivots];
    for (int b = 0; b < pivots; ++b) {
      p[b] = keys(pivot[b]);
      c[b] = keys(0);
    }
    auto step = [&](const keys& k) {
      for (int b = 0; b < pivots; ++b) c[b] = count_if(c[b], k > p[b]);
    };
    std::ptrdiff_t i = 0;
    for (; i + width <= n; i += width) step(load(src + i));
    if (i < n) step(load_partial(src + i, n - i, keys_of_t::sentinel));
    for (int b = 0; b < pivots; ++b) counts[b] = std::ptrdiff_t(shim::reduce_add<Arch>(c[b]));
  }

  // Ranks every key against all the others: lane j learns how many keys are greater than
  // key j (g) and equal to it (e); key j fills the descending positions [g, g + e).
  // a must have room for whole vectors past m.
  static small_ranks<key> rank_small(key* a, std::ptrdiff_t m, std::ptrdiff_t first, std::ptrdiff_t second) noexcept {
    for (std::ptrdiff_t i = m; i % width != 0; ++i) a[i] = keys_of_t::sentinel;
    small_ranks<key> result{0, 0, 0};
    bool found_first = false, found_second = false;
    const keys q1 = keys(key(first)), q2 = keys(key(second));
    for (std::ptrdiff_t j = 0; j < m && !(found_first && found_second); j += width) {
      const keys own = load(a + j);
      keys greater(0), equal(0);
      for (std::ptrdiff_t i = 0; i < m; ++i) {
        const keys other(a[i]);
        greater = count_if(greater, other > own);
        equal = count_if(equal, other == own);
      }
      const keys end = greater + equal;
      const std::uint32_t valid = lanes_below(m - j);
      const std::uint32_t holds_first = shim::mask_bits<Arch>((greater <= q1) & (end > q1)) & valid;
      const std::uint32_t holds_second = shim::mask_bits<Arch>((greater <= q2) & (end > q2)) & valid;
      if (!found_first && holds_first != 0) {
        const int lane = __builtin_ctz(holds_first);
        key g[width];
        greater.store_unaligned(g);
        result.first = a[j + lane];
        result.greater_than_first = std::ptrdiff_t(g[lane]);
        found_first = true;
      }
      if (!found_second && holds_second != 0) {
        result.second = a[j + __builtin_ctz(holds_second)];
        found_second = true;
      }
    }
    return result;
  }

  static void write_positions(const T* scores, std::ptrdiff_t n, key threshold, std::ptrdiff_t ties,
                              std::int32_t* out, std::ptrdiff_t k) noexcept {
    const keys t(threshold);
    std::ptrdiff_t written = 0;
    // Writes the positions of `take` (lanes of the vector at i); false once all k are written.
    auto store = [&](const key_mask& take, std::ptrdiff_t i) {
      if (k - written >= width) {
        written += shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i), take);
      } else {  // the last few: never write past out[k)
        std::int32_t lane[width];
        const int count = shim::store_set_positions<Arch, int(width)>(lane, std::int32_t(i), take);
        std::memcpy(out + written, lane, sizeof(std::int32_t) * std::size_t(count));
        written += count;
      }
      return written < k;
    };
    std::ptrdiff_t i = 0;
    // Until the ties are used up: keys above the threshold plus the lowest-position ties.
    for (; ties > 0 && i + width <= n; i += width) {
      const keys key_i = load(scores + i);
      const std::uint32_t greater = shim::mask_bits<Arch>(key_i > t);
      std::uint32_t equal = shim::mask_bits<Arch>(key_i == t);
      std::ptrdiff_t count = shim::popcount<Arch>(equal);
      if (count > ties) {
        equal = shim::lowest_set_bits<Arch>(equal, ties);
        count = ties;
      }
      ties -= count;
      const std::uint32_t take = greater | equal;
      if (k - written >= width) {
        shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i), take);
      } else {
        std::int32_t lane[width];
        shim::store_set_positions<Arch, int(width)>(lane, std::int32_t(i), take);
        std::memcpy(out + written, lane, sizeof(std::int32_t) * std::size_t(shim::popcount<Arch>(take)));
      }
      written += shim::popcount<Arch>(take);
      if (written >= k) return;
    }
    // Then only keys above it, two vectors per step while there is room for both stores.
    for (; i + 2 * width <= n && k - written >= 2 * width; i += 2 * width) {
      const key_mask take0 = load(scores + i) > t, take1 = load(scores + i + width) > t;
      written += shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i), take0);
      written += shim::store_set_positions<Arch, int(width)>(out + written, std::int32_t(i + width), take1);
    }
    for (; i + width <= n; i += width)
      if (!store(load(scores + i) > t, i)) return;
    if (i < n && written < k) {
      const keys key_i = load_partial(scores + i, n - i, keys_of_t::sentinel);
      std::uint32_t take = shim::mask_bits<Arch>(key_i > t);
      if (ties > 0) take |= shim::lowest_set_bits<Arch>(shim::mask_bits<Arch>(key_i == t), ties);
      std::int32_t lane[width];
      shim::store_set_positions<Arch, int(width)>(lane, std::int32_t(i), take);
      std::memcpy(out + written, lane, sizeof(std::int32_t) * std::size_t(shim::popcount<Arch>(take)));
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
  };

  // What a level leaves: the threshold, or a smaller set (in its destination) holding it,
  // with the min and max of that set.
  struct level_result {
    bool done;
    key value;
    std::ptrdiff_t size;
    std::ptrdiff_t rank;
    key_range<key> range;
  };

  static level_result found(key value) noexcept { return {true, value, 0, 0, {}}; }
  static level_result narrowed(const bracket_counts<key>& kept, std::ptrdiff_t rank) noexcept {
    return {false, 0, kept.inside, rank, kept.range};
  }

  // The set a[0, n) (keys, room past the end) decided directly.
  static level_result direct(key* a, std::ptrdiff_t n, std::ptrdiff_t rank, std::ptrdiff_t& greater) noexcept {
    if (n <= small_limit) {
      const small_ranks<key> r = pass::rank_small(a, n, rank - 1, rank - 1);
      greater += r.greater_than_first;
      return found(r.first);
    }
    // Only after many levels on adversarial inputs.
    std::nth_element(a, a + (rank - 1), a + n, descending<Arch>{});
    const key value = a[rank - 1];
    for (std::ptrdiff_t i = 0; i < rank - 1; ++i) greater += a[i] > value;
    return found(value);
  }

  static std::ptrdiff_t sample_size(std::ptrdiff_t n) noexcept {
    const auto m = std::ptrdiff_t(std::sqrt(double(n)));
    return m < 32 ? 32 : m > max_sample ? max_sample : m;
  }

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
    const std::ptrdiff_t m = sample_size(n);
    const std::uint64_t stride = (std::uint64_t(n) << 32) / std::uint64_t(m);  // 32.32 fixed point
    for (std::ptrdiff_t i = 0; i < m; ++i) {
      const std::uint64_t jitter = (std::uint64_t(std::uint32_t(i) * 2654435761u) * stride) >> 32;
      sample[i] = keys_of_t::of(scores[std::ptrdiff_t((std::uint64_t(i) * stride + jitter) >> 32)]);
    }
    const double p = double(rank) / double(n);
    const double expected = p * double(m) - 0.5;  // the threshold's descending sample position
    const double spread = 2.5 * std::sqrt(double(m) * p * (1.0 - p)) + 1.0;
    const auto high_index = std::ptrdiff_t(std::floor(expected - spread));
    const auto low_index = std::ptrdiff_t(std::ceil(expected + spread));
    const small_ranks<key> r = pass::rank_small(sample, m, high_index < 0 ? 0 : high_index,
                                                low_index >= m ? m - 1 : low_index);
    const key hi = high_index < 0 ? keys_of_t::highest : r.first;
    const key lo = low_index >= m ? keys_of_t::lowest : r.second;

    const bracket_counts<key> counts = pass::bracket(scores, n, lo, hi, dst);
    if (counts.above >= rank) {  // a miss: the threshold is above hi
      return narrowed(pass::bracket(scores, n, hi + 1, keys_of_t::highest, dst), rank);
    }
    if (counts.above + counts.inside < rank) {  // a miss: it is below lo
      greater += counts.above + counts.inside;
      return narrowed(pass::bracket(scores, n, keys_of_t::lowest, lo - 1, dst),
                      rank - counts.above - counts.inside);
    }
    greater += counts.above;
    if (lo == hi) return found(lo);  // every candidate ties: heavy ties end here
    return narrowed(counts, rank - counts.above);
  }

  // A later level, over keys src[0, n): buckets between evenly spread pivots.
  static level_result next_level(const key* src, std::ptrdiff_t n, std::ptrdiff_t rank, key_range<key> r,
                                 std::ptrdiff_t& greater, key* dst) noexcept {
    if (r.min == r.max) return found(r.min);
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
    return {r.value, greater};
  }
};

}  // namespace top_k_detail

// Writes the positions of the k highest-ranked of scores[0, n) to out[0, k), ascending: the
// same output as top_k_portable (positions >= valid are padding). Requires 0 <= k <= n,
// 0 <= valid <= n, n < 2^31, and `scratch` with top_k_scratch_size<T>(n) keys.
template <class Arch, class T>
void top_k(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k, std::int32_t* out,
           rank_key_t<T>* scratch) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  (void)n;
  if (k <= 0) return;
  if (k >= valid) {  // every valid token, then padding from the lowest position
    for (std::ptrdiff_t i = 0; i < k; ++i) out[i] = std::int32_t(i);
    return;
  }
  using search = top_k_detail::search<T, Arch>;
  const auto t = search::find(scores, valid, k, scratch);
  top_k_detail::passes<T, Arch>::write_positions(scores, valid, t.value, k - t.greater, out, k);
}

}  // namespace mixdepth::kernels
