#pragma once
// Counts every heap allocation of the process, Eigen's own included: malloc and its relatives
// are interposed (glibc) and forwarded to glibc's implementation. Linked into the benchmarks
// (their `allocs` counters) and the test suite (test_zero_alloc.cpp).
//
// Under AddressSanitizer the interposition is compiled out (ASan owns the malloc family);
// active() is then false and count() stays 0.
#include <limits>

namespace heap_counter {
long count();
bool active();

// The allocations since count() was `before`, per iteration, for a benchmark's counter: NaN
// where nothing is counted (under AddressSanitizer), so that 0 always means none.
inline double per_iteration(long before, double iterations) {
  return active() ? double(count() - before) / iterations : std::numeric_limits<double>::quiet_NaN();
}
}  // namespace heap_counter
