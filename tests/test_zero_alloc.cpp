// Issue 3: a warmed-up forward pass makes no heap allocation at all, at real sizes. Every
// malloc of the test process is counted (tests/support/heap_counter.cpp interposes the
// malloc family, as for the benchmarks' `allocs` counters), so this holds in Release builds too, where Eigen's
// set_is_malloc_allowed() assertion is compiled out. test_alloc_threads.cpp replaces
// operator new in this executable; its operator new calls std::malloc and lands here too.
#include "test_helpers.hpp"

#include <new>
#include <string>
#include <vector>

#include "heap_counter.hpp"

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

// AddressSanitizer owns the malloc family: there the counter is compiled out (and these
// tests are skipped).
const bool counting = heap_counter::active();

template <class Call>
long count_mallocs(Call&& call) {
  const long before = heap_counter::count();
  call();
  return heap_counter::count() - before;
}

// Grows every buffer (twice: the first call may leave the arena in several chunks, which
// the workspace merges), then counts the mallocs of `repeats` more calls.
template <class Call>
long mallocs_after_warm_up(Call&& call, int repeats = 2) {
  call();
  call();
  return count_mallocs([&] {
    for (int r = 0; r < repeats; ++r) call();
  });
}

using Layer = Sequential<layers::Attention<float>, layers::SwiGluMlp<float>>;

Layer make_layer(const layers::AttentionConfig& attention, Index hidden, std::uint64_t seed) {
  return sequential(layers::Attention<float>::random(attention, seed),
                    layers::SwiGluMlp<float>::random({attention.d_model, hidden, 1e-6}, seed + 1));
}

struct Config {
  const char* name;
  layers::AttentionConfig attention;
  Index hidden;
  Shape shape;
  std::vector<Index> lengths;  // empty: no padding
};

std::vector<Config> configs() {
  return {
      // The benchmark's block: d 512, 8 heads of 64, SwiGLU hidden 1536, one sequence of 512.
      {"d512 mha", {512, 8, 8, 64, 10000.0, 1e-6}, 1536, {1, 512}, {}},
      // Grouped-query attention (4 query heads per kv head), three ragged sequences.
      {"d128 gqa", {128, 8, 2, 16, 10000.0, 1e-6}, 384, {3, 160}, {160, 97, 0}},
  };
}

}  // namespace

TEST_CASE("the malloc counter sees Eigen's own GEMM buffers (the check can fail)" *
          doctest::skip(!counting)) {
  const RowMatrix<float> a = random_matrix<float>(512, 512, 1), b = random_matrix<float>(512, 1536, 2);
  RowMatrix<float> c(512, 1536);
  CHECK(count_mallocs([&] { c.noalias() = a * b; }) >= 1);  // packing buffers above 128 KB
  Arena<float> arena;
  CHECK(mallocs_after_warm_up([&] { detail::product(c, a, b, &arena); }) == 0);
  CHECK(count_mallocs([&] { detail::product(c, a, b, nullptr); }) >= 1);  // a local arena
}

TEST_CASE("product() and add_product() allocate nothing once warm: transposed operands, alpha, GEMV" *
          doctest::skip(!counting)) {
  Arena<float> arena;
  const RowMatrix<float> a = random_matrix<float>(300, 200, 3), b = random_matrix<float>(200, 260, 4);
  const RowMatrix<float> bt = random_matrix<float>(260, 200, 5), e = random_matrix<float>(300, 260, 6);
  RowMatrix<float> got(300, 260), got_t(200, 260), row_got(1, 260);
  CHECK(mallocs_after_warm_up([&] { detail::product(got, a, bt.transpose(), &arena); }) == 0);
  CHECK(mallocs_after_warm_up([&] { detail::product(got, a, b, &arena, 0.25f); }) == 0);
  CHECK(mallocs_after_warm_up([&] { detail::add_product(got_t, a.transpose(), e, &arena); }) == 0);
  CHECK(mallocs_after_warm_up([&] { detail::product(row_got, a.topRows(1), b, &arena); }) == 0);
}

TEST_CASE("Block forward, forward_inplace and forward_dense allocate nothing once warm (d 512 and GQA)" *
          doctest::skip(!counting)) {
  for (const Config& c : configs()) {
    INFO("case ", std::string(c.name));
    const Index d = c.attention.d_model;
    Block<float, Layer> block(Router<float>(random_vector<float>(d, 7)), Capacity::fraction(0.5),
                              make_layer(c.attention, c.hidden, 8));
    const RowMatrix<float> x = random_matrix<float>(c.shape.rows(), d, 9);
    RowMatrix<float> y(x.rows(), d), inplace = x;
    const std::span<const Index> lengths(c.lengths);
    Workspace<float> ws;
    CHECK(mallocs_after_warm_up([&] { block.forward(x, c.shape, y, ws, lengths); }) == 0);
    CHECK(mallocs_after_warm_up([&] { block.forward_inplace(inplace, c.shape, ws, lengths); }) == 0);
    Layer& layer = block.function();
    CHECK(mallocs_after_warm_up([&] { forward_dense<float>(layer, x, c.shape, y, ws, lengths); }) == 0);
    // With a thread pool: the pool's threads exist already, a run allocates nothing.
    ThreadPool pool(3);
    Workspace<float> pooled;
    pooled.set_thread_pool(&pool);
    CHECK(mallocs_after_warm_up([&] { block.forward(x, c.shape, y, pooled, lengths); }) == 0);
    // A const block with a workspace of its own (what each thread does).
    const Block<float, Layer>& shared = block;
    Workspace<float> other;
    CHECK(mallocs_after_warm_up([&] { shared.forward(x, c.shape, y, other, lengths); }) == 0);
  }
}

TEST_CASE("Block::forward_causal with a CausalPredictor allocates nothing once warm" *
          doctest::skip(!counting)) {
  for (const Config& c : configs()) {
    INFO("case ", std::string(c.name));
    const Index d = c.attention.d_model;
    Block<float, Layer> block(Router<float>(random_vector<float>(d, 10)), Capacity::fraction(0.25),
                              make_layer(c.attention, c.hidden, 11));
    CausalPredictor<float> predictor(d, 128, Activation::silu, 12);
    const RowMatrix<float> x = random_matrix<float>(c.shape.rows(), d, 13);
    RowMatrix<float> y(x.rows(), d);
    Arena<float> scratch;
    predictor.calibrate_threshold(x, c.shape, 0.25, scratch, c.lengths);
    std::vector<Index> starts(std::size_t(c.shape.batch), 5);
    Workspace<float> ws;
    CHECK(mallocs_after_warm_up([&] {
            block.forward_causal(x, c.shape, y, ws, predictor, c.lengths, starts);
          }) == 0);
    // The predictor's own training step, at the same size.
    std::vector<std::uint8_t> targets(std::size_t(c.shape.rows()), 0);
    for (std::size_t i = 0; i < targets.size(); i += 3) targets[i] = 1;
    PredictorAdam<float> adam(predictor);
    CHECK(mallocs_after_warm_up([&] { predictor.train_step(x, c.shape, targets, adam, scratch, c.lengths); }) == 0);
  }
}

TEST_CASE("the layers' steps allocate nothing once their arena has grown (d 512)" *
          doctest::skip(!counting)) {
  const layers::AttentionConfig config{512, 8, 8, 64, 10000.0, 1e-6};
  const auto attention = layers::Attention<float>::random(config, 14);
  const auto mlp = layers::SwiGluMlp<float>::random({512, 1536, 1e-6}, 15);
  const Index n = 300;
  const RowMatrix<float> x = random_matrix<float>(n, 512, 16);
  std::vector<Position> positions(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) positions[std::size_t(i)] = Position(2 * i);
  RowMatrix<float> queries(n, 512), keys(n, 512), values(n, 512), context(n, 512), out(n, 512);
  Arena<float> arena;
  CHECK(mallocs_after_warm_up([&] {
          attention.project(x, positions, queries, keys, values, &arena);
          attention.attend(queries, positions, keys, values, positions, context, &arena);
          attention.project_output(context, out, &arena);
          attention(x, out, &arena);
          mlp(x, out, &arena);
        }) == 0);
  // Query counts whose last block of 64 holds one row (a GEMV in Eigen), and neighbours.
  for (const Index m : {Index{65}, Index{129}, Index{66}, Index{1}}) {
    INFO("queries ", m);
    const auto first = [m](auto& matrix) { return matrix.topRows(m); };
    const std::span<const Position> at(positions.data(), static_cast<std::size_t>(m));
    CHECK(mallocs_after_warm_up([&] {
            attention.attend(first(queries), at, keys, values, positions, first(context), &arena);
            attention(x.topRows(m), first(out), &arena);
          }) == 0);
  }
}

#if __has_include(<mixdepth/layers/cached_attention.hpp>)
namespace {

// How fail_each_allocation exhausts memory: allocation n alone fails, or every one from n on
// (then the code's clean-up after the first failure must not allocate either).
enum class Exhaustion { one, onward };

// Runs `call` with its allocation n failing (std::bad_alloc), for n = 0, 1, ... until a run
// no longer reaches the failing one; after each run that threw, `unchanged()` must hold. A
// run that succeeds although its allocation failed (the code had a way around it) is taken
// back by `take_back()` before the next. Returns how many allocations the last run made
// (each was made to fail once before it).
template <class Call, class Unchanged, class TakeBack>
long fail_each_allocation(Exhaustion exhaustion, Call&& call, Unchanged&& unchanged, TakeBack&& take_back) {
  for (long n = 0; n < 100000; ++n) {
    bool threw = false;
    long used = 0;
    if (exhaustion == Exhaustion::onward)
      heap_counter::fail_from(n);
    else
      heap_counter::fail_nth(n);
    try {
      const long before = heap_counter::count();
      call();
      used = heap_counter::count() - before;
    } catch (const std::bad_alloc&) {
      threw = true;
    } catch (...) {
      heap_counter::fail_nth(-1);
      throw;
    }
    const bool failed = heap_counter::failed();
    heap_counter::fail_nth(-1);
    const std::string which = exhaustion == Exhaustion::onward ? " and every later one" : "";
    INFO("allocation ", n, which, " of the call failed");
    if (threw) {
      CHECK(failed);
      CHECK(unchanged());
    } else if (failed) {
      take_back();
    } else {
      CHECK(used <= n);
      return used;
    }
  }
  FAIL("the call kept failing");
  return -1;
}

// A reference MLP that first takes memory from the heap: a Block over sequential(cached
// attention, this) fails after the attention appended, with memory exhausted from then on
// when the failing allocation is this one.
struct HeapMlp {
  layers::SwiGluMlp<float> mlp;
  void operator()(const Routed<float>& in, MatrixRef<float> out) const {
    const std::vector<float> taken(std::size_t(in.x.size()) + 1, 0.f);
    mlp(in, out);
    out(0, 0) += taken.back();
  }
};

std::vector<Index> cache_sizes(const KvCache<float>& cache) {
  std::vector<Index> sizes;
  for (Index b = 0; b < cache.batch(); ++b) sizes.push_back(cache.size(b));
  return sizes;
}

}  // namespace

TEST_CASE("an allocation that fails anywhere in a CachedAttention call, or a Block over one, leaves "
          "the cache as it was" * doctest::skip(!counting)) {
  const layers::AttentionConfig config{64, 4, 2, 16, 10000.0, 1e-6};
  const auto attention = layers::Attention<float>::random(config, 21);
  const auto mlp = layers::SwiGluMlp<float>::random({64, 128, 1e-6}, 22);
  KvCache<float> cache(3, config.kv_width(), 400);
  const layers::CachedAttention<float> cached(attention, cache);
  // Routed rows: `counts[b]` per sequence b, at positions from `starts[b]`.
  auto routed_positions = [](const std::vector<Index>& counts, const std::vector<Index>& starts) {
    std::vector<Position> positions;
    for (std::size_t b = 0; b < counts.size(); ++b)
      for (Index j = 0; j < counts[b]; ++j) positions.push_back(Position(starts[b] + j));
    return positions;
  };
  // A prompt first, long in sequence 2 only, so that the attention of sequence 2 needs far
  // more scratch than anything before it in the next call: allocations then fail after
  // sequences 0 and 1 have appended their tokens.
  const RowMatrix<float> prompt = random_matrix<float>(302, 64, 23);
  RowMatrix<float> prompt_out(302, 64);
  const std::vector<Index> prompt_offsets{0, 1, 2, 302};
  const std::vector<Position> prompt_positions = routed_positions({1, 1, 300}, {0, 0, 0});
  cached(Routed<float>{prompt, prompt_positions, prompt_offsets, nullptr}, prompt_out);
  const RowMatrix<float> x = random_matrix<float>(24, 64, 24);
  RowMatrix<float> out(6, 64);
  const std::vector<Index> offsets{0, 2, 4, 6};
  const std::vector<Position> positions = routed_positions({2, 2, 2}, {1, 1, 300});
  // No arena: the call brings its own, so every run allocates all of its scratch afresh.
  std::vector<Index> before = cache_sizes(cache);
  auto take_back = [&] {
    for (Index b = 0; b < cache.batch(); ++b) cache.truncate(b, before[std::size_t(b)]);
  };
  long points = 0;
  for (const Exhaustion exhaustion : {Exhaustion::one, Exhaustion::onward}) {
    take_back();
    points = fail_each_allocation(
        exhaustion, [&] { cached(Routed<float>{x.topRows(6), positions, offsets, nullptr}, out); },
        [&] { return cache_sizes(cache) == before; }, take_back);
    CHECK(points >= 2);
    CHECK(cache_sizes(cache) == std::vector<Index>{3, 3, 302});
  }

  // The same rows once more at later positions, through a Block whose MLP allocates after
  // the attention has appended: Sequential hands the failure to CachedAttention::undo, which
  // must not allocate when memory stays exhausted.
  Block<float, decltype(sequential(cached, HeapMlp{mlp}))> block(Router<float>(random_vector<float>(64, 24), 0.f),
                                                                 Capacity::fraction(1.0), sequential(cached, HeapMlp{mlp}));
  const Shape shape{3, 8};
  const RowMatrix<float> y0 = RowMatrix<float>::Constant(shape.rows(), 64, 5.f);
  RowMatrix<float> y = y0;
  const std::vector<Index> starts{3, 3, 302};
  before = cache_sizes(cache);
  for (const Exhaustion exhaustion : {Exhaustion::one, Exhaustion::onward}) {
    take_back();
    y = y0;
    const long block_points = fail_each_allocation(
        exhaustion,
        [&] {
          Workspace<float> workspace;  // fresh: the forward allocates its buffers too
          block.forward_causal(x.topRows(shape.rows()), shape, y, workspace, RouterThreshold<float>{-1e30f}, {},
                               starts);
        },
        [&] { return cache_sizes(cache) == before && y == y0; },
        [&] {
          take_back();
          y = y0;
        });
    CHECK(block_points > points);
    CHECK(cache_sizes(cache) == std::vector<Index>{11, 11, 310});
  }
}

TEST_CASE("an allocation that fails anywhere in Decoder::prefill or step leaves caches, positions and "
          "layer inputs as they were" * doctest::skip(!counting)) {
  layers::DecoderConfig config;
  config.layers = 2;  // layer 1 is MoD
  config.attention = {.d_model = 64, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16};
  config.mlp = {.d_model = 64, .hidden = 128};
  config.predictor_hidden = 16;
  layers::Decoder<float> decoder(config, 34);
  decoder.reset(2, 16, 16);
  const Shape shape{2, 6};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), 64, 35);
  RowMatrix<float> y(shape.rows(), 64), out(2, 64);
  std::vector<RowMatrix<float>> inputs(1, RowMatrix<float>::Constant(1, 1, 3.f));
  const auto empty = decoder.checkpoint();
  auto as_before = [&](const layers::Decoder<float>::Checkpoint& c) {
    const auto now = decoder.checkpoint();
    return now.sizes == c.sizes && now.positions == c.positions && inputs.size() == 1 && inputs[0].size() == 1 &&
           inputs[0](0, 0) == 3.f;
  };
  auto restore = [&](const layers::Decoder<float>::Checkpoint& c) {
    decoder.restore(c);
    inputs.assign(1, RowMatrix<float>::Constant(1, 1, 3.f));
  };
  for (const Exhaustion exhaustion : {Exhaustion::one, Exhaustion::onward}) {
    restore(empty);
    const long prefill_points = fail_each_allocation(
        exhaustion, [&] { decoder.prefill(x, shape, y, layers::Routing::top_k, {}, &inputs); },
        [&] { return as_before(empty); }, [&] { restore(empty); });
    CHECK(prefill_points >= 2);
    CHECK(decoder.positions()[0] == 6);
  }

  inputs.assign(1, RowMatrix<float>::Constant(1, 1, 3.f));
  const RowMatrix<float> token = random_matrix<float>(2, 64, 36);
  const auto prompt = decoder.checkpoint();
  for (const Exhaustion exhaustion : {Exhaustion::one, Exhaustion::onward}) {
    restore(prompt);
    const long step_points = fail_each_allocation(
        exhaustion, [&] { decoder.step(token, out, layers::Routing::predictor, &inputs); },
        [&] { return as_before(prompt); }, [&] { restore(prompt); });
    CHECK(step_points >= 1);
    CHECK(decoder.positions()[0] == 7);
  }
}

TEST_CASE("a CachedAttention decode step allocates nothing once warm" * doctest::skip(!counting)) {
  const layers::AttentionConfig config{512, 8, 2, 64, 10000.0, 1e-6};
  const auto attention = layers::Attention<float>::random(config, 17);
  const Index batch = 4, prompt = 200, steps = 6;
  KvCache<float> cache(batch, config.kv_width(), prompt + steps);
  const layers::CachedAttention<float> cached(attention, cache);
  Arena<float> arena;

  // Prefill: every sequence's prompt at positions 0 .. prompt - 1.
  const RowMatrix<float> prompt_x = random_matrix<float>(batch * prompt, 512, 18);
  std::vector<Position> prompt_positions;
  std::vector<Index> prompt_offsets{0};
  for (Index b = 0; b < batch; ++b) {
    for (Index p = 0; p < prompt; ++p) prompt_positions.push_back(Position(p));
    prompt_offsets.push_back(prompt_offsets.back() + prompt);
  }
  RowMatrix<float> prompt_out(batch * prompt, 512);
  cached(Routed<float>{prompt_x, prompt_positions, prompt_offsets, &arena}, prompt_out);

  // Decode: one new token per sequence per step.
  const RowMatrix<float> step_x = random_matrix<float>(batch, 512, 19);
  RowMatrix<float> step_out(batch, 512);
  std::vector<Position> step_positions(static_cast<std::size_t>(batch));
  std::vector<Index> step_offsets(std::size_t(batch + 1));
  for (Index b = 0; b <= batch; ++b) step_offsets[std::size_t(b)] = b;
  Position next = Position(prompt);
  auto step = [&] {
    std::fill(step_positions.begin(), step_positions.end(), next++);
    cached(Routed<float>{step_x, step_positions, step_offsets, &arena}, step_out);
  };
  CHECK(mallocs_after_warm_up(step, steps - 2) == 0);
  CHECK(cache.size(0) == prompt + steps);
}
TEST_CASE("Decoder steps allocate nothing once one has run, with the context growing, either causal rule" *
          doctest::skip(!counting)) {
  layers::DecoderConfig config;
  config.layers = 2;  // layer 1 is MoD
  config.attention = {.d_model = 128, .n_heads = 4, .n_kv_heads = 2, .head_dim = 32};
  config.mlp = {.d_model = 128, .hidden = 256};
  config.predictor_hidden = 16;
  const Index batch = 2, prompt = 8, steps = 100;
  const RowMatrix<float> x = random_matrix<float>(batch * prompt, 128, 31);
  const RowMatrix<float> token = random_matrix<float>(batch, 128, 32);
  RowMatrix<float> y(batch * prompt, 128), out(batch, 128);
  for (const layers::Routing routing : {layers::Routing::router, layers::Routing::predictor}) {
    layers::Decoder<float> decoder(config, 33);
    decoder.reset(batch, prompt + steps + 2, prompt + steps + 2);  // one more for the restore loop
    decoder.prefill(x, {batch, prompt}, y, layers::Routing::top_k);
    decoder.step(token, out, routing);
    INFO("routing ", int(routing));
    CHECK(count_mallocs([&] {
            for (Index s = 0; s < steps; ++s) decoder.step(token, out, routing);
          }) == 0);
    CHECK(decoder.positions()[0] == prompt + steps + 1);
    // Decoding again from one point, as the benchmarks do: step, restore, step, ... (restore
    // keeps a record of where sequences went back to; going back to the same point reuses it).
    const auto mark = decoder.checkpoint();
    auto again = [&] {
      decoder.step(token, out, routing);
      decoder.restore(mark);
    };
    CHECK(mallocs_after_warm_up(again, 20) == 0);
    CHECK(decoder.positions()[0] == prompt + steps + 1);
  }
}

#endif
