// Block::forward_causal: routing by a per-token causal rule instead of top-k.
#include "test_helpers.hpp"

#include <stdexcept>

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

template <class T>
struct PositionRecorder {
  std::vector<Position> positions;
  std::vector<Index> offsets;
  void operator()(const Routed<T>& in, MatrixRef<T> out) {
    positions.assign(in.positions.begin(), in.positions.end());
    offsets.assign(in.offsets.begin(), in.offsets.end());
    out = (in.x.array().sin() + T(1)).matrix();
  }
};

template <class T>
struct RouteAll {
  void route(MatrixCRef<T>, std::span<const T>, std::span<std::uint8_t> routed, Arena<T>&) const {
    std::fill(routed.begin(), routed.end(), std::uint8_t{1});
  }
};

template <class T>
struct ThrowingRule {
  void route(MatrixCRef<T>, std::span<const T>, std::span<std::uint8_t>, Arena<T>&) const {
    throw std::runtime_error("rule failed");
  }
};

}  // namespace

// The workspace's views must fit its buffers after a forward that threw: the last forward's
// 256 routed rows of width 8 were once mapped at the new width 16 (a read past update's end).
TEST_CASE("a forward that throws leaves the workspace's views empty, not the last forward's rows at a new width") {
  Workspace<float> ws;
  const RowMatrix<float> narrow = random_matrix<float>(256, 8, 311);
  RowMatrix<float> narrow_y(256, 8);
  Block<float, PositionRecorder<float>> block8(Router<float>(random_vector<float>(8, 312)), Capacity::fraction(1.0),
                                               PositionRecorder<float>{});
  block8.forward(narrow, Shape{4, 64}, narrow_y, ws);
  REQUIRE(ws.update().rows() == 256);
  const RowMatrix<float> wide = random_matrix<float>(1, 16, 313);
  RowMatrix<float> wide_y(1, 16);
  Block<float, PositionRecorder<float>> block16(Router<float>(random_vector<float>(16, 314)),
                                                Capacity::fraction(1.0), PositionRecorder<float>{});
  CHECK_THROWS_AS(block16.forward_causal(wide, Shape{1, 1}, wide_y, ws, ThrowingRule<float>{}), std::runtime_error);
  CHECK(ws.update().rows() == 0);
  CHECK(ws.routed_x().rows() == 0);
  CHECK(ws.gates().empty());
  CHECK(ws.routed_rows().empty());
  CHECK(ws.logits().size() <= 1);
  // And the workspace still works.
  block16.forward(wide, Shape{1, 1}, wide_y, ws);
  CHECK(ws.update().rows() == 1);
}

TEST_CASE_TEMPLATE("forward_causal with RouterThreshold routes exactly the tokens with r > threshold", T, float, double) {
  const Index d = 9;
  const Shape shape{3, 21};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 301);
  Block<T, PositionRecorder<T>> block(Router<T>(random_vector<T>(d, 302)), Capacity::fraction(0.125),
                                      PositionRecorder<T>{}, Gate::sigmoid);
  Workspace<T> ws;
  RowMatrix<T> y(shape.rows(), d);
  const RouterThreshold<T> rule{T(0.3)};
  block.forward_causal(x, shape, y, ws, rule);

  std::vector<Position> expected_positions;
  std::vector<Index> expected_offsets = {0};
  for (Index b = 0; b < shape.batch; ++b) {
    for (Index p = 0; p < shape.seq_len; ++p) {
      const Index row = b * shape.seq_len + p;
      const bool routed = ws.logits()[std::size_t(row)] > T(0.3);
      if (routed) expected_positions.push_back(Position(p));
      CHECK(rows_bit_equal(x, row, y, row) == !routed);
    }
    expected_offsets.push_back(Index(expected_positions.size()));
  }
  CHECK(block.function().positions == expected_positions);
  CHECK(block.function().offsets == expected_offsets);
  // counts differ between sequences: the batch is ragged
  CHECK(ws.k() == 0);
  CHECK(ws.selected().empty());
  CHECK(ws.routed_rows().size() == expected_positions.size());
  for (std::size_t j = 0; j < ws.routed_rows().size(); ++j)
    for (Index c = 0; c < d; ++c) {
      const Index row = ws.routed_rows()[j];
      const T product = sigmoid(ws.logits()[std::size_t(row)]) * ws.update()(Index(j), c);
      CHECK(y(row, c) == x(row, c) + product);
    }
}

TEST_CASE_TEMPLATE("forward_causal routing every token equals top-k with k = S, bit for bit", T, float, double) {
  const Index d = 7;
  const Shape shape{2, 13};
  const std::vector<Index> lengths = {13, 6};
  const RowMatrix<T> x = random_matrix<T>(shape.rows(), d, 303);
  Block<T, PositionRecorder<T>> block(Router<T>(random_vector<T>(d, 304)), Capacity::fraction(1.0),
                                      PositionRecorder<T>{});
  Workspace<T> ws;
  RowMatrix<T> dense(shape.rows(), d), causal(shape.rows(), d);
  block.forward(x, shape, dense, ws, lengths);
  block.forward_causal(x, shape, causal, ws, RouteAll<T>{}, lengths);
  CHECK(bit_equal(dense, causal));
  CHECK(block.function().offsets == std::vector<Index>{0, 13, 19});  // padding never routed
}

TEST_CASE("forward_causal start positions shift what f sees, and a rule routing nothing is the identity") {
  const Index d = 4;
  const Shape shape{2, 3};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 305);
  Block<float, PositionRecorder<float>> block(Router<float>(Vector<float>::Ones(d)), Capacity::tokens(1),
                                              PositionRecorder<float>{});
  Workspace<float> ws;
  RowMatrix<float> y(shape.rows(), d);
  const std::vector<Index> starts = {100, 7};
  block.forward_causal(x, shape, y, ws, RouteAll<float>{}, {}, starts);
  CHECK(block.function().positions == std::vector<Position>{100, 101, 102, 7, 8, 9});
  CHECK(std::vector<Position>(ws.routed_positions().begin(), ws.routed_positions().end()) ==
        std::vector<Position>{100, 101, 102, 7, 8, 9});

  const RouterThreshold<float> never{std::numeric_limits<float>::infinity()};
  block.forward_causal(x, shape, y, ws, never);
  CHECK(bit_equal(x, y));
  CHECK(block.function().offsets == std::vector<Index>{0, 0, 0});
}

TEST_CASE("RouterThreshold::route rejects logits or decisions of the wrong length, writing nothing") {
  const RowMatrix<float> x = random_matrix<float>(6, 4, 307);
  const std::vector<float> logits(6, 1.f), short_logits(2, 1.f);
  std::vector<std::uint8_t> routed(6, 7), short_routed(5, 7);
  Arena<float> arena;
  const RouterThreshold<float> rule{0.f};
  require_mentions(error_message([&] { rule.route(x, short_logits, routed, arena); }),
                   {"RouterThreshold::route", "router_logits.size()", "expected 6", "got 2"});
  require_mentions(error_message([&] { rule.route(x, logits, short_routed, arena); }),
                   {"RouterThreshold::route", "routed.size()", "expected 6", "got 5"});
  CHECK(routed == std::vector<std::uint8_t>(6, 7));
  CHECK(short_routed == std::vector<std::uint8_t>(5, 7));
  rule.route(x, logits, routed, arena);
  CHECK(routed == std::vector<std::uint8_t>(6, 1));
}

TEST_CASE("forward_causal rejects bad start positions and leaves y untouched") {
  const Index d = 4;
  const Shape shape{2, 3};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 306);
  Block<float, PositionRecorder<float>> block(Router<float>(Vector<float>::Ones(d)), Capacity::tokens(1),
                                              PositionRecorder<float>{});
  Workspace<float> ws;
  RowMatrix<float> y = RowMatrix<float>::Constant(shape.rows(), d, 5.f);
  const std::vector<Index> one = {0};
  require_mentions(error_message([&] { block.forward_causal(x, shape, y, ws, RouteAll<float>{}, {}, one); }),
                   {"Block::forward_causal", "start_positions.size()", "got 1"});
  const std::vector<Index> negative = {0, -4};
  require_mentions(error_message([&] { block.forward_causal(x, shape, y, ws, RouteAll<float>{}, {}, negative); }),
                   {"start_positions[1]", "got -4"});
  RowMatrix<float> wrong_y = RowMatrix<float>::Constant(5, d, 5.f);
  require_mentions(error_message([&] { block.forward_causal(x, shape, wrong_y, ws, RouteAll<float>{}); }),
                   {"y.rows()", "expected 6", "got 5"});
  CHECK((y.array() == 5.f).all());
}
