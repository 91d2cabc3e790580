"""The three examples of examples/ run on tiny settings, and what they claim holds."""

import json

import pandas as pd
import pytest

from tests.extension.conftest import TINY_EXAMPLE_ARGS


def test_plain_module_example_gets_factors_scores_tokens_and_report(tmp_path, capsys):
    import plain_module_attribution as example

    state = example.main(["--out", str(tmp_path), *TINY_EXAMPLE_ARGS, "--progress-bar"])
    scores = pd.read_parquet(state.scores.instance_scores_path)
    assert len(scores) == 32 and list(scores.columns) == ["id", "index", "domain", "score_reverse"]
    assert scores["score_reverse"].map(lambda v: v == v).all(), "no NaN scores"
    # Token scores (through the module's own attribution_logits) sum to the instance scores.
    tokens = pd.read_parquet(state.scores.token_scores_path)
    sums = tokens.groupby("index")["score"].sum()
    by_index = scores.set_index("index")["score_reverse"]
    assert ((sums - by_index.loc[sums.index]).abs() <= 1e-4 * by_index.abs().max()).all()
    assert (tmp_path / "attribution" / "report" / "report.html").exists()
    # Reversing data is what raises log p(reversed answer | reverse prompt) most.
    means = scores.groupby("domain")["score_reverse"].mean()
    assert means["reverse"] > means["copy"], means


def test_custom_measurement_margin_is_the_difference_of_two_log_probs(tmp_path):
    import custom_measurement as example

    state = example.main(["--out", str(tmp_path), *TINY_EXAMPLE_ARGS, "--no-report"])
    info = state.scores.measurement_info
    scores = state.scores.instance_scores
    # f of the weighted (margin) measurement equals the difference of the two unweighted ones ...
    assert info["reverse_over_copy"]["f_value"] == pytest.approx(info["reversed"]["f_value"] - info["copied"]["f_value"], abs=1e-4)
    # ... and so do its scores, by linearity in ∇f (the weights path and the mean path agree).
    difference = scores["score_reversed"] - scores["score_copied"]
    assert (scores["score_reverse_over_copy"] - difference).abs().max() <= 1e-5 * difference.abs().max()
    assert scores["score_reverse_over_copy"].abs().max() > 0


def test_custom_measurement_f_value_matches_an_independent_computation(tmp_path):
    import custom_measurement as example
    import plain_module_attribution as toy

    from infra_pl.measurements import MeasurementContext

    args = toy.parse_args(["--out", str(tmp_path), *TINY_EXAMPLE_ARGS])
    module, datamodule = toy.build(args)
    measurement = example.ReverseOverCopy(n_prompts=4)
    spec = measurement.build(MeasurementContext(None, module, datamodule, batch_size=3))[0]
    weighted = sum(float((batch["measurement_weight"] * -module.per_example_loss(batch).double()).sum()) for batch in spec.loader)
    direct = []
    for pair in measurement.pairs():
        right = toy.collate([toy.encode(datamodule.tokenizer, {"prompt": pair["prompt"], "answer": pair["right"]}, 0)], 0)
        wrong = toy.collate([toy.encode(datamodule.tokenizer, {"prompt": pair["prompt"], "answer": pair["wrong"]}, 0)], 0)
        direct.append(float(module.per_example_loss(wrong) - module.per_example_loss(right)))
    assert weighted == pytest.approx(sum(direct) / len(direct), rel=1e-5)


def test_top_proponents_callback_writes_jsonl_and_a_tensorboard_figure(tmp_path):
    import top_proponents_callback as example
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    state = example.main(["--out", str(tmp_path), *TINY_EXAMPLE_ARGS, "--no-report"])
    rows = [json.loads(line) for line in state["top_proponents_path"].read_text().splitlines()]
    scores = pd.read_parquet(state["scores"].instance_scores_path)
    expected = scores.nlargest(50, "score_reverse")  # k=50 > 32 examples: every example, ranked
    assert [r["id"] for r in rows] == list(expected["id"]) and len(rows) == 32
    assert [r["rank"] for r in rows] == list(range(1, 33))
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    events = EventAccumulator(state["tensorboard_dir"], size_guidance={"images": 0})
    events.Reload()
    assert "top_proponents/reverse" in events.Tags()["images"]


def test_examples_are_selectable_by_class_path_in_yaml():
    """The custom measurement and callback parse from YAML like any Lightning component."""
    import custom_measurement
    import top_proponents_callback
    from jsonargparse import ArgumentParser

    from infra_pl.callbacks import InfluenceScores

    parser = ArgumentParser()
    parser.add_class_arguments(InfluenceScores, "scores")
    parser.add_argument("--extra", type=list[top_proponents_callback.AttributionHooks])
    config = parser.parse_string(
        "scores:\n  measurements:\n    - class_path: custom_measurement.ReverseOverCopy\n      init_args: {n_prompts: 3}\n"
        "    - class_path: infra_pl.measurements.TargetLogProb\n      init_args: {name: t, prompts: [a], targets: b}\n"
        "extra:\n  - class_path: top_proponents_callback.TopProponentsJSONL\n    init_args: {k: 7}\n"
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    objects = instantiate(config)
    scores = objects.scores
    assert isinstance(scores, InfluenceScores)
    assert isinstance(scores.measurements[0], custom_measurement.ReverseOverCopy) and scores.measurements[0].n_prompts == 3
    assert objects.extra[0].k == 7
