"""LoRA: only adapters train and are checkpointed; reloading gives the identical validation loss."""

import lightning as L
import torch

from infra_pl.model_builder import LoraOptions
from infra_pl.module import SFTModule
from tests.conftest import TINY_MODEL


def make_trainer(tmp_path, **kw):
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, **kw,
    )


def test_lora_adapter_checkpoint_reloads_with_identical_val_loss(tmp_path, tiny_datamodule):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL, lora=LoraOptions(r=4, alpha=8), max_new_tokens=4, learning_rate=1e-2)
    trainer = make_trainer(tmp_path, max_steps=4, enable_checkpointing=False)
    trainer.fit(module, datamodule=tiny_datamodule)
    ckpt = tmp_path / "adapter.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state), "only adapter weights are saved"
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert sum(v.numel() for v in state.values()) == trained

    first = make_trainer(tmp_path).validate(module, datamodule=tiny_datamodule)[0]["val/loss"]
    fresh = SFTModule(model_config=TINY_MODEL, lora=LoraOptions(r=4, alpha=8), max_new_tokens=4)
    again = make_trainer(tmp_path).validate(fresh, datamodule=tiny_datamodule, ckpt_path=str(ckpt))[0]["val/loss"]
    untrained = make_trainer(tmp_path).validate(
        SFTModule(model_config=TINY_MODEL, lora=LoraOptions(r=4, alpha=8), max_new_tokens=4), datamodule=tiny_datamodule
    )[0]["val/loss"]
    assert again == first
    assert abs(untrained - first) > 1e-4, "the adapters changed the model, so the reload check means something"


def test_checkpoint_from_another_tokenizer_is_refused_with_the_cause(tmp_path, tiny_datamodule):
    import pytest

    module = SFTModule(model_config=TINY_MODEL, max_new_tokens=4)
    trainer = make_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    trainer.fit(module, datamodule=tiny_datamodule)
    ckpt = tmp_path / "full.ckpt"
    trainer.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    for key in list(checkpoint["state_dict"]):
        if "embed_tokens" in key or "lm_head" in key:
            checkpoint["state_dict"][key] = checkpoint["state_dict"][key][:-3]  # as if 3 fewer tokens
    torch.save(checkpoint, ckpt)
    with pytest.raises(ValueError, match="vocabulary size differs"):
        make_trainer(tmp_path).validate(SFTModule(model_config=TINY_MODEL, max_new_tokens=4), datamodule=tiny_datamodule, ckpt_path=str(ckpt))
