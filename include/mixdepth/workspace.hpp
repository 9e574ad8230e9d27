#pragma once
// Workspace<T>: every scratch buffer of a Block's forward, owned by the caller. Buffers only
// grow, so once a workspace has seen the largest shape a forward allocates nothing. One
// workspace per thread; after a forward it still holds what that forward routed (logits,
// selected positions, update), which a backward pass reads instead of recomputing.
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "arena.hpp"
#include "thread_pool.hpp"
#include "topk.hpp"
#include "types.hpp"

namespace mixdepth {

namespace detail {
template <class Arch>
struct BlockForward;
}

template <class T>
class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // A moved-from workspace is empty, as a new one: its accessors return empty views and its
  // next forward grows its buffers again. (Defaulted moves would leave the counters of the
  // last forward beside emptied buffers.)
  Workspace(Workspace&& other) noexcept
      : shape_(std::exchange(other.shape_, Shape{})),
        k_(std::exchange(other.k_, 0)),
        dim_(std::exchange(other.dim_, 0)),
        routed_(std::exchange(other.routed_, 0)),
        logit_rows_(std::exchange(other.logit_rows_, 0)),
        routed_x_rows_(std::exchange(other.routed_x_rows_, 0)),
        logits_(std::move(other.logits_)),
        selected_(std::move(other.selected_)),
        routed_rows_(std::move(other.routed_rows_)),
        routed_positions_(std::move(other.routed_positions_)),
        offsets_(std::move(other.offsets_)),
        gates_(std::move(other.gates_)),
        routed_x_(std::move(other.routed_x_)),
        update_(std::move(other.update_)),
        decisions_(std::move(other.decisions_)),
        top_k_scratch_(std::move(other.top_k_scratch_)),
        arena_(std::move(other.arena_)),
        pool_(std::exchange(other.pool_, nullptr)) {}
  Workspace& operator=(Workspace&& other) noexcept {
    if (this == &other) return *this;
    shape_ = std::exchange(other.shape_, Shape{});
    k_ = std::exchange(other.k_, 0);
    dim_ = std::exchange(other.dim_, 0);
    routed_ = std::exchange(other.routed_, 0);
    logit_rows_ = std::exchange(other.logit_rows_, 0);
    routed_x_rows_ = std::exchange(other.routed_x_rows_, 0);
    logits_ = std::exchange(other.logits_, {});
    selected_ = std::exchange(other.selected_, {});
    routed_rows_ = std::exchange(other.routed_rows_, {});
    routed_positions_ = std::exchange(other.routed_positions_, {});
    offsets_ = std::exchange(other.offsets_, {});
    gates_ = std::exchange(other.gates_, {});
    routed_x_ = std::exchange(other.routed_x_, {});
    update_ = std::exchange(other.update_, {});
    decisions_ = std::exchange(other.decisions_, {});
    top_k_scratch_ = std::exchange(other.top_k_scratch_, {});
    arena_ = std::move(other.arena_);
    pool_ = std::exchange(other.pool_, nullptr);
    return *this;
  }

  // What the last forward computed.
  Shape shape() const { return shape_; }
  // Tokens selected per sequence by top-k, padding included (0 after a causal forward).
  Index k() const { return k_; }
  // Router logits of every row, [shape.rows()]; empty after forward_dense (no router).
  std::span<const T> logits() const { return {logits_.data(), size(logit_rows_)}; }
  // select_top_k output: k positions per sequence, ascending, padding included.
  std::span<const Position> selected() const { return {selected_.data(), size(shape_.batch * k_)}; }
  // The routed (non-padding) rows as global row indices b * seq_len + position, [n].
  std::span<const Position> routed_rows() const { return {routed_rows_.data(), size(routed_)}; }
  // Their positions within their sequences (plus the sequence's start position), [n].
  std::span<const Position> routed_positions() const {
    return {routed_positions_.data(), size(routed_)};
  }
  // Routed rows of sequence b: [offsets[b], offsets[b+1]), [batch + 1].
  std::span<const Index> offsets() const {
    return {offsets_.data(), size(shape_.batch + (offsets_.empty() ? 0 : 1))};
  }
  // g(r) of every routed row, [n].
  std::span<const T> gates() const { return {gates_.data(), size(routed_)}; }
  // The block function's inputs, [n, d] (empty after a forward_dense without padding: f
  // then read x in place), and its outputs f_i, [n, d].
  ConstRowMatrixMap<T> routed_x() const { return {routed_x_.data(), routed_x_rows_, dim_}; }
  ConstRowMatrixMap<T> update() const { return {update_.data(), routed_, dim_}; }

  // Scratch handed to the block function.
  Arena<T>& arena() { return arena_; }

  // Opt-in threads (thread_pool.hpp): forwards with this workspace spread their per-sequence
  // work over `pool` (null: none, the default). The pool must outlive its use here; results
  // do not depend on it.
  void set_thread_pool(ThreadPool* pool) {
    pool_ = pool;
    grow(top_k_scratch_, pool == nullptr ? 1 : pool->size());
  }
  ThreadPool* thread_pool() const { return pool_; }

  // Grows every buffer for this shape now, so that the first forward allocates nothing.
  // Throws mixdepth::Error on a negative shape, dim or k.
  void reserve(Shape shape, Index dim, Index k) {
    constexpr std::string_view where = "Workspace::reserve";
    detail::checked_rows(where, shape);
    if (dim < 0) detail::fail(where, "dim", ">= 0", dim);
    if (k < 0) detail::fail(where, "k", ">= 0", k);
    const Index kept = k < shape.seq_len ? k : shape.seq_len;
    grow(logits_, shape.rows());
    grow(selected_, shape.batch * kept);
    grow(routed_rows_, shape.batch * kept);
    grow(routed_positions_, shape.batch * kept);
    grow(offsets_, shape.batch + 1);
    grow(gates_, shape.batch * kept);
    grow(routed_x_, shape.batch * kept * dim);
    grow(update_, shape.batch * kept * dim);
    grow(decisions_, shape.rows());
    grow(top_k_scratch_, 1);
    for (auto& scratch : top_k_scratch_) scratch.reserve(shape.seq_len);
  }

 private:
  template <class Arch>
  friend struct detail::BlockForward;

  static std::size_t size(Index n) { return static_cast<std::size_t>(n); }
  template <class V>
  static void grow(V& v, Index n) {
    if (v.size() < size(n)) v.resize(size(n));
  }

  Shape shape_{};
  Index k_ = 0;
  Index dim_ = 0;
  Index routed_ = 0;
  Index logit_rows_ = 0;     // rows of logits_ the last forward wrote
  Index routed_x_rows_ = 0;  // rows of routed_x_ the last forward wrote
  std::vector<T> logits_;
  std::vector<Position> selected_;
  std::vector<Position> routed_rows_;
  std::vector<Position> routed_positions_;
  std::vector<Index> offsets_;
  std::vector<T> gates_;
  detail::LineAlignedVector<T> routed_x_;  // [n, d] rows, as x's start on a line
  detail::LineAlignedVector<T> update_;
  std::vector<std::uint8_t> decisions_;  // causal mode: the rule's decision per row
  std::vector<TopKScratch<T>> top_k_scratch_;  // one per pool thread
  Arena<T> arena_;
  ThreadPool* pool_ = nullptr;
  // A member added here must be added to the two moves above.
};

}  // namespace mixdepth
