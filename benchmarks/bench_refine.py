"""How close do EK-FAC and CG-refined directions come to exact influence? (issue 20)

On the LDS benchmark's model (``benchmarks/lds.py``: the demo Llama fine-tuned on 400 examples;
run that first, this script reads its cached model), the damped empirical Fisher of the tracked
MLP modules, F + λ with F = (1/N) Σ_n G_n G_nᵀ over the N training sequences' gradients and
EK-FAC's damping λ per module, is inverted *exactly* through the Woodbury identity (F has rank
≤ N, so an N × N solve per block is enough; no approximation):

    (D + GᵀG/N)⁻¹ b = D⁻¹b − D⁻¹Gᵀ (N·I + G D⁻¹ Gᵀ)⁻¹ G D⁻¹ b.

Exact influence S[q, n] = ∇log p(q)ᵀ (F + λ)⁻¹ ∇log p(z_n) for every measured item q. Each method's
[Q, N] scores are compared with it per query (Pearson and Spearman over the training examples),
averaged over queries with a bootstrap 95% interval over queries. Methods: the gradient dot product
(identity), EK-FAC, and EK-FAC refined by 1, 3 and 10 CG iterations on the same Fisher, each against
the block-diagonal exact inverse (what EK-FAC approximates) and, with ``-full``, against the full
one. Cost: seconds of each method's direction computation, and in epoch-equivalents (one plain
forward + backward over the training set, timed in the same run).

    OMP_NUM_THREADS=1 python benchmarks/bench_refine.py                       # the LDS model (295k tracked)
    OMP_NUM_THREADS=1 python benchmarks/bench_refine.py --hidden 16 --intermediate 32 --layers 2 --n-eval 25
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra_pl.ekfac.gradients import per_example_gradients  # noqa: E402
from infra_pl.ekfac.loss import causal_lm_loss  # noqa: E402
from infra_pl.influence import instance_scores, query_directions  # noqa: E402
from infra_pl.influence.refine import FisherProduct, IdentityPreconditioner, refine_directions  # noqa: E402
from infra_pl.lds import LDSSetting  # noqa: E402
from infra_pl.lds.experiment import LDSExperiment  # noqa: E402
from infra_pl.lds.scoring import ScoringContext, _by_length  # noqa: E402
from infra_pl.runner import InProcessRunner  # noqa: E402

F64 = torch.float64


def gradients_matrix(ctx: ScoringContext, features: list) -> dict[str, torch.Tensor]:
    """Per-sequence ∇L (data labels) per module, [N, out·in], rows in ``index`` order of ``features``."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in ctx.modules}
    order: list[int] = []
    for batch in ctx.data.batches(features, ctx.batch_size):
        grads = per_example_gradients(ctx.model, batch, causal_lm_loss, ctx.modules, dtype=F64)
        for name in ctx.modules:
            out[name].append(grads[name].flatten(1))
        order += batch["index"].tolist()
    rows = np.argsort(order)
    return {name: torch.cat(parts)[torch.from_numpy(rows)] for name, parts in out.items()}


def exact_scores(train: dict[str, torch.Tensor], queries: dict[str, torch.Tensor], damping: dict[str, float],
                 blocks: str) -> np.ndarray:
    """[Q, N] = G_q (F + λ)⁻¹ G_nᵀ by Woodbury; F = GᵀG/N block-diagonal per module or full."""
    n = next(iter(train.values())).shape[0]
    names = list(train)
    groups = [[name] for name in names] if blocks == "module" else [names]
    total = np.zeros((next(iter(queries.values())).shape[0], n))
    for group in groups:
        g = torch.cat([train[m] for m in group], dim=1)  # [N, P]
        b = torch.cat([queries[m] for m in group], dim=1)  # [Q, P]
        d_inv = torch.cat([torch.full((train[m].shape[1],), 1.0 / damping[m], dtype=F64) for m in group])
        gd = g * d_inv  # G D⁻¹
        inner = n * torch.eye(n, dtype=F64) + gd @ g.t()
        bd = b * d_inv  # (D⁻¹ b)ᵀ
        solved = bd - torch.linalg.solve(inner, gd @ b.t()).t() @ gd  # rows: ((F + λ)⁻¹ b_q)ᵀ
        total += (solved @ g.t()).numpy()
    return total


def method_scores(ctx: ScoringContext, factors, preconditioner, iterations: int | None, blocks: str) -> tuple[np.ndarray, float]:
    """[Q, N] scores and the seconds of the direction computation (query gradients + preconditioning + CG)."""
    queries = _by_length(ctx.query_features())
    start = time.perf_counter()
    directions = query_directions(ctx.model, ctx.data.batches(queries, ctx.batch_size), preconditioner, modules=ctx.modules)
    if iterations is not None:
        product = FisherProduct(ctx.model, ctx.modules, causal_lm_loss, "empirical", blocks=blocks)
        grads = query_directions(ctx.model, ctx.data.batches(queries, ctx.batch_size), IdentityPreconditioner(),
                                 modules=ctx.modules)
        loader = lambda: ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size)  # noqa: E731
        directions = refine_directions(InProcessRunner(progress=False), loader, factors, product, grads, iterations,
                                       0.0).directions
    seconds = time.perf_counter() - start
    row_of = {f["index"]: k for k, f in enumerate(queries)}
    directions = directions.select([f"query_{row_of[i]}" for i in ctx.query_indices])
    scores = np.zeros((len(ctx.query_indices), len(ctx.data.train_features)))
    with torch.no_grad():
        for batch in ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size):
            scores[:, batch["index"].numpy()] = instance_scores(ctx.model, batch, directions, ctx.modules).double().t().numpy()
    return scores, seconds


def measurement_cost(ctx: ScoringContext, factors, groups: dict[str, list[int]], iterations: list[int],
                     epoch: float) -> list[str]:
    """Seconds and epoch-equivalents of refining the M = 2 domain directions (what ``attribute`` refines)."""
    from infra_pl.influence.measurement import Directions

    queries = _by_length(ctx.query_features())
    grads = query_directions(ctx.model, ctx.data.batches(queries, ctx.batch_size), IdentityPreconditioner(),
                             modules=ctx.modules)
    row_of = {f["index"]: k for k, f in enumerate(queries)}
    means = {name: {m: grads.per_module[m][[row_of[ctx.query_indices[i]] for i in rows]].mean(0) for m in ctx.modules}
             for name, rows in groups.items()}
    b = Directions(list(means), {m: torch.stack([means[n][m] for n in means]) for m in ctx.modules})
    loader = lambda: ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size)  # noqa: E731
    lines = []
    for k in iterations:
        product = FisherProduct(ctx.model, ctx.modules, causal_lm_loss, "empirical")
        start = time.perf_counter()
        result = refine_directions(InProcessRunner(progress=False), loader, factors, product, b, k, 0.0)
        seconds = time.perf_counter() - start
        residual = ", ".join(f"{n} {r[-1]:.3f}" for n, r in result.residuals.items())
        lines.append(f"| {k} | {result.passes} | {seconds:.1f} | {seconds / epoch:.2f} | {residual} |")
    return lines


def epoch_seconds(ctx: ScoringContext) -> float:
    """One plain forward + backward (parameter gradients) over the training set."""
    start = time.perf_counter()
    for batch in ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size):
        ctx.model.zero_grad(set_to_none=True)
        causal_lm_loss(ctx.model, batch, False).sum().backward()
    ctx.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def agreement(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Mean over queries of the per-query Pearson and Spearman correlation, with a bootstrap CI over queries."""
    from _common import rowwise_correlations

    pearson, spearman = rowwise_correlations(a, b)
    rng = np.random.default_rng(seed)
    out = {}
    for name, values in (("pearson", pearson), ("spearman", spearman)):
        boots = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n_boot)]
        out[name] = (float(values.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/lds", help="the LDS benchmark's output folder (its model)")
    parser.add_argument("--iterations", default="1,3,10", help="CG iterations to compare (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=None,
                        help="a smaller model than the LDS benchmark's (with --intermediate, --layers): its own "
                             "setting, trained here once (default: the LDS model)")
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--n-eval", type=int, default=None, help="evaluation items per domain (queries = 2 x this)")
    parser.add_argument("--cost-only", action="store_true", help="only the cost of refining the measurement directions")
    parser.add_argument("--only", default="", help="comma-separated row labels to compute (default: every row)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = LDSSetting()
    if args.hidden or args.intermediate or args.layers or args.n_eval:
        from dataclasses import replace

        config = dict(setting.model_config)
        config.update({k: v for k, v in (("hidden_size", args.hidden), ("intermediate_size", args.intermediate),
                                         ("num_hidden_layers", args.layers)) if v})
        setting = replace(setting, model_config=config, n_eval=args.n_eval or setting.n_eval)
    experiment = LDSExperiment(setting, args.out)
    model = experiment.full_model(0)
    ctx = ScoringContext(model, experiment.data, experiment.measurements(0).query_indices)
    factors = ctx.factors("empirical")
    damping = {n: float(factors.modules[n].damping) for n in ctx.modules}
    epoch = min(epoch_seconds(ctx) for _ in range(2))
    exact = {}
    if not args.cost_only:
        train = gradients_matrix(ctx, ctx.data.train_features)
        queries = gradients_matrix(ctx, ctx.query_features())
        # gradients_matrix orders rows by feature index; put the queries in measurement order
        order = np.argsort(ctx.query_indices)
        ranks = np.empty_like(order)
        ranks[order] = np.arange(len(order))
        queries = {n: q[torch.from_numpy(ranks)] for n, q in queries.items()}
        exact = {blocks: exact_scores(train, queries, damping, blocks) for blocks in ("module", "all")}
    iterations = [int(x) for x in args.iterations.split(",") if x.strip()]
    rows = [("identity", IdentityPreconditioner(), None, "module"), ("ekfac (empirical)", factors, None, "module")]
    rows += [(f"ekfac + cg{k}", factors, k, "module") for k in iterations]
    rows += [(f"ekfac + cg{k}-full", factors, k, "all") for k in iterations]
    rows.append(("ekfac (empirical, A over target positions)", ctx.factors("empirical", "targets"), None, "module"))
    if args.only:
        wanted = set(args.only.split(","))
        rows = [row for row in rows if row[0] in wanted]
    print(f"model: {sum(p.numel() for p in ctx.modules.values() for p in p.parameters())} tracked parameters; "
          f"N = {len(ctx.data.train_features)} training sequences, Q = {len(ctx.query_indices)} queries; "
          f"one epoch (forward + backward) = {epoch:.2f} s")
    print("| method | vs exact block-diagonal: Pearson [95% CI] | Spearman [95% CI] | vs exact full: Pearson [95% CI] "
          "| Spearman [95% CI] | seconds | epoch-equivalents |")
    print("|---|---|---|---|---|---|---|")
    for label, preconditioner, k, blocks in ([] if args.cost_only else rows):
        scores, seconds = method_scores(ctx, factors, preconditioner, k, blocks)
        cells = []
        for target in ("module", "all"):
            result = agreement(scores, exact[target], args.bootstrap)
            cells += [f"{result[m][0]:.3f} [{result[m][1]:.3f}, {result[m][2]:.3f}]" for m in ("pearson", "spearman")]
        print(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} | {seconds / epoch:.2f} |", flush=True)
    print("\nRefining the M = 2 domain measurement directions (all training sequences behind F):\n")
    print("| CG iterations | Fisher-vector passes | seconds | epoch-equivalents | relative residual per measurement |")
    print("|---|---|---|---|---|")
    for line in measurement_cost(ctx, factors, experiment.measurements(0).groups, iterations, epoch):
        print(line, flush=True)


if __name__ == "__main__":
    main()
