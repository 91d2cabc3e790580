"""Issue 23: every LDS retrain records its (fixed) optimiser step count; older records still load."""

from __future__ import annotations

import json

from infra_pl.lds import LDSSetting, TrainRecipe
from infra_pl.lds.experiment import LDSExperiment
from infra_pl.lds.subsets import RetrainJob, RetrainRecord, RetrainStore, run_retrains, subset_digest
from tests.lds.lds_helpers import TINY_MODEL

SETTING = LDSSetting(
    n_train=20,
    n_eval=3,
    n_pretrain=0,
    model_config=TINY_MODEL,
    tokenizer_vocab_size=300,
    max_length=512,
    finetune=TrainRecipe(steps=3, learning_rate=5e-3, batch_size=8),
    max_new_tokens=4,
)


def test_retrains_record_their_step_count(tmp_path):
    lines: list[str] = []
    exp = LDSExperiment(SETTING, tmp_path, log=lines.append, sandbox_workers=1)
    exp.measurements(0)
    records = run_retrains([RetrainJob("half", list(range(10)), 0)], exp.store, exp.retrain, log=lines.append)
    assert records[0].steps == SETTING.finetune.steps == 3
    stored = json.loads(exp.store.path(range(10), 0).read_text())
    assert stored["steps"] == 3
    assert any("retrain 1/1" in line and "3 steps" in line for line in lines)
    exp.ensure_full_record(0)  # the cached full model's record names the recipe's steps as well
    assert exp.store.get(list(range(20)), 0).steps == 3


def test_records_written_before_steps_were_kept_still_load(tmp_path):
    store = RetrainStore(tmp_path)
    record = RetrainRecord(subset_digest([1, 2]), 0, 2, [0.5], {"m": 0.5}, 1.0, 0.1)
    legacy = record.to_dict()
    del legacy["steps"]
    store.path([1, 2], 0).write_text(json.dumps(legacy))
    assert store.get([1, 2], 0).steps is None
