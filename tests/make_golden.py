#!/usr/bin/env python3
"""Golden files for tests/test_golden.cpp: the MoD block of Eq. 1 computed independently in
PyTorch, in float64, so that the C++ test measures mixdepth's own rounding error.

Regenerate (needs PyTorch; Debian 12: `apt-get install python3-torch`, then use the system
interpreter /usr/bin/python3), from the repository root:

    /usr/bin/python3 tests/make_golden.py            # writes tests/data/golden/
    /usr/bin/python3 tests/make_golden.py --check    # recomputes, compares with the files

The output depends only on the seeds below and on PyTorch's CPU generator; the files are
committed and CI only reads them.

What is computed, per configuration (see CONFIGS):
  r_i = x_i . w + bias                                       router logit
  k   = ceil(c * S) for Capacity::fraction(c), with c taken as the exact decimal it is
        written as (0.28 * 25 gives 7, not 8); min(n, S) for Capacity::tokens(n)
  top-k per sequence: largest r first, ties to the lower position, padding positions
        (>= length) after every valid token; the kept valid positions in ascending order
  f   = the block function on the routed rows X~ of the batch:
        "tanh":          f_i = tanh(x_i W + s * p_i)          (p_i: position in its sequence)
        "attention_mlp": f = a + m(X~ + a), a = attn(X~)      (mixdepth::sequential)
        "attention":     f = attn(X~)
        "mlp":           f = m(X~)
        attn: RMSNorm, Q/K/V projections, rotate-half RoPE at each row's original position
              (angle p * theta^(-2i/head_dim)), grouped-query heads (query head h reads
              key/value head h // (n_heads / n_kv_heads)), causal by position within each
              sequence, softmax(q k / sqrt(head_dim)), output projection
        m:    RMSNorm, then (silu(n W_gate) * (n W_up)) W_down
  y_i = x_i + g(r_i) f_i for routed rows (g = identity or sigmoid), y_i = x_i otherwise.
All inputs and weights are rounded to float32 first, so float and double runs of mixdepth see
exactly the same numbers. Inputs are redrawn until the k-th and (k+1)-th valid logits of every
sequence differ by at least 1e-3, so float32 logits select the same tokens.

File format (little-endian), one file per configuration, tests/data/golden/<name>.bin:
    8 bytes   magic b"MDGOLD1\\n"
    u32       number of arrays
    per array:
      u32       name length, then the name in ASCII
      u32       number of dimensions (0 for a scalar)
      u64 x dims
      f64 x product(dims)   values, row-major (integers are stored exactly as f64)
tests/data/golden/index.txt lists the configuration names, one per line ('#' starts a comment).

Arrays in every file: batch, seq_len, d_model, gate (0 identity, 1 sigmoid), capacity_kind
(0 fraction, 1 tokens), capacity_value, k, function (0 tanh, 1 attention_mlp, 2 attention,
3 mlp), router_weight [d], router_bias, x [B*S, d], routed_rows [n] (global row indices, in
the order mixdepth routes them), y [B*S, d]; lengths [B] when some sequence has padding;
tanh_weight [d, d] and tanh_position_scale for "tanh"; attention_config [n_heads, n_kv_heads,
head_dim, rope_theta, norm_eps], attention_norm [d], attention_query [d, H*hd], attention_key
[d, KV*hd], attention_value [d, KV*hd], attention_output [H*hd, d] with attention; mlp_config
[hidden, norm_eps], mlp_norm [d], mlp_gate [d, h], mlp_up [d, h], mlp_down [h, d] with the MLP.
"""

import argparse
import math
import pathlib
import struct
import sys
from fractions import Fraction

import torch

MAGIC = b"MDGOLD1\n"
OUTPUT = pathlib.Path(__file__).resolve().parent / "data" / "golden"
FUNCTIONS = {"tanh": 0, "attention_mlp": 1, "attention": 2, "mlp": 3}
GATES = {"identity": 0, "sigmoid": 1}
MIN_LOGIT_GAP = 1e-3

# name, batch, seq_len, d_model, lengths (None: no padding), gate, capacity, function, layers.
# capacity: ("fraction", "0.28") with the decimal as written, or ("tokens", n). In binary,
# 0.28 * 25, 0.14 * 50 and 0.56 * 25 come out as 7.000000000000001, 7.000000000000001 and
# 14.000000000000002: a plain ceil would take one token too many.
CONFIGS = [
    dict(name="tanh_identity_half", batch=2, seq_len=8, d_model=8, lengths=None,
         gate="identity", capacity=("fraction", "0.5"), function="tanh"),
    dict(name="tanh_sigmoid_padding_exact_decimal", batch=3, seq_len=25, d_model=6,
         lengths=[25, 4, 0], gate="sigmoid", capacity=("fraction", "0.28"), function="tanh"),
    dict(name="tanh_exact_decimal_with_padding", batch=4, seq_len=50, d_model=4,
         lengths=[50, 2, 17, 50], gate="identity", capacity=("fraction", "0.14"), function="tanh"),
    dict(name="tanh_tokens_above_seq_len", batch=2, seq_len=3, d_model=5, lengths=None,
         gate="sigmoid", capacity=("tokens", 5), function="tanh"),
    dict(name="tanh_zero_tokens", batch=2, seq_len=6, d_model=4, lengths=None,
         gate="identity", capacity=("tokens", 0), function="tanh"),
    dict(name="block_eighth_mha", batch=2, seq_len=16, d_model=16, lengths=None,
         gate="identity", capacity=("fraction", "0.125"), function="attention_mlp",
         attention=(4, 4, 4, 10000.0, 1e-6), mlp=(32, 1e-6)),
    dict(name="block_half_gqa2_padding", batch=3, seq_len=12, d_model=16, lengths=[12, 5, 9],
         gate="sigmoid", capacity=("fraction", "0.5"), function="attention_mlp",
         attention=(4, 2, 8, 10000.0, 1e-6), mlp=(24, 1e-6)),
    dict(name="block_tokens_gqa4_short_sequence", batch=2, seq_len=20, d_model=32, lengths=[20, 3],
         gate="identity", capacity=("tokens", 7), function="attention_mlp",
         attention=(8, 2, 4, 10000.0, 1e-5), mlp=(48, 1e-5)),
    dict(name="block_dense_mqa_theta_500000", batch=1, seq_len=24, d_model=16, lengths=None,
         gate="sigmoid", capacity=("fraction", "1"), function="attention_mlp",
         attention=(4, 1, 8, 500000.0, 1e-6), mlp=(32, 1e-6)),
    dict(name="block_three_tenths_empty_sequences", batch=4, seq_len=9, d_model=8,
         lengths=[9, 0, 1, 8], gate="identity", capacity=("fraction", "0.3"),
         function="attention_mlp", attention=(2, 1, 6, 10000.0, 1e-6), mlp=(16, 1e-6)),
    dict(name="block_exact_decimal_capacity", batch=2, seq_len=25, d_model=8, lengths=None,
         gate="sigmoid", capacity=("fraction", "0.56"), function="attention_mlp",
         attention=(2, 2, 4, 10000.0, 1e-6), mlp=(16, 1e-6)),
    dict(name="block_long_sparse", batch=2, seq_len=64, d_model=16, lengths=[64, 40],
         gate="identity", capacity=("fraction", "0.125"), function="attention_mlp",
         attention=(2, 1, 8, 10000.0, 1e-6), mlp=(32, 1e-6)),
    dict(name="block_two_query_blocks", batch=1, seq_len=160, d_model=16, lengths=None,
         gate="identity", capacity=("fraction", "0.5"), function="attention_mlp",
         attention=(4, 2, 4, 10000.0, 1e-6), mlp=(32, 1e-6)),
    dict(name="attention_only_gqa3", batch=2, seq_len=10, d_model=12, lengths=None,
         gate="sigmoid", capacity=("fraction", "0.6"), function="attention",
         attention=(3, 1, 4, 10000.0, 1e-6)),
    dict(name="mlp_only", batch=2, seq_len=10, d_model=12, lengths=[10, 7],
         gate="identity", capacity=("fraction", "0.4"), function="mlp", mlp=(20, 1e-6)),
]


def capacity_k(capacity, seq_len):
    kind, value = capacity
    if kind == "tokens":
        return min(value, seq_len)
    exact = Fraction(value) * seq_len  # the decimal as written, not its binary neighbour
    return min(math.ceil(exact), seq_len)


def as_float32(t):
    """Rounds to float32 and back: every input is exactly representable in float."""
    return t.float().double()


def normal(generator, *shape, scale=1.0):
    return as_float32(torch.randn(*shape, generator=generator, dtype=torch.float64) * scale)


def rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def rope(t, positions, theta):
    """Rotate-half RoPE on t [n, heads, head_dim] at the given positions."""
    half = t.shape[-1] // 2
    exponent = torch.arange(half, dtype=torch.float64) * 2.0 / t.shape[-1]
    angles = positions.double()[:, None] * (theta ** -exponent)[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)[:, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)[:, None, :]
    rotated_half = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
    return t * cos + rotated_half * sin


def attention(x, positions, w, layout):
    """Causal GQA self-attention of one sequence's routed rows x [n, d]."""
    n_heads, n_kv_heads, head_dim, theta, eps = layout
    n = x.shape[0]
    normed = rms_norm(x, w["attention_norm"], eps)
    q = rope((normed @ w["attention_query"]).view(n, n_heads, head_dim), positions, theta)
    k = rope((normed @ w["attention_key"]).view(n, n_kv_heads, head_dim), positions, theta)
    v = (normed @ w["attention_value"]).view(n, n_kv_heads, head_dim)
    k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
    v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
    future = positions[None, :] > positions[:, None]  # [query, key]
    scores = scores.masked_fill(future[None, :, :], float("-inf"))
    context = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)
    return context.reshape(n, n_heads * head_dim) @ w["attention_output"]


def mlp(x, w, layout):
    _, eps = layout
    normed = rms_norm(x, w["mlp_norm"], eps)
    hidden = torch.nn.functional.silu(normed @ w["mlp_gate"]) * (normed @ w["mlp_up"])
    return hidden @ w["mlp_down"]


def block_function(config, w, routed_x, positions, offsets):
    kind = config["function"]
    if kind == "tanh":
        return torch.tanh(routed_x @ w["tanh_weight"] +
                          w["tanh_position_scale"] * positions.double()[:, None])
    if kind == "mlp":
        return mlp(routed_x, w, config["mlp"])

    def attend_each_sequence(rows):
        out = torch.zeros_like(rows)
        for b in range(len(offsets) - 1):
            first, last = offsets[b], offsets[b + 1]
            if last > first:
                out[first:last] = attention(rows[first:last], positions[first:last], w,
                                            config["attention"])
        return out

    a = attend_each_sequence(routed_x)
    if kind == "attention":
        return a
    return a + mlp(routed_x + a, w, config["mlp"])


def top_k_positions(logits, length, k):
    """Contract order: valid before padding, larger logit first, lower position on ties."""
    order = sorted(range(len(logits)), key=lambda i: (i >= length, -logits[i], i))
    return sorted(p for p in order[:k] if p < length)


def logit_gap_is_safe(logits, length, k):
    valid = sorted((logits[i] for i in range(length)), reverse=True)
    if k >= len(valid) or k == 0:
        return True
    return valid[k - 1] - valid[k] >= MIN_LOGIT_GAP


def draw(config, seed):
    generator = torch.Generator().manual_seed(seed)
    d, batch, seq_len = config["d_model"], config["batch"], config["seq_len"]
    w = {"router_weight": normal(generator, d, scale=1.0 / math.sqrt(d)),
         "router_bias": as_float32(torch.tensor(0.1 * (seed % 7 - 3), dtype=torch.float64))}
    x = normal(generator, batch * seq_len, d)
    lengths = config["lengths"] or [seq_len] * batch
    # Padding rows get large logits: the contract still takes them last.
    direction = w["router_weight"] / w["router_weight"].norm()
    for b, length in enumerate(lengths):
        x[b * seq_len + length:(b + 1) * seq_len] += 4.0 * direction
    x = as_float32(x)
    if config["function"] == "tanh":
        w["tanh_weight"] = normal(generator, d, d, scale=1.0 / math.sqrt(d))
        w["tanh_position_scale"] = as_float32(torch.tensor(0.05, dtype=torch.float64))
    if "attention" in config:
        n_heads, n_kv_heads, head_dim, _, _ = config["attention"]
        w["attention_norm"] = as_float32(1.0 + 0.1 * torch.randn(d, generator=generator, dtype=torch.float64))
        w["attention_query"] = normal(generator, d, n_heads * head_dim, scale=1.0 / math.sqrt(d))
        w["attention_key"] = normal(generator, d, n_kv_heads * head_dim, scale=1.0 / math.sqrt(d))
        w["attention_value"] = normal(generator, d, n_kv_heads * head_dim, scale=1.0 / math.sqrt(d))
        w["attention_output"] = normal(generator, n_heads * head_dim, d,
                                       scale=1.0 / math.sqrt(n_heads * head_dim))
    if "mlp" in config:
        hidden, _ = config["mlp"]
        w["mlp_norm"] = as_float32(1.0 + 0.1 * torch.randn(d, generator=generator, dtype=torch.float64))
        w["mlp_gate"] = normal(generator, d, hidden, scale=1.0 / math.sqrt(d))
        w["mlp_up"] = normal(generator, d, hidden, scale=1.0 / math.sqrt(d))
        w["mlp_down"] = normal(generator, hidden, d, scale=1.0 / math.sqrt(hidden))
    return x, w, lengths


def compute(config, seed):
    """Returns the named arrays of one golden file."""
    batch, seq_len, d = config["batch"], config["seq_len"], config["d_model"]
    k = capacity_k(config["capacity"], seq_len)
    for attempt in range(100):
        x, w, lengths = draw(config, seed + 1000 * attempt)
        logits = (x @ w["router_weight"] + w["router_bias"]).tolist()
        if all(logit_gap_is_safe(logits[b * seq_len:(b + 1) * seq_len], lengths[b], k)
               for b in range(batch)):
            break
    else:
        raise RuntimeError(f"{config['name']}: no draw with a safe logit gap")

    rows, positions, offsets = [], [], [0]
    for b in range(batch):
        kept = top_k_positions(logits[b * seq_len:(b + 1) * seq_len], lengths[b], k)
        rows += [b * seq_len + p for p in kept]
        positions += kept
        offsets.append(len(rows))
    rows_t = torch.tensor(rows, dtype=torch.long)
    positions_t = torch.tensor(positions, dtype=torch.long)

    y = x.clone()
    if rows:
        update = block_function(config, w, x[rows_t], positions_t, offsets)
        r = torch.tensor(logits, dtype=torch.float64)[rows_t]
        gate = r if config["gate"] == "identity" else torch.sigmoid(r)
        y[rows_t] = x[rows_t] + gate[:, None] * update

    kind, value = config["capacity"]
    arrays = {
        "batch": batch, "seq_len": seq_len, "d_model": d,
        "gate": GATES[config["gate"]],
        "capacity_kind": 0 if kind == "fraction" else 1,
        "capacity_value": float(value), "k": k,
        "function": FUNCTIONS[config["function"]],
        "router_weight": w["router_weight"], "router_bias": w["router_bias"],
    }
    if config["lengths"] is not None:
        arrays["lengths"] = torch.tensor(lengths, dtype=torch.float64)
    if config["function"] == "tanh":
        arrays["tanh_weight"] = w["tanh_weight"]
        arrays["tanh_position_scale"] = w["tanh_position_scale"]
    if "attention" in config:
        arrays["attention_config"] = torch.tensor(config["attention"], dtype=torch.float64)
        for name in ("norm", "query", "key", "value", "output"):
            arrays["attention_" + name] = w["attention_" + name]
    if "mlp" in config:
        arrays["mlp_config"] = torch.tensor(config["mlp"], dtype=torch.float64)
        for name in ("norm", "gate", "up", "down"):
            arrays["mlp_" + name] = w["mlp_" + name]
    arrays["x"] = x
    arrays["routed_rows"] = torch.tensor(rows, dtype=torch.float64)
    arrays["y"] = y
    return arrays


def encode(arrays):
    out = bytearray(MAGIC)
    out += struct.pack("<I", len(arrays))
    for name, value in arrays.items():
        t = torch.as_tensor(value, dtype=torch.float64).contiguous()
        encoded_name = name.encode("ascii")
        out += struct.pack("<I", len(encoded_name)) + encoded_name
        out += struct.pack("<I", t.dim())
        out += struct.pack(f"<{t.dim()}Q", *t.shape)
        out += struct.pack(f"<{t.numel()}d", *t.flatten().tolist())
    return bytes(out)


def decode(data):
    """The arrays of one file written by encode(): name -> (shape, values)."""
    assert data[:len(MAGIC)] == MAGIC, "not a golden file"
    at = len(MAGIC)

    def take(fmt):
        nonlocal at
        values = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return values

    arrays = {}
    (count,) = take("<I")
    for _ in range(count):
        (length,) = take("<I")
        name = data[at:at + length].decode("ascii")
        at += length
        (dims,) = take("<I")
        shape = take(f"<{dims}Q")
        numel = 1
        for extent in shape:
            numel *= extent
        arrays[name] = (shape, take(f"<{numel}d"))
    return arrays


def same_arrays(committed, recomputed, tolerance=1e-12):
    """The same names and shapes, and values within `tolerance` of each array's largest
    magnitude: another PyTorch build may round the float64 outputs differently in the last
    bits (up to about 4e-16 seen), which the tests' own tolerances are far above."""
    a, b = decode(committed), decode(recomputed)
    if a.keys() != b.keys():
        return False
    for name, (shape, values) in a.items():
        other_shape, other = b[name]
        if shape != other_shape:
            return False
        scale = max([1.0] + [abs(v) for v in other])
        if any(not abs(u - v) <= tolerance * scale for u, v in zip(values, other)):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="recompute and compare with the committed files instead of writing")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)

    files = {}
    for index, config in enumerate(CONFIGS):
        files[config["name"] + ".bin"] = encode(compute(config, seed=20240402 + index))
    index_text = ("# Golden MoD block configurations, written by tests/make_golden.py\n" +
                  "".join(config["name"] + "\n" for config in CONFIGS))

    if args.check:
        stale = [name for name, data in files.items()
                 if not (OUTPUT / name).exists() or not same_arrays((OUTPUT / name).read_bytes(), data)]
        if (OUTPUT / "index.txt").read_text() != index_text:
            stale.append("index.txt")
        print("golden files up to date" if not stale else "stale: " + ", ".join(stale))
        return 1 if stale else 0

    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUTPUT / name).write_bytes(data)
    (OUTPUT / "index.txt").write_text(index_text)
    total = sum(len(data) for data in files.values())
    print(f"wrote {len(files)} golden files ({total} bytes) to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
