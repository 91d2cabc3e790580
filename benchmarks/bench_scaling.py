"""How infra-pl's factor fit and instance-score pass grow with N, sequence length and model width.

For each axis the other two stay at the base point; every point runs in its own subprocess (so the
memory numbers do not mix), times ``fit_factors`` (empirical Fisher, MLP projections) and one
instance-score pass over the N training sequences with one measurement direction, and reads
memory as the RSS high-water mark above the RSS after setup (model + data built), and times one
plain forward + backward over the N sequences (an epoch) so factors + instance pass also shows as
epoch-equivalents. Prints one table per axis and the growth exponent from a log-log least-squares
fit (1.0 = linear). ``bench_vs_kronfluence.py --whole`` measures the whole attribution (index and
token scores included) beside kronfluence at N = 2k-32k.

Expected: time ~ N^1 and ~ T^1 for both phases while the per-token passes dominate (the
eigendecompositions are O(width^3) and independent of N and T); in width, the passes grow like
width^2 (MLP matmuls) and the eigendecompositions like width^3.

Usage::

    python benchmarks/bench_scaling.py                       # default: ~3-5 min on 2 cores
    python benchmarks/bench_scaling.py --threads 1 --repeats 3
    python benchmarks/bench_scaling.py --n 128 256 512 1024 --seq 64 128 256 512 --width 128 256 512 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (  # noqa: E402
    batches,
    build_model,
    current_peak_mb,
    current_rss_mb,
    loglog_slope,
    med,
    peak_rss_mb,
    plain_epoch,
    random_tokens,
    reset_peak,
    set_clock,
    set_threads,
    timed,
)

MLP_REGEX = r"\.mlp\.(gate|up|down)_proj$"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="cpu: process CPU seconds (robust on shared cores); wall: elapsed seconds")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--streams", type=int, default=1,
                   help="infra-pl's CPU `streams` option for the factor fit and the instance pass (1: plain path)")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="infra-pl's `compute_dtype` for the factor fit (operands of the big EK-FAC products)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--base-n", type=int, default=128)
    p.add_argument("--base-seq", type=int, default=64)
    p.add_argument("--base-width", type=int, default=64)
    p.add_argument("--n", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--seq", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--width", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--axes", nargs="+", default=["n", "seq", "width"], choices=["n", "seq", "width"])
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # "n,seq,width" in a child
    return p.parse_args(argv)


def run_point(args: argparse.Namespace, n: int, seq: int, width: int) -> dict:
    from infra_pl.ekfac import find_tracked_modules, fit_factors
    from infra_pl.influence import instance_scores_over, measurement_directions, measurement_gradient

    set_threads(args.threads)
    set_clock(args.clock)
    heads = max(1, width // 32)
    model = build_model(width, 4 * width, args.layers, heads, args.vocab, seed=0)
    train = batches(random_tokens(n, seq, args.vocab, seed=1), args.batch_size)
    query = batches(random_tokens(8, seq, args.vocab, seed=2), args.batch_size)
    modules = find_tracked_modules(model, MLP_REGEX)
    setup_rss = current_rss_mb() or peak_rss_mb()
    state = {}

    def factors():
        state["factors"] = fit_factors(
            model, train, modules=modules, fisher="empirical", progress=False, streams=args.streams,
            compute_dtype=args.compute_dtype,
        )

    def instance():
        with torch.no_grad():
            return instance_scores_over(model, train, state["direction"], modules, streams=args.streams)

    reset_peak()
    factor_times, _ = timed(factors, args.repeats)
    factor_peak = current_peak_mb() or peak_rss_mb()
    state["direction"] = measurement_directions(state["factors"], {"f": measurement_gradient(model, query, modules)})
    can_reset = reset_peak()
    instance_times, _ = timed(instance, args.repeats)
    instance_peak = current_peak_mb() if can_reset else None
    epoch_times, _ = timed(lambda: plain_epoch(model, train), args.repeats)  # last: the phases above run as before
    return {
        "factors_s": med(factor_times),
        "instance_s": med(instance_times),
        "epoch_s": med(epoch_times),
        "factors_mb": factor_peak - setup_rss,
        "instance_mb": (instance_peak - setup_rss) if instance_peak is not None else None,
        "setup_mb": setup_rss,
    }


def child(args: argparse.Namespace, n: int, seq: int, width: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--point", f"{n},{seq},{width}",
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--clock", args.clock, "--batch-size", str(args.batch_size),
           "--streams", str(args.streams), "--compute-dtype", args.compute_dtype,
           "--layers", str(args.layers), "--vocab", str(args.vocab)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.point:
        n, seq, width = (int(x) for x in args.point.split(","))
        print(json.dumps(run_point(args, n, seq, width)))
        return
    print(f"scaling: Llama {args.layers} layers, vocab {args.vocab}, MLP = 4 x width, heads = width/32; "
          f"base N={args.base_n} seq={args.base_seq} width={args.base_width}; batch {args.batch_size}; "
          f"threads={args.threads}; streams={args.streams}; compute_dtype={args.compute_dtype}; repeats={args.repeats} (median, {args.clock} seconds); torch {torch.__version__}")
    print("memory = RSS high-water mark of the phase minus RSS after setup (MB)")
    axes = {"n": ("N train", args.n), "seq": ("seq len", args.seq), "width": ("width", args.width)}
    for axis in args.axes:
        label, values = axes[axis]
        rows = []
        for value in values:
            point = {"n": args.base_n, "seq": args.base_seq, "width": args.base_width}
            point[axis] = value
            rows.append((value, child(args, point["n"], point["seq"], point["width"])))
        print()
        header = (f"{label:>8} | {'factors s':>9} | {'instance s':>10} | {'epoch s':>7} | {'f+i epoch-eq':>12} | "
                  f"{'factors MB':>10} | {'instance MB':>11}")
        print(header)
        print("-" * len(header))
        for value, r in rows:
            imb = f"{r['instance_mb']:11.0f}" if r["instance_mb"] is not None else f"{'-':>11}"
            eq = (r["factors_s"] + r["instance_s"]) / r["epoch_s"]
            print(f"{value:>8} | {r['factors_s']:9.2f} | {r['instance_s']:10.2f} | {r['epoch_s']:7.2f} | {eq:12.2f} | "
                  f"{r['factors_mb']:10.0f} | {imb}")
        xs = [v for v, _ in rows]
        exps = [loglog_slope(xs, [r[k] for _, r in rows]) for k in ("factors_s", "instance_s")]
        mem = [loglog_slope(xs, [max(r["factors_mb"], 1.0) for _, r in rows])]
        if all(r["instance_mb"] is not None for _, r in rows):
            mem.append(loglog_slope(xs, [max(r["instance_mb"], 1.0) for _, r in rows]))
        mem_txt = " / ".join(f"{e:.2f}" for e in mem)
        print(f"growth exponent (log-log LSQ): time factors {exps[0]:.2f}, instance {exps[1]:.2f}; "
              f"memory factors / instance {mem_txt}")


if __name__ == "__main__":
    main()
