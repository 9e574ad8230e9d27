#pragma once
// Counts every heap allocation of the process, Eigen's own included: malloc and its relatives
// are interposed (glibc) and forwarded to glibc's implementation. Linked into the benchmarks
// (their `allocs` counters) and the test suite (test_zero_alloc.cpp).
//
// Under AddressSanitizer the interposition is compiled out (ASan owns the malloc family);
// active() is then false and count() stays 0.
namespace heap_counter {
long count();
bool active();
}  // namespace heap_counter
