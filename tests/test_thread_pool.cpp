// Opt-in threads: a ThreadPool runs every item exactly once, and a Block forward with a pool
// of any size gives bit for bit what it gives without one.
#include "test_helpers.hpp"

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

using Layer = Sequential<layers::Attention<float>, layers::SwiGluMlp<float>>;

Layer make_layer(std::uint64_t seed) {
  return sequential(layers::Attention<float>::random({64, 4, 2, 16, 10000.0, 1e-6}, seed),
                    layers::SwiGluMlp<float>::random({64, 96, 1e-6}, seed + 1));
}

}  // namespace

TEST_CASE("ThreadPool runs every item exactly once and names every thread below size()") {
  for (int threads : {1, 2, 3, 5}) {
    CAPTURE(threads);
    ThreadPool pool(threads);
    CHECK(pool.size() == threads);
    for (std::int64_t n : {0, 1, 2, 7, 1000}) {
      std::vector<std::atomic<int>> runs(static_cast<std::size_t>(n));
      std::atomic<bool> thread_in_range{true};
      pool.run(n, [&](std::int64_t i, int thread) {
        runs[std::size_t(i)].fetch_add(1);
        if (thread < 0 || thread >= threads) thread_in_range = false;
      });
      bool once = true;
      for (auto& r : runs) once = once && r.load() == 1;
      CHECK(once);
      CHECK(thread_in_range);
    }
  }
}

TEST_CASE("ThreadPool: a run from inside a task runs serially, several callers share one pool") {
  ThreadPool pool(3);
  std::atomic<long> sum{0};
  pool.run(4, [&](std::int64_t, int) {
    pool.run(10, [&](std::int64_t j, int thread) {
      CHECK(thread == 0);  // serial on the calling task's thread
      sum += j;
    });
  });
  CHECK(sum == 4 * 45);

  std::atomic<long> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r) pool.run(17, [&](std::int64_t i, int) { total += i; });
    });
  for (auto& t : callers) t.join();
  CHECK(total == 4 * 50 * (16 * 17 / 2));
}

TEST_CASE("ThreadPool: a throwing task reaches the caller, stops further items, and leaves the pool usable") {
  // Before, a throw on a worker called std::terminate; a throw on the caller left run()
  // while workers still called the task (use after scope) and the pool stayed busy, serial
  // for good.
  ThreadPool pool(3);
  for (int thrower : {0, 1, 2}) {  // which thread throws
    CAPTURE(thrower);
    for (int round = 0; round < 20; ++round) {
      std::atomic<int> started{0};
      std::atomic<bool> thrown{false};
      const std::int64_t n = 10000;
      auto throwing = [&](std::int64_t, int thread) {
        ++started;
        if (thread == thrower && !thrown.exchange(true)) throw std::runtime_error("task failed");
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      };
      try {
        pool.run(n, throwing);
        CHECK(!thrown.load());  // that thread took no item this round: nothing thrown
      } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) == "task failed");
        CHECK(started.load() < n);  // the items not yet started were skipped
      }
    }
  }
  // Still parallel: a second thread joins the run while item 0 waits for it (up to 10 s).
  std::atomic<bool> other_thread{false};
  pool.run(8, [&](std::int64_t i, int thread) {
    if (thread != 0) other_thread = true;
    if (i == 0)
      for (int wait = 0; wait < 10000 && !other_thread; ++wait) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  CHECK(other_thread.load());
}

TEST_CASE("ThreadPool rejects fewer than one thread") {
  require_mentions(error_message([] { ThreadPool pool(0); }), {"ThreadPool", "threads", ">= 1", "0"});
}

TEST_CASE("Block forward with a thread pool equals the forward without one, bit for bit, at 1 to 4 threads") {
  const Index d = 64;
  Block<float, Layer> block(Router<float>(random_vector<float>(d, 1)), Capacity::fraction(0.25), make_layer(2));
  const Shape shape{7, 40};
  const std::vector<Index> lengths{40, 33, 0, 1, 40, 12, 39};
  const std::vector<Index> starts{0, 5, 9, 0, 100, 3, 7};
  const RowMatrix<float> x = random_matrix<float>(shape.rows(), d, 3);
  const RouterThreshold<float> rule{0.1f};

  struct Outputs {
    RowMatrix<float> top_k, padded, inplace, causal, dense;
  };
  auto run = [&](ThreadPool* pool) {
    Workspace<float> ws;
    ws.set_thread_pool(pool);
    Outputs o;
    o.top_k.resize(shape.rows(), d);
    o.padded.resize(shape.rows(), d);
    o.causal.resize(shape.rows(), d);
    o.dense.resize(shape.rows(), d);
    block.forward(x, shape, o.top_k, ws);
    block.forward(x, shape, o.padded, ws, lengths);
    o.inplace = x;
    block.forward_inplace(o.inplace, shape, ws, lengths);
    block.forward_causal(x, shape, o.causal, ws, rule, lengths, starts);
    forward_dense<float>(block.function(), x, shape, o.dense, ws, lengths);
    return o;
  };
  const Outputs serial = run(nullptr);
  CHECK(!bit_equal(serial.top_k, x));  // the block did something
  for (int threads = 1; threads <= 4; ++threads) {
    CAPTURE(threads);
    ThreadPool pool(threads);
    for (int repeat = 0; repeat < 3; ++repeat) {
      const Outputs threaded = run(&pool);
      CHECK(bit_equal(threaded.top_k, serial.top_k));
      CHECK(bit_equal(threaded.padded, serial.padded));
      CHECK(bit_equal(threaded.inplace, serial.inplace));
      CHECK(bit_equal(threaded.causal, serial.causal));
      CHECK(bit_equal(threaded.dense, serial.dense));
    }
  }
}

TEST_CASE("Workspace::set_thread_pool(nullptr) returns to serial forwards") {
  ThreadPool pool(2);
  Workspace<double> ws;
  ws.set_thread_pool(&pool);
  CHECK(ws.thread_pool() == &pool);
  ws.set_thread_pool(nullptr);
  CHECK(ws.thread_pool() == nullptr);
}
