#!/usr/bin/python3
"""PyTorch peer for mixdepth's benchmarks: the same paper-exact dense and MoD blocks, and
torch.topk, on the shapes of bench/bench_block.cpp and bench/bench_topk.cpp, on one thread.

    taskset -c 1 /usr/bin/python3 bench/peers/torch_peer.py [--repeats N]

Needs Debian's python3-torch (PyTorch 1.13, CPU). Its CPU matrix products go through
whichever libblas.so.3 Debian's alternatives select: the reference BLAS by default (about
3 GFLOP/s here), OpenBLAS once `apt-get install libopenblas0-pthread` is done (about 100).
Use OpenBLAS for a fair peer (the script sets OPENBLAS_NUM_THREADS=1 unless it is set).
Debian 12's OpenBLAS (0.3.21) does not know newer CPUs, such as Intel's Emerald Rapids
(family 6 model 207), and runs them on its generic Prescott kernels at about 19 GFLOP/s
instead of 140: when it would, and OPENBLAS_CORETYPE is not set, the script sets it to the
kernels the CPU's flags allow (SkylakeX for AVX-512, Haswell for AVX2) and says so in its
first line. Prints one line per case with the median
time over repetitions, in the units Google Benchmark uses, so bench/README.md can put the
two side by side. The blocks are written here from the semantics in README.md, not
taken from any other implementation:
  dense:  y = x + f(x),  f = a + m(x + a),  a = Attn(RMSNorm(x)),  m = SwiGLU(RMSNorm(.))
  MoD:    r = x w,  top-k per sequence (ascending positions),  y_i = x_i + r_i f_i on the
          selected rows (f sees their original positions for RoPE and the causal mask).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before torch loads OpenBLAS


def openblas_core():
    """The OpenBLAS kernels this process will use, and why: OPENBLAS_CORETYPE as set, or
    OpenBLAS's own choice, or (when that is its generic fallback on a CPU with AVX-512 or
    AVX2) the kernels for those, which this function then sets. Runs before torch loads."""
    assert "torch" not in sys.modules, "openblas_core() must run before torch is imported"
    if os.environ.get("OPENBLAS_CORETYPE"):
        return f"{os.environ['OPENBLAS_CORETYPE']} (OPENBLAS_CORETYPE as set)"
    probe = subprocess.run([sys.executable, "-c", "import torch; torch.ones(2, 2) @ torch.ones(2, 2)"],
                           env=dict(os.environ, OPENBLAS_VERBOSE="2"), capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit(f"torch_peer.py: importing torch failed:\n{probe.stderr.strip()}")
    found = re.search(r"Core: (\S+)", probe.stdout + probe.stderr)
    detected = found.group(1) if found else "unknown"
    if detected != "Prescott":
        return f"{detected} (detected)"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return f"{detected} (detected)"
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        core = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        core = "Haswell"
    else:
        return f"{detected} (detected)"
    os.environ["OPENBLAS_CORETYPE"] = core
    return f"{core} (set: this OpenBLAS did not know the CPU and chose its generic {detected})"


OPENBLAS_CORE = openblas_core()
import torch  # noqa: E402

D_MODEL, HEADS, HEAD_DIM, HIDDEN = 512, 8, 64, 1536
TOPK_SIZES = [(256, 32), (1024, 128), (4096, 512), (16384, 2048), (32768, 4096), (4096, 2048)]


def pool_size(n):
    # As bench_topk.cpp: at least 64 sequences and 256 KiB of scores, so that the branch
    # predictor cannot learn a small pool of short sequences.
    return max(64, (256 << 10) // (n * 4))


def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x, positions, theta=10000.0):
    # x: [heads, n, head_dim]; rotate-half pairs (i, i + head_dim/2) by position * theta^(-2i/hd)
    half = x.shape[-1] // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = positions.to(torch.float64)[:, None] * inv[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Layer:
    def __init__(self, seed=11):
        g = torch.Generator().manual_seed(seed)
        def proj(i, o):
            return torch.randn(i, o, generator=g) / i ** 0.5
        self.norm1 = torch.ones(D_MODEL)
        self.norm2 = torch.ones(D_MODEL)
        self.wq, self.wk, self.wv = (proj(D_MODEL, HEADS * HEAD_DIM) for _ in range(3))
        self.wo = proj(HEADS * HEAD_DIM, D_MODEL)
        self.wg, self.wu = proj(D_MODEL, HIDDEN), proj(D_MODEL, HIDDEN)
        self.wd = proj(HIDDEN, D_MODEL)

    def attention(self, x, positions):
        n = x.shape[0]
        h = rms_norm(x, self.norm1)
        q = (h @ self.wq).view(n, HEADS, HEAD_DIM).transpose(0, 1)
        k = (h @ self.wk).view(n, HEADS, HEAD_DIM).transpose(0, 1)
        v = (h @ self.wv).view(n, HEADS, HEAD_DIM).transpose(0, 1)
        # The scale goes on q (n x d multiplies, not heads x n x n) and the mask is applied in
        # place: no n x n temporaries beyond the scores and their softmax.
        q, k = rope(q, positions) * HEAD_DIM ** -0.5, rope(k, positions)
        scores = q @ k.transpose(1, 2)
        scores.masked_fill_(positions[None, :] > positions[:, None], float("-inf"))
        context = torch.softmax(scores, dim=-1) @ v
        return context.transpose(0, 1).reshape(n, HEADS * HEAD_DIM) @ self.wo

    def mlp(self, x):
        h = rms_norm(x, self.norm2)
        return (torch.nn.functional.silu(h @ self.wg) * (h @ self.wu)) @ self.wd

    def update(self, x, positions):
        a = self.attention(x, positions)
        return a + self.mlp(x + a)


def dense_block(layer, x):
    return x + layer.update(x, torch.arange(x.shape[0]))


def mod_block(layer, router, x, k):
    r = x @ router
    selected = torch.topk(r, k, sorted=False).indices.sort().values
    y = x.clone()
    y[selected] = x[selected] + r[selected, None] * layer.update(x[selected], selected)
    return y


def block_cases():
    """(name, function) for each block case, named as bench_block.cpp names it without BM_."""
    torch.manual_seed(0)
    layer = Layer()
    router = torch.randn(D_MODEL) / D_MODEL ** 0.5
    cases = []
    for seq_len in (512, 2048):
        x = torch.randn(seq_len, D_MODEL)
        cases.append((f"Block_Dense/{seq_len}/0", lambda x=x: dense_block(layer, x)))
        for per_mille in (125, 250, 500):
            k = -(-seq_len * per_mille // 1000)
            cases.append((f"Block_MoD/{seq_len}/{per_mille}", lambda x=x, k=k: mod_block(layer, router, x, k)))
    return cases


def median_seconds(fn, repeats, min_time=0.2):
    fn()
    samples = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / count)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gemm = median_seconds(lambda: a @ b, args.repeats)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.repeats}, "
          f"SGEMM 1024^3 {2 * 1024 ** 3 / gemm * 1e-9:.1f} GFLOP/s, OpenBLAS core {OPENBLAS_CORE}")

    with torch.no_grad():
        for n, k in TOPK_SIZES:
            size = pool_size(n)
            for label, pool in (("TopK", [torch.randn(n) for _ in range(size)]),
                                ("TopK_Ties", [torch.randint(0, 4, (n,)).float() for _ in range(size)])):
                state = {"i": 0}
                def run():
                    s = pool[state["i"] % size]
                    state["i"] += 1
                    torch.topk(s, k, sorted=False).indices.sort()
                print(f"torch_{label}/{n}/{k} {median_seconds(run, args.repeats) * 1e9:.0f} ns")

        for name, run in block_cases():
            t = median_seconds(run, args.repeats, min_time=0.5)
            print(f"torch_{name} {t * 1e6:.0f} us")


if __name__ == "__main__":
    main()
