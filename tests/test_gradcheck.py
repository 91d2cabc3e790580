"""The gradient validity check (issue 18, item 11): padded, batched per-example gradients against
unpadded one-by-one float32 ones, per tracked module; ``attribute`` runs it before its first pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "ekfac"))
from ekfac_helpers import VOCAB, make_batches, tiny_llama  # noqa: E402

from infra_pl.gradcheck import (  # noqa: E402
    GradientCheckError,
    check_gradients,
    enforce,
    float32_eager,
    spread_indices,
)

BATCH = make_batches([[10, 6, 8, 4]], seed=3)[0]


def test_a_correct_float32_model_passes_and_is_left_as_it_was(capsys):
    model = tiny_llama()
    model.config._attn_implementation = "sdpa"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = check_gradients(model, BATCH)
    assert result.status == "ok" and result.worst[1] < 1e-5, result.errors
    assert result.lengths == [10, 6, 8, 4] and len(result.errors) == 6  # gate/up/down of 2 blocks
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    enforce(result)
    assert "largest relative error" in capsys.readouterr().err


def test_bfloat16_is_measured_against_float32_and_restored_exactly():
    model = tiny_llama(dtype=torch.bfloat16)
    model.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq.float()  # a float32 buffer in a bf16 model
    before = {k: (v.clone(), v.dtype) for k, v in model.state_dict().items()}
    result = check_gradients(model, BATCH)
    assert result.dtype == "bfloat16" and 1e-4 < result.worst[1] < result.refuse
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert all(torch.equal(before[k][0], v) and before[k][1] == v.dtype for k, v in model.state_dict().items())
    # Against the float32 bounds the same measurement is a warning that names the dtype.
    strict = check_gradients(model, BATCH, warn=1e-3, refuse=1.0)
    assert strict.status == "warn" and "model.dtype: float32" in strict.advice()


class LeakyMeanLM(nn.Module):
    """A toy LM whose context mixing averages over every position, padding included (attention_mask ignored)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 16)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.embed(input_ids)
        hidden = hidden + hidden.mean(dim=1, keepdim=True)  # the bug: padded positions count
        return (self.head(torch.tanh(self.mlp(hidden))),)


def test_a_model_whose_output_depends_on_padding_is_refused():
    result = check_gradients(LeakyMeanLM(), BATCH, modules=["mlp", "head"])
    assert result.status == "refuse" and result.worst[1] > 0.05
    with pytest.raises(GradientCheckError, match="attention_mask") as refused:
        enforce(result)
    assert "relative error" in str(refused.value) and "--gradient_check false" in str(refused.value)


def test_sdpa_with_padding_is_named_as_the_likely_cause():
    model = tiny_llama()
    model.config._attn_implementation = "sdpa"
    # Fake kernel fault: the first block's MLP sees its input shifted by the padded length of the batch.
    model.model.layers[0].mlp.register_forward_pre_hook(lambda module, args: (args[0] + 0.05 * args[0].shape[1],))
    result = check_gradients(model, BATCH)
    assert result.status == "refuse", result.errors
    assert "attn_implementation: eager" in result.advice()


def test_float32_eager_restores_even_on_error():
    model = tiny_llama(dtype=torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    with pytest.raises(RuntimeError, match="boom"), float32_eager(model):
        assert model.lm_head.weight.dtype == torch.float32 and model.config._attn_implementation == "eager"
        raise RuntimeError("boom")
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"


def test_spread_indices():
    assert spread_indices(3) == [0, 1, 2]
    assert spread_indices(100) == [0, 33, 66, 99]


# ------------------------------------------------------------------ attribute and `infra-pl check`
def test_attribute_checks_first_and_refuses_wrong_gradients_before_any_step(tmp_path, tiny_datamodule, capsys):
    from infra_pl.module import SFTModule
    from infra_pl.trainer import AttributionStep, InfraTrainer
    from tests.conftest import TINY_MODEL

    class Recorder(AttributionStep):
        order = 10
        ran = 0

        def run_attribution(self, trainer, pl_module, datamodule):
            Recorder.ran += 1

    def trainer():
        return InfraTrainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path, callbacks=[Recorder()])

    trainer().attribute(SFTModule(model_config=TINY_MODEL), datamodule=tiny_datamodule)
    err = capsys.readouterr().err
    assert "gradient check: 4 training sequences" in err and err.count(": ok") >= 1 and Recorder.ran == 1

    broken = SFTModule(model_config=TINY_MODEL)
    broken.configure_model = _with_padding_fault(broken)
    with pytest.raises(GradientCheckError, match="refuse above"):
        trainer().attribute(broken, datamodule=tiny_datamodule)
    assert Recorder.ran == 1  # refused before the first attribution step

    trainer().attribute(broken, datamodule=tiny_datamodule, gradient_check=False)  # the way to skip it
    assert Recorder.ran == 2


def _with_padding_fault(module):
    build = module.configure_model

    def configure_model():
        build()
        mlp = module.model.model.layers[0].mlp
        if not getattr(mlp, "_faulty", False):
            mlp._faulty = True
            mlp.register_forward_pre_hook(lambda m, args: (args[0] + 0.05 * args[0].shape[1],))

    return configure_model


def test_check_subcommand_prints_every_module(tmp_path, monkeypatch, tiny_cache, capsys):
    from infra_pl.cli import run_cli
    from tests.test_cli import tiny_args

    monkeypatch.chdir(tmp_path)
    run_cli(["check", *tiny_args(tiny_cache), "--trainer.enable_progress_bar", "false", "--sequences", "3"])
    err = capsys.readouterr().err
    assert "gradient check: 3 training sequences" in err and ": ok" in err
    assert "max rel. error" in err and err.count("mlp.down_proj") >= 2
