"""Attribution quality on the demo: linear datamodeling score (LDS) and a top-k removal check (issue 7).

What it does (library: ``infra_pl.lds.run_lds``; everything resumes from ``--out``):

1. Generates a small demo (``--n-train`` training examples, ``--n-eval`` evaluation items per domain,
   ``--n-pretrain`` disjoint pool examples), pre-trains one base model on the pool, and fine-tunes it
   on the full training set for a fixed ``--steps`` (training seed ``--seed``): the model attribution
   explains. Its greedy answers define D_correct per domain (or, with too few correct answers, the
   labelled fallback: the reference answers of all items). f = mean log p(answer | prompt) per domain.
2. Draws ``--m`` random subsets of a fraction ``--alpha`` of the training set and fine-tunes the same
   base on each with the same recipe and seed; each finished retrain is saved (one JSON) and reused.
3. Scores every training example with each method on the full model, and computes
   LDS = Spearman(f measured on the retrains, Σ_{z in subset} score(z)) per measurement, averaged,
   with a bootstrap 95% interval over retrains; also the per-item LDS (each evaluation item its own f).
4. Removes the top-k examples by EK-FAC score per measurement (and k random ones), retrains with
   each of ``--topk-seeds``, and reports the f drops with t-intervals over seeds.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/lds.py --threads 1                 # the default run (CPU)
    python benchmarks/lds.py --m 100 --noise-subsets 20 --threads 8        # bigger, e.g. on a GPU box
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra_pl.lds import DEFAULT_METHODS, LDSOptions, LDSSetting, TrainRecipe, run_lds  # noqa: E402
from infra_pl.lds.report import results_markdown  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults_s, defaults_o = LDSSetting(), LDSOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--out", default="benchmarks/results/lds",
                   help="output folder; results go to <out>/<setting hash>/ and a rerun resumes there (default: %(default)s)")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated methods to compare: ekfac, ekfac-empirical, ekfac-damping-x<scale>, kfac, "
                        "identity, bm25, kronfluence-ekfac (skipped with a note if not installed), domain (a reference: in-domain count) (default: %(default)s)")
    g = p.add_argument_group("LDS")
    g.add_argument("--m", type=int, default=defaults_o.n_subsets, help="number of random subsets retrained (default: %(default)s)")
    g.add_argument("--alpha", type=float, default=defaults_o.alpha, help="subset size as a fraction of the training set (default: %(default)s)")
    g.add_argument("--subset-seed", type=int, default=defaults_o.subset_seed, help="seed of the subset and random-removal draws (default: %(default)s)")
    g.add_argument("--seed", type=int, default=defaults_o.train_seed,
                   help="training seed (batch order) of the scored full model and of every LDS retrain (default: %(default)s)")
    g.add_argument("--noise-subsets", type=int, default=defaults_o.noise_subsets,
                   help="retrain this many LDS subsets with seed+1 to measure the seed-to-seed noise ceiling (default: %(default)s)")
    g.add_argument("--bootstrap", type=int, default=defaults_o.n_bootstrap, help="bootstrap resamples for the LDS interval (default: %(default)s)")
    g = p.add_argument_group("top-k removal")
    g.add_argument("--k", type=_ints, default=defaults_o.topk,
                   help="comma-separated k values of the removal check; empty string to skip it (default: 10,25,50)")
    g.add_argument("--topk-seeds", type=_ints, default=defaults_o.topk_seeds,
                   help="training seeds of the removal retrains, also the number of random removal draws (default: 0,1,2)")
    g.add_argument("--topk-controls", default=",".join(defaults_o.topk_controls),
                   help="what top-k removal is compared with: random (k random examples) and/or domain-random (k random "
                        "examples of the measurement's own domain) (default: %(default)s)")
    g.add_argument("--topk-method", default=defaults_o.topk_method, help="method whose top-k examples are removed (default: %(default)s)")
    g = p.add_argument_group("setting (changing any of these starts a new output sub-folder)")
    g.add_argument("--n-train", type=int, default=defaults_s.n_train, help="training examples, half math half code (default: %(default)s)")
    g.add_argument("--n-eval", type=int, default=defaults_s.n_eval, help="evaluation items per domain (default: %(default)s)")
    g.add_argument("--n-pretrain", type=int, default=defaults_s.n_pretrain,
                   help="pool examples that pre-train the shared base model; 0 fine-tunes the random init (default: %(default)s)")
    g.add_argument("--pretrain-steps", type=int, default=defaults_s.pretrain.steps, help="optimiser steps of the base pre-training (default: %(default)s)")
    g.add_argument("--pretrain-lr", type=float, default=defaults_s.pretrain.learning_rate, help="peak lr of the pre-training (default: %(default)s)")
    g.add_argument("--steps", type=int, default=defaults_s.finetune.steps,
                   help="optimiser steps of every fine-tune (full model and retrains), fixed: no wall-clock budget (default: %(default)s)")
    g.add_argument("--lr", type=float, default=defaults_s.finetune.learning_rate, help="peak lr of every fine-tune (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=defaults_s.finetune.batch_size, help="training batch size (default: %(default)s)")
    g.add_argument("--demo-seed", type=int, default=defaults_s.demo_seed, help="demo generator seed (default: %(default)s)")
    g.add_argument("--init-seed", type=int, default=defaults_s.init_seed, help="model initialisation seed (default: %(default)s)")
    g.add_argument("--n-correct", type=int, default=defaults_s.n_correct, help="D_correct size per domain (default: %(default)s)")
    g.add_argument("--min-correct", type=int, default=defaults_s.min_correct,
                   help="fewer correct answers than this use the labelled reference fallback (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    setting = LDSSetting(
        demo_seed=args.demo_seed,
        n_train=args.n_train,
        n_eval=args.n_eval,
        n_pretrain=args.n_pretrain,
        init_seed=args.init_seed,
        pretrain=TrainRecipe(steps=args.pretrain_steps, learning_rate=args.pretrain_lr, batch_size=args.batch_size),
        finetune=TrainRecipe(steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size),
        n_correct=args.n_correct,
        min_correct=args.min_correct,
    )
    options = LDSOptions(
        n_subsets=args.m,
        alpha=args.alpha,
        subset_seed=args.subset_seed,
        train_seed=args.seed,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        topk=args.k,
        topk_method=args.topk_method,
        topk_seeds=args.topk_seeds,
        topk_controls=tuple(c.strip() for c in args.topk_controls.split(",") if c.strip()),
        noise_subsets=args.noise_subsets,
        n_bootstrap=args.bootstrap,
    )
    start = time.perf_counter()
    print(f"LDS setting {setting.digest()} -> {Path(args.out) / setting.digest()}", flush=True)
    results = run_lds(setting, options, args.out, log=lambda line: print(line, flush=True))
    print()
    print(results_markdown(results))
    print(f"total wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
