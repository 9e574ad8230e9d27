#!/usr/bin/python3
"""mixdepth's block benchmarks against the PyTorch peer's, in alternating rounds.

    taskset -c 1 /usr/bin/python3 bench/peers/compare_blocks.py [--bench PATH] [--rounds N] [--repeats N]

Each round runs mixdepth_bench's block benchmarks (BM_Block_Dense, BM_Block_MoD: the median
of --repeats repetitions) and then the same cases of torch_peer.py (the median of as many),
one process after the other on the core this script is pinned to, and prints both times and
their ratio for every case. On a shared, noisy machine a neighbour's load lands on one side
of a ratio; alternating many rounds and taking each case's median ratio over the rounds
keeps one slow stretch from deciding the comparison. The last table gives, per case, the
median, lowest and highest ratio over the rounds.

Needs a Release build of mixdepth_bench (default: build/bench/mixdepth_bench) and Debian's
python3-torch with libopenblas0-pthread (see torch_peer.py).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_peer  # noqa: E402  (sets OPENBLAS_NUM_THREADS=1 before torch loads)
import torch  # noqa: E402


def mixdepth_times(bench, repeats):
    """Median real time in seconds of each BM_Block_* case, keyed by name without BM_."""
    out = subprocess.run(
        [bench, "--benchmark_filter=^BM_Block_", f"--benchmark_repetitions={repeats}",
         "--benchmark_format=json"],
        check=True, capture_output=True, text=True).stdout
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    samples = {}
    for entry in json.loads(out)["benchmarks"]:
        if entry.get("run_type") == "iteration":
            samples.setdefault(entry["run_name"][len("BM_"):], []).append(
                entry["real_time"] * scale[entry["time_unit"]])
    return {name: statistics.median(values) for name, values in samples.items()}


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=os.path.join(root, "build", "bench", "mixdepth_bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"--rounds and --repeats must be >= 1 (got {args.rounds} and {args.repeats})")
    if not os.access(args.bench, os.X_OK):
        parser.error(f"--bench: no executable at {args.bench} (build it: scripts/test.sh, or cmake --build build)")
    torch.set_num_threads(1)
    cases = torch_peer.block_cases()
    ratios = {name: [] for name, _ in cases}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rounds} rounds, "
          f"medians of {args.repeats}, OpenBLAS core {torch_peer.OPENBLAS_CORE}; times mixdepth / PyTorch")
    with torch.no_grad():
        for round_number in range(1, args.rounds + 1):
            ours = mixdepth_times(args.bench, args.repeats)
            for name, run in cases:
                if name not in ours:
                    sys.exit(f"{args.bench} has no BM_{name}")
                theirs = torch_peer.median_seconds(run, args.repeats, min_time=0.5)
                ratios[name].append(theirs / ours[name])
                print(f"round {round_number} {name}: {ours[name] * 1e3:.2f} / {theirs * 1e3:.2f} ms "
                      f"= {theirs / ours[name]:.2f}x", flush=True)
    print("case: median ratio (lowest - highest) over the rounds")
    for name, values in ratios.items():
        print(f"{name}: {statistics.median(values):.2f}x ({min(values):.2f} - {max(values):.2f})")


if __name__ == "__main__":
    main()
