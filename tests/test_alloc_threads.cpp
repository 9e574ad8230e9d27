// Block::forward allocates nothing once its workspace has seen the shape, and a const block
// is safe from several threads with one workspace each.
#include "test_helpers.hpp"

#include <atomic>
#include <cstdlib>
#include <new>
#include <thread>

#include "heap_counter.hpp"

// Counts every operator new in this test binary (Eigen's own mallocs are caught separately
// by EIGEN_RUNTIME_NO_MALLOC, defined for the whole test executable).
namespace {
std::atomic<long> allocations{0};
}

// The replacements below pair malloc/aligned_alloc with free on purpose.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, std::align_val_t align) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(align);
  if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t align) { return ::operator new(size, align); }
// The nothrow forms too: left to the runtime (or to AddressSanitizer's), they would hand out
// memory that the replaced operator delete then frees with the wrong deallocator.
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return ::operator new(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept { return ::operator new(size, tag); }
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  try {
    return ::operator new(size, align);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t& tag) noexcept {
  return ::operator new(size, align, tag);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace mixdepth;
using namespace mixdepth::testing;

namespace {

// A block function that takes scratch from the workspace's arena, as real layers do.
struct ArenaUser {
  template <class T>
  void operator()(const Routed<T>& in, std::type_identity_t<MatrixRef<T>> out) const {
    detail::ScratchScope<T> scratch(in.scratch);
    auto squared = scratch->matrix(in.x.rows(), in.x.cols());
    squared = in.x.cwiseProduct(in.x);
    auto shifted = scratch->matrix(in.x.rows(), in.x.cols());
    shifted = in.x.array() + T(1);
    out = squared + shifted;
    for (Index j = 0; j < in.rows(); ++j) out.row(j) *= T(1) + T(in.positions[std::size_t(j)]) / T(100);
  }
};

// operator new calls, plus every malloc where heap_counter is active (not under ASan): Eigen's
// own mallocs too, which set_is_malloc_allowed() only catches with assertions on.
template <class Call>
long count_allocations(Call&& call) {
  const long before = allocations.load(), heap_before = heap_counter::count();
  Eigen::internal::set_is_malloc_allowed(false);
  call();
  Eigen::internal::set_is_malloc_allowed(true);
  return (allocations.load() - before) + (heap_counter::count() - heap_before);
}

}  // namespace

TEST_CASE("the allocation counter sees allocations (the check can fail)") {
  CHECK(count_allocations([] { std::vector<int> v(100); v[3] = 1; }) >= 1);
}

TEST_CASE_TEMPLATE("Block::forward makes no heap allocation once the workspace has seen the shape", T, float, double) {
  const Index d = 32;
  Block<T, ArenaUser> block(Router<T>(random_vector<T>(d, 1)), Capacity::fraction(0.125), ArenaUser{}, Gate::sigmoid);
  Workspace<T> ws;
  const Shape big{4, 256}, small{2, 100};
  const RowMatrix<T> x = random_matrix<T>(big.rows(), d, 2);
  RowMatrix<T> y(big.rows(), d);
  const std::vector<Index> lengths = {256, 17, 0, 200};
  block.forward(x, big, y, ws, lengths);  // warm-up: the workspace grows here
  block.forward(x, big, y, ws);
  CHECK(count_allocations([&] { block.forward(x, big, y, ws); }) == 0);
  CHECK(count_allocations([&] { block.forward(x, big, y, ws, lengths); }) == 0);
  CHECK(count_allocations([&] { block.forward(x.topRows(small.rows()), small, y.topRows(small.rows()), ws); }) == 0);
  RowMatrix<T> inplace = x;
  CHECK(count_allocations([&] { block.forward_inplace(inplace, big, ws); }) == 0);

  // reserve() up front makes even the first call allocation-free (the arena still learns its size).
  Workspace<T> reserved;
  reserved.reserve(big, d, Capacity::fraction(0.125)(big.seq_len));
  reserved.arena().take(2 * big.rows() * d + 1024);
  reserved.arena().reset();
  CHECK(count_allocations([&] { block.forward(x, big, y, reserved); }) == 0);
}

TEST_CASE_TEMPLATE("a const block gives identical results from several threads, one workspace each", T, float, double) {
  const Index d = 24;
  const Block<T, ArenaUser> block(Router<T>(random_vector<T>(d, 3)), Capacity::fraction(0.25), ArenaUser{});
  const Shape shape{3, 64};
  constexpr int inputs = 8, threads = 4, rounds = 20;
  std::vector<RowMatrix<T>> xs, expected;
  for (int i = 0; i < inputs; ++i) {
    xs.push_back(random_matrix<T>(shape.rows(), d, 100 + std::uint64_t(i)));
    expected.emplace_back(shape.rows(), d);
    Workspace<T> ws;
    block.forward(xs.back(), shape, expected.back(), ws);
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      Workspace<T> ws;
      RowMatrix<T> y(shape.rows(), d);
      for (int r = 0; r < rounds; ++r) {
        const int i = (t * 3 + r) % inputs;
        block.forward(xs[std::size_t(i)], shape, y, ws);
        if (!bit_equal(y, expected[std::size_t(i)])) mismatches.fetch_add(1);
      }
    });
  for (auto& th : pool) th.join();
  CHECK(mismatches.load() == 0);
}
