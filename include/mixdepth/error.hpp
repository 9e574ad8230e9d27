#pragma once
// mixdepth::Error and the argument checks every public entry point runs before it writes
// anything. Free of Eigen so that kernels and tools can use it too.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mixdepth {

using Index = std::ptrdiff_t;    // sizes and counts
using Position = std::int32_t;   // token positions and row indices in kernels

// Thrown for bad input. The message names the argument, the expected and the actual value:
//   "mixdepth: Block::forward: y.rows(): expected 64, got 32"
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class Expected, class Actual>
[[noreturn]] void fail(std::string_view where, std::string_view argument, const Expected& expected,
                       const Actual& actual) {
  std::ostringstream message;
  message << "mixdepth: " << where << ": " << argument << ": expected " << expected << ", got "
          << actual;
  throw Error(message.str());
}

// Throws unless `actual == expected`.
template <class A, class B>
void require_equal(std::string_view where, std::string_view argument, const A& expected,
                   const B& actual) {
  if (!(expected == actual)) fail(where, argument, expected, actual);
}

}  // namespace detail
}  // namespace mixdepth
