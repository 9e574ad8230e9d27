// The runtime-dispatch unit of the mixed-modes program, and its main().
#include "workload.hpp"

#include <cstdio>

#if !defined(MIXDEPTH_RUNTIME_DISPATCH)
#error "mixed_runtime.cpp must be compiled with runtime dispatch"
#endif

mixed::Result mixed::run_runtime() { return run(mixdepth::kernels::runtime::active().name); }

int main() {
  const mixed::Result a = mixed::run_static(), b = mixed::run_runtime();
  const bool same = a.top == b.top && a.targets == b.targets && a.block == b.block && a.dense == b.dense && a.gathered == b.gathered;
  std::printf("static unit and runtime-dispatch unit (%s): %s\n", b.kernels, same ? "same results" : "DIFFERENT results");
  return same ? 0 : 1;
}
