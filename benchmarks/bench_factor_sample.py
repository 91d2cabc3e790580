"""How many examples do the factor passes need? Scores from sampled factors against full-data factors.

On the benchmark model of ``bench_vs_kronfluence.py`` (Llama hidden 128, MLP 512, 4 layers, random
tokens of 128; empirical Fisher; the 12 MLP projections), with N training sequences, factors are
fitted on seeded samples of ``--samples`` examples (both passes; ``covariance_max_examples`` and
``lambda_max_examples``) and on every example. Each factor set scores the training set for:

* one aggregated measurement (the mean log-likelihood of 32 query sequences), and
* the 32 queries one by one (per-item directions, where a worse H⁻¹ shows first).

Printed per sample size: the factor fit's CPU seconds and epoch-equivalents (one plain forward +
backward over the N sequences, timed in the same run), and the Pearson / Spearman correlation of
the scores with those of full-data factors (per item: mean over queries, worst in brackets).
The per-item LDS of sampled factors (the retraining ground truth, N = 400) is in RESULTS.md's LDS
section; this measures agreement at the N where sampling saves time.

    OMP_NUM_THREADS=1 python benchmarks/bench_factor_sample.py --n 8192 --samples 512 1024 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import batches, build_model, plain_epoch, random_tokens, rowwise_correlations  # noqa: E402

MLP_REGEX = r"\.mlp\.(gate|up|down)_proj$"
clock = time.process_time  # CPU seconds of this process: steady on a shared machine with one thread


def indexed(loader: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The batches with ``index`` = position in the training set (what sampling selects rows by)."""
    start, out = 0, []
    for batch in loader:
        size = int(batch["input_ids"].shape[0])
        out.append({**batch, "index": torch.arange(start, start + size)})
        start += size
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="training sequences (default %(default)s)")
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 1024, 2048],
                        help="factor sample sizes (examples per pass; default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from infra_pl.ekfac import find_tracked_modules, fit_factors
    from infra_pl.influence import instance_scores_over, measurement_directions, measurement_gradient, query_directions

    model = build_model(128, 512, 4, 4, 2048, seed=0)
    train = indexed(batches(random_tokens(args.n, args.seq_len, 2048, seed=1), args.batch_size))
    query = batches(random_tokens(32, args.seq_len, 2048, seed=2), args.batch_size)
    modules = find_tracked_modules(model, MLP_REGEX)
    ids = [str(i) for i in range(args.n)]
    plain_epoch(model, train[:4])  # warm-up
    start = clock()
    plain_epoch(model, train)
    epoch = clock() - start

    def scores(factors) -> np.ndarray:
        """[1 + 32, N]: the aggregated measurement, then each query."""
        aggregated = measurement_directions(factors, {"queries": measurement_gradient(model, query, modules)})
        per_item = query_directions(model, query, factors, modules)
        with torch.no_grad():
            one = instance_scores_over(model, train, aggregated, modules).t()
            many = instance_scores_over(model, train, per_item, modules).t()
        return torch.cat([one, many]).double().numpy()

    results = {}
    for size in [None, *args.samples]:
        start = clock()
        factors = fit_factors(model, train, modules=modules, fisher="empirical", progress=False, train_ids=ids,
                              covariance_max_examples=size, lambda_max_examples=size)
        seconds = clock() - start
        results[size] = (seconds, scores(factors))
    full = results[None][1]
    print(f"model: Llama hidden 128, MLP 512, 4 layers; N = {args.n} random-token sequences of {args.seq_len}; "
          f"empirical Fisher; one epoch (forward + backward) = {epoch:.1f} CPU s; threads {torch.get_num_threads()}\n")
    print("| factor sample (examples per pass) | factor fit s | epoch-equivalents | aggregated f: Pearson | Spearman "
          "| 32 per-item queries: Pearson [worst] | Spearman |")
    print("|---|---|---|---|---|---|---|")
    for size, (seconds, got) in results.items():
        pearson, spearman = rowwise_correlations(got, full)
        label = "every example" if size is None else f"{size} ({size / args.n:.1%})"
        print(f"| {label} | {seconds:.1f} | {seconds / epoch:.3f} | {pearson[0]:.4f} | {spearman[0]:.4f} | "
              f"{pearson[1:].mean():.4f} [{pearson[1:].min():.4f}] | {spearman[1:].mean():.4f} |")


if __name__ == "__main__":
    main()
