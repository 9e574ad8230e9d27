#pragma once
// select_top_k: the k highest-scoring tokens of every sequence, in ascending positions.
#include <span>
#include <string>
#include <vector>

#include "kernels/dispatch.hpp"
#include "kernels/topk_portable.hpp"
#include "types.hpp"

namespace mixdepth {

// Scratch for select_top_k, reused across calls (one per thread). Once it has seen the
// longest sequence, select_top_k allocates nothing.
template <class T>
class TopKScratch {
 public:
  using Key = kernels::rank_key_t<T>;

  // Grows the buffer for sequences of up to seq_len tokens.
  void reserve(Index seq_len) {
    if (seq_len < 0) detail::fail("TopKScratch::reserve", "seq_len", ">= 0", seq_len);
    const auto need = static_cast<std::size_t>(kernels::top_k_scratch_size<T>(seq_len));
    if (keys_.size() < need) keys_.resize(need);
  }
  // The kernel's scratch for a sequence of seq_len tokens (grown if needed).
  Key* keys(Index seq_len) {
    reserve(seq_len);
    return keys_.data();
  }
  std::size_t bytes() const { return keys_.capacity() * sizeof(Key); }

 private:
  std::vector<Key> keys_;
};

namespace detail {

inline Index checked_top_k(std::string_view where, Shape shape, Index k, std::size_t out_size,
                           std::span<const Index> lengths) {
  checked_rows(where, shape);
  if (k < 0) fail(where, "k", ">= 0", k);
  const Index kept = k < shape.seq_len ? k : shape.seq_len;
  if (static_cast<Index>(out_size) != shape.batch * kept)
    fail(where, "out.size()",
         std::to_string(shape.batch * kept) + " (shape.batch * min(k, shape.seq_len))", out_size);
  check_lengths(where, shape, lengths);
  return kept;
}

}  // namespace detail

namespace detail {

// One sequence, arguments already checked: the kernel choice lives in kernels::dispatched.
// The defaulted Arch keeps units compiled with different -m flags apart (see dispatch.hpp).
template <class T, class Arch = kernels::entry_arch>
void top_k_unchecked(const T* scores, Index n, Index valid, Index k, Position* out,
                     TopKScratch<T>& scratch) {
  kernels::dispatched::top_k<T, Arch>(scores, n, valid, k, out, scratch.keys(n));
}

}  // namespace detail

// For every sequence b of `shape`, writes to out[b*k', (b+1)*k') the positions (within the
// sequence) of its k' = min(k, seq_len) highest scores, in ascending order. Ties go to the
// lower position, -0.0 equals +0.0, NaN ranks below every number, and positions
// >= lengths[b] are padding, taken only after every valid token, lowest first.
// Throws mixdepth::Error (writing nothing) when scores.size() != shape.rows(), k < 0,
// out.size() != shape.batch * k', or lengths is neither empty nor one length in [0, seq_len]
// per sequence.
template <class T, class Arch = kernels::entry_arch>
void select_top_k(std::span<const T> scores, Shape shape, Index k, std::span<Position> out,
                  std::span<const Index> lengths, TopKScratch<T>& scratch) {
  constexpr std::string_view where = "select_top_k";
  const Index kept = detail::checked_top_k(where, shape, k, out.size(), lengths);
  if (static_cast<Index>(scores.size()) != shape.rows())
    detail::fail(where, "scores.size()", std::to_string(shape.rows()) + " (shape.batch * shape.seq_len)",
                 scores.size());
  if (kept == 0) return;
  for (Index b = 0; b < shape.batch; ++b) {
    const Index valid = lengths.empty() ? shape.seq_len : lengths[b];
    detail::top_k_unchecked<T, Arch>(scores.data() + b * shape.seq_len, shape.seq_len, valid, kept,
                            out.data() + b * kept, scratch);
  }
}

template <class T, class Arch = kernels::entry_arch>
void select_top_k(std::span<const T> scores, Shape shape, Index k, std::span<Position> out,
                  std::span<const Index> lengths = {}) {
  TopKScratch<T> scratch;
  select_top_k<T, Arch>(scores, shape, k, out, lengths, scratch);
}

}  // namespace mixdepth
