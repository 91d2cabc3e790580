"""The attribution protocol: what a module/datamodule lacks is named; SFTModule's adapters equal the core's."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import torch

from infra_pl.callbacks import AttributionReport, EKFACFactors, InfluenceScores
from infra_pl.hooks import AttributionHooks, AttributionState, FactorsReady, ScoresReady, dispatch
from infra_pl.protocol import ProtocolError, logits_fn_for, loss_fn_for, weighted_loss_fn
from infra_pl.trainer import InfraTrainer
from tests.extension.conftest import TINY_EXAMPLE_ARGS


@pytest.fixture()
def toy(tmp_path):
    import plain_module_attribution as toy

    args = toy.parse_args(["--out", str(tmp_path), *TINY_EXAMPLE_ARGS])
    module, datamodule = toy.build(args)
    return toy, module, datamodule


class LossOnly(L.LightningModule):
    """A user's module with only the required protocol methods, and a predict_step that must not run."""

    def __init__(self, gpt2: torch.nn.Module, with_model: bool = True, with_loss: bool = True) -> None:
        super().__init__()
        self.gpt2 = gpt2
        if not with_model:
            self.attribution_model = None  # an attribute that is not callable counts as missing
        if not with_loss:
            self.per_example_loss = None

    def attribution_model(self) -> torch.nn.Module:
        return self.gpt2

    def per_example_loss(self, batch):
        logits = self.gpt2(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none")
        return nll.sum(dim=1)

    def predict_step(self, batch, batch_idx):
        raise AssertionError("attribution passes must not call the module's predict_step")


def trainer_with(tmp_path, *callbacks):
    return InfraTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=list(callbacks))


@pytest.mark.parametrize("missing", ["attribution_model", "per_example_loss"])
def test_a_module_missing_a_required_method_fails_naming_it(tmp_path, toy, missing):
    _, module, datamodule = toy
    user = LossOnly(module.gpt2, with_model=missing != "attribution_model", with_loss=missing != "per_example_loss")
    with pytest.raises(ProtocolError, match=rf"LossOnly does not implement {missing}\b"):
        trainer_with(tmp_path, EKFACFactors(fisher="empirical")).attribute(user, datamodule=datamodule)


def test_true_fisher_without_label_sampling_names_the_method_and_the_way_out(tmp_path, toy):
    _, module, datamodule = toy
    with pytest.raises(ProtocolError, match="sampled_per_example_loss.*fisher: empirical"):
        trainer_with(tmp_path, EKFACFactors(fisher="true")).attribute(LossOnly(module.gpt2), datamodule=datamodule)


def test_loss_only_module_gets_instance_scores_and_token_scores_need_logits(tmp_path, toy):
    _, module, datamodule = toy
    from infra_pl.measurements import TargetLogProb

    measurement = TargetLogProb(name="t", prompts=["<bos> reverse a b c ->"], targets=" c b a <eos>", template="plain")
    factors = EKFACFactors(fisher="empirical", log_spectra=False)
    user = LossOnly(module.gpt2)
    with pytest.raises(ProtocolError, match=r"does not implement attribution_logits.*token_top_k: 0"):
        trainer_with(tmp_path, factors, InfluenceScores(measurements=[measurement])).attribute(user, datamodule=datamodule)
    # Without token/sentence scores the two required methods suffice (and predict_step never runs).
    scores = InfluenceScores(measurements=[measurement], token_top_k=0, sentence_top_k=0)
    state = trainer_with(tmp_path, factors, scores).attribute(user, datamodule=datamodule)
    assert len(state.scores.instance_scores) == 32 and state.scores.token_scores is None
    scored = state.scores.instance_scores["score_t"]
    assert torch.isfinite(torch.tensor(scored.to_numpy())).all() and scored.abs().max() > 0


class DataWithout:
    """A datamodule-like object lacking ``attribution_ids``."""

    def attribution_dataloader(self, split="train", batch_size=None, indices=None):
        return []


def test_a_datamodule_missing_a_protocol_method_fails_naming_it(tmp_path, toy):
    _, module, _ = toy
    with pytest.raises(ProtocolError, match=r"DataWithout does not implement attribution_ids"):
        trainer_with(tmp_path, EKFACFactors()).attribute(module, datamodule=DataWithout())
    with pytest.raises(ProtocolError, match=r"needs a datamodule implementing attribution_ids"):
        trainer_with(tmp_path, EKFACFactors()).attribute(module, datamodule=None)


def test_sentence_scores_need_chat_data(toy):
    _, module, datamodule = toy
    with pytest.raises(ProtocolError, match=r"attribution_example.*sentence_top_k: 0"):
        InfluenceScores(token_top_k=0, sentence_top_k=2).check_requirements(module, datamodule)


def test_report_without_domain_column_names_it():
    scores = ScoresReady(scores_dir=Path("."), measurements=["f"], instance_scores=pd.DataFrame({"id": ["a"], "score_f": [1.0]}))
    trainer = SimpleNamespace(is_global_zero=True, attribution_state=AttributionState(scores=scores))
    with pytest.raises(ProtocolError, match="'domain'.*attribution_metadata"):
        AttributionReport().run_attribution(trainer, None, None)


def test_sft_module_adapters_equal_the_hf_defaults_of_the_core(small_tokenizer):
    from infra_pl.ekfac.loss import causal_lm_loss
    from infra_pl.influence.tokens import causal_lm_logits
    from infra_pl.module import SFTModule
    from tests.conftest import TINY_MODEL

    module = SFTModule(model_config=TINY_MODEL)
    module._resolve_tokenizer = lambda: small_tokenizer
    module.configure_model()
    model = module.attribution_model()
    ids = torch.randint(3, len(small_tokenizer), (3, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels[2, 9:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(3)}
    loss_fn = loss_fn_for(module)
    assert torch.equal(loss_fn(model, batch, False), causal_lm_loss(model, batch, False))
    torch.manual_seed(3)
    sampled = loss_fn(model, batch, True)
    torch.manual_seed(3)
    assert torch.equal(sampled, causal_lm_loss(model, batch, True))
    assert torch.equal(logits_fn_for(module)(model, batch), causal_lm_logits(model, batch))
    weights = torch.tensor([0.5, -1.0, 2.0])
    assert torch.allclose(weighted_loss_fn(loss_fn)(model, {**batch, "measurement_weight": weights}, False), weights * causal_lm_loss(model, batch, False))


def test_loss_of_the_wrong_shape_is_refused(toy):
    _, module, datamodule = toy
    module.per_example_loss = lambda batch: torch.zeros(2, 3)
    batch = next(iter(datamodule.attribution_dataloader("train", 2)))
    with pytest.raises(ProtocolError, match=r"shape \[B\]; got \(2, 3\)"):
        loss_fn_for(module)(module.gpt2, batch, False)


def test_hooks_reach_any_callback_defining_them_on_rank_zero_only():
    calls = []

    class Plain(L.Callback):  # not an AttributionHooks subclass: duck typing is enough
        def on_scores_ready(self, trainer, pl_module, event):
            calls.append(("plain", event.measurements))

    class Sub(AttributionHooks):
        def on_factors_ready(self, trainer, pl_module, event):
            calls.append(("sub", event.fisher))

    event = ScoresReady(scores_dir=None, measurements=["m"], instance_scores=pd.DataFrame({"id": list("abc"), "score_m": [1.0, 3.0, 2.0]}))
    factors = FactorsReady(factors_dir=None, factors=None, modules=["x"], fisher="true", reused=False)
    trainer = SimpleNamespace(is_global_zero=True, callbacks=[Plain(), Sub(), object()])
    dispatch(trainer, None, event)
    dispatch(trainer, None, factors)
    assert calls == [("plain", ["m"]), ("sub", "true")]
    dispatch(SimpleNamespace(is_global_zero=False, callbacks=[Plain()]), None, event)
    assert len(calls) == 2
    assert list(event.top("m", 2)["id"]) == ["b", "c"] and list(event.top("m", 1, proponents=False)["id"]) == ["a"]
    with pytest.raises(KeyError, match="unknown measurement"):
        event.top("other", 1)

    class Failing(AttributionHooks):
        def on_scores_ready(self, trainer, pl_module, event):
            raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        dispatch(SimpleNamespace(is_global_zero=True, callbacks=[Failing()]), None, event)
