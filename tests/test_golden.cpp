// mixdepth::Block against golden outputs that tests/make_golden.py computed independently in
// PyTorch (float64): routing, capacity, gates, padding, a plain block function and
// sequential(attention, mlp) with the reference layers. The file format is described in
// make_golden.py.
//
// Error measure: for every row i of the output, ||y_i - golden_i||_2 / ||golden_i||_2, and
// the largest over all rows must be <= 1e-5 in float and <= 1e-12 in double. Set
// MIXDEPTH_GOLDEN_REPORT=1 in the environment to print the errors.
#include "test_helpers.hpp"

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace mixdepth;
namespace fs = std::filesystem;

const fs::path golden_directory = fs::path(MIXDEPTH_TEST_DATA_DIR) / "golden";

struct GoldenArray {
  std::vector<std::uint64_t> dims;
  std::vector<double> values;
};

// One configuration: its named arrays.
class Golden {
 public:
  explicit Golden(const std::string& name) : name_(name) {
    const fs::path path = golden_directory / (name + ".bin");
    std::ifstream file(path, std::ios::binary);
    REQUIRE_MESSAGE(file.good(), "cannot open ", path.string());
    bytes_.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    REQUIRE_MESSAGE(take_text(8) == "MDGOLD1\n", path.string(), ": not a golden file");
    const std::uint32_t count = take_u32();
    for (std::uint32_t a = 0; a < count; ++a) {
      const std::string array_name = take_text(take_u32());
      GoldenArray array;
      const std::uint32_t rank = take_u32();
      std::uint64_t size = 1;
      for (std::uint32_t r = 0; r < rank; ++r) size *= array.dims.emplace_back(take_u64());
      for (std::uint64_t v = 0; v < size; ++v) array.values.push_back(std::bit_cast<double>(take_u64()));
      arrays_[array_name] = std::move(array);
    }
    REQUIRE_MESSAGE(position_ == bytes_.size(), path.string(), ": trailing bytes");
  }

  const std::string& name() const { return name_; }
  bool has(const std::string& key) const { return arrays_.count(key) != 0; }

  const GoldenArray& array(const std::string& key) const {
    const auto found = arrays_.find(key);
    REQUIRE_MESSAGE(found != arrays_.end(), name_, ": no array ", key);
    return found->second;
  }
  double scalar(const std::string& key) const {
    const GoldenArray& a = array(key);
    REQUIRE(a.dims.empty());
    return a.values[0];
  }
  Index integer(const std::string& key) const { return static_cast<Index>(scalar(key)); }

  template <class T>
  RowMatrix<T> matrix(const std::string& key) const {
    const GoldenArray& a = array(key);
    REQUIRE(a.dims.size() == 2);
    RowMatrix<T> m(static_cast<Index>(a.dims[0]), static_cast<Index>(a.dims[1]));
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(a.values[std::size_t(i)]);
    return m;
  }
  template <class T>
  Vector<T> vector(const std::string& key) const {
    const GoldenArray& a = array(key);
    REQUIRE(a.dims.size() == 1);
    Vector<T> v(static_cast<Index>(a.dims[0]));
    for (Index i = 0; i < v.size(); ++i) v[i] = static_cast<T>(a.values[std::size_t(i)]);
    return v;
  }
  template <class Integer>
  std::vector<Integer> integers(const std::string& key) const {
    const GoldenArray& a = array(key);
    REQUIRE(a.dims.size() == 1);
    return std::vector<Integer>(a.values.begin(), a.values.end());
  }

 private:
  std::uint64_t take_little_endian(int bytes) {
    if (position_ + std::size_t(bytes) > bytes_.size()) FAIL(name_, ": truncated");
    std::uint64_t value = 0;
    for (int b = 0; b < bytes; ++b)
      value |= std::uint64_t(static_cast<unsigned char>(bytes_[position_ + std::size_t(b)])) << (8 * b);
    position_ += std::size_t(bytes);
    return value;
  }
  std::uint32_t take_u32() { return static_cast<std::uint32_t>(take_little_endian(4)); }
  std::uint64_t take_u64() { return take_little_endian(8); }
  std::string take_text(std::size_t length) {
    if (position_ + length > bytes_.size()) FAIL(name_, ": truncated");
    std::string text(bytes_.begin() + std::ptrdiff_t(position_),
                     bytes_.begin() + std::ptrdiff_t(position_ + length));
    position_ += length;
    return text;
  }

  std::string name_;
  std::vector<char> bytes_;
  std::size_t position_ = 0;
  std::map<std::string, GoldenArray> arrays_;
};

std::vector<std::string> golden_names() {
  std::ifstream index(golden_directory / "index.txt");
  REQUIRE_MESSAGE(index.good(), "cannot open ", (golden_directory / "index.txt").string());
  std::vector<std::string> names;
  for (std::string line; std::getline(index, line);)
    if (!line.empty() && line[0] != '#') names.push_back(line);
  return names;
}

// f_i = tanh(x_i W + scale * position_i): a block function that also reads positions.
template <class T>
struct TanhFunction {
  RowMatrix<T> weight;
  T position_scale;
  void operator()(const Routed<T>& in, MatrixRef<T> out) const {
    out.noalias() = in.x * weight;
    for (Index j = 0; j < out.rows(); ++j)
      out.row(j).array() =
          (out.row(j).array() + position_scale * static_cast<T>(in.positions[std::size_t(j)])).tanh();
  }
};

template <class T>
layers::Attention<T> golden_attention(const Golden& g) {
  const std::vector<double> c = g.array("attention_config").values;
  const layers::AttentionConfig config{g.integer("d_model"), Index(c[0]), Index(c[1]), Index(c[2]),
                                       c[3], c[4]};
  return layers::Attention<T>(config, {g.vector<T>("attention_norm"), g.matrix<T>("attention_query"),
                                       g.matrix<T>("attention_key"), g.matrix<T>("attention_value"),
                                       g.matrix<T>("attention_output")});
}

template <class T>
layers::SwiGluMlp<T> golden_mlp(const Golden& g) {
  const std::vector<double> c = g.array("mlp_config").values;
  return layers::SwiGluMlp<T>({g.integer("d_model"), Index(c[0]), c[1]},
                              {g.vector<T>("mlp_norm"), g.matrix<T>("mlp_gate"),
                               g.matrix<T>("mlp_up"), g.matrix<T>("mlp_down")});
}

// The largest per-row relative L2 error of y against the golden output.
template <class T>
double worst_row_error(const RowMatrix<T>& y, const RowMatrix<double>& golden) {
  double worst = 0.0;
  for (Index r = 0; r < golden.rows(); ++r) {
    const double scale = golden.row(r).norm();
    const double error = (y.row(r).template cast<double>() - golden.row(r)).norm();
    worst = testing::worse(worst, scale > 0.0 ? error / scale : error);
  }
  return worst;
}

// Runs Block with f on the golden input and checks it against the golden output.
template <class T, class F>
void check_block(const Golden& g, F f, double tolerance) {
  const Shape shape{g.integer("batch"), g.integer("seq_len")};
  const Capacity capacity = g.integer("capacity_kind") == 0
                                ? Capacity::fraction(g.scalar("capacity_value"))
                                : Capacity::tokens(g.integer("capacity_value"));
  CHECK(capacity(shape.seq_len) == g.integer("k"));
  const Gate gate = g.integer("gate") == 0 ? Gate::identity : Gate::sigmoid;
  const std::vector<Index> lengths = g.has("lengths") ? g.integers<Index>("lengths") : std::vector<Index>{};

  const Block<T, F> block(Router<T>(g.vector<T>("router_weight"), static_cast<T>(g.scalar("router_bias"))),
                          capacity, std::move(f), gate);
  const RowMatrix<T> x = g.matrix<T>("x");
  RowMatrix<T> y(x.rows(), x.cols());
  Workspace<T> workspace;
  block.forward(x, shape, y, workspace, lengths);

  const std::vector<Position> expected_rows = g.integers<Position>("routed_rows");
  const std::vector<Position> routed(workspace.routed_rows().begin(), workspace.routed_rows().end());
  CHECK(routed == expected_rows);
  const double error = worst_row_error(y, g.matrix<double>("y"));
  CHECK(error <= tolerance);
  if (std::getenv("MIXDEPTH_GOLDEN_REPORT") != nullptr)
    MESSAGE(g.name(), " (", std::string(sizeof(T) == 4 ? "float" : "double"),
            "): worst row error ", error);
  Index changed_unrouted_rows = 0;  // rows that were not routed come through bit for bit
  for (Index r = 0; r < x.rows(); ++r)
    if (std::find(expected_rows.begin(), expected_rows.end(), Position(r)) == expected_rows.end())
      changed_unrouted_rows += !testing::rows_bit_equal(y, r, x, r);
  CHECK(changed_unrouted_rows == 0);

  RowMatrix<T> in_place = x;
  block.forward_inplace(in_place, shape, workspace, lengths);
  CHECK(testing::bit_equal(in_place, y));
}

template <class T>
void check_golden(const Golden& g, double tolerance) {
  INFO("configuration ", g.name());
  switch (g.integer("function")) {
    case 0:
      check_block<T>(g, TanhFunction<T>{g.matrix<T>("tanh_weight"),
                                        static_cast<T>(g.scalar("tanh_position_scale"))},
                     tolerance);
      break;
    case 1:
      check_block<T>(g, sequential(golden_attention<T>(g), golden_mlp<T>(g)), tolerance);
      break;
    case 2:
      check_block<T>(g, golden_attention<T>(g), tolerance);
      break;
    case 3:
      check_block<T>(g, golden_mlp<T>(g), tolerance);
      break;
    default:
      FAIL("unknown function kind ", g.integer("function"));
  }
}

}  // namespace

TEST_CASE("golden: the index lists a dozen configurations covering every function and gate") {
  const std::vector<std::string> names = golden_names();
  CHECK(names.size() >= 12);
  std::map<Index, int> functions, gates, capacity_kinds;
  int with_padding = 0, multi_sequence = 0;
  for (const std::string& name : names) {
    const Golden g(name);
    ++functions[g.integer("function")];
    ++gates[g.integer("gate")];
    ++capacity_kinds[g.integer("capacity_kind")];
    with_padding += g.has("lengths");
    multi_sequence += g.integer("batch") > 1;
    CHECK(g.matrix<double>("x").rows() == g.integer("batch") * g.integer("seq_len"));
  }
  CHECK(functions.size() == 4);
  CHECK(gates.size() == 2);
  CHECK(capacity_kinds.size() == 2);
  CHECK(with_padding >= 3);
  CHECK(multi_sequence >= 8);
}

TEST_CASE_TEMPLATE("golden: Block matches PyTorch float64 (per-row relative L2 error)", T, float,
                   double) {
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (const std::string& name : golden_names()) check_golden<T>(Golden(name), tolerance);
}
