"""Where infra-pl's time goes in the fixed bench_vs_kronfluence setting (torch.profiler, CPU ops).

    python benchmarks/profile_infra.py --threads 1 [--n-train 64] [--rows 15]
    python benchmarks/profile_infra.py --threads 2 --n-train 256 --breakdown

Profiles fit_factors, the pairwise pass (query_directions + instance scores), the one-direction
instance pass and token_scores separately and prints the top ops by self CPU time for each, plus
the time of the eigendecompositions.

``--breakdown`` instead times (wall clock, no profiler, medians of ``--repeats``) each step of
factors + pairwise next to a "model-only pass": the same forward + ``autograd.grad`` to the
tracked layer outputs with the hooks installed but doing nothing. Every EK-FAC pass costs at least
that, so the step time minus it is what the EK-FAC math itself costs (covariance products,
rotations, per-sequence gradients), and the sum of the model-only passes is the floor that no
implementation of the same algorithm can go below.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import batches, build_model, random_tokens, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--breakdown", action="store_true", help="time each step of factors + pairwise (no profiler)")
    p.add_argument("--repeats", type=int, default=3, help="with --breakdown: repeats per step (median)")
    args = p.parse_args()
    set_threads(args.threads)
    if args.breakdown:
        breakdown(args)
        return

    from infra_pl.ekfac import eigendecompose, find_tracked_modules, fit_covariance, fit_factors
    from infra_pl.influence import (
        instance_scores,
        measurement_directions,
        measurement_gradient,
        query_directions,
        token_scores,
    )

    model = build_model(128, 512, 4, 4, 2048)
    train = batches(random_tokens(args.n_train, 128, 2048, 1), args.batch_size)
    query = batches(random_tokens(32, 128, 2048, 2), args.batch_size)
    modules = find_tracked_modules(model, r"\.mlp\.(gate|up|down)_proj$")
    factors = fit_factors(model, train[:1], modules=modules, fisher="empirical", progress=False)  # warm-up

    cov = fit_covariance(model, train, modules, fisher="empirical", progress=False)
    start = time.perf_counter()
    eigendecompose(cov, progress=False)
    print(f"eigendecompose (12 modules, float64): {time.perf_counter() - start:.3f} s")

    def run_factors():
        nonlocal factors
        factors = fit_factors(model, train, modules=modules, fisher="empirical", progress=False)

    def run_pairwise():
        d = query_directions(model, query, factors, modules)
        with torch.no_grad():
            [instance_scores(model, b, d, modules) for b in train]

    state = {}

    def run_instance():
        with torch.no_grad():
            [instance_scores(model, b, state["d"], modules) for b in train]

    def run_tokens():
        [token_scores(model, b, state["d"], modules) for b in train]

    for name, fn in [("factors", run_factors), ("pairwise", run_pairwise), ("instance", run_instance), ("tokens", run_tokens)]:
        if name == "instance":
            state["d"] = measurement_directions(factors, {"f": measurement_gradient(model, query, modules)})
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n=== {name}: {time.perf_counter() - start:.2f} s (profiled, {args.n_train} train seqs)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def breakdown(args: argparse.Namespace) -> None:
    """Median wall seconds of each factors + pairwise step next to the model-only pass (see module doc)."""
    import statistics

    from _common import plain_epoch

    from infra_pl.ekfac import Factors, eigendecompose, find_tracked_modules, fit_covariance, fit_lambda
    from infra_pl.ekfac.capture import Capture
    from infra_pl.ekfac.loss import causal_lm_loss
    from infra_pl.ekfac.passes import capture_pass, eval_mode
    from infra_pl.influence import instance_scores, query_directions

    model = build_model(128, 512, 4, 4, 2048)
    train = batches(random_tokens(args.n_train, 128, 2048, 1), args.batch_size)
    query = batches(random_tokens(32, 128, 2048, 2), args.batch_size)
    modules = find_tracked_modules(model, r"\.mlp\.(gate|up|down)_proj$")
    state: dict = {}

    def model_only(loader):
        capture = Capture(modules)  # hooks installed, no callbacks: the pass every EK-FAC step runs
        with eval_mode(model), capture:
            for batch in loader:
                capture_pass(model, batch, causal_lm_loss, capture, sample_labels=False)

    def covariance():
        state["cov"] = fit_covariance(model, train, modules, fisher="empirical", progress=False)

    def eigen():
        state["eigen"] = eigendecompose(state["cov"], progress=False)

    def lambdas():
        state["lambda"] = fit_lambda(model, train, modules, state["eigen"], fisher="empirical", progress=False)
        state["factors"] = Factors.from_states(
            state["cov"], state["eigen"], state["lambda"], fisher="empirical", damping=None, model=model, tracked=modules
        )

    def directions():
        state["d"] = query_directions(model, query, state["factors"], modules)

    def train_pass():
        with torch.no_grad():
            [instance_scores(model, b, state["d"], modules) for b in train]

    steps = [
        ("plain epoch (fwd + bwd with weight grads)", lambda: plain_epoch(model, train)),
        ("model-only pass, training set", lambda: model_only(train)),
        ("model-only pass, 32 queries", lambda: model_only(query)),
        ("factors: covariance pass", covariance),
        ("factors: eigendecomposition", eigen),
        ("factors: lambda pass", lambdas),
        ("pairwise: query directions", directions),
        ("pairwise: training pass (32 directions)", train_pass),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    plain_epoch(model, train)  # warm-up
    for _ in range(args.repeats):
        for name, fn in steps:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t = {name: statistics.median(v) for name, v in times.items()}
    floor_train, floor_query = t["model-only pass, training set"], t["model-only pass, 32 queries"]
    print(f"\n{args.n_train} train + 32 query sequences x 128 tokens, {args.threads} threads, median of {args.repeats} (wall s)")
    print(f"{'step':<42} | {'seconds':>7} | {'minus its model-only pass':>25}")
    own_pass = {"factors: covariance pass": floor_train, "factors: lambda pass": floor_train,
                "pairwise: query directions": floor_query, "pairwise: training pass (32 directions)": floor_train}
    for name, _ in steps:
        extra = f"{t[name] - own_pass[name]:25.2f}" if name in own_pass else f"{'-':>25}"
        print(f"{name:<42} | {t[name]:7.2f} | {extra}")
    total = sum(t[n] for n, _ in steps if ":" in n)
    floor = sum(own_pass.values())
    print(f"factors + pairwise {total:.2f} s, of which model-only passes (3 x training set + queries) {floor:.2f} s "
          f"({floor / total:.0%}) and the float64 eigendecomposition {t['factors: eigendecomposition']:.2f} s")


if __name__ == "__main__":
    main()
