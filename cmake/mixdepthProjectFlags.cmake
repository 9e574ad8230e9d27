# Flags for mixdepth's own tests, benchmarks and examples; never part of the installed
# interface. Link `mixdepth_project_flags` to get them.
set(CMAKE_CXX_EXTENSIONS OFF)

add_library(mixdepth_project_flags INTERFACE)
# -ffp-contract=off: GCC fuses a*b+c into an FMA by default (even in ISO C++ mode), which
# would make results depend on the optimiser; the tests compare kernels bit for bit.
target_compile_options(mixdepth_project_flags INTERFACE -Wall -Wextra -Wpedantic -ffp-contract=off)
target_link_libraries(mixdepth_project_flags INTERFACE mixdepth::mixdepth)
if(MIXDEPTH_NATIVE)
  # GCC 12 reports a false -Wmaybe-uninitialized inside its own AVX-512 intrinsics when
  # Eigen inlines them; it drowns real warnings.
  target_compile_options(mixdepth_project_flags INTERFACE -march=native
    $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
endif()
if(MIXDEPTH_SANITIZE)
  target_compile_options(mixdepth_project_flags INTERFACE
    -fsanitize=${MIXDEPTH_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(mixdepth_project_flags INTERFACE -fsanitize=${MIXDEPTH_SANITIZE})
endif()
