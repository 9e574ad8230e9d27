#pragma once
// What a block function receives (Routed), what it must be (BlockFunction), and the usual
// composition of attention then MLP (sequential).
#include <concepts>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>

#include "arena.hpp"
#include "types.hpp"

namespace mixdepth {

// The routed rows of a batch. Sequence b owns rows [offsets[b], offsets[b+1]) of x, in
// ascending position order; positions[j] is row j's position in its own sequence (RoPE and
// causal masks need it). Padding is never routed, so counts may differ between sequences.
template <class T>
struct Routed {
  MatrixCRef<T> x;                       // [n, d]
  std::span<const Position> positions;   // [n]
  std::span<const Index> offsets;        // [batch + 1], offsets[0] == 0, offsets[batch] == n
  Arena<T>* scratch = nullptr;           // scratch for the function; null: bring your own

  Index rows() const { return x.rows(); }
  Index batch() const { return offsets.empty() ? 0 : static_cast<Index>(offsets.size()) - 1; }
  Index count(Index b) const { return offsets[b + 1] - offsets[b]; }
};

// A block function writes f_i, the residual-free update, for every routed row: out has the
// shape of routed.x. It must not keep references to either after it returns.
template <class F, class T>
concept BlockFunction = std::invocable<F&, const Routed<T>&, MatrixRef<T>>;

namespace detail {

// The arena a block function should use: the caller's, or a local one it owns.
template <class T>
class ScratchScope {
 public:
  explicit ScratchScope(Arena<T>* given) : arena_(given) {
    if (arena_ == nullptr) arena_ = &own_.emplace();
    mark_ = arena_->mark();
  }
  ~ScratchScope() { arena_->rewind(mark_); }
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;
  Arena<T>& operator*() const { return *arena_; }
  Arena<T>* operator->() const { return arena_; }
  Arena<T>* get() const { return arena_; }

 private:
  std::optional<Arena<T>> own_;
  Arena<T>* arena_;
  typename Arena<T>::Mark mark_{};
};

// A block function that can take back what a call changed besides its output (CachedAttention
// drops the tokens it appended), for a composition that fails after it returned.
template <class F, class T>
concept UndoesCall = requires(F& f, const Routed<T>& in) { f.undo(in); };

// A block function that states the width of the rows it takes (the reference layers do).
template <class F>
concept StatesWidth = requires(const F& f) {
  { f.dim() } -> std::convertible_to<Index>;
};

}  // namespace detail

// f = a + m(x~ + a) with a = attn(x~): a pre-norm transformer block's two residual branches,
// returned residual-free so that Block applies Eq. 1 exactly once.
//
// attn runs before mlp sees its input, so an mlp that rejects that input throws after attn
// has written `out`. If attn has undo(in) (CachedAttention: the tokens it appended to its
// cache), anything that throws after attn returned calls it before the exception goes on, so
// that a Block over a CachedAttention leaves its cache as it was. undo is looked up with the
// constness of the call: called through a const Sequential (a const Block), attn's undo must
// be const (CachedAttention's is). An undo that throws replaces the exception in flight.
// Sequential has undo itself when attn or mlp has (it undoes mlp, then attn), so a Sequential
// nested as another's attn is taken back too. When both state their width (dim()), the
// constructor checks that they agree; functions that do not are trusted to.
template <class Attn, class Mlp>
class Sequential {
 public:
  // Throws mixdepth::Error if attn and mlp both state their width and the widths differ.
  Sequential(Attn attn, Mlp mlp) : attn_(std::move(attn)), mlp_(std::move(mlp)) {
    if constexpr (detail::StatesWidth<Attn> && detail::StatesWidth<Mlp>)
      detail::require_equal("sequential", "mlp.dim() (the attention's width)", Index(attn_.dim()), Index(mlp_.dim()));
  }

  template <class T>
  void operator()(const Routed<T>& in, std::type_identity_t<MatrixRef<T>> out) const {
    run(attn_, mlp_, in, out);
  }
  template <class T>
  void operator()(const Routed<T>& in, std::type_identity_t<MatrixRef<T>> out) {
    run(attn_, mlp_, in, out);
  }

  // Takes back what a call with `in` changed besides its output: mlp's undo(in), then attn's
  // (mlp saw in's positions and offsets too), for those that have one.
  template <class T>
    requires(detail::UndoesCall<const Attn, T> || detail::UndoesCall<const Mlp, T>)
  void undo(const Routed<T>& in) const {
    undo_parts(attn_, mlp_, in);
  }
  template <class T>
    requires(detail::UndoesCall<Attn, T> || detail::UndoesCall<Mlp, T>)
  void undo(const Routed<T>& in) {
    undo_parts(attn_, mlp_, in);
  }

  Attn& attention() { return attn_; }
  const Attn& attention() const { return attn_; }
  Mlp& mlp() { return mlp_; }
  const Mlp& mlp() const { return mlp_; }

 private:
  template <class A, class M, class T>
  static void undo_parts(A& attn, M& mlp, const Routed<T>& in) {
    if constexpr (detail::UndoesCall<M, T>) mlp.undo(in);
    if constexpr (detail::UndoesCall<A, T>) attn.undo(in);
  }

  template <class A, class M, class T>
  static void run(A& attn, M& mlp, const Routed<T>& in, MatrixRef<T> out) {
    detail::require_equal("sequential", "out.rows()", in.x.rows(), out.rows());
    detail::require_equal("sequential", "out.cols()", in.x.cols(), out.cols());
    detail::ScratchScope<T> scratch(in.scratch);
    attn(in, out);  // out = a
    try {
      auto hidden = scratch->matrix(in.x.rows(), in.x.cols());
      hidden.noalias() = in.x + out;
      auto mlp_out = scratch->matrix(in.x.rows(), in.x.cols());
      const Routed<T> mlp_in{hidden, in.positions, in.offsets, scratch.get()};
      mlp(mlp_in, mlp_out);
      out += mlp_out;  // a + m(x~ + a)
    } catch (...) {
      if constexpr (detail::UndoesCall<A, T>) attn.undo(in);
      throw;
    }
  }

  Attn attn_;
  Mlp mlp_;
};

template <class Attn, class Mlp>
auto sequential(Attn attn, Mlp mlp) {
  return Sequential<Attn, Mlp>(std::move(attn), std::move(mlp));
}

}  // namespace mixdepth
