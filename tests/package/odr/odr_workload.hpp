#pragma once
// The workload both mixdepth translation units run: every public template of the umbrella
// header, instantiated for float and double with the same types in both units, so that the
// linker keeps one copy of each. Everything here has internal linkage (one copy per unit);
// the mixdepth templates it instantiates do not.
//
// Inputs are dyadic numbers small enough that every sum and product is exact in float, so
// results cannot depend on summation order or FMA: the units must agree bit for bit except
// where the sigmoid gate rounds.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "odr_units.hpp"

namespace odr {
namespace {

using mixdepth::Index;
using mixdepth::Position;

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// f_i for a routed row: depends on the row and its original position. Writes NaN when the
// routed positions of a sequence are not strictly ascending, which every check then sees.
template <class T>
void reference_update(const mixdepth::Routed<T>& routed, mixdepth::MatrixRef<T> out) {
  for (Index b = 0; b < routed.batch(); ++b) {
    for (Index j = routed.offsets[b]; j < routed.offsets[b + 1]; ++j) {
      const bool ascending = j == routed.offsets[b] || routed.positions[j - 1] < routed.positions[j];
      for (Index c = 0; c < out.cols(); ++c)
        out(j, c) = ascending ? T(0.5) * routed.x(j, c) + T(routed.positions[j] % 16) * T(0.125) -
                                    T(c % 8) * T(0.0625)
                              : std::numeric_limits<T>::quiet_NaN();
    }
  }
}

template <class T>
std::vector<double> to_values(const T* data, Index n) {
  return std::vector<double>(data, data + n);
}

template <class M>
std::vector<double> matrix_values(const M& m) {
  std::vector<double> values;
  values.reserve(static_cast<std::size_t>(m.size()));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) values.push_back(static_cast<double>(m(r, c)));
  return values;
}

template <class T>
bool rows_bit_equal(const mixdepth::RowMatrix<T>& a, const mixdepth::RowMatrix<T>& b, Index r) {
  return std::memcmp(a.row(r).data(), b.row(r).data(), sizeof(T) * std::size_t(a.cols())) == 0;
}

class Run {
 public:
  Run(const Input& input, std::string unit) : input_(input) {
    output_.unit = std::move(unit);
    output_.arch = xsimd::default_arch::name();
  }

  template <class T>
  void all(UpdateFunction<T> other_units_update) {
    const std::string t = type_name<T>();
    const mixdepth::Shape shape{input_.batch, input_.seq_len};
    const Index d = input_.dim;
    mixdepth::RowMatrix<T> x(shape.rows(), d);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<T>(input_.x[std::size_t(i)]);
    mixdepth::Vector<T> weight(d);
    for (Index i = 0; i < d; ++i) weight[i] = static_cast<T>(input_.weight[std::size_t(i)]);
    const std::span<const Index> lengths(input_.lengths);

    // Capacity.
    const auto capacity = mixdepth::Capacity::fraction(input_.capacity);
    const Index k = capacity(shape.seq_len);
    add("capacity(" + t + ")",
        {double(k), double(mixdepth::Capacity::tokens(input_.k)(shape.seq_len))});

    // Router.
    const mixdepth::Router<T> router(weight, static_cast<T>(input_.bias));
    mixdepth::Vector<T> logits(shape.rows());
    router.score(x, logits);
    add("Router<" + t + ">::score", to_values(logits.data(), logits.size()));

    // select_top_k on the special-value scores, with and without lengths, both overloads.
    std::vector<T> scores(input_.scores.begin(), input_.scores.end());
    const Index kept = std::min(input_.k, shape.seq_len);
    std::vector<Position> top(std::size_t(shape.batch * kept));
    mixdepth::select_top_k<T>(scores, shape, input_.k, top);
    add("select_top_k<" + t + ">", to_values(top.data(), Index(top.size())));
    mixdepth::TopKScratch<T> scratch;
    mixdepth::select_top_k<T>(scores, shape, input_.k, top, lengths, scratch);
    add("select_top_k<" + t + ">(lengths)", to_values(top.data(), Index(top.size())));
    std::vector<std::uint8_t> targets(std::size_t(shape.rows()));
    mixdepth::top_k_targets<T>(scores, shape, input_.k, targets, lengths);
    add("top_k_targets<" + t + ">", to_values(targets.data(), Index(targets.size())));

    // Top-k of the router logits, then gather and the gated scatter by hand.
    std::vector<Position> selected(std::size_t(shape.batch * std::min(k, shape.seq_len)));
    mixdepth::select_top_k<T>(std::span<const T>(logits.data(), std::size_t(logits.size())), shape,
                              k, selected);
    std::vector<Position> rows;
    const Index per_sequence = shape.batch > 0 ? Index(selected.size()) / shape.batch : 0;
    for (Index b = 0; b < shape.batch; ++b)
      for (Index j = 0; j < per_sequence; ++j)
        rows.push_back(static_cast<Position>(b * shape.seq_len + selected[std::size_t(b * per_sequence + j)]));
    mixdepth::RowMatrix<T> gathered(Index(rows.size()), d);
    mixdepth::gather_rows<T>(x, rows, gathered);
    add("gather_rows<" + t + ">", matrix_values(gathered));
    mixdepth::RowMatrix<T> update = (gathered.array() * T(0.5) - T(0.25)).matrix();
    std::vector<T> gates;
    for (Position r : rows) gates.push_back(logits[r]);
    mixdepth::RowMatrix<T> scattered = x;
    mixdepth::scatter_gated<T>(x, rows, update, gates, scattered);
    add("scatter_gated<" + t + ">", matrix_values(scattered));

    // Blocks whose function lives in the other translation unit.
    mixdepth::Workspace<T> ws;
    const PointerBlock<T> block(router, capacity, other_units_update);
    mixdepth::RowMatrix<T> y(shape.rows(), d);
    block.forward(x, shape, y, ws);
    add("Block<" + t + ">::forward", matrix_values(y));
    check_block(t + " identity", x, y, ws, k, {});

    mixdepth::RowMatrix<T> in_place = x;
    block.forward_inplace(in_place, shape, ws);
    if (in_place != y) fail(t + ": forward_inplace differs from forward");

    block.forward(x, shape, y, ws, lengths);
    add("Block<" + t + ">::forward(lengths)", matrix_values(y));
    check_block(t + " lengths", x, y, ws, k, lengths);

    const PointerBlock<T> gated(router, capacity, other_units_update, mixdepth::Gate::sigmoid);
    gated.forward(x, shape, y, ws);
    add("Block<" + t + ", sigmoid>::forward", matrix_values(y),
        std::is_same_v<T, float> ? 1e-6 : 1e-14);
    check_block(t + " sigmoid", x, y, ws, k, {});

    // A sequential (attention, MLP) pair: f = a + m(x + a) = 0.25 x + 0.5 * 1.25 x.
    auto attention = [](const mixdepth::Routed<T>& in, mixdepth::MatrixRef<T> out) {
      out = in.x * T(0.25);
    };
    auto mlp = [](const mixdepth::Routed<T>& in, mixdepth::MatrixRef<T> out) { out = in.x * T(0.5); };
    auto pair = mixdepth::sequential(attention, mlp);
    mixdepth::Block<T, decltype(pair)> sequential_block(router, mixdepth::Capacity::tokens(input_.k),
                                                         pair);
    mixdepth::RowMatrix<T> z = x;
    sequential_block.forward_inplace(z, shape, ws, lengths);
    add("Block<" + t + ", sequential>::forward_inplace", matrix_values(z));
    for (Index j = 0; j < Index(ws.routed_rows().size()); ++j) {
      const Position r = ws.routed_rows()[std::size_t(j)];
      const mixdepth::RowMatrix<T> expected =
          x.row(r) + logits[r] * (T(0.875) * x.row(r));
      if (z.row(r) != expected) fail(t + ": sequential block, routed row " + std::to_string(r));
    }

    // Tensor views over the same memory.
    mixdepth::RowMatrix<T> copy = x;
    auto tensor = mixdepth::as_tensor(copy, shape);
    const mixdepth::Shape seen = mixdepth::shape_of(tensor);
    auto back = mixdepth::as_matrix<T>(tensor);
    if (!(seen == shape) || back.data() != copy.data() || back != x) fail(t + ": tensor views");

    // Errors carry the same message from either unit.
    try {
      mixdepth::RowMatrix<T> wrong(shape.rows() + 1, d);
      block.forward(x, shape, wrong, ws);
      fail(t + ": Block::forward accepted a y with one row too many");
    } catch (const mixdepth::Error& error) {
      add(std::string("error(") + t + "): " + error.what(), {});
    }
  }

  Output take() { return std::move(output_); }

 private:
  void add(std::string name, std::vector<double> values, double tolerance = 0.0) {
    output_.records.push_back({std::move(name), std::move(values), tolerance});
  }
  void fail(std::string message) { output_.failures.push_back(output_.unit + ": " + message); }

  // Eq. 1's shape of change: min(k, valid) routed rows per sequence, every other row bit for
  // bit equal to x, no NaN from the block function.
  template <class T>
  void check_block(const std::string& what, const mixdepth::RowMatrix<T>& x,
                   const mixdepth::RowMatrix<T>& y, const mixdepth::Workspace<T>& ws, Index k,
                   std::span<const Index> lengths) {
    const Index seq_len = input_.seq_len;
    std::vector<char> routed(std::size_t(x.rows()), 0);
    for (Position r : ws.routed_rows()) routed[std::size_t(r)] = 1;
    for (Index b = 0; b < input_.batch; ++b) {
      const Index valid = lengths.empty() ? seq_len : lengths[b];
      const Index count = ws.offsets()[std::size_t(b + 1)] - ws.offsets()[std::size_t(b)];
      if (count != std::min(k, valid))
        fail(what + ": sequence " + std::to_string(b) + " routed " + std::to_string(count) +
             " rows, expected " + std::to_string(std::min(k, valid)));
    }
    for (Index r = 0; r < x.rows(); ++r) {
      if (!routed[std::size_t(r)] && !rows_bit_equal(x, y, r))
        fail(what + ": unrouted row " + std::to_string(r) + " changed");
      if (y.row(r).array().isNaN().any()) fail(what + ": NaN in row " + std::to_string(r));
    }
  }

  const Input& input_;
  Output output_;
};

}  // namespace
}  // namespace odr
