#pragma once
// Block<T, F>: the Mixture-of-Depths block of Eq. 1 around a user-supplied block function.
#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <utility>

#include "capacity.hpp"
#include "gate.hpp"
#include "gather.hpp"
#include "routed.hpp"
#include "router.hpp"
#include "topk.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace mixdepth {

namespace detail {

// The forward pass shared by Block's const and non-const, out-of-place and in-place entry
// points. Every check runs before anything is written to y.
struct BlockForward {
  template <class T, class F>
  static void run(const Router<T>& router, const Capacity& capacity, Gate gate, F& f,
                  MatrixCRef<T> x, Shape shape, T* y_data, Index y_stride, Workspace<T>& ws,
                  std::span<const Index> lengths) {
    const Index d = router.dim();
    const Index k = capacity(shape.seq_len);
    route(router, k, gate, x, shape, ws, lengths);

    const Index n = ws.routed_;
    ws.arena_.reset();
    ConstRowMatrixMap<T> routed_x(ws.routed_x_.data(), n, d);
    RowMatrixMap<T> update(ws.update_.data(), n, d);
    const Routed<T> routed{routed_x,
                           std::span<const Position>(ws.routed_positions_.data(), std::size_t(n)),
                           std::span<const Index>(ws.offsets_.data(), std::size_t(shape.batch + 1)),
                           &ws.arena_};
    f(routed, MatrixRef<T>(update));
    // Consolidate now: if f needed more scratch than ever before, the one allocation that
    // merges it happens here, not in the next (otherwise allocation-free) forward.
    ws.arena_.reset();

    // y = x everywhere (a no-op in place), then y_i = x_i + g(r_i) f_i on routed rows.
    if (y_data != x.data()) {
      for (Index r = 0; r < x.rows(); ++r)
        std::memcpy(y_data + r * y_stride, x.data() + r * x.outerStride(), sizeof(T) * std::size_t(d));
    }
    if (n > 0)
      scatter_gated_unchecked(x.data(), x.outerStride(), y_data, y_stride, ws.routed_rows_.data(),
                              n, d, ws.update_.data(), d, ws.gates_.data());
  }

  // Scores, selects and gathers: fills ws with the routed batch.
  template <class T>
  static void route(const Router<T>& router, Index k, Gate gate, MatrixCRef<T> x, Shape shape,
                    Workspace<T>& ws, std::span<const Index> lengths) {
    const Index rows = shape.rows();
    const Index d = router.dim();
    ws.reserve(shape, d, k);
    ws.shape_ = shape;
    ws.k_ = k;
    ws.dim_ = d;
    Eigen::Map<Vector<T>> logits(ws.logits_.data(), rows);
    router.score(x, logits);
    std::span<Position> selected(ws.selected_.data(), std::size_t(shape.batch * k));
    select_top_k(std::span<const T>(ws.logits_.data(), std::size_t(rows)), shape, k, selected,
                 lengths, ws.top_k_scratch_);

    // Keep the valid (non-padding) selections: padding is a suffix of each sequence's list.
    Index n = 0;
    ws.offsets_[0] = 0;
    for (Index b = 0; b < shape.batch; ++b) {
      const Index valid = lengths.empty() ? shape.seq_len : lengths[b];
      for (Index j = 0; j < k; ++j) {
        const Position p = selected[std::size_t(b * k + j)];
        if (p >= valid) break;
        const auto row = static_cast<Position>(b * shape.seq_len + p);
        ws.routed_positions_[std::size_t(n)] = p;
        ws.routed_rows_[std::size_t(n)] = row;
        ws.gates_[std::size_t(n)] = apply_gate(gate, ws.logits_[std::size_t(row)]);
        ++n;
      }
      ws.offsets_[std::size_t(b + 1)] = n;
    }
    ws.routed_ = n;
    if (n > 0 && d > 0)
      gather_rows_unchecked(x.data(), x.outerStride(), ws.routed_rows_.data(), n, d,
                            ws.routed_x_.data(), d);
  }
};

}  // namespace detail

// A Mixture-of-Depths block. For every sequence, the router scores each token, the top k =
// capacity(seq_len) tokens go through f (as one Routed batch), and
//   y_i = x_i + g(r_i) * f_i   for routed tokens,   y_i = x_i (bit for bit) for the others.
// f must be callable as f(const Routed<T>&, MatrixRef<T> out); it writes the residual-free
// update. Const calls need f to be const-callable; a const block may be used from several
// threads at once when each thread passes its own workspace.
template <class T, BlockFunction<T> F>
class Block {
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
    requires std::invocable<const F&, const Routed<T>&, MatrixRef<T>>
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
    requires std::invocable<const F&, const Routed<T>&, MatrixRef<T>>
  {
    forward_inplace_impl(f_, x, shape, ws, lengths);
  }

  const Router<T>& router() const { return router_; }
  Router<T>& router() { return router_; }
  const Capacity& capacity() const { return capacity_; }
  Gate gate() const { return gate_; }
  F& function() { return f_; }
  const F& function() const { return f_; }

 private:
  void check_input(std::string_view where, MatrixCRef<T> x, Shape shape,
                   std::span<const Index> lengths) const {
    const Index rows = detail::checked_rows(where, shape);
    detail::require_equal(where, "x.rows()", rows, x.rows());
    detail::require_equal(where, "x.cols()", router_.dim(), x.cols());
    detail::check_lengths(where, shape, lengths);
  }

  template <class G>
  void forward_impl(G& f, MatrixCRef<T> x, Shape shape, MatrixRef<T> y, Workspace<T>& ws,
                    std::span<const Index> lengths) const {
    constexpr std::string_view where = "Block::forward";
    check_input(where, x, shape, lengths);
    detail::require_equal(where, "y.rows()", x.rows(), y.rows());
    detail::require_equal(where, "y.cols()", x.cols(), y.cols());
    if (detail::overlaps(x, y))
      detail::fail(where, "y", "memory disjoint from x (use forward_inplace)", "overlapping x");
    detail::BlockForward::run(router_, capacity_, gate_, f, x, shape, y.data(), y.outerStride(),
                              ws, lengths);
  }

  template <class G>
  void forward_inplace_impl(G& f, MatrixRef<T> x, Shape shape, Workspace<T>& ws,
                            std::span<const Index> lengths) const {
    constexpr std::string_view where = "Block::forward_inplace";
    check_input(where, x, shape, lengths);
    detail::BlockForward::run(router_, capacity_, gate_, f, MatrixCRef<T>(x), shape, x.data(),
                              x.outerStride(), ws, lengths);
  }

  Router<T> router_;
  Capacity capacity_;
  F f_;
  Gate gate_;
};

}  // namespace mixdepth
