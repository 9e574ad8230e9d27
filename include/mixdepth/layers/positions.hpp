#pragma once
// Token positions as the attention layer reads them, and the checks a layer runs on a Routed
// batch before it writes anything.
#include <span>
#include <string>
#include <string_view>

#include "../routed.hpp"
#include "../types.hpp"

namespace mixdepth::layers {

namespace detail {

using mixdepth::detail::fail;
using mixdepth::detail::require_equal;

// Positions 0, 1, ..., count-1 of one dense sequence, without storing them.
struct DensePositions {
  Index count = 0;
  Position operator[](Index j) const { return static_cast<Position>(j); }
  Index size() const { return count; }
};

// A stored list of positions, read through the same interface.
struct PositionList {
  std::span<const Position> list;
  Position operator[](Index j) const { return list[static_cast<std::size_t>(j)]; }
  Index size() const { return static_cast<Index>(list.size()); }
  PositionList subspan(Index first, Index count) const {
    return {list.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(count))};
  }
};

// Throws unless a weight dimension matches the config: "expected 16 (config.d_model), got 8".
inline void require_dimension(std::string_view where, std::string_view argument, Index expected,
                              std::string_view expected_source, Index actual) {
  if (expected != actual)
    fail(where, argument, std::to_string(expected) + " (" + std::string(expected_source) + ")",
         actual);
}

template <class P>
void require_nondecreasing(std::string_view where, std::string_view argument, const P& positions,
                           Index first, Index last) {
  for (Index j = first + 1; j < last; ++j)
    if (positions[j] < positions[j - 1])
      fail(where, std::string(argument) + "[" + std::to_string(j) + "]",
           ">= " + std::to_string(positions[j - 1]) + " (positions ascend within a sequence)",
           positions[j]);
}

// Offsets must partition [0, rows) into consecutive sequences.
inline void check_offsets(std::string_view where, std::span<const Index> offsets, Index rows) {
  if (offsets.empty()) {
    if (rows != 0) fail(where, "in.offsets.size()", ">= 1 (batch + 1)", 0);
    return;
  }
  require_equal(where, "in.offsets[0]", Index{0}, offsets.front());
  for (std::size_t b = 1; b < offsets.size(); ++b)
    if (offsets[b] < offsets[b - 1])
      fail(where, "in.offsets[" + std::to_string(b) + "]", ">= " + std::to_string(offsets[b - 1]),
           offsets[b]);
  require_equal(where, "in.offsets.back()", rows, offsets.back());
}

// Everything attention relies on: x has d_model columns, out matches x, one position per row,
// offsets partition the rows and positions ascend within each sequence.
template <class T>
void check_routed(std::string_view where, const Routed<T>& in, Index d_model, Index out_rows,
                  Index out_cols) {
  require_equal(where, "in.x.cols()", d_model, in.x.cols());
  require_equal(where, "out.rows()", in.x.rows(), out_rows);
  require_equal(where, "out.cols()", d_model, out_cols);
  require_equal(where, "in.positions.size()", in.x.rows(), static_cast<Index>(in.positions.size()));
  check_offsets(where, in.offsets, in.x.rows());
  const PositionList positions{in.positions};
  for (Index b = 0; b < in.batch(); ++b)
    require_nondecreasing(where, "in.positions", positions, in.offsets[std::size_t(b)],
                          in.offsets[std::size_t(b + 1)]);
}

}  // namespace detail

}  // namespace mixdepth::layers
