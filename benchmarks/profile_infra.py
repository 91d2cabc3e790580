"""Where infra-pl's time goes in the fixed bench_vs_kronfluence setting (torch.profiler, CPU ops).

    python benchmarks/profile_infra.py --threads 1 [--n-train 64] [--rows 15]

Profiles fit_factors, the pairwise pass (query_directions + instance scores), the one-direction
instance pass and token_scores separately and prints the top ops by self CPU time for each, plus
the time of the eigendecompositions.
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
    args = p.parse_args()
    set_threads(args.threads)

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


if __name__ == "__main__":
    main()
