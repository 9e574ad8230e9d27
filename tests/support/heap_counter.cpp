// glibc-specific: the program's own malloc family takes precedence over libc's, and glibc
// exports its implementation as __libc_*. Each call is counted, then forwarded.
#include "heap_counter.hpp"

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>

#if defined(__SANITIZE_ADDRESS__)
#define MIXDEPTH_HEAP_COUNTER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MIXDEPTH_HEAP_COUNTER_ASAN 1
#endif
#endif

#ifndef MIXDEPTH_HEAP_COUNTER_ASAN
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {
std::atomic<long> allocations{0};
std::atomic<long> failing{-1};   // the index of the allocation that fails; -1: none
std::atomic<bool> onward{false};  // every allocation from that index on fails
std::atomic<bool> fired{false};   // one has failed
// Counts one allocation; false when it is one to fail.
bool counted() {
  const long index = allocations.fetch_add(1, std::memory_order_relaxed);
  const long first = failing.load(std::memory_order_relaxed);
  if (first < 0 || index < first || (index > first && !onward.load(std::memory_order_relaxed))) return true;
  fired.store(true, std::memory_order_relaxed);
  errno = ENOMEM;
  return false;
}
}  // namespace

long heap_counter::count() { return allocations.load(std::memory_order_relaxed); }
bool heap_counter::active() { return true; }
void heap_counter::fail_nth(long n) {
  fired.store(false, std::memory_order_relaxed);
  onward.store(false, std::memory_order_relaxed);
  failing.store(n < 0 ? -1 : count() + n, std::memory_order_relaxed);
}
void heap_counter::fail_from(long n) {
  fail_nth(n);
  onward.store(n >= 0, std::memory_order_relaxed);
}
bool heap_counter::failed() { return fired.load(std::memory_order_relaxed); }

extern "C" {
void* malloc(std::size_t n) {
  if (!counted()) return nullptr;
  return __libc_malloc(n);
}
void* calloc(std::size_t count, std::size_t n) {
  if (!counted()) return nullptr;
  return __libc_calloc(count, n);
}
void* realloc(void* p, std::size_t n) {
  if (!counted()) return nullptr;
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  if (!counted()) return nullptr;
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  if (!counted()) return nullptr;
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  if (!counted()) return ENOMEM;
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) { __libc_free(p); }
}
#else
long heap_counter::count() { return 0; }
bool heap_counter::active() { return false; }
void heap_counter::fail_nth(long) {}
void heap_counter::fail_from(long) {}
bool heap_counter::failed() { return false; }
#endif
