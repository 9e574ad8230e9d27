#pragma once
// KvCache<T>: the key/value cache of one attention block for a batch of sequences, MoD-aware:
// it holds only the tokens the block routed (a skipped token never enters it), each with its
// original position. Capacity is explicit: reserve() is the only call that allocates, and
// an append past the reserve throws instead of growing.
//
// Keys are stored by feature: for each sequence a [width, stride] row-major array whose row
// f holds feature f of every cached token, so one KV head's keys are already the transposed
// operand of its attention scores (a decode step's query times them reads rows in place).
// keys(b) views them as the usual [tokens, width] matrix, column-major and strided (not a
// row-major block: pass keys_by_feature(b) to Attention::attend_by_feature to read them in
// place). Values are stored by token.
#include <algorithm>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "arena.hpp"
#include "types.hpp"

namespace mixdepth {

template <class T>
class KvCache {
 public:
  // [tokens, width], column-major: column f is row f of keys_by_feature().
  using KeysView = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>,
                              Eigen::Unaligned, Eigen::OuterStride<>>;

  KvCache() = default;
  // `batch` sequences, rows of `width` numbers (kv heads * head dim), room for `capacity`
  // tokens per sequence.
  KvCache(Index batch, Index width, Index capacity) {
    constexpr std::string_view where = "KvCache";
    if (batch < 0) detail::fail(where, "batch", ">= 0", batch);
    if (width < 1) detail::fail(where, "width", ">= 1", width);
    if (capacity < 0) detail::fail(where, "capacity", ">= 0", capacity);
    width_ = width;
    sequences_.resize(std::size_t(batch));
    reserve(capacity);
  }

  Index batch() const { return static_cast<Index>(sequences_.size()); }
  Index width() const { return width_; }
  Index capacity() const { return capacity_; }
  // Tokens stored for sequence b.
  Index size(Index b) const { return sequence(b).size; }
  KeysView keys(Index b) const {
    return {sequence(b).keys.data(), size(b), width_, Eigen::OuterStride<>(key_stride_)};
  }
  // The same keys transposed, [width, tokens], rows key_stride() elements apart.
  ConstStridedRowMatrixMap<T> keys_by_feature(Index b) const {
    return {sequence(b).keys.data(), width_, size(b), Eigen::OuterStride<>(key_stride_)};
  }
  // Elements between the rows of keys_by_feature(): the capacity rounded up to an odd number
  // of cache lines (Arena::spread_stride), so that a column's reads spread over the cache.
  Index key_stride() const { return key_stride_; }
  ConstRowMatrixMap<T> values(Index b) const { return {sequence(b).values.data(), size(b), width_}; }
  std::span<const Position> positions(Index b) const {
    return {sequence(b).positions.data(), std::size_t(size(b))};
  }
  // The position of the last stored token of sequence b, or -1 when it has none.
  Position last_position(Index b) const {
    const auto& s = sequence(b);
    return s.size == 0 ? Position{-1} : s.positions[std::size_t(s.size - 1)];
  }
  Index tokens() const {
    Index total = 0;
    for (const auto& s : sequences_) total += s.size;
    return total;
  }

  // Bytes the stored tokens occupy (keys, values and positions), and bytes reserved (the
  // keys' rows padded to key_stride() included).
  std::size_t bytes() const { return std::size_t(tokens()) * token_bytes(); }
  std::size_t reserved_bytes() const {
    const std::size_t keys = std::size_t(width_) * std::size_t(key_stride_) * sizeof(T);
    const std::size_t rest = std::size_t(capacity_) * (std::size_t(width_) * sizeof(T) + sizeof(Position));
    return std::size_t(batch()) * (keys + rest);
  }
  std::size_t token_bytes() const { return 2 * std::size_t(width_) * sizeof(T) + sizeof(Position); }

  // Room for `capacity` tokens per sequence; keeps what is stored. Never shrinks. Builds the
  // grown cache beside the old one (the peak holds both), so if an allocation throws, the
  // cache is as it was. When key_stride() stays the same (a growth within the padding of
  // its rows), the keys stay where they are: only values and positions move.
  void reserve(Index capacity) {
    constexpr std::string_view where = "KvCache::reserve";
    if (capacity < 0) detail::fail(where, "capacity", ">= 0", capacity);
    if (capacity <= capacity_) return;
    // Positions ascend strictly within a sequence, from 0: no more than Position's range fit.
    constexpr Index max_tokens = Index{std::numeric_limits<Position>::max()} + 1;
    if (capacity > max_tokens) detail::fail(where, "capacity", "<= " + std::to_string(max_tokens), capacity);
    const Index stride = Arena<T>::spread_stride(capacity);
    if (width_ > 0 && stride > std::numeric_limits<Index>::max() / Index{sizeof(T)} / width_)
      detail::fail(where, "capacity", "a cache of fewer than 2^63 bytes per sequence",
                   std::to_string(capacity) + " tokens of " + std::to_string(width_) + " values");
    const bool keys_stay = stride == key_stride_;
    std::vector<Sequence> grown(sequences_.size());
    for (std::size_t b = 0; b < sequences_.size(); ++b) {
      const Sequence& s = sequences_[b];
      Sequence& g = grown[b];
      if (!keys_stay) {
        g.keys.resize(std::size_t(stride * width_));
        for (Index f = 0; f < width_; ++f)
          std::copy_n(s.keys.data() + f * key_stride_, s.size, g.keys.data() + f * stride);
      }
      g.values.resize(std::size_t(capacity * width_));
      std::copy_n(s.values.data(), s.size * width_, g.values.data());
      g.positions.resize(std::size_t(capacity));
      std::copy_n(s.positions.data(), s.size, g.positions.data());
      g.size = s.size;
    }
    if (keys_stay)  // nothing throws from here on
      for (std::size_t b = 0; b < sequences_.size(); ++b) grown[b].keys.swap(sequences_[b].keys);
    sequences_.swap(grown);
    capacity_ = capacity;
    key_stride_ = stride;
  }

  // Drops the tokens of sequence b after the first `size` (a rollback: `size` <= size(b)).
  void truncate(Index b, Index size) {
    auto& s = sequences_[std::size_t(checked_sequence("KvCache::truncate", b))];
    if (size < 0 || size > s.size)
      detail::fail("KvCache::truncate", "size", "in [0, " + std::to_string(s.size) + "]", size);
    s.size = size;
  }

  // Forgets every stored token; keeps the reserve.
  void clear() {
    for (auto& s : sequences_) s.size = 0;
  }

  // Checks that `count[b]` more tokens with the given positions fit sequence b: within the
  // reserve and after its last stored position. Throws mixdepth::Error otherwise.
  void check_append(std::string_view where, Index b, Index count, std::span<const Position> positions) const {
    if (b < 0 || b >= batch())
      detail::fail(where, "sequence", "in [0, " + std::to_string(batch()) + ") (cache batch)", b);
    if (count < 0) detail::fail(where, "count", ">= 0", count);
    detail::require_equal(where, "positions.size() (one per new token)", count, static_cast<Index>(positions.size()));
    if (size(b) + count > capacity_)
      detail::fail(where, "tokens of sequence " + std::to_string(b),
                   "<= " + std::to_string(capacity_) + " (the cache's reserve; call KvCache::reserve)",
                   std::to_string(size(b)) + " cached + " + std::to_string(count) + " new");
    Position previous = last_position(b);
    for (std::size_t j = 0; j < positions.size(); ++j) {
      if (positions[j] <= previous)
        detail::fail(where, "position of new token " + std::to_string(j) + " of sequence " + std::to_string(b),
                     "> " + std::to_string(previous) + " (after every cached token)", positions[j]);
      previous = positions[j];
    }
  }

  // Appends rows [first, first + count) of keys and values with their positions to sequence
  // b. Call check_append first: this one does not check.
  void append_unchecked(Index b, MatrixCRef<T> keys, MatrixCRef<T> values, Index first, Index count,
                        std::span<const Position> positions) {
    auto& s = sequences_[std::size_t(b)];
    // Keys go in by feature, a cache line of tokens at a time: the rows read stay in L1
    // while each feature's run of them is written.
    constexpr Index run = Index(Arena<T>::alignment / sizeof(T) > 0 ? Arena<T>::alignment / sizeof(T) : 1);
    for (Index j0 = 0; j0 < count; j0 += run) {
      const Index n = std::min(run, count - j0);
      for (Index f = 0; f < width_; ++f) {
        T* row = s.keys.data() + f * key_stride_ + s.size + j0;
        for (Index j = 0; j < n; ++j) row[j] = keys(first + j0 + j, f);
      }
    }
    for (Index j = 0; j < count; ++j) {
      std::memcpy(s.values.data() + (s.size + j) * width_, &values.coeffRef(first + j, 0), sizeof(T) * std::size_t(width_));
      s.positions[std::size_t(s.size + j)] = positions[std::size_t(j)];
    }
    s.size += count;
  }

 private:
  struct Sequence {
    detail::LineAlignedVector<T> keys;  // [width, key_stride]: by feature
    std::vector<T> values;              // [capacity, width]: by token
    std::vector<Position> positions;
    Index size = 0;
  };

  Index checked_sequence(std::string_view where, Index b) const {
    if (b < 0 || b >= batch())
      detail::fail(where, "sequence", "in [0, " + std::to_string(batch()) + ")", b);
    return b;
  }
  const Sequence& sequence(Index b) const {
    return sequences_[std::size_t(checked_sequence("KvCache", b))];
  }

  Index width_ = 0;
  Index capacity_ = 0;
  Index key_stride_ = 0;
  std::vector<Sequence> sequences_;
};

}  // namespace mixdepth
