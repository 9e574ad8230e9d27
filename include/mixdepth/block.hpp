#pragma once
// Block<T, F>: the Mixture-of-Depths block of Eq. 1 around a user-supplied block function.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <utility>

#include "capacity.hpp"
#include "causal.hpp"
#include "gate.hpp"
#include "gather.hpp"
#include "routed.hpp"
#include "router.hpp"
#include "topk.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace mixdepth {

namespace detail {

// Where each sequence's first row sits in its whole sequence: empty (0 for all) or one
// start per sequence, so that start + seq_len fits a Position.
inline void check_starts(std::string_view where, Shape shape, std::span<const Index> starts) {
  if (starts.empty()) return;
  if (static_cast<Index>(starts.size()) != shape.batch)
    fail(where, "start_positions.size()", std::to_string(shape.batch) + " (shape.batch) or 0",
         starts.size());
  const Index limit = Index{std::numeric_limits<Position>::max()} - shape.seq_len;
  for (std::size_t b = 0; b < starts.size(); ++b)
    if (starts[b] < 0 || starts[b] > limit)
      fail(where, "start_positions[" + std::to_string(b) + "]",
           "in [0, " + std::to_string(limit) + "]", starts[b]);
}

// The forward pass shared by every Block entry point. Every check has run before it starts;
// nothing is written to y before the block function has returned. Arch (the unit's own
// kernels) is in every name here: these functions are not templates over the block function,
// so units compiled with different -m flags that instantiate blocks of different functions
// would otherwise share one copy, whose kernel calls (and, inlined, whose kernels) are one
// unit's instruction set (tests/package/odr/check_shared_code.sh).
template <class Arch>
struct BlockForward {
  // Starts a forward of `shape` with rows of d numbers and capacity k. The workspace first
  // forgets the last forward's rows, so that when anything after this throws (an
  // allocation, a causal rule, f) its accessors view no rows of the old count over buffers
  // sized for the new width.
  template <class T>
  static void begin(Workspace<T>& ws, Shape shape, Index d, Index k, Index logit_rows) {
    ws.routed_ = 0;
    ws.routed_x_rows_ = 0;
    ws.logit_rows_ = 0;
    ws.reserve(shape, d, k);
    ws.shape_ = shape;
    ws.k_ = k;
    ws.dim_ = d;
    ws.logit_rows_ = logit_rows;
  }

  template <class T>
  static void score(const Router<T>& router, MatrixCRef<T> x, Shape shape, Workspace<T>& ws,
                    Index k) {
    begin(ws, shape, router.dim(), k, shape.rows());
    if (shape.rows() == 0) return;
    // Per sequence (rows are independent: the same logits at any thread count).
    for_each_sequence(ws, shape.batch, [&](Index b, int) {
      Eigen::Map<Vector<T>> logits(ws.logits_.data() + b * shape.seq_len, shape.seq_len);
      router.template score<Arch>(x.middleRows(b * shape.seq_len, shape.seq_len), logits);
    });
  }

  // task(b, thread) for every sequence b, on the workspace's thread pool if it has one.
  template <class T, class Task>
  static void for_each_sequence(Workspace<T>& ws, Index batch, Task&& task) {
    for_each_item(ws.pool_, batch, [&](std::int64_t b, int thread) { task(Index(b), thread); });
  }

  template <class T>
  static std::span<const T> logits(const Workspace<T>& ws) {
    return {ws.logits_.data(), std::size_t(ws.shape_.rows())};
  }

  // Routes the top k of every sequence (section 1 of the contract).
  template <class T>
  static void select_top_k_rows(Workspace<T>& ws, std::span<const Index> lengths,
                                std::span<const Index> starts, Gate gate) {
    const Shape shape = ws.shape_;
    const Index k = ws.k_;
    Position* selected = ws.selected_.data();
    if (k > 0)  // k <= seq_len here (capacity tokens never exceed it)
      for_each_sequence(ws, shape.batch, [&](Index b, int thread) {
        const Index valid = lengths.empty() ? shape.seq_len : lengths[b];
        top_k_unchecked<T, Arch>(ws.logits_.data() + b * shape.seq_len, shape.seq_len, valid, k, selected + b * k,
                        ws.top_k_scratch_[std::size_t(thread)]);
      });
    Index n = 0;
    ws.offsets_[0] = 0;
    for (Index b = 0; b < shape.batch; ++b) {
      const Index valid = lengths.empty() ? shape.seq_len : lengths[b];
      // Padding is a suffix of each sequence's (ascending) selection and is never routed.
      for (Index j = 0; j < k; ++j) {
        const Position p = selected[b * k + j];
        if (p >= valid) break;
        add_row(ws, n++, b, p, starts, gate);
      }
      ws.offsets_[std::size_t(b + 1)] = n;
    }
    ws.routed_ = n;
  }

  // Routes every valid token the causal rule accepts (section 2 of the contract).
  template <class T, class Rule>
  static void select_causal_rows(Workspace<T>& ws, MatrixCRef<T> x, const Rule& rule,
                                 std::span<const Index> lengths, std::span<const Index> starts,
                                 Gate gate) {
    const Shape shape = ws.shape_;
    std::span<std::uint8_t> decisions(ws.decisions_.data(), std::size_t(shape.rows()));
    ws.arena_.reset();
    rule.route(x, logits(ws), decisions, ws.arena_);
    ws.arena_.reset();
    Index n = 0;
    ws.offsets_[0] = 0;
    for (Index b = 0; b < shape.batch; ++b) {
      const Index valid = lengths.empty() ? shape.seq_len : lengths[b];
      for (Index p = 0; p < valid; ++p)
        if (decisions[std::size_t(b * shape.seq_len + p)]) add_row(ws, n++, b, Position(p), starts, gate);
      ws.offsets_[std::size_t(b + 1)] = n;
    }
    ws.routed_ = n;
    ws.k_ = 0;  // no top-k selection in this mode
  }

  template <class T>
  static void add_row(Workspace<T>& ws, Index j, Index b, Position p, std::span<const Index> starts,
                      Gate gate) {
    const auto row = static_cast<Position>(b * ws.shape_.seq_len + p);
    ws.routed_rows_[std::size_t(j)] = row;
    ws.routed_positions_[std::size_t(j)] =
        static_cast<Position>(p + (starts.empty() ? Index{0} : starts[std::size_t(b)]));
    ws.gates_[std::size_t(j)] = apply_gate(gate, ws.logits_[std::size_t(row)]);
  }

  // y = x + f(x) on every valid row (see forward_dense).
  template <class T, class F>
  static void dense(F& f, MatrixCRef<T> x, Shape shape, T* y_data, Index y_stride,
                    Workspace<T>& ws, std::span<const Index> lengths, std::span<const Index> starts) {
    const Index d = x.cols();
    begin(ws, shape, d, shape.seq_len, 0);  // no router, no logits
    ws.k_ = 0;
    Index n = 0;
    ws.offsets_[0] = 0;
    for (Index b = 0; b < shape.batch; ++b) {
      const Index valid = lengths.empty() ? shape.seq_len : lengths[b];
      for (Index p = 0; p < valid; ++p) {
        ws.routed_rows_[std::size_t(n)] = static_cast<Position>(b * shape.seq_len + p);
        ws.routed_positions_[std::size_t(n)] =
            static_cast<Position>(p + (starts.empty() ? Index{0} : starts[std::size_t(b)]));
        ws.gates_[std::size_t(n)] = T(1);
        ++n;
      }
      ws.offsets_[std::size_t(b + 1)] = n;
    }
    ws.routed_ = n;
    const bool padded = n != shape.rows();
    ws.routed_x_rows_ = padded ? n : 0;
    // Without padding f reads x in place; with it, the valid rows are gathered first.
    if (padded && n > 0 && d > 0)
      for_each_sequence(ws, shape.batch, [&](Index b, int) {
        const Index first = ws.offsets_[std::size_t(b)], count = ws.offsets_[std::size_t(b + 1)] - first;
        gather_rows_unchecked<T, Arch>(x.data(), x.outerStride(), ws.routed_rows_.data() + first, count, d,
                              ws.routed_x_.data() + first * d, d);
      });
    const MatrixCRef<T> routed_x =
        padded ? MatrixCRef<T>(ConstRowMatrixMap<T>(ws.routed_x_.data(), n, d)) : x;
    RowMatrixMap<T> update(ws.update_.data(), n, d);
    ws.arena_.reset();
    const Routed<T> routed{routed_x,
                           std::span<const Position>(ws.routed_positions_.data(), std::size_t(n)),
                           std::span<const Index>(ws.offsets_.data(), std::size_t(shape.batch + 1)),
                           &ws.arena_};
    f(routed, MatrixRef<T>(update));
    ws.arena_.reset();
    write_output(x, y_data, y_stride, ws);
  }

  // Gathers the routed rows, runs f on them, and writes y (Eq. 1).
  template <class T, class F>
  static void apply(F& f, MatrixCRef<T> x, T* y_data, Index y_stride, Workspace<T>& ws) {
    const Index n = ws.routed_;
    const Index d = ws.dim_;
    const Index batch = ws.shape_.batch;
    if (n > 0 && d > 0)
      for_each_sequence(ws, batch, [&](Index b, int) {
        const Index first = ws.offsets_[std::size_t(b)], count = ws.offsets_[std::size_t(b + 1)] - first;
        gather_rows_unchecked<T, Arch>(x.data(), x.outerStride(), ws.routed_rows_.data() + first, count, d,
                              ws.routed_x_.data() + first * d, d);
      });
    ws.arena_.reset();
    ws.routed_x_rows_ = n;
    ConstRowMatrixMap<T> routed_x(ws.routed_x_.data(), n, d);
    RowMatrixMap<T> update(ws.update_.data(), n, d);
    const Routed<T> routed{routed_x,
                           std::span<const Position>(ws.routed_positions_.data(), std::size_t(n)),
                           std::span<const Index>(ws.offsets_.data(), std::size_t(batch + 1)),
                           &ws.arena_};
    f(routed, MatrixRef<T>(update));
    // Consolidate now: if f needed more scratch than ever before, the one allocation that
    // merges it happens here, not in the next (otherwise allocation-free) forward.
    ws.arena_.reset();
    write_output(x, y_data, y_stride, ws);
  }

  // y_i = x_i on the rows that are not routed (nothing to do in place), and
  // y_i = x_i + g_i f_i on the routed ones; one sequence at a time (its rows and routed rows
  // are its own).
  template <class T>
  static void write_output(MatrixCRef<T> x, T* y_data, Index y_stride, Workspace<T>& ws) {
    const Index d = ws.dim_, seq_len = ws.shape_.seq_len;
    if (d == 0) return;
    for_each_sequence(ws, ws.shape_.batch, [&](Index b, int) {
      const Index first = ws.offsets_[std::size_t(b)], count = ws.offsets_[std::size_t(b + 1)] - first;
      if (y_data != x.data())
        copy_unrouted_rows(x, y_data, y_stride, d, b * seq_len, (b + 1) * seq_len,
                           std::span<const Position>(ws.routed_rows_.data() + first, std::size_t(count)));
      if (count > 0)
        scatter_gated_unchecked<T, Arch>(x.data(), x.outerStride(), y_data, y_stride, ws.routed_rows_.data() + first,
                                count, d, ws.update_.data() + first * d, d, ws.gates_.data() + first);
    });
  }

  // y row r = x row r for r in [begin, end) except the routed rows (ascending and distinct,
  // as every selection writes them), which the scatter writes whole: each run of rows between
  // two routed ones is one copy when both matrices' rows are contiguous.
  template <class T>
  static void copy_unrouted_rows(MatrixCRef<T> x, T* y_data, Index y_stride, Index d, Index begin, Index end,
                                 std::span<const Position> routed) {
    const Index x_stride = x.outerStride();
    const bool contiguous = x_stride == d && y_stride == d;
    auto copy = [&](Index from, Index to) {
      if (from >= to) return;
      if (contiguous) {
        std::memcpy(y_data + from * d, x.data() + from * d, sizeof(T) * std::size_t((to - from) * d));
      } else {
        for (Index r = from; r < to; ++r)
          std::memcpy(y_data + r * y_stride, x.data() + r * x_stride, sizeof(T) * std::size_t(d));
      }
    };
    Index next = begin;  // the first row not yet written
    for (const Position row : routed) {
      copy(next, Index(row));
      next = Index(row) + 1;
    }
    copy(next, end);
  }
};

}  // namespace detail

// A Mixture-of-Depths block. For every sequence, the router scores each token, the top k =
// capacity(seq_len) tokens go through f (as one Routed batch), and
//   y_i = x_i + g(r_i) * f_i   for routed tokens,   y_i = x_i (bit for bit) for the others.
// f must be callable as f(const Routed<T>&, MatrixRef<T> out); it writes the residual-free
// update. Const calls need f to be const-callable; a const block may be used from several
// threads at once when each thread passes its own workspace and f itself may be called
// concurrently (not so a layers::CachedAttention, whose const call appends to its cache).
//
// forward_causal routes by a causal rule instead of top-k (decoding; README.md, Semantics):
// each sequence then routes its own number of tokens. Its start_positions give each
// sequence's position of its first row (a decode step passes the tokens already seen), so
// that f still sees original positions.
//
// Arch: the kernels' instruction set, this unit's by default; leave it so. It puts the unit's
// instruction set into the type, so that units compiled with different -m flags each keep
// their own Block<T, F> code (the same block type across such units would be one inline
// definition for the linker, with one unit's kernels in it).
template <class T, BlockFunction<T> F, class Arch = kernels::entry_arch>
class Block {
  static constexpr bool const_callable = std::invocable<const F&, const Routed<T>&, MatrixRef<T>>;

 public:
  Block(Router<T> router, Capacity capacity, F f, Gate gate = Gate::identity)
      : router_(std::move(router)), capacity_(capacity), f_(std::move(f)), gate_(gate) {}

  // y = MoD(x). y must have x's shape and must not overlap x. lengths: empty, or one valid
  // length per sequence (later positions are padding and come through unchanged).
  void forward(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
               std::span<const Index> lengths = {}) {
    forward_impl(f_, x, shape, y, ws, lengths);
  }
  void forward(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
               std::span<const Index> lengths = {}) const
    requires const_callable
  {
    forward_impl(f_, x, shape, y, ws, lengths);
  }

  // x = MoD(x): only the routed rows are written.
  void forward_inplace(MatrixRef<T> x, Shape shape, Workspace<T>& ws,
                       std::span<const Index> lengths = {}) {
    forward_inplace_impl(f_, x, shape, ws, lengths);
  }
  void forward_inplace(MatrixRef<T> x, Shape shape, Workspace<T>& ws,
                       std::span<const Index> lengths = {}) const
    requires const_callable
  {
    forward_inplace_impl(f_, x, shape, ws, lengths);
  }

  // y = MoD(x) with every valid token routed when `rule` says so (no top-k, no capacity).
  template <CausalRule<T> Rule>
  void forward_causal(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
                      const Rule& rule, std::span<const Index> lengths = {},
                      std::span<const Index> start_positions = {}) {
    forward_causal_impl(f_, x, shape, y, ws, rule, lengths, start_positions);
  }
  template <CausalRule<T> Rule>
  void forward_causal(MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
                      const Rule& rule, std::span<const Index> lengths = {},
                      std::span<const Index> start_positions = {}) const
    requires const_callable
  {
    forward_causal_impl(f_, x, shape, y, ws, rule, lengths, start_positions);
  }

  const Router<T>& router() const { return router_; }
  Router<T>& router() { return router_; }
  const Capacity& capacity() const { return capacity_; }
  Gate gate() const { return gate_; }
  F& function() { return f_; }
  const F& function() const { return f_; }

 private:
  using Forward = detail::BlockForward<Arch>;

  void check_input(std::string_view where, MatrixCRef<T> x, Shape shape,
                   std::span<const Index> lengths) const {
    const Index rows = detail::checked_rows(where, shape);
    detail::require_equal(where, "x.rows()", rows, x.rows());
    detail::require_equal(where, "x.cols()", router_.dim(), x.cols());
    detail::check_lengths(where, shape, lengths);
  }

  void check_output(std::string_view where, MatrixCRef<T> x, MatrixRef<T> y) const {
    detail::require_equal(where, "y.rows()", x.rows(), y.rows());
    detail::require_equal(where, "y.cols()", x.cols(), y.cols());
    if (detail::overlaps(x, y))
      detail::fail(where, "y", "memory disjoint from x (use forward_inplace)", "overlapping x");
  }

  template <class G>
  void forward_impl(G& f, MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
                    std::span<const Index> lengths) const {
    constexpr std::string_view where = "Block::forward";
    check_input(where, x, shape, lengths);
    check_output(where, x, y);
    run_top_k(f, x, shape, y.data(), y.outerStride(), ws, lengths);
  }

  template <class G>
  void forward_inplace_impl(G& f, MatrixRef<T> x, Shape shape, Workspace<T>& ws,
                            std::span<const Index> lengths) const {
    check_input("Block::forward_inplace", x, shape, lengths);
    run_top_k(f, MatrixCRef<T>(x), shape, x.data(), x.outerStride(), ws, lengths);
  }

  template <class G>
  void run_top_k(G& f, MatrixCRef<T> x, Shape shape, T* y_data, Index y_stride, Workspace<T>& ws,
                 std::span<const Index> lengths) const {
    Forward::score(router_, x, shape, ws, capacity_(shape.seq_len));
    Forward::select_top_k_rows(ws, lengths, {}, gate_);
    Forward::apply(f, x, y_data, y_stride, ws);
  }

  template <class G, class Rule>
  void forward_causal_impl(G& f, MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
                           const Rule& rule, std::span<const Index> lengths,
                           std::span<const Index> starts) const {
    constexpr std::string_view where = "Block::forward_causal";
    check_input(where, x, shape, lengths);
    check_output(where, x, y);
    detail::check_starts(where, shape, starts);
    Forward::score(router_, x, shape, ws, shape.seq_len);
    Forward::select_causal_rows(ws, x, rule, lengths, starts, gate_);
    Forward::apply(f, x, y.data(), y.outerStride(), ws);
  }

  Router<T> router_;
  Capacity capacity_;
  F f_;
  Gate gate_;
};

// The dense (non-MoD) transformer block, y = x + f(x) on every valid row: the baseline a MoD
// block is measured against, through the same plumbing (f sees all rows at their positions).
// Padding rows (positions >= lengths[b]) are not given to f and come through unchanged.
// y may be x itself (in place) but must not partially overlap it.
// start_positions (empty, or one per sequence) offset the positions f sees, as in
// Block::forward_causal: a decode step passes the tokens each sequence has seen.
template <class T, BlockFunction<T> F, class Arch = kernels::entry_arch>
void forward_dense(F& f, MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
                   std::span<const Index> lengths = {}, std::span<const Index> start_positions = {}) {
  constexpr std::string_view where = "forward_dense";
  const Index rows = detail::checked_rows(where, shape);
  detail::require_equal(where, "x.rows()", rows, x.rows());
  detail::require_equal(where, "y.rows()", rows, y.rows());
  detail::require_equal(where, "y.cols()", x.cols(), y.cols());
  if (x.data() != y.data() && detail::overlaps(x, y))
    detail::fail(where, "y", "x itself or memory disjoint from x", "a partial overlap");
  if (x.data() == y.data() && x.outerStride() != y.outerStride())
    detail::fail(where, "y.outerStride()", x.outerStride(), y.outerStride());
  detail::check_lengths(where, shape, lengths);
  detail::check_starts(where, shape, start_positions);
  detail::BlockForward<Arch>::dense(f, x, shape, y.data(), y.outerStride(), ws, lengths, start_positions);
}

}  // namespace mixdepth
