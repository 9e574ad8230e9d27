#pragma once
// The reference layers: RMSNorm, the SwiGLU MLP and causal GQA attention with RoPE, each
// usable as a mixdepth block function (compose them with mixdepth::sequential).
#include "init.hpp"
#include "positions.hpp"
#include "rmsnorm.hpp"
#include "rope.hpp"
#include "mlp.hpp"
#include "attention.hpp"
