# Flags for mixdepth's own tests, benchmarks and examples; never part of the installed
# interface. Link `mixdepth_project_flags` to get them.
set(CMAKE_CXX_EXTENSIONS OFF)  # ISO C++: GCC then does not contract a*b+c into an FMA

add_library(mixdepth_project_flags INTERFACE)
target_compile_options(mixdepth_project_flags INTERFACE -Wall -Wextra -Wpedantic)
target_link_libraries(mixdepth_project_flags INTERFACE mixdepth::mixdepth)
if(MIXDEPTH_NATIVE)
  target_compile_options(mixdepth_project_flags INTERFACE -march=native)
endif()
if(MIXDEPTH_SANITIZE)
  target_compile_options(mixdepth_project_flags INTERFACE
    -fsanitize=${MIXDEPTH_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(mixdepth_project_flags INTERFACE -fsanitize=${MIXDEPTH_SANITIZE})
endif()
