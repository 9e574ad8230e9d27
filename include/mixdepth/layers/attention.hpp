#pragma once
// Attention<T>: pre-norm causal multi-head self-attention with grouped-query heads (GQA) and
// rotary position embedding at each token's original position, as a block function returning
// the residual-free update  a = Attn(RMSNorm(x)).
//
// A forward runs in three steps that a decoder with a KV cache reuses one by one:
//   project()        RMSNorm, then Q = n W_query, K = n W_key, V = n W_value, RoPE on Q and K
//   attend()         each query over a given set of keys/values with their positions
//   project_output() out = context W_output
// Causality is by position: a query at position p sees the keys of its own sequence whose
// position is <= p. Query head h reads key/value head h / (n_heads / n_kv_heads).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "../arena.hpp"
#include "../product.hpp"
#include "../routed.hpp"
#include "../types.hpp"
#include "init.hpp"
#include "positions.hpp"
#include "rmsnorm.hpp"
#include "rope.hpp"

namespace mixdepth::layers {

struct AttentionConfig {
  Index d_model = 0;     // width of the residual stream
  Index n_heads = 0;     // query heads
  Index n_kv_heads = 0;  // key/value heads; n_heads must be a multiple (1: multi-query)
  Index head_dim = 0;    // even (RoPE rotates pairs)
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;

  Index query_width() const { return n_heads * head_dim; }  // columns of Q and of the context
  Index kv_width() const { return n_kv_heads * head_dim; }  // columns of K and of V
};

template <class T>
struct AttentionWeights {
  Vector<T> norm;       // [d_model]
  RowMatrix<T> query;   // [d_model, n_heads * head_dim]
  RowMatrix<T> key;     // [d_model, n_kv_heads * head_dim]
  RowMatrix<T> value;   // [d_model, n_kv_heads * head_dim]
  RowMatrix<T> output;  // [n_heads * head_dim, d_model]
};

template <class T>
class Attention {
 public:
  // Queries are scored this many at a time: bounds the score scratch to
  // query_block_rows x keys (or, for a block of one query, a KV head's query heads x keys),
  // and lets a block skip the keys none of its queries can see.
  static constexpr Index query_block_rows = 64;

  // Throws mixdepth::Error naming the first config field or weight that does not fit.
  Attention(AttentionConfig config, AttentionWeights<T> weights)
      : config_(checked(config)),
        weights_(std::move(weights)),
        norm_(checked_norm(config_, weights_)),
        rotary_(config_.head_dim, config_.rope_theta) {}

  // Seeded weights: projections N(0, 1/fan_in), norm weight 1 + N(0, 0.1^2).
  static Attention random(AttentionConfig config, std::uint64_t seed) {
    checked(config);
    NormalSource normal(seed);
    AttentionWeights<T> w;
    w.norm = random_norm_weight<T>(config.d_model, normal);
    w.query = random_projection<T>(config.d_model, config.query_width(), normal);
    w.key = random_projection<T>(config.d_model, config.kv_width(), normal);
    w.value = random_projection<T>(config.d_model, config.kv_width(), normal);
    w.output = random_projection<T>(config.query_width(), config.d_model, normal);
    return Attention(config, std::move(w));
  }

  const AttentionConfig& config() const { return config_; }
  Index dim() const { return config_.d_model; }  // the width of the rows it takes
  const AttentionWeights<T>& weights() const { return weights_; }
  const RMSNorm<T>& norm() const { return norm_; }
  const RotaryEmbedding<T>& rotary() const { return rotary_; }

  // Block function: out = Attn(RMSNorm(in.x)) with each sequence of `in` attending within
  // itself, causally by in.positions. Scratch (Q, K, V, normalised rows, one block of scores,
  // one KV head's keys transposed) comes from in.scratch, or a local arena when it is null.
  // out may be in.x itself.
  void operator()(const Routed<T>& in, MatrixRef<T> out) const {
    constexpr std::string_view where = "Attention";
    detail::check_routed(where, in, config_.d_model, out.rows(), out.cols());
    mixdepth::detail::ScratchScope<T> scratch(in.scratch);
    const detail::PositionList positions{in.positions};
    forward(in.x, positions, in.offsets, out, *scratch);
  }

  // One dense sequence at positions 0, 1, ..., x.rows() - 1.
  void operator()(MatrixCRef<T> x, MatrixRef<T> out, Arena<T>* scratch = nullptr) const {
    constexpr std::string_view where = "Attention";
    detail::require_equal(where, "x.cols()", config_.d_model, x.cols());
    detail::require_equal(where, "out.rows()", x.rows(), out.rows());
    detail::require_equal(where, "out.cols()", config_.d_model, out.cols());
    mixdepth::detail::ScratchScope<T> arena(scratch);
    const std::array<Index, 2> offsets{0, x.rows()};
    forward(x, detail::DensePositions{x.rows()}, offsets, out, *arena);
  }

  // Step 1. queries [n, query_width], keys and values [n, kv_width] of the rows x [n, d_model]
  // at the given positions (RoPE applied to queries and keys). x is read before any output
  // is written, so an output may share memory with it; the three outputs must not share
  // memory with each other.
  void project(MatrixCRef<T> x, std::span<const Position> positions, MatrixRef<T> queries,
               MatrixRef<T> keys, MatrixRef<T> values, Arena<T>* scratch = nullptr) const {
    constexpr std::string_view where = "Attention::project";
    const Index n = x.rows();
    detail::require_equal(where, "x.cols()", config_.d_model, x.cols());
    detail::require_equal(where, "positions.size()", n, static_cast<Index>(positions.size()));
    require_shape(where, "queries", queries, n, config_.query_width());
    require_shape(where, "keys", keys, n, config_.kv_width());
    require_shape(where, "values", values, n, config_.kv_width());
    if (mixdepth::detail::overlaps(queries, keys))
      detail::fail(where, "keys", "memory disjoint from queries", "overlapping");
    if (mixdepth::detail::overlaps(queries, values))
      detail::fail(where, "values", "memory disjoint from queries", "overlapping");
    if (mixdepth::detail::overlaps(keys, values))
      detail::fail(where, "values", "memory disjoint from keys", "overlapping");
    mixdepth::detail::ScratchScope<T> arena(scratch);
    project_unchecked(x, detail::PositionList{positions}, queries, keys, values, *arena);
  }

  // Step 2. context [nq, query_width]: every query (row of queries, at query_positions) over
  // the keys and values whose key_positions are <= its own; a query that sees no key gets a
  // zero row. key_positions must ascend (a KV cache appends in position order). context may
  // be queries itself (the same view), but must not otherwise share memory with queries,
  // and must not overlap keys or values.
  void attend(MatrixCRef<T> queries, std::span<const Position> query_positions, MatrixCRef<T> keys,
              MatrixCRef<T> values, std::span<const Position> key_positions, MatrixRef<T> context,
              Arena<T>* scratch = nullptr) const {
    constexpr std::string_view where = "Attention::attend";
    const Index nq = queries.rows(), nk = keys.rows();
    require_shape(where, "queries", queries, nq, config_.query_width());
    detail::require_equal(where, "query_positions.size()", nq,
                          static_cast<Index>(query_positions.size()));
    require_shape(where, "keys", keys, nk, config_.kv_width());
    require_shape(where, "values", values, nk, config_.kv_width());
    detail::require_equal(where, "key_positions.size()", nk, static_cast<Index>(key_positions.size()));
    require_shape(where, "context", context, nq, config_.query_width());
    const detail::PositionList keys_at{key_positions};
    detail::require_nondecreasing(where, "key_positions", keys_at, 0, nk);
    if (mixdepth::detail::overlaps(context, keys) || mixdepth::detail::overlaps(context, values))
      detail::fail(where, "context", "memory disjoint from keys and values", "overlapping");
    mixdepth::detail::require_same_or_disjoint(where, "context", "queries", queries, context);
    mixdepth::detail::ScratchScope<T> arena(scratch);
    attend_unchecked(queries, detail::PositionList{query_positions}, keys, values, keys_at,
                     context, *arena);
  }

  // Step 2 over keys given by feature, [kv_width, nk] (KvCache::keys_by_feature(b): row f is
  // feature f of every key, rows outerStride() apart), read in place: the same results as
  // attend() over their transpose, bit for bit, without transposing each KV head's keys into
  // scratch. context may be queries itself (the same view), but must not otherwise share
  // memory with queries, and must not overlap keys_by_feature or values.
  void attend_by_feature(MatrixCRef<T> queries, std::span<const Position> query_positions,
                         MatrixCRef<T> keys_by_feature, MatrixCRef<T> values,
                         std::span<const Position> key_positions, MatrixRef<T> context,
                         Arena<T>* scratch = nullptr) const {
    constexpr std::string_view where = "Attention::attend_by_feature";
    const Index nq = queries.rows(), nk = keys_by_feature.cols();
    require_shape(where, "queries", queries, nq, config_.query_width());
    detail::require_equal(where, "query_positions.size()", nq,
                          static_cast<Index>(query_positions.size()));
    require_shape(where, "keys_by_feature", keys_by_feature, config_.kv_width(), nk);
    if (keys_by_feature.rows() > 1 && keys_by_feature.outerStride() < nk)
      detail::fail(where, "keys_by_feature.outerStride()",
                   ">= keys_by_feature.cols() (" + std::to_string(nk) + ")", keys_by_feature.outerStride());
    require_shape(where, "values", values, nk, config_.kv_width());
    detail::require_equal(where, "key_positions.size()", nk, static_cast<Index>(key_positions.size()));
    require_shape(where, "context", context, nq, config_.query_width());
    const detail::PositionList keys_at{key_positions};
    detail::require_nondecreasing(where, "key_positions", keys_at, 0, nk);
    if (mixdepth::detail::overlaps(context, keys_by_feature) || mixdepth::detail::overlaps(context, values))
      detail::fail(where, "context", "memory disjoint from keys_by_feature and values", "overlapping");
    mixdepth::detail::require_same_or_disjoint(where, "context", "queries", queries, context);
    mixdepth::detail::ScratchScope<T> arena(scratch);
    attend_by_feature_unchecked(
        queries, detail::PositionList{query_positions},
        ConstStridedRowMatrixMap<T>(keys_by_feature.data(), keys_by_feature.rows(), nk,
                                    Eigen::OuterStride<>(keys_by_feature.outerStride())),
        values, keys_at, context, *arena);
  }

  // Step 3. out [n, d_model] = context W_output. out must not overlap context. With scratch,
  // the product's packing buffers come from it (no heap allocation once it has grown);
  // without, from a local arena, which allocates.
  void project_output(MatrixCRef<T> context, MatrixRef<T> out, Arena<T>* scratch = nullptr) const {
    constexpr std::string_view where = "Attention::project_output";
    require_shape(where, "context", context, context.rows(), config_.query_width());
    require_shape(where, "out", out, context.rows(), config_.d_model);
    if (mixdepth::detail::overlaps(context, out))
      detail::fail(where, "out", "memory disjoint from context", "overlapping");
    mixdepth::detail::product(out, context, weights_.output, scratch);
  }

  // The unchecked steps, for callers that have checked shapes already (a decoder's cache).
  template <class Positions>
  void project_unchecked(MatrixCRef<T> x, const Positions& positions, MatrixRef<T> queries,
                         MatrixRef<T> keys, MatrixRef<T> values, Arena<T>& arena) const {
    if (x.rows() == 0) return;
    const auto mark = arena.mark();
    auto normed = arena.matrix(x.rows(), config_.d_model);
    norm_.apply_unchecked(x, normed);
    mixdepth::detail::product(queries, normed, weights_.query, &arena);
    mixdepth::detail::product(keys, normed, weights_.key, &arena);
    mixdepth::detail::product(values, normed, weights_.value, &arena);
    rotary_.rotate_unchecked(queries, keys, positions, arena);
    arena.rewind(mark);
  }

  // Keys by token, [n_keys, kv_width]: each KV head's keys are transposed into scratch once
  // for all the query heads of its group.
  template <class QueryPositions, class KeyPositions>
  void attend_unchecked(MatrixCRef<T> queries, const QueryPositions& query_positions,
                        MatrixCRef<T> keys, MatrixCRef<T> values,
                        const KeyPositions& key_positions, MatrixRef<T> context,
                        Arena<T>& arena) const {
    const Index n_keys = keys.rows(), head_dim = config_.head_dim;
    if (queries.rows() == 0 || n_keys == 0) {
      context.setZero();
      return;
    }
    const auto mark = arena.mark();
    // One KV head's keys transposed, [head_dim, n_keys], so the score products read them in
    // place rather than packing the transpose again for every block of queries and every
    // query head of a group.
    const Index stride = Arena<T>::spread_stride(n_keys);
    StridedRowMatrixMap<T> keys_t(arena.take(head_dim * stride).data(), head_dim, n_keys, Eigen::OuterStride<>(stride));
    Index transposed = -1;
    auto head_keys_t = [&](Index kv_head) {
      if (kv_head != transposed) {
        const auto head_keys = keys.block(0, kv_head * head_dim, n_keys, head_dim);
        for (Index j = 0; j < n_keys; ++j) keys_t.col(j) = head_keys.row(j).transpose();
        transposed = kv_head;
      }
      return ConstStridedRowMatrixMap<T>(keys_t.data(), head_dim, n_keys, Eigen::OuterStride<>(stride));
    };
    attend_heads(queries, query_positions, n_keys, head_keys_t, values, key_positions, context, arena);
    arena.rewind(mark);
  }

  // Keys by feature, [kv_width, n_keys] (KvCache::keys_by_feature), rows at least n_keys
  // apart: the score products read each KV head's rows in place. The results are those of
  // attend_unchecked, bit for bit.
  template <class QueryPositions, class KeyPositions>
  void attend_by_feature_unchecked(MatrixCRef<T> queries, const QueryPositions& query_positions,
                                   ConstStridedRowMatrixMap<T> keys_by_feature, MatrixCRef<T> values,
                                   const KeyPositions& key_positions, MatrixRef<T> context,
                                   Arena<T>& arena) const {
    const Index n_keys = keys_by_feature.cols(), head_dim = config_.head_dim;
    if (queries.rows() == 0 || n_keys == 0) {
      context.setZero();
      return;
    }
    const Index stride = keys_by_feature.outerStride();
    auto head_keys_t = [&](Index kv_head) {
      return ConstStridedRowMatrixMap<T>(keys_by_feature.data() + kv_head * head_dim * stride, head_dim, n_keys,
                                         Eigen::OuterStride<>(stride));
    };
    attend_heads(queries, query_positions, n_keys, head_keys_t, values, key_positions, context, arena);
  }

 private:
  // Every query head over its KV head's keys, given transposed by head_keys_t(kv_head) as
  // [head_dim, n_keys] (n_keys >= 1, at least one query). Queries are scored a block of up to
  // query_block_rows at a time, head by head; a block of one query (a decoding step) scores
  // the heads of a KV head's group together instead (attend_group).
  template <class QueryPositions, class HeadKeysT, class KeyPositions>
  void attend_heads(MatrixCRef<T> queries, const QueryPositions& query_positions, Index n_keys,
                    HeadKeysT& head_keys_t, MatrixCRef<T> values, const KeyPositions& key_positions,
                    MatrixRef<T> context, Arena<T>& arena) const {
    const Index n_queries = queries.rows();
    const Index head_dim = config_.head_dim;
    const Index heads_per_kv = config_.n_heads / config_.n_kv_heads;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(head_dim)));
    const auto mark = arena.mark();
    // Rows of scores: a block's queries, or a group's heads when the last block (or the only
    // one) has one query.
    const Index score_rows = std::max(std::min(n_queries, query_block_rows),
                                      n_queries % query_block_rows == 1 ? heads_per_kv : Index(0));
    T* score_storage = arena.take(score_rows * Arena<T>::aligned_stride(n_keys)).data();
    std::array<Index, query_block_rows> visible{};  // keys each query of the block may see
    std::array<T, query_block_rows> inverse_sum{};  // 1 / its softmax denominator
    // Whether every value is finite, found out once, by the first block with keys that only
    // some of its queries see (decode steps have none): v * 0 is 0 for every finite v and NaN
    // otherwise, and the sum is one vectorised pass.
    enum class Finite { unknown, yes, no } values_finite = Finite::unknown;
    auto masked_values_finite = [&](const auto& masked) {
      if (values_finite == Finite::unknown)
        values_finite = std::isnan((values.array() * T(0)).sum()) ? Finite::no : Finite::yes;
      return values_finite == Finite::yes || masked.allFinite();
    };

    for (Index kv_head = 0; kv_head < config_.n_kv_heads; ++kv_head) {
      const ConstStridedRowMatrixMap<T> keys_t = head_keys_t(kv_head);
      const auto kv_values = values.block(0, kv_head * head_dim, n_keys, head_dim);
      for (Index first = 0; first < n_queries; first += query_block_rows) {
        const Index rows = std::min(query_block_rows, n_queries - first);
        Index widest = 0;  // the block never reads keys past the last one any of its queries sees
        Index narrowest = n_keys;  // keys every query of the block sees
        for (Index r = 0; r < rows; ++r) {
          visible[std::size_t(r)] = visible_keys(key_positions, n_keys, query_positions[first + r]);
          widest = std::max(widest, visible[std::size_t(r)]);
          narrowest = std::min(narrowest, visible[std::size_t(r)]);
        }
        if (rows == 1) {
          attend_group(queries.row(first).data() + kv_head * heads_per_kv * head_dim, keys_t.leftCols(widest),
                       kv_values.topRows(widest), scale, score_storage,
                       context.row(first).data() + kv_head * heads_per_kv * head_dim, arena);
          continue;
        }
        for (Index head = kv_head * heads_per_kv; head < (kv_head + 1) * heads_per_kv; ++head) {
          auto context_block = context.block(first, head * head_dim, rows, head_dim);
          if (widest == 0) {
            context_block.setZero();
            continue;
          }
          // Every row of scores starts on a cache line, as a decoding step's single row does:
          // the softmax's vectorised exp then rounds each score as it would in any other row.
          StridedRowMatrixMap<T> scores(score_storage, rows, widest, Eigen::OuterStride<>(Arena<T>::aligned_stride(widest)));
          const auto query_block = queries.block(first, head * head_dim, rows, head_dim);
          mixdepth::detail::product(scores, query_block, keys_t.leftCols(widest), &arena, scale);
          for (Index r = 0; r < rows; ++r)
            inverse_sum[std::size_t(r)] = softmax_numerators(scores.row(r), visible[std::size_t(r)]);
          const auto head_values = kv_values.topRows(widest);
          if (narrowest == widest || masked_values_finite(head_values.middleRows(narrowest, widest - narrowest))) {
            // The masked weights are exact zeros, and 0 * a finite value adds nothing.
            mixdepth::detail::product(context_block, scores, head_values, &arena);
          } else {
            // 0 * inf is NaN: a non-finite value of a key that only some of these queries see
            // would reach the others across the causal mask. The keys all of them see go
            // through the product, the rest row by row.
            if (narrowest > 0)
              mixdepth::detail::product(context_block, scores.leftCols(narrowest), head_values.topRows(narrowest), &arena);
            else
              context_block.setZero();
            for (Index r = 0; r < rows; ++r)
              for (Index j = narrowest; j < visible[std::size_t(r)]; ++j)
                context_block.row(r) += scores(r, j) * head_values.row(j);
          }
          for (Index r = 0; r < rows; ++r) {
            if (visible[std::size_t(r)] == 0)
              context_block.row(r).setZero();
            else
              context_block.row(r) *= inverse_sum[std::size_t(r)];
          }
        }
      }
    }
    arena.rewind(mark);
  }

  // One query over the `visible` keys and values it sees (keys_t [head_dim, visible] and
  // values [visible, head_dim] of one KV head), for every query head of that KV head's group
  // at once: the group's heads lie side by side in the query's row, so they are the rows of
  // one product (row stride head_dim), and its context the rows of another. The keys and
  // values then stream through once for the group rather than once per head. The product
  // gives each row the bits it has alone (kernels/gemm.hpp), and each head's softmax is the
  // one attend_heads applies to a block's row: the results are those of scoring each head on
  // its own, bit for bit. `score_storage` holds heads_per_kv rows of aligned_stride(visible).
  template <class HeadKeysT, class HeadValues>
  void attend_group(const T* group_queries, const HeadKeysT& keys_t, const HeadValues& head_values,
                    T scale, T* score_storage,
                    T* group_context, Arena<T>& arena) const {
    const Index heads = config_.n_heads / config_.n_kv_heads, head_dim = config_.head_dim;
    const Index visible = keys_t.cols();
    StridedRowMatrixMap<T> context(group_context, heads, head_dim, Eigen::OuterStride<>(head_dim));
    if (visible == 0) {
      context.setZero();
      return;
    }
    const ConstStridedRowMatrixMap<T> query_rows(group_queries, heads, head_dim, Eigen::OuterStride<>(head_dim));
    StridedRowMatrixMap<T> scores(score_storage, heads, visible, Eigen::OuterStride<>(Arena<T>::aligned_stride(visible)));
    mixdepth::detail::product(scores, query_rows, keys_t, &arena, scale);
    const auto mark = arena.mark();
    T* inverse_sum = arena.take(heads).data();
    for (Index h = 0; h < heads; ++h) inverse_sum[h] = softmax_numerators(scores.row(h), visible);
    mixdepth::detail::product(context, scores, head_values, &arena);
    for (Index h = 0; h < heads; ++h) context.row(h) *= inverse_sum[h];
    arena.rewind(mark);
  }

  template <class Positions>
  void forward(MatrixCRef<T> x, const Positions& positions, std::span<const Index> offsets,
               MatrixRef<T> out, Arena<T>& arena) const {
    const Index n = x.rows();
    if (n == 0) return;
    // Q doubles as the context buffer: attend() reads a query block before writing it.
    auto queries = arena.matrix(n, config_.query_width());
    auto keys = arena.matrix(n, config_.kv_width());
    auto values = arena.matrix(n, config_.kv_width());
    project_unchecked(x, positions, queries, keys, values, arena);
    for (std::size_t b = 0; b + 1 < offsets.size(); ++b) {
      const Index first = offsets[b], count = offsets[b + 1] - offsets[b];
      if (count == 0) continue;
      const auto sequence_positions = slice(positions, first, count);
      attend_unchecked(queries.middleRows(first, count), sequence_positions,
                       keys.middleRows(first, count), values.middleRows(first, count),
                       sequence_positions, queries.middleRows(first, count), arena);
    }
    mixdepth::detail::product(out, queries, weights_.output, &arena);
  }

  static detail::PositionList slice(const detail::PositionList& p, Index first, Index count) {
    return p.subspan(first, count);
  }
  static detail::DensePositions slice(const detail::DensePositions&, Index first, Index count) {
    // Only one dense sequence exists, starting at row 0.
    (void)first;
    return {count};
  }

  // Keys [0, result) have positions <= query_position (key positions ascend).
  template <class KeyPositions>
  static Index visible_keys(const KeyPositions& key_positions, Index n_keys, Position query_position) {
    Index low = 0, high = n_keys;
    while (low < high) {
      const Index middle = low + (high - low) / 2;
      if (key_positions[middle] <= query_position)
        low = middle + 1;
      else
        high = middle;
    }
    return low;
  }

  // The softmax numerators of a row of (already scaled) scores over its first `count`
  // entries, exp(score - max) (the max is subtracted first, so exp never overflows), in
  // place; the entries after them, masked by causality, become exact zeros. Returns 1 / the
  // sum of the numerators (0 when count is 0): the caller scales the weighted sum of values
  // by it, so the row itself is never divided.
  template <class Row>
  static T softmax_numerators(Row row, Index count) {
    row.tail(row.size() - count).setZero();
    if (count == 0) return T(0);
    auto seen = row.head(count);
    const T largest = seen.maxCoeff();
    seen.array() = (seen.array() - largest).exp();
    return T(1) / seen.sum();
  }

  // Builds the argument's name only on failure: the checks run on every decode step.
  template <class Matrix>
  static void require_shape(std::string_view where, std::string_view name, const Matrix& m,
                            Index rows, Index cols) {
    if (m.rows() != rows) detail::fail(where, std::string(name) + ".rows()", rows, m.rows());
    if (m.cols() != cols) detail::fail(where, std::string(name) + ".cols()", cols, m.cols());
  }

  static const AttentionConfig& checked(const AttentionConfig& config) {
    constexpr std::string_view where = "Attention";
    if (config.d_model < 1) detail::fail(where, "config.d_model", ">= 1", config.d_model);
    if (config.n_heads < 1) detail::fail(where, "config.n_heads", ">= 1", config.n_heads);
    if (config.n_kv_heads < 1) detail::fail(where, "config.n_kv_heads", ">= 1", config.n_kv_heads);
    if (config.n_heads % config.n_kv_heads != 0)
      detail::fail(where, "config.n_heads",
                   "a multiple of config.n_kv_heads (" + std::to_string(config.n_kv_heads) + ")",
                   config.n_heads);
    if (config.head_dim < 2 || config.head_dim % 2 != 0)
      detail::fail(where, "config.head_dim", "an even number >= 2 (RoPE rotates pairs)",
                   config.head_dim);
    if (!(config.rope_theta > 0.0) || !std::isfinite(config.rope_theta))
      detail::fail(where, "config.rope_theta", "finite and > 0", config.rope_theta);
    // Checked in T, the type RMSNorm gets: 1e300 is inf in float (rows of zeros), 1e-50 is 0.
    const T eps = static_cast<T>(config.norm_eps);
    if (!(eps > T(0)) || !std::isfinite(eps))
      detail::fail(where, "config.norm_eps", "finite and > 0 in the layer's scalar type", config.norm_eps);
    return config;
  }

  static RMSNorm<T> checked_norm(const AttentionConfig& config, const AttentionWeights<T>& w) {
    constexpr std::string_view where = "Attention";
    const Index d = config.d_model, q = config.query_width(), kv = config.kv_width();
    constexpr std::string_view q_source = "config.n_heads * config.head_dim";
    constexpr std::string_view kv_source = "config.n_kv_heads * config.head_dim";
    detail::require_dimension(where, "weights.norm.size()", d, "config.d_model", w.norm.size());
    detail::require_dimension(where, "weights.query.rows()", d, "config.d_model", w.query.rows());
    detail::require_dimension(where, "weights.query.cols()", q, q_source, w.query.cols());
    detail::require_dimension(where, "weights.key.rows()", d, "config.d_model", w.key.rows());
    detail::require_dimension(where, "weights.key.cols()", kv, kv_source, w.key.cols());
    detail::require_dimension(where, "weights.value.rows()", d, "config.d_model", w.value.rows());
    detail::require_dimension(where, "weights.value.cols()", kv, kv_source, w.value.cols());
    detail::require_dimension(where, "weights.output.rows()", q, q_source, w.output.rows());
    detail::require_dimension(where, "weights.output.cols()", d, "config.d_model", w.output.cols());
    return RMSNorm<T>(w.norm, static_cast<T>(config.norm_eps));
  }

  AttentionConfig config_;
  AttentionWeights<T> weights_;
  RMSNorm<T> norm_;
  RotaryEmbedding<T> rotary_;
};

}  // namespace mixdepth::layers
