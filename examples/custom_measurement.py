"""Example 2: a custom measurement f.

A measurement is any subclass of ``infra_pl.measurements.Measurement`` whose ``build(context)``
returns ``MeasurementSpec`` objects: a name and the batches f is defined on. Unweighted batches
mean f = mean log p(targets) over the sequences; batches carrying ``measurement_weight`` [B]
mean f = Σ_i w_i log p(targets_i). Here f is a *margin* on the toy task of example 1:

    f = mean over held-out reverse prompts of  log p(reversed letters | prompt) − log p(copied letters | prompt)

so a positive score marks training examples that teach the model to reverse *rather than copy*
(the two tasks share their letters and format; only the order differs). By linearity of the
scores in ∇f, the margin's score equals the difference of two ``TargetLogProb`` scores; the
example computes both so you can see it.

In YAML (with ``examples/`` on PYTHONPATH) it is selected like any Lightning component::

    - class_path: infra_pl.callbacks.InfluenceScores
      init_args:
        measurements:
          - class_path: custom_measurement.ReverseOverCopy
            init_args: {n_prompts: 16}

Run:  python examples/custom_measurement.py --out runs/example_measurement
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the toy module and data of example 1

import plain_module_attribution as toy  # noqa: E402

from infra_pl.measurements import Measurement, MeasurementContext, MeasurementSpec, TargetLogProb, sequences_loader  # noqa: E402


class ReverseOverCopy(Measurement):
    """Margin between the reversed and the copied answer on held-out reverse prompts (one measurement).

    Args:
        n_prompts: held-out prompts (palindromes are skipped: their two answers are the same).
        seed: seed of the held-out draw.
        name: measurement name (the ``score_<name>`` column).
    """

    def __init__(self, n_prompts: int = 16, seed: int = 0, name: str = "reverse_over_copy") -> None:
        self.n_prompts = n_prompts
        self.seed = seed
        self.name = name

    def pairs(self) -> list[dict[str, Any]]:
        """Held-out reverse prompts with both candidate answers."""
        examples = [e for e in toy.make_examples(4 * self.n_prompts, self.seed + 2000) if e["task"] == "reverse"]
        letters = [e["prompt"].split()[1:-1] for e in examples]
        return [{"prompt": e["prompt"], "right": " " + " ".join(reversed(ls)), "wrong": " " + " ".join(ls)}
                for e, ls in zip(examples, letters) if ls != ls[::-1]][: self.n_prompts]

    def build(self, context: MeasurementContext) -> list[MeasurementSpec]:
        tokenizer = context.datamodule.tokenizer
        pairs = self.pairs()
        if not pairs:
            raise ValueError("ReverseOverCopy: no held-out prompts (raise n_prompts)")
        features = []
        for k, pair in enumerate(pairs):
            for answer, sign in ((pair["right"], 1.0), (pair["wrong"], -1.0)):
                feature = toy.encode(tokenizer, {"prompt": pair["prompt"], "answer": answer}, k)
                feature["weight"] = sign / len(pairs)  # f = (1/N) Σ [log p(right) − log p(wrong)]
                features.append(feature)
        loader = sequences_loader(features, tokenizer.pad_token_id, context.batch_size)
        info = {"name": self.name, "kind": "reverse_over_copy_margin", "n_used": len(pairs), "fallback": None}
        return [MeasurementSpec(self.name, loader, info)]


def candidate_log_probs(measurement: ReverseOverCopy) -> list[TargetLogProb]:
    """The two halves of the margin as built-in measurements (same prompts, same token layout)."""
    pairs = measurement.pairs()
    prompts = ["<bos> " + p["prompt"] for p in pairs]
    return [
        TargetLogProb(name="reversed", prompts=prompts, targets=[p["right"] + " <eos>" for p in pairs], template="plain"),
        TargetLogProb(name="copied", prompts=prompts, targets=[p["wrong"] + " <eos>" for p in pairs], template="plain"),
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = toy.parse_args(list(argv) if argv is not None else None)
    if args.out == "runs/example_plain":
        args.out = "runs/example_measurement"
    module, datamodule = toy.build(args)
    toy.fit(module, datamodule, args)
    margin = ReverseOverCopy(n_prompts=args.n_prompts, seed=args.seed)
    callbacks = toy.attribution_callbacks(args, measurements=[margin, *candidate_log_probs(margin)])
    state = toy.attribute(module, datamodule, args, callbacks)
    scores = state.scores.instance_scores
    gap = (scores["score_reverse_over_copy"] - (scores["score_reversed"] - scores["score_copied"])).abs().max()
    print(f"f = {state.scores.measurement_info['reverse_over_copy']['f_value']:.4f} (mean log-prob margin)")
    print("mean margin score by training task:\n" + scores.groupby("domain")["score_reverse_over_copy"].mean().to_string())
    print(f"max |S_margin − (S_reversed − S_copied)| = {gap:.2e} (linearity)")
    return state


if __name__ == "__main__":
    main(sys.argv[1:])
