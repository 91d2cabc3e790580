"""Built-in measurements: what sequences and weights they define, checked against independent constructions."""

import json
from types import SimpleNamespace

import pytest
import torch

from infra_pl.callbacks import InfluenceScores
from infra_pl.eval.dcorrect import select_measurement_sets
from infra_pl.measurements import (
    AnswerMargin,
    CorrectAnswerLogLikelihood,
    Measurement,
    MeasurementContext,
    MeasurementSpec,
    TargetLogProb,
    build_specs,
)


def context(datamodule, root, batch_size=4):
    return MeasurementContext(SimpleNamespace(default_root_dir=str(root)), None, datamodule, batch_size)


@pytest.fixture()
def ready_datamodule(tiny_datamodule):
    tiny_datamodule.prepare_data()
    tiny_datamodule.setup()
    return tiny_datamodule


def write_correctness(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_target_log_prob_chat_targets_are_exactly_the_answer(small_tokenizer, tmp_path):
    data = SimpleNamespace(tokenizer=small_tokenizer, max_length=200)
    measurement = TargetLogProb(name="seven", prompts=["What is 3 + 4?", "Add 3 and 4."], targets="The answer is 7.")
    spec = measurement.build(context(data, tmp_path))[0]
    batch = next(iter(spec.loader))
    assert spec.name == "seven" and spec.info["n_used"] == 2 and "measurement_weight" not in batch
    for row in range(2):
        targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert small_tokenizer.decode(targets) == "The answer is 7." + small_tokenizer.eos_token
    with pytest.raises(ValueError, match="2 targets for 1 prompts"):
        TargetLogProb(name="x", prompts=["a"], targets=["b", "c"])


def test_default_measurement_is_the_d_correct_selection(ready_datamodule, tmp_path):
    dm = ready_datamodule
    rows = [{"id": e["id"], "domain": e["domain"], "correct": i % 2 == 0} for i, e in enumerate(dm.eval_examples)]
    path = write_correctness(tmp_path / "correctness.jsonl", rows)
    measurement = CorrectAnswerLogLikelihood(n=2, min_correct=1, correctness_file=path, seed=5, target="reference")
    specs = measurement.build(context(dm, tmp_path))
    expected = select_measurement_sets(dm.eval_examples, rows, n=2, min_correct=1, seed=5)
    assert [s.name for s in specs] == list(expected) == ["code", "math"]
    for spec in specs:
        assert spec.indices == expected[spec.name].indices and spec.split == "eval"
        assert {k: spec.info[k] for k in expected[spec.name].info()} == expected[spec.name].info()
        assert spec.info["target"] == "reference" and spec.info["target_counts"] == {"generated": 0, "reference": 2}
        assert sorted(i for b in spec.loader for i in b["index"].tolist()) == expected[spec.name].indices
    # InfluenceScores without `measurements` builds exactly this measurement from its own arguments.
    default = InfluenceScores(n_correct=2, min_correct=1, correctness_file=path, seed=5, target="reference").measurements
    assert len(default) == 1 and isinstance(default[0], CorrectAnswerLogLikelihood)
    assert vars(default[0]) == vars(measurement)


def test_answer_margin_pairs_reference_and_own_answer_with_opposite_weights(ready_datamodule, tmp_path):
    dm = ready_datamodule
    math = [i for i, e in enumerate(dm.eval_examples) if e["domain"] == "math"]
    rows = [{"id": dm.eval_examples[i]["id"], "domain": "math", "correct": False, "generated": f"The answer is {k}."}
            for k, i in enumerate(math[:3])]
    rows.append({"id": dm.eval_examples[math[3]]["id"], "domain": "math", "correct": True, "generated": "right"})
    path = write_correctness(tmp_path / "c.jsonl", rows)
    specs = AnswerMargin(correctness_file=path, min_items=1).build(context(dm, tmp_path, batch_size=64))
    assert [s.name for s in specs] == ["margin_math"]  # no wrong code answers: that domain is skipped
    batch = next(iter(specs[0].loader))
    weights = batch["measurement_weight"]
    assert specs[0].info["n_used"] == 3 and torch.allclose(weights, torch.tensor([1 / 3, -1 / 3] * 3, dtype=weights.dtype))
    features = {f["index"]: f for f in dm._eval_features}
    for row in range(0, 6, 2):
        index = int(batch["index"][row])
        reference = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert reference == features[index]["input_ids"]  # the reference is the evaluation item itself
        own = batch["labels"][row + 1][batch["labels"][row + 1] != -100].tolist()
        generated = next(r["generated"] for r in rows if r["id"] == dm.eval_examples[index]["id"])
        assert dm.tokenizer.decode(own).startswith(generated)
    with pytest.raises(ValueError, match="no wrongly answered items"):
        AnswerMargin(correctness_file=path, domains=["code"]).build(context(dm, tmp_path))


class Named(Measurement):
    def __init__(self, *names):
        self.names = names

    def build(self, context):
        return [MeasurementSpec(n, []) for n in self.names]


def test_measurement_names_must_be_unique_and_plain(tmp_path):
    ctx = context(None, tmp_path)
    assert [s.name for s in build_specs([Named("a"), Named("b", "c")], ctx)] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        build_specs([Named("a"), Named("a")], ctx)
    with pytest.raises(ValueError, match="must be non-empty"):
        build_specs([Named("a b")], ctx)
    with pytest.raises(TypeError, match="Measurement objects"):
        build_specs(["math"], ctx)


def test_generated_target_teacher_forces_the_models_own_correct_answer(ready_datamodule, tmp_path):
    """Eq. 6's y_i is a correct answer: with target generated (auto on long-CoT data like the demo) it
    is the model's own generation from the correctness file, not the dataset's reference."""
    dm = ready_datamodule
    rows = [{"id": e["id"], "domain": e["domain"], "correct": True, "generated": f"My own answer number {i}."}
            for i, e in enumerate(dm.eval_examples)]
    path = write_correctness(tmp_path / "correctness.jsonl", rows)
    for target in ("generated", "auto"):
        specs = CorrectAnswerLogLikelihood(n=3, min_correct=1, correctness_file=path, target=target).build(context(dm, tmp_path))
        for spec in specs:
            assert spec.info["target"] == "generated" and spec.info["target_counts"]["generated"] == 3
            assert spec.info["target_option"] == target
            for batch in spec.loader:
                for row, index in enumerate(batch["index"].tolist()):
                    targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
                    assert dm.tokenizer.decode(targets).startswith(f"My own answer number {index}.")
    assert specs[0].info["long_cot_training"] is True  # auto: the demo is long-CoT (thought markers)


def test_stand_in_references_are_never_measured_and_auto_mixes_by_reference_kind():
    from infra_pl.measurements import choose_targets

    ids, kinds = ["a", "b", "c"], ["full", "answer_only", "none"]
    with pytest.raises(ValueError, match="stand-in"):
        choose_targets("code", ids, kinds, "reference", long_cot=False, fallback=False)
    with pytest.raises(ValueError, match="reference fallback"):
        choose_targets("code", ids, kinds, "auto", long_cot=False, fallback=True)
    assert choose_targets("m", ids, kinds, "auto", long_cot=False, fallback=False) == ["reference", "generated", "generated"]
    assert choose_targets("m", ids, kinds, "auto", long_cot=True, fallback=False) == ["generated"] * 3
    assert choose_targets("m", ids[:2], ["full", "answer_only"], "reference", long_cot=True, fallback=False) == ["reference"] * 2
    with pytest.raises(ValueError, match="target must be"):
        CorrectAnswerLogLikelihood(target="own")


def test_generated_target_without_generations_names_the_items(ready_datamodule, tmp_path):
    dm = ready_datamodule
    rows = [{"id": e["id"], "domain": e["domain"], "correct": True} for e in dm.eval_examples]
    path = write_correctness(tmp_path / "correctness.jsonl", rows)
    with pytest.raises(ValueError, match="no 'generated' text"):
        CorrectAnswerLogLikelihood(n=2, min_correct=1, correctness_file=path, target="generated").build(context(dm, tmp_path))


def test_stale_or_foreign_correctness_files_are_refused(ready_datamodule, tmp_path):
    """Issue 18 item 2: a correctness file from other weights, or for another evaluation set, is refused by name."""
    from infra_pl.ekfac.fingerprint import weights_fingerprint

    dm = ready_datamodule
    model = torch.nn.Linear(3, 2)
    module = SimpleNamespace(attribution_model=lambda: model)
    ctx = MeasurementContext(SimpleNamespace(default_root_dir=str(tmp_path)), module, dm, 4)
    rows = [{"id": e["id"], "domain": e["domain"], "correct": True, "generated": "x"} for e in dm.eval_examples]
    right = write_correctness(tmp_path / "right.jsonl", [{**r, "weights_fingerprint": weights_fingerprint(model)} for r in rows])
    stale = write_correctness(tmp_path / "stale.jsonl", [{**r, "weights_fingerprint": "0123abcd"} for r in rows])
    foreign = write_correctness(tmp_path / "foreign.jsonl", [{**r, "id": "other-" + r["id"]} for r in rows])
    measurement = lambda path: CorrectAnswerLogLikelihood(n=2, min_correct=1, correctness_file=path, target="reference")
    assert [s.name for s in measurement(right).build(ctx)] == ["code", "math"]
    with pytest.raises(ValueError, match="other weights.*0123abcd"):
        measurement(stale).build(ctx)
    with pytest.raises(ValueError, match="none of its .* item ids"):
        measurement(foreign).build(ctx)
    with pytest.raises(ValueError, match="none of its .* item ids"):
        measurement(foreign).preflight(ctx)
    with torch.no_grad():
        model.weight.add_(1.0)  # one more training step: the same file is now stale
    with pytest.raises(ValueError, match="other weights"):
        measurement(right).build(ctx)
