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

// Failure injection for tests of exception safety: the allocation `n` calls of the malloc
// family from now (0: the next one) returns null, so that operator new and Eigen throw
// std::bad_alloc; the ones after it succeed again. A negative n disarms. Does nothing where
// !active().
void fail_nth(long n);
// As fail_nth, but every allocation from that one on fails too, until fail_nth(-1): memory
// that stays exhausted, for code that must clean up without allocating.
void fail_from(long n);
// Whether an allocation that fail_nth() or fail_from() armed has failed since.
bool failed();

// The allocations since count() was `before`, per iteration, for a benchmark's counter: NaN
// where nothing is counted (under AddressSanitizer), so that 0 always means none.
inline double per_iteration(long before, double iterations) {
  return active() ? double(count() - before) / iterations : std::numeric_limits<double>::quiet_NaN();
}
}  // namespace heap_counter
