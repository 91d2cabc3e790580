"""The planner with activation checkpointing (``Settings.activation_checkpointing``, ``--activation-checkpointing``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infra_pl.ekfac.checkpointing import activation_checkpointing
from infra_pl.planner import Settings, estimate
from infra_pl.planner.__main__ import main
from infra_pl.planner.estimate import (
    COVARIANCE,
    DIRECTIONS,
    EIGEN,
    INSTANCE,
    LAMBDA,
    MEASUREMENT,
    TOKENS,
    replayed_block_bytes,
    saved_activation_bytes,
)
from infra_pl.planner.model import Architecture
from tests.planner.test_planner_estimate import _saved_bytes, tiny_llama

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
GRADIENT_PASSES = (COVARIANCE, LAMBDA, MEASUREMENT, INSTANCE)


def _batch(padding: bool, b: int = 2, t: int = 24) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (b, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padding:
        mask[0, 16:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(
    "dtype,padding", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)], ids=["fp32", "bf16", "padded"]
)
def test_checkpointed_saved_activations_match_autograd(dtype, padding):
    """What a checkpointed forward saves (block inputs, final norm, lm_head input: counted by autograd's
    pack hooks), plus what the blocks hold for their replays (rotary cos/sin, the boolean mask)."""
    model = tiny_llama(dtype)
    batch = _batch(padding)
    b, t = batch["input_ids"].shape
    s = torch.empty((), dtype=dtype).element_size()
    arch = Architecture.from_config(model.config)
    settings = Settings(batch_size=b, seq_len=t, padding=padding, activation_checkpointing=True)
    with activation_checkpointing(model):
        saved = _saved_bytes(model, batch)
    held = 2 * t * arch.head_dim * s + (b * t * t if padding else 0)
    assert saved + held == saved_activation_bytes(arch, settings, s)


@pytest.mark.parametrize("padding", [False, True])
def test_replayed_block_is_one_layers_share(padding):
    """The plain forward saves every layer's tensors (checked against autograd in test_planner_estimate);
    a checkpointed backward rebuilds one layer's at a time."""
    arch = Architecture.from_config(tiny_llama(device="meta").config)
    plain = Settings(batch_size=2, seq_len=24, padding=padding)
    ckpt = Settings(batch_size=2, seq_len=24, padding=padding, activation_checkpointing=True)
    s = 2
    outside = saved_activation_bytes(arch, ckpt, s) - arch.layers * ckpt.tokens * arch.hidden * s
    outside -= 2 * 24 * 24 if padding else 0  # the boolean mask held for the replays
    assert saved_activation_bytes(arch, plain, s) == arch.layers * replayed_block_bytes(arch, ckpt, s) + outside
    assert replayed_block_bytes(arch, plain, s) == 0


def test_checkpointing_lowers_only_the_gradient_passes():
    model = tiny_llama(device="meta")
    plain = estimate(model, Settings(batch_size=2, seq_len=64))
    ckpt = estimate(model, Settings(batch_size=2, seq_len=64, activation_checkpointing=True))
    for phase in GRADIENT_PASSES:
        assert ckpt.peak(phase) < plain.peak(phase)
        assert ckpt.phases[phase].hook_overhead > plain.phases[phase].hook_overhead  # the replayed block
    for phase in (EIGEN, DIRECTIONS, TOKENS):
        assert ckpt.peak(phase) == plain.peak(phase)
    assert "replayed block (activation checkpointing)" in ckpt.sizes


def test_captured_inputs_count_when_autograd_no_longer_saves_them():
    """float32 model and factors, no padding: a capture keeps the layer input itself, which only
    checkpointing leaves to the capture alone."""
    model = tiny_llama(device="meta")
    gate = "model.layers.0.mlp.gate_proj"
    plain = estimate(model, Settings(batch_size=2, seq_len=8))
    ckpt = estimate(model, Settings(batch_size=2, seq_len=8, activation_checkpointing=True))
    for phase in (LAMBDA, MEASUREMENT, INSTANCE):
        assert ckpt.phases[phase].resident[gate] - plain.phases[phase].resident[gate] == 2 * 8 * 32 * 4
    assert ckpt.phases[COVARIANCE].resident[gate] == plain.phases[COVARIANCE].resident[gate]  # nothing pending


def test_command_option_plans_fewer_partitions(capsys):
    config = str(CONFIGS / "qwen25_7b.json")
    args = ["--model-config", config, "--budget", "80GiB", "--seq-len", "4096", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--activation-checkpointing"]) == 0
    ckpt = json.loads(capsys.readouterr().out)
    assert ckpt["settings"]["activation_checkpointing"] and not plain["settings"]["activation_checkpointing"]
    assert len(ckpt["partitions"]) < len(plain["partitions"])
    for phase in GRADIENT_PASSES:
        assert ckpt["peaks_one_partition"][phase] < plain["peaks_one_partition"][phase]
    assert main(args[:-1] + ["--activation-checkpointing"]) == 0
    assert "activation checkpointing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--activation-checkpointing" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft vs transformers 5
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lora_checkpointed_activations_match_autograd(dtype):
    """Frozen base + adapters: the adapters' inputs live inside the blocks, so a checkpointed forward
    keeps exactly what the plain model's checkpointed forward keeps (the adapters are replayed)."""
    import peft

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(tiny_llama(dtype), config)
    batch = _batch(False)
    with activation_checkpointing(model):
        saved = _saved_bytes(model, batch)
    s = torch.empty((), dtype=dtype).element_size()
    est = estimate(model, Settings(batch_size=2, seq_len=24, activation_checkpointing=True))
    assert saved + 2 * 24 * 8 * s == est.phases[COVARIANCE].fixed["saved activations"]


def test_fsdp_ranks_add_each_ranks_shard_to_every_phase():
    from infra_pl.planner import Settings, estimate_from_config, load_config

    config = load_config("configs/models/llama3_8b.json")
    plain = estimate_from_config(config, Settings(batch_size=1, seq_len=512))
    sharded = estimate_from_config(config, Settings(batch_size=1, seq_len=512, fsdp_ranks=4))
    shard = -(-plain.weight_bytes // 4)
    assert all(sharded.peaks()[p] - plain.peaks()[p] == shard for p in plain.phases)
