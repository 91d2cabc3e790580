"""Close the loop on the demo (issue 25): score the data, curate it, and compare training mixes.

1. **Scoring run** (``<out>/runs/scoring/seed<score_seed>``): fit + validate the plain demo at a seed
   that is *not* one of the comparison seeds, then ``attribute`` (EK-FAC factors and instance scores
   only: no token/sentence scores, no tagging, no report) -> ``instance_scores.parquet``.
2. **Variants** (each fit + validate at every seed, ``infra_pl.compare``; resumable):
   ``baseline`` (configs/demo.yaml), and configs/demo.yaml with an overlay of configs/variants/:
   ``flip`` / ``reverse_flip`` (the paper's difficulty flip and its control, Table 1), ``no_exploration`` (Table 2 right), ``curated`` (the top half of each domain
   by the mean z-scored instance score of step 1) and ``random`` (a random half with the same count
   per domain: the control of ``curated``); optional ``derived_flip`` (the difficulty flip with
   directions learned from the step-1 score table).
3. **Table**: accuracy per domain and level, mean over seeds with t intervals, paired differences to
   the baseline with a sign test (``<out>/summary/``: table.md/csv/json, compare.png, TensorBoard),
   rewritten after every finished run, so a partial benchmark always has a (labelled) partial table.

Every fit takes a fixed number of optimizer steps (``--steps``), so a busy machine changes the
wall time, never the models. Rerun the same command to resume: finished runs are never redone.

    nohup python benchmarks/compare_mixes.py > benchmarks/results/compare_mixes.log 2>&1 &
    python benchmarks/compare_mixes.py --summary-only      # the table from what has finished
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra_pl.compare import (  # noqa: E402
    CompareSpec,
    Variant,
    in_process_runner,
    run_one,
    subprocess_runner,
    write_summary,
)

CONFIGS = ROOT / "configs"
BASE = "demo.yaml"
VARIANTS = {  # name -> the overlay over configs/demo.yaml (None: the base alone)
    "baseline": None,
    "flip": "variants/flip.yaml",
    "reverse_flip": "variants/reverse_flip.yaml",
    "no_exploration": "variants/no_exploration.yaml",
    "curated": "variants/curated.yaml",
    "random": "variants/curated_random.yaml",
    "derived_flip": "variants/derived_flip.yaml",
}
DEFAULT_VARIANTS = ["baseline", "flip", "reverse_flip", "no_exploration", "curated", "random"]
SCORED = {"curated", "random", "derived_flip"}  # variants that read the scoring run's instance scores
# Tiny settings for the CI smoke test (a 2-variant x 2-seed version of the same loop).
TINY_MODEL = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
              "tie_word_embeddings": True}
TINY_DEMO = {"seed": 0, "n_train": 60, "n_eval": 5, "n_pool": 40}


def variant_configs(name: str) -> str | list[str]:
    """The config files of a variant, in `infra-pl fit -c BASE -c OVERLAY` order."""
    overlay = VARIANTS[name]
    return str(CONFIGS / BASE) if overlay is None else [str(CONFIGS / BASE), str(CONFIGS / overlay)]


def overrides(args: argparse.Namespace) -> dict:
    if args.tiny:
        found = {"model.model_config": TINY_MODEL, "model.max_new_tokens": 8, "data.demo": TINY_DEMO,
                 "data.eval_batch_size": 10, "trainer.max_steps": args.steps}
    else:
        found = {"trainer.max_steps": args.steps, "data.demo.n_eval": args.n_eval}
    if args.cache_dir:
        found["data.cache_dir"] = args.cache_dir
    return found


def score(spec: CompareSpec, args: argparse.Namespace, runner) -> Path:
    """Fit + validate + attribute the plain demo at ``--score-seed``; the instance-score file."""
    variant = Variant("scoring", variant_configs("baseline"))
    run_one(variant, args.score_seed, spec, runner)
    run_dir = Path(spec.out_dir) / "runs" / "scoring" / f"seed{args.score_seed}"
    scores = run_dir / "attribution" / "scores" / "instance_scores.parquet"
    done = run_dir / "scores_done.json"
    if done.exists() and scores.exists():
        print(f"[compare_mixes] scoring: reusing {scores}")
        return scores
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    callbacks = []
    for callback in config["trainer"]["callbacks"]:
        name = callback["class_path"]
        if name.endswith("AttributionReport"):
            continue  # the tables are not needed to curate; the rule file carries the domain x level table
        if name.endswith("InfluenceScores"):
            callback.setdefault("init_args", {}).update({
                "token_top_k": 0, "sentence_top_k": 0, "tagger": "none",
                "correctness_file": str(run_dir / "correctness.jsonl"),
            })
        callbacks.append(callback)
    config["trainer"]["callbacks"] = callbacks
    attribute_config = run_dir / "attribute.yaml"
    attribute_config.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.time()
    print(f"[compare_mixes] scoring: attribute ({run_dir})")
    runner(["attribute", "-c", str(attribute_config), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
            "--threads", str(spec.threads)], run_dir / "attribute.log")
    if not scores.exists():
        raise SystemExit(f"attribute wrote no {scores}; see {run_dir / 'attribute.log'}")
    done.write_text(json.dumps({"seconds": round(time.time() - started, 1)}) + "\n")
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare_mixes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps per fit (fixed: step-based schedule)")
    parser.add_argument("--n-eval", type=int, default=100,
                        help="demo evaluation items per domain (20 per level at 100; the demo default is 200)")
    parser.add_argument("--score-seed", type=int, default=1000, help="training seed of the scoring run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None, help="data.cache_dir for every run (default: the configs')")
    parser.add_argument("--tiny", action="store_true", help="tiny model and data (the CI smoke version)")
    parser.add_argument("--in-process", action="store_true", help="run fit/validate/attribute in this process")
    parser.add_argument("--summary-only", action="store_true", help="train nothing; write the table from finished runs")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    out = Path(args.out)
    common = overrides(args)
    runner = in_process_runner if args.in_process else subprocess_runner
    base = CompareSpec(out_dir=str(out), seeds=[args.score_seed], variants=[Variant("scoring", variant_configs("baseline"))],
                       overrides=common, threads=args.threads, in_process=args.in_process)
    scores = out / "runs" / "scoring" / f"seed{args.score_seed}" / "attribution" / "scores" / "instance_scores.parquet"
    if not args.summary_only and SCORED & set(args.variants):
        scores = score(base, args, runner)
    variants = []
    for name in args.variants:
        extra = {"data.curate.scores": str(scores)} if name in SCORED else {}
        variants.append(Variant(name, variant_configs(name), extra))
    contrasts = [[a, b] for a, b in (("curated", "random"), ("derived_flip", "flip"))
                 if a in args.variants and b in args.variants]
    spec = CompareSpec(out_dir=str(out), seeds=args.seeds, variants=variants, baseline="baseline"
                       if "baseline" in args.variants else None, overrides=common, threads=args.threads,
                       in_process=args.in_process, contrasts=contrasts)
    if not args.summary_only:
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.txt").write_text("python benchmarks/compare_mixes.py "
                                         + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
        for seed in spec.seeds:  # seed-major: a partial benchmark has every variant at its first seeds
            for variant in spec.variants:
                started = time.time()
                run_one(variant, seed, spec, runner)
                print(f"[compare_mixes] {variant.name} seed {seed}: {time.time() - started:.0f} s", flush=True)
                write_summary(spec)
    paths = write_summary(spec)
    print(paths["table_md"].read_text())
    for name, path in paths.items():
        print(f"  {name:<12}: {path}")


if __name__ == "__main__":
    main()
