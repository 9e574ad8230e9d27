#pragma once
// Causal routing: a decision per token from that token alone, for autoregressive decoding
// (top-k over a sequence looks at future tokens). See README.md, Semantics.
#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

#include "arena.hpp"
#include "error.hpp"
#include "types.hpp"

namespace mixdepth {

// A causal routing rule writes routed[i] = 1 when row i of x goes through the block, 0
// otherwise, looking only at row i (its input x_i and its router logit). Scratch memory, if
// any, comes from `scratch` (rewound by the caller).
template <class R, class T>
concept CausalRule = requires(const R& rule, MatrixCRef<T> x, std::span<const T> router_logits,
                              std::span<std::uint8_t> routed, Arena<T>& scratch) {
  rule.route(x, router_logits, routed, scratch);
};

// The router's own logit as the decision: routed when r_i > threshold (0: sigmoid(r) > 0.5),
// for a router trained with the auxiliary loss (aux_loss.hpp).
template <class T>
struct RouterThreshold {
  T threshold = T(0);
  void route(MatrixCRef<T> x, std::span<const T> router_logits, std::span<std::uint8_t> routed,
             Arena<T>&) const {
    constexpr std::string_view where = "RouterThreshold::route";
    detail::require_equal(where, "router_logits.size()", x.rows(), static_cast<Index>(router_logits.size()));
    detail::require_equal(where, "routed.size()", x.rows(), static_cast<Index>(routed.size()));
    for (std::size_t i = 0; i < routed.size(); ++i) routed[i] = router_logits[i] > threshold;
  }
};

}  // namespace mixdepth
