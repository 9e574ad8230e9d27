// The static-dispatch unit of the mixed-modes program (no MIXDEPTH_RUNTIME_DISPATCH here).
#include "workload.hpp"

#if defined(MIXDEPTH_RUNTIME_DISPATCH)
#error "mixed_static.cpp must be compiled without runtime dispatch"
#endif

mixed::Result mixed::run_static() { return run("static"); }
