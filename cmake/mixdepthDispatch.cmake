# mixdepth_add_dispatch_library(): opt-in runtime dispatch of mixdepth's SIMD kernels.
#
# By default every translation unit calls the kernels compiled for its own -m flags (static
# dispatch), so one binary runs the instruction set it was built for. To ship one binary
# that uses AVX-512 where the CPU has it, AVX2 where not, and plain loops elsewhere:
#
#   find_package(mixdepth CONFIG REQUIRED)     # or add_subdirectory(mixdepth); both define
#   mixdepth_add_dispatch_library(my_kernels)  # this function
#   target_link_libraries(app PRIVATE my_kernels)
#
# `my_kernels` is a static library of one translation unit per architecture, each compiled
# with that architecture's flags (no flags and MIXDEPTH_FORCE_SCALAR for `scalar`;
# -mavx2 -mfma -mpopcnt for `avx2`; AVX-512 F/CD/BW/DQ/VL plus those for `avx512`; and VBMI2
# too for `avx512vbmi2`), and a
# dispatcher unit compiled without flags that defines mixdepth::kernels::runtime::active(),
# compiled() and supported() (see include/mixdepth/kernels/dispatch.hpp): active() picks,
# once and thread-safely, the best unit the CPU runs (__builtin_cpu_supports). The library
# links mixdepth::mixdepth and defines MIXDEPTH_RUNTIME_DISPATCH for everything that links
# it, which sends select_top_k, the row gather and scatter and Router::score through
# active(). Compile the rest of the program for the oldest CPU it must run on.
#
# Options:
#   ARCHS <arch>...  the units, among avx512vbmi2 avx512 avx2 scalar (default: all that the
#                    target processor and the compiler support; scalar is always added, as
#                    the fallback). All but scalar exist on x86-64 only. avx512vbmi2 is the
#                    avx512 unit plus VBMI2 (Ice Lake, Zen 4 and later), whose byte compress
#                    the top-k's last pass uses.
# The function also sets the target property MIXDEPTH_DISPATCH_ARCHS (the units, best first).
#
# Rules:
#   - Link one dispatch library per program: each defines the runtime:: functions.
#   - Link it to the targets that should dispatch at run time; others may use static
#     dispatch in the same program. select_top_k, Block, Router::score and the rest call
#     the kernels through active() under MIXDEPTH_RUNTIME_DISPATCH, and their default Arch
#     (kernels::entry_arch) is then a tag of its own, so they do not share names, and so
#     code, with the static-dispatch versions (until 2026-11-30 they did: an ODR violation).
#     The reference layers (layers::*) and CausalPredictor do not carry it: units that
#     instantiate the same one must use the same mode (and flags).
#   - Every kernel's name carries the instruction set it was compiled for (the plain-loop
#     kernels' `scalar_arch` tag included), so units of different instruction sets never
#     share a kernel. A static-dispatch unit of the same instruction set as one of these
#     units (say -march=native on an AVX-512 VBMI2 machine) does share them, and the copy
#     the linker keeps may use what its flags add beyond the unit's (BMI1/BMI2 with GCC 12
#     and -march=native; every Intel and AMD CPU with AVX2 has those).
#   - GCC or clang (the -m flags and __builtin_cpu_supports).
include_guard(GLOBAL)
include(CheckCXXCompilerFlag)

# The unit templates: cmake/dispatch in the source tree, <config dir>/dispatch when installed.
set_property(GLOBAL PROPERTY MIXDEPTH_DISPATCH_TEMPLATE_DIR "${CMAKE_CURRENT_LIST_DIR}/dispatch")

function(mixdepth_add_dispatch_library target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "ARCHS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "mixdepth_add_dispatch_library(${target}): unknown arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT TARGET mixdepth::mixdepth)
    message(FATAL_ERROR "mixdepth_add_dispatch_library(${target}): no target mixdepth::mixdepth; "
                        "call find_package(mixdepth) or add_subdirectory(mixdepth) first")
  endif()
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "mixdepth_add_dispatch_library(${target}): needs GCC or clang, not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  get_property(templates GLOBAL PROPERTY MIXDEPTH_DISPATCH_TEMPLATE_DIR)

  set(x86_64 FALSE)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x64)$" AND CMAKE_SIZEOF_VOID_P EQUAL 8)
    set(x86_64 TRUE)
  endif()

  # Per architecture: flags, the xsimd tag, the top-k tier it must reach, the CPU features
  # (names for __builtin_cpu_supports), in order from best to worst.
  set(known avx512vbmi2 avx512 avx2 scalar)
  set(avx512vbmi2_flags -mavx512vbmi2 -mavx512f -mavx512cd -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mpopcnt)
  set(avx512vbmi2_type "mixdepth::kernels::avx512vbmi2")
  set(avx512vbmi2_tier avx512)
  set(avx512vbmi2_features avx512vbmi2 avx512f avx512cd avx512bw avx512dq avx512vl avx2 fma popcnt)
  set(avx512_flags -mavx512f -mavx512cd -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mpopcnt)
  set(avx512_type "xsimd::avx512bw")
  set(avx512_tier avx512)
  set(avx512_features avx512f avx512cd avx512bw avx512dq avx512vl avx2 fma popcnt)
  set(avx2_flags -mavx2 -mfma -mpopcnt)
  set(avx2_type "xsimd::fma3<xsimd::avx2>")
  set(avx2_tier avx2)
  set(avx2_features avx2 fma popcnt)
  set(scalar_flags "")
  set(scalar_type "mixdepth::kernels::scalar_arch")
  set(scalar_tier scalar)
  set(scalar_features "")

  set(requested ${arg_ARCHS})
  set(explicit TRUE)
  if(NOT requested)
    set(explicit FALSE)
    set(requested scalar)
    if(x86_64)
      list(APPEND requested avx512vbmi2 avx512 avx2)
    endif()
  endif()
  foreach(arch IN LISTS requested)
    if(NOT arch IN_LIST known)
      message(FATAL_ERROR "mixdepth_add_dispatch_library(${target}): unknown arch '${arch}' (known: ${known})")
    endif()
    if(NOT arch STREQUAL "scalar" AND NOT x86_64)
      message(FATAL_ERROR "mixdepth_add_dispatch_library(${target}): '${arch}' needs an x86-64 target, "
                          "not ${CMAKE_SYSTEM_PROCESSOR}")
    endif()
  endforeach()
  list(APPEND requested scalar)

  string(MAKE_C_IDENTIFIER "${target}" id)
  set(MIXDEPTH_DISPATCH_TARGET "${target}")
  set(MIXDEPTH_DISPATCH_NAMESPACE "mixdepth_dispatch_${id}")
  set(out_dir "${CMAKE_CURRENT_BINARY_DIR}/${target}_dispatch")
  set(archs "")
  set(sources "")
  set(MIXDEPTH_DISPATCH_DECLARATIONS "")
  set(MIXDEPTH_DISPATCH_CHECKS "")
  set(MIXDEPTH_DISPATCH_ENTRIES "")
  set(MIXDEPTH_DISPATCH_TABLES "")
  foreach(arch IN LISTS known)  # best first, whatever order the caller gave
    if(NOT arch IN_LIST requested)
      continue()
    endif()
    set(flags ${${arch}_flags})
    if(flags)
      string(REPLACE ";" " " flags_text "${flags}")
      string(TOUPPER "${arch}" upper)
      check_cxx_compiler_flag("${flags_text}" MIXDEPTH_DISPATCH_COMPILER_HAS_${upper})
      if(NOT MIXDEPTH_DISPATCH_COMPILER_HAS_${upper})
        if(explicit)
          message(FATAL_ERROR "mixdepth_add_dispatch_library(${target}): the compiler rejects ${flags_text}")
        endif()
        message(STATUS "mixdepth_add_dispatch_library(${target}): no ${arch} unit (the compiler rejects ${flags_text})")
        continue()
      endif()
    else()
      set(flags_text "none")
    endif()
    list(APPEND archs ${arch})

    set(MIXDEPTH_DISPATCH_UNIT ${arch})
    set(MIXDEPTH_DISPATCH_ARCH_TYPE "${${arch}_type}")
    set(MIXDEPTH_DISPATCH_TIER ${${arch}_tier})
    set(MIXDEPTH_DISPATCH_FLAGS_TEXT "${flags_text}")
    set(source "${out_dir}/unit_${arch}.cpp")
    configure_file("${templates}/unit.cpp.in" "${source}" @ONLY)
    set(definitions "")
    if(arch STREQUAL "scalar")
      set(definitions MIXDEPTH_FORCE_SCALAR)
    endif()
    set_source_files_properties("${source}" PROPERTIES
      COMPILE_OPTIONS "${flags}" COMPILE_DEFINITIONS "${definitions}")
    list(APPEND sources "${source}")

    set(condition "")
    foreach(feature IN LISTS ${arch}_features)
      if(condition)
        string(APPEND condition " &&\n         ")
      endif()
      string(APPEND condition "__builtin_cpu_supports(\"${feature}\")")
    endforeach()
    if(NOT condition)
      set(condition "true")
    endif()
    string(APPEND MIXDEPTH_DISPATCH_DECLARATIONS "extern const kernel_table ${arch}_table;\n")
    string(APPEND MIXDEPTH_DISPATCH_CHECKS "bool runs_${arch}() noexcept {\n  return ${condition};\n}\n")
    string(APPEND MIXDEPTH_DISPATCH_ENTRIES "    {&${arch}_table, &runs_${arch}},\n")
    string(APPEND MIXDEPTH_DISPATCH_TABLES "    &${arch}_table,\n")
  endforeach()

  string(REPLACE ";" ", " MIXDEPTH_DISPATCH_ARCHS_TEXT "${archs}")
  set(dispatcher "${out_dir}/dispatcher.cpp")
  configure_file("${templates}/dispatcher.cpp.in" "${dispatcher}" @ONLY)

  add_library(${target} STATIC ${sources} "${dispatcher}")
  target_link_libraries(${target} PUBLIC mixdepth::mixdepth)
  target_compile_definitions(${target} PUBLIC MIXDEPTH_RUNTIME_DISPATCH)
  set_property(TARGET ${target} PROPERTY MIXDEPTH_DISPATCH_ARCHS "${archs}")
endfunction()
