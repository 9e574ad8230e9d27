#pragma once
// Which compiled kernel a call runs.
//
// Static dispatch (the default): `dispatched::*<T, Arch = entry_arch>` call the kernels
// compiled for this translation unit's -m flags (scalar loops without SIMD flags or with
// MIXDEPTH_FORCE_SCALAR). The defaulted Arch parameter puts the architecture into every
// mangled name, so units compiled with different flags keep apart copies.
//
// Runtime dispatch (MIXDEPTH_RUNTIME_DISPATCH, opt-in): the same calls go through the table
// of the best architecture the running CPU supports, among those a library built with
// mixdepth_add_dispatch_library() (cmake/mixdepthDispatch.cmake) compiled, one translation
// unit per architecture. Link that library; it defines MIXDEPTH_RUNTIME_DISPATCH for you.
// The functions that call these entry points (select_top_k, Block, Router::score, ...) take
// entry_arch by default, which is a tag of its own in this mode (arch.hpp), so their names
// differ from static dispatch's and a program may mix units of both modes, as long as no
// reference layer or CausalPredictor type is instantiated in units of both (README).
#include <cstddef>
#include <cstdint>

#include "arch.hpp"
#include "rows_simd.hpp"
#include "topk_simd.hpp"

namespace mixdepth::kernels {

namespace runtime {

// The kernels of one architecture, as compiled in one unit of the dispatch library.
struct kernel_table {
  const char* name;  // the target name given to mixdepth_add_dispatch_library()
  const char* arch;  // the xsimd architecture the unit was compiled for, or "scalar"
  void (*top_k_float)(const float*, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, std::int32_t*,
                      std::int32_t*);
  void (*top_k_double)(const double*, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, std::int32_t*,
                       std::int64_t*);
  void (*router_scores_float)(const float*, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, const float*,
                              float, float*);
  void (*router_scores_double)(const double*, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t,
                               const double*, double, double*);
  void (*gather_rows_float)(const float*, std::ptrdiff_t, const std::int32_t*, std::ptrdiff_t,
                            std::ptrdiff_t, float*, std::ptrdiff_t);
  void (*gather_rows_double)(const double*, std::ptrdiff_t, const std::int32_t*, std::ptrdiff_t,
                             std::ptrdiff_t, double*, std::ptrdiff_t);
  void (*scatter_gated_float)(const float*, std::ptrdiff_t, float*, std::ptrdiff_t, const std::int32_t*,
                              std::ptrdiff_t, std::ptrdiff_t, const float*, std::ptrdiff_t, const float*);
  void (*scatter_gated_double)(const double*, std::ptrdiff_t, double*, std::ptrdiff_t,
                               const std::int32_t*, std::ptrdiff_t, std::ptrdiff_t, const double*,
                               std::ptrdiff_t, const double*);
};

// A kernel_table filled with the kernels of `Arch`. Used by the dispatch library's units.
template <class Arch>
constexpr kernel_table make_kernel_table(const char* name) {
  return {name,
          Arch::name(),
          &kernels::top_k<Arch, float>,
          &kernels::top_k<Arch, double>,
          &kernels::router_scores<Arch, float>,
          &kernels::router_scores<Arch, double>,
          &kernels::gather_rows<Arch, float>,
          &kernels::gather_rows<Arch, double>,
          &kernels::scatter_gated<Arch, float>,
          &kernels::scatter_gated<Arch, double>};
}

#if defined(MIXDEPTH_RUNTIME_DISPATCH)
// Defined by the dispatch library. active(): the best compiled table this CPU runs (chosen
// once). compiled(): every compiled table, best first, `count` of them; tests use it to run
// each one the CPU supports.
const kernel_table& active() noexcept;
const kernel_table* const* compiled(std::size_t& count) noexcept;
bool supported(const kernel_table& table) noexcept;
#endif

}  // namespace runtime

// The entry points mixdepth's own functions call.
namespace dispatched {

#if defined(MIXDEPTH_RUNTIME_DISPATCH)
#define MIXDEPTH_KERNEL_CALL(kernel, T, ...)                                              \
  do {                                                                                    \
    if constexpr (std::is_same_v<T, float>)                                               \
      runtime::active().kernel##_float(__VA_ARGS__);                                      \
    else                                                                                  \
      runtime::active().kernel##_double(__VA_ARGS__);                                     \
  } while (false)
#else
#define MIXDEPTH_KERNEL_CALL(kernel, T, ...) kernels::kernel<Arch, T>(__VA_ARGS__)
#endif

template <class T, class Arch = entry_arch>
void top_k(const T* scores, std::ptrdiff_t n, std::ptrdiff_t valid, std::ptrdiff_t k, std::int32_t* out,
           rank_key_t<T>* scratch) {
  MIXDEPTH_KERNEL_CALL(top_k, T, scores, n, valid, k, out, scratch);
}

template <class T, class Arch = entry_arch>
void router_scores(const T* x, std::ptrdiff_t x_stride, std::ptrdiff_t rows, std::ptrdiff_t d,
                   const T* weight, T bias, T* logits) {
  MIXDEPTH_KERNEL_CALL(router_scores, T, x, x_stride, rows, d, weight, bias, logits);
}

template <class T, class Arch = entry_arch>
void gather_rows(const T* src, std::ptrdiff_t src_stride, const std::int32_t* rows, std::ptrdiff_t n,
                 std::ptrdiff_t d, T* dst, std::ptrdiff_t dst_stride) {
  MIXDEPTH_KERNEL_CALL(gather_rows, T, src, src_stride, rows, n, d, dst, dst_stride);
}

template <class T, class Arch = entry_arch>
void scatter_gated(const T* x, std::ptrdiff_t x_stride, T* y, std::ptrdiff_t y_stride,
                   const std::int32_t* rows, std::ptrdiff_t n, std::ptrdiff_t d, const T* update,
                   std::ptrdiff_t update_stride, const T* gates) {
  MIXDEPTH_KERNEL_CALL(scatter_gated, T, x, x_stride, y, y_stride, rows, n, d, update, update_stride,
                       gates);
}

#undef MIXDEPTH_KERNEL_CALL

}  // namespace dispatched
}  // namespace mixdepth::kernels
