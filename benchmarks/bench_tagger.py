"""Behaviour tagger accuracy on the hand-labelled long-CoT set (tune / held-out), and judge agreement.

The set is ``tests/fixtures/behaviours/traces.jsonl``: Bespoke-Stratos-format math and code traces
written for this project, with per-sentence gold labels (see LABELLING.md there). Rules are tuned
on ``tune`` and ``dev``; the ``heldout`` split is what the accuracy claims rest on (see
LABELLING.md there for the protocol).

    python benchmarks/bench_tagger.py                      # P/R/F1 per split and behaviour (current RULES)
    python benchmarks/bench_tagger.py --baseline 6d7f445   # ... next to the rules of a git revision (repeatable):
                                                           # 6d7f445 = before issue 24, c30b2b3 = round 1 (tune only)
    python benchmarks/bench_tagger.py --write              # also rewrite infra_pl/data/tagger_accuracy.json
    python benchmarks/bench_tagger.py --judge-url http://127.0.0.1:8000/v1 --judge-model Qwen/Qwen2.5-32B-Instruct \\
        --judge-cache runs/judge_cache                     # + the LLM judge: its P/R/F1 and Cohen's kappa vs the rules

Exit status 0; the numbers are the output. With ``--write`` the JSON is what
``infra_pl.data.behaviours.tagger_accuracy()`` reads and ``tests/data/test_behaviours.py`` checks
against the current rules, so it cannot go stale silently.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra_pl.data import behaviours as current  # noqa: E402
from infra_pl.data.schema import BEHAVIOURS  # noqa: E402

DATASET = ROOT / "tests" / "fixtures" / "behaviours" / "traces.jsonl"
SPLITS = ("tune", "dev", "heldout")


def baseline_tagger(revision: str) -> Any:
    """The default tagger of ``infra_pl/data/behaviours.py`` as it was at a git revision."""
    source = subprocess.run(
        ["git", "show", f"{revision}:infra_pl/data/behaviours.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"_behaviours_at_{revision}")
    module.__file__ = f"{revision}:infra_pl/data/behaviours.py"
    sys.modules[module.__name__] = module  # dataclasses look the module up while the class is built
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.RuleTagger(rules=dict(module.RULES))


def table(title: str, columns: dict[str, dict[str, current.BehaviourMetrics]]) -> str:
    """One row per behaviour, P/R/F1 per tagger column, and the gold count."""
    names = list(columns)
    head = f"{'behaviour':18s} {'gold':>4s}  " + "  ".join(f"{n:^26s}" for n in names)
    sub = f"{'':18s} {'':>4s}  " + "  ".join(f"{'P':>6s} {'R':>6s} {'F1':>6s} {'tp/fp/fn':>6s}" for _ in names)
    lines = [title, head, sub]
    for b in BEHAVIOURS:
        cells = []
        for n in names:
            m = columns[n][b]
            cells.append(f"{m.precision:6.2f} {m.recall:6.2f} {m.f1:6.2f} {f'{m.tp}/{m.fp}/{m.fn}':>8s}")
        gold = columns[names[0]][b].support
        lines.append(f"{b:18s} {gold:4d}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument(
        "--baseline", metavar="REV", action="append", default=[], help="also score the rules of this git revision (repeatable)"
    )
    parser.add_argument("--write", action="store_true", help=f"rewrite {current.ACCURACY_PATH.relative_to(ROOT)}")
    parser.add_argument("--judge-url", help="OpenAI-compatible base URL of an LLM judge (e.g. http://127.0.0.1:8000/v1)")
    parser.add_argument("--judge-model", help="model name the judge endpoint serves")
    parser.add_argument("--judge-cache", type=Path, help="cache directory for judge replies (resumable)")
    parser.add_argument("--judge-key-env", default=None, help="environment variable holding the judge's API key")
    parser.add_argument("--judge-concurrency", type=int, default=4)
    args = parser.parse_args(argv)

    records = {split: current.load_labelled_traces(args.dataset, split) for split in SPLITS}
    taggers: dict[str, Any] = {}
    for revision in args.baseline:
        taggers[f"rules at {revision}"] = baseline_tagger(revision)
    taggers["rules (now)"] = current.default_tagger()
    print(f"dataset: {args.dataset.relative_to(ROOT) if args.dataset.is_relative_to(ROOT) else args.dataset}")
    for split in SPLITS:
        n_text = sum(current._thought_sentence_count(current.assistant_text(r)) for r in records[split])
        print(f"  {split}: {len(records[split])} traces, {n_text} thought sentences")
    print()
    results = {split: {name: current.evaluate_tagger(records[split], t) for name, t in taggers.items()} for split in SPLITS}

    judge_labels: dict[str, list[list[set[str]]]] = {}
    if args.judge_url:
        from infra_pl.data.llm_judge import LLMJudgeTagger

        judge = LLMJudgeTagger(
            base_url=args.judge_url,
            model=args.judge_model or "default",
            api_key_env=args.judge_key_env,
            use_env_proxy=False,
            cache_dir=args.judge_cache,
            concurrency=args.judge_concurrency,
        )
        for split in SPLITS:
            texts = [current.assistant_text(r) for r in records[split]]
            run = judge.label_many(texts)
            print(f"judge on {split}: {run.summary()}")
            judge_labels[split] = run.labels
            ok = [k for k, labels in enumerate(run.labels) if labels is not None]
            results[split]["LLM judge"] = current.score_labels((records[split][k], run.labels[k]) for k in ok)
        print()

    for split in SPLITS:
        print(table(f"== {split} split: per-sentence P / R / F1 (thought sentences; gold = labelled positives)", results[split]))
        print()

    if judge_labels:
        from infra_pl.data.llm_judge import cohen_kappa, number_sentences

        for split in SPLITS:
            rules_labels, judge_flat = [], []
            for record, labels in zip(records[split], judge_labels[split]):
                if labels is None:
                    continue
                text = current.assistant_text(record)
                rules = [f for _, f in current.default_tagger().tag(text, record.get("answer"))]
                for i in number_sentences(text)[1]:  # the thought's prose sentences, the units both label
                    rules_labels.append(rules[i])
                    judge_flat.append(labels[i])
            kappa = cohen_kappa(rules_labels, judge_flat)
            print(f"== {split}: Cohen's kappa, rules vs judge, per behaviour (over {len(judge_flat)} thought sentences)")
            for b in BEHAVIOURS:
                print(f"  {b:18s} {kappa[b]:+.3f}")
            print()

    if args.write:
        data = current.measure_tagger_accuracy(args.dataset)
        current.ACCURACY_PATH.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {current.ACCURACY_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
