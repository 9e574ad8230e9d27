#pragma once
// Declarations both mixdepth translation units share: each one's block functions, which the
// other unit's Block instantiations call.
#include <mixdepth/mixdepth.hpp>
// ...and every header one by one (generated from the include/ tree by CMake).
#include <odr_all_headers.hpp>

#include "odr_io.hpp"

namespace odr {

void update_a(const mixdepth::Routed<float>& routed, mixdepth::MatrixRef<float> out);
void update_a(const mixdepth::Routed<double>& routed, mixdepth::MatrixRef<double> out);
void update_b(const mixdepth::Routed<float>& routed, mixdepth::MatrixRef<float> out);
void update_b(const mixdepth::Routed<double>& routed, mixdepth::MatrixRef<double> out);

// Both units instantiate exactly these Block types, so the linker merges their code.
template <class T>
using UpdateFunction = void (*)(const mixdepth::Routed<T>&, mixdepth::MatrixRef<T>);
template <class T>
using PointerBlock = mixdepth::Block<T, UpdateFunction<T>>;

}  // namespace odr
