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
void counted() { allocations.fetch_add(1, std::memory_order_relaxed); }
}  // namespace

long heap_counter::count() { return allocations.load(std::memory_order_relaxed); }
bool heap_counter::active() { return true; }

extern "C" {
void* malloc(std::size_t n) {
  counted();
  return __libc_malloc(n);
}
void* calloc(std::size_t count, std::size_t n) {
  counted();
  return __libc_calloc(count, n);
}
void* realloc(void* p, std::size_t n) {
  counted();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  counted();
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  counted();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  counted();
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
#endif
