#pragma once
// CachedAttention: the reference attention as a block function over a KvCache. The routed
// rows' keys and values are appended to their sequence's cache (only routed tokens ever
// enter it), then every routed row attends, causally by position, over its sequence's cached
// tokens, itself included. With an empty cache this is exactly Attention over the same
// Routed batch (a prefill); with one token per sequence it is a decode step.
#include <algorithm>
#include <span>
#include <string>

#include "../kv_cache.hpp"
#include "../product.hpp"
#include "../routed.hpp"
#include "attention.hpp"

namespace mixdepth::layers {

template <class T>
class CachedAttention {
 public:
  // Both must outlive this object. Throws mixdepth::Error unless the cache's rows are as
  // wide as the attention's keys.
  CachedAttention(const Attention<T>& attention, KvCache<T>& cache) : attention_(&attention), cache_(&cache) {
    detail::require_equal("CachedAttention", "cache.width()", attention.config().kv_width(), cache.width());
  }

  const Attention<T>& attention() const { return *attention_; }
  Index dim() const { return attention_->dim(); }  // the width of the rows it takes
  KvCache<T>& cache() const { return *cache_; }

  // Block function. Every check (shapes, one Routed sequence per cache sequence, room in the
  // cache, positions after the cached ones) runs before the cache changes, and if anything
  // throws after the first append (scratch that cannot be allocated), the tokens this call
  // appended are dropped again: the cache is as it was.
  void operator()(const Routed<T>& in, MatrixRef<T> out) const {
    constexpr std::string_view where = "CachedAttention";
    const AttentionConfig& config = attention_->config();
    detail::check_routed(where, in, config.d_model, out.rows(), out.cols());
    detail::require_equal(where, "in.batch() (sequences, one per cache sequence)", cache_->batch(), in.batch());
    for (Index b = 0; b < in.batch(); ++b)
      cache_->check_append(where, b, in.count(b), sequence_positions(in, b));

    mixdepth::detail::ScratchScope<T> scratch(in.scratch);
    const Index n = in.rows();
    if (n == 0) return;
    Index appended = 0;  // sequences [0, appended) hold this call's tokens
    try {
      auto queries = scratch->matrix(n, config.query_width());
      auto keys = scratch->matrix(n, config.kv_width());
      auto values = scratch->matrix(n, config.kv_width());
      const detail::PositionList positions{in.positions};
      attention_->project_unchecked(in.x, positions, queries, keys, values, *scratch);
      for (Index b = 0; b < in.batch(); ++b) {
        const Index first = in.offsets[std::size_t(b)], count = in.count(b);
        if (count == 0) continue;
        cache_->append_unchecked(b, keys, values, first, count, sequence_positions(in, b));
        appended = b + 1;
        // Q doubles as the context buffer: attend reads a query block before writing it.
        attention_->attend_by_feature_unchecked(queries.middleRows(first, count), positions.subspan(first, count),
                                                cache_->keys_by_feature(b), cache_->values(b),
                                                detail::PositionList{cache_->positions(b)},
                                                queries.middleRows(first, count), *scratch);
      }
      mixdepth::detail::product(out, queries, attention_->weights().output, scratch.get());
    } catch (...) {
      drop(in, appended);
      throw;
    }
  }

  // Drops the tokens that the call with `in` appended: each sequence's last in.count(b), for
  // a composition that fails after this function returned (Sequential calls it when its MLP
  // throws). Throws mixdepth::Error, before anything changes, unless in's offsets partition
  // its rows and those are the cache's last tokens: as many, at in's positions. Allocates
  // nothing unless it throws, so it works while memory is exhausted.
  void undo(const Routed<T>& in) const {
    constexpr std::string_view where = "CachedAttention::undo";
    detail::require_equal(where, "in.positions.size()", in.x.rows(), static_cast<Index>(in.positions.size()));
    detail::check_offsets(where, in.offsets, in.x.rows());
    detail::require_equal(where, "in.batch() (sequences, one per cache sequence)", cache_->batch(), in.batch());
    for (Index b = 0; b < in.batch(); ++b) {
      const auto cached = cache_->positions(b);
      const auto added = sequence_positions(in, b);
      auto reject = [&](const std::string& got) {
        detail::fail(where, "in.positions of sequence " + std::to_string(b),
                     "the positions of the cache's last " + std::to_string(added.size()) + " tokens", got);
      };
      if (added.size() > cached.size()) reject("a cache of " + std::to_string(cached.size()) + " tokens");
      const std::size_t first = cached.size() - added.size();
      const auto [in_at, cache_at] = std::mismatch(added.begin(), added.end(), cached.begin() + first);
      if (in_at != added.end())
        reject("position " + std::to_string(*in_at) + " where the cache's token " +
               std::to_string(first + std::size_t(in_at - added.begin())) + " is at " + std::to_string(*cache_at));
    }
    drop(in, in.batch());
  }

 private:
  static std::span<const Position> sequence_positions(const Routed<T>& in, Index b) {
    return in.positions.subspan(std::size_t(in.offsets[std::size_t(b)]), std::size_t(in.count(b)));
  }
  // Drops the tokens `in` appended to sequences [0, sequences).
  void drop(const Routed<T>& in, Index sequences) const {
    for (Index b = 0; b < sequences; ++b) cache_->truncate(b, cache_->size(b) - in.count(b));
  }

  const Attention<T>* attention_;
  KvCache<T>* cache_;
};

}  // namespace mixdepth::layers
