#pragma once
// Counts every heap allocation of the benchmark process, Eigen's own included: malloc and its
// relatives are interposed (glibc) and forwarded to glibc's implementation.
#include <atomic>
#include <cstddef>

namespace heap_counter {
long count();
}
