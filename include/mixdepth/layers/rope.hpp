#pragma once
// RotaryEmbedding: rotary position embedding (RoPE) in the "rotate-half" convention of Llama
// and Hugging Face transformers. Within each head of even size head_dim, with
// half = head_dim / 2, component i < half pairs with component i + half, and the pair rotates
// by the angle  position * theta^(-2 i / head_dim):
//   x'[i]        = x[i]        * cos(angle) - x[i + half] * sin(angle)
//   x'[i + half] = x[i + half] * cos(angle) + x[i]        * sin(angle)
// The angle is the token's ORIGINAL position in its sequence, never its index among the
// routed rows: a query-key score then depends on the difference of their positions only.
#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../arena.hpp"
#include "../kernels/rotary.hpp"
#include "../routed.hpp"
#include "../types.hpp"
#include "positions.hpp"

namespace mixdepth::layers {

template <class T>
class RotaryEmbedding {
 public:
  // head_dim even and >= 2, theta > 0 (10000 in the original transformer and Llama 2).
  RotaryEmbedding(Index head_dim, double theta) : head_dim_(head_dim), theta_(theta) {
    constexpr std::string_view where = "RotaryEmbedding";
    if (head_dim < 2 || head_dim % 2 != 0)
      detail::fail(where, "head_dim", "an even number >= 2", head_dim);
    if (!(theta > 0.0) || !std::isfinite(theta)) detail::fail(where, "theta", "finite and > 0", theta);
    inverse_frequency_.resize(static_cast<std::size_t>(head_dim / 2));
    for (Index i = 0; i < head_dim / 2; ++i)
      inverse_frequency_[std::size_t(i)] =
          std::pow(theta, -static_cast<double>(2 * i) / static_cast<double>(head_dim));
  }

  Index head_dim() const { return head_dim_; }
  double theta() const { return theta_; }
  // theta^(-2 i / head_dim), the angular speed of pair i.
  double inverse_frequency(Index i) const { return inverse_frequency_[std::size_t(i)]; }

  // Rotates every head of every row in place: rows is [n, heads * head_dim] and row j sits at
  // positions[j]. Throws mixdepth::Error on mismatched sizes.
  void rotate(MatrixRef<T> rows, std::span<const Position> positions,
              Arena<T>* scratch = nullptr) const {
    constexpr std::string_view where = "RotaryEmbedding::rotate";
    detail::require_equal(where, "positions.size()", rows.rows(), static_cast<Index>(positions.size()));
    if (rows.cols() % head_dim_ != 0)
      detail::fail(where, "rows.cols()", "a multiple of head_dim (" + std::to_string(head_dim_) + ")",
                   rows.cols());
    mixdepth::detail::ScratchScope<T> arena(scratch);
    RowMatrixMap<T> none(nullptr, rows.rows(), 0);
    rotate_unchecked(rows, MatrixRef<T>(none), detail::PositionList{positions}, *arena);
  }

  // Rotates two matrices whose row j share a position (queries and keys), computing each
  // row's sines once. Column counts must be multiples of head_dim; `second` may be empty.
  template <class Positions>
  void rotate_unchecked(MatrixRef<T> first, MatrixRef<T> second, const Positions& positions,
                        Arena<T>& arena) const {
    const Index half = head_dim_ / 2;
    const auto mark = arena.mark();
    Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> cosine(arena.take(half).data(), half);
    Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> sine(arena.take(half).data(), half);
    Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> saved(arena.take(half).data(), half);
    for (Index j = 0; j < first.rows(); ++j) {
      // Angles in double: position * frequency loses digits in float for large positions.
      kernels::rotary_cos_sin<kernels::static_arch>(static_cast<double>(positions[j]), inverse_frequency_.data(), half,
                                                    cosine.data(), sine.data());
      rotate_row(first, j, cosine, sine, saved);
      if (second.cols() > 0) rotate_row(second, j, cosine, sine, saved);
    }
    arena.rewind(mark);
  }

 private:
  template <class Array>
  void rotate_row(MatrixRef<T>& rows, Index j, const Array& cosine, const Array& sine,
                  Array& saved) const {
    const Index half = head_dim_ / 2;
    for (Index head = 0; head < rows.cols(); head += head_dim_) {
      auto low = rows.row(j).segment(head, half).array();
      auto high = rows.row(j).segment(head + half, half).array();
      saved = low;
      low = low * cosine - high * sine;
      high = high * cosine + saved * sine;
    }
  }

  Index head_dim_;
  double theta_;
  std::vector<double> inverse_frequency_;
};

}  // namespace mixdepth::layers
