"""Building the causal LM: from a checkpoint path, or from a config with random init (the demo).

Kept apart from the LightningModule so attribution code and tests can build the same model
without a Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from infra_pl import dtypes

MODEL_DTYPES = ("float32", "bfloat16", "float16")

# The demo model: a ~0.5M-parameter Llama. Measured on the demo: at a fixed CPU budget it takes
# ~40% more steps than a 0.95M one (hidden 128) and answers about twice as many items correctly.
DEMO_MODEL_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


@dataclass
class LoraOptions:
    """Low-rank adapters via ``peft``; only adapter weights train and are checkpointed.

    Args:
        r: adapter rank.
        alpha: scaling numerator (effective scale alpha / r).
        dropout: dropout on the adapter input.
        target_modules: module name suffixes to adapt (default: attention and MLP projections).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def parse_dtype(name: str) -> torch.dtype:
    """The model's dtype from its config name (float32, bfloat16 or float16)."""
    return dtypes.parse_dtype(name, "model dtype", MODEL_DTYPES)


def build_causal_lm(
    *,
    name_or_path: str | None,
    model_config: dict[str, Any] | None,
    vocab_size: int | None,
    special_token_ids: dict[str, int | None],
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    init_seed: int = 0,
) -> PreTrainedModel:
    """A causal LM from ``name_or_path`` (weights on disk) or ``model_config`` (random init).

    The random init is seeded so that a LoRA adapter saved on a demo model reloads onto the
    very same base weights.
    """
    torch_dtype = parse_dtype(dtype)
    if name_or_path:
        # transformers 5 defaults to dtype="auto"; being explicit keeps runs reproducible.
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    else:
        settings = dict(DEMO_MODEL_CONFIG if model_config is None else model_config)
        model_type = settings.pop("model_type", "llama")
        if vocab_size is None:
            raise ValueError("building a model from a config needs the tokenizer's vocabulary size")
        settings["vocab_size"] = vocab_size
        settings.update({k: v for k, v in special_token_ids.items() if v is not None})
        config = AutoConfig.for_model(model_type, **settings)
        config._attn_implementation = attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.config.use_cache = False  # training and attribution passes never want a KV cache
    return model


def apply_lora(model: PreTrainedModel, options: LoraOptions) -> Any:
    """Wrap ``model`` with peft LoRA adapters (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in options.target_modules if t in present]
    if not targets:
        raise ValueError(
            f"none of the LoRA target modules {options.target_modules} exist in the model "
            f"(linear layer names seen: {sorted(n for n in present if 'proj' in n or 'fc' in n)[:12]})"
        )
    config = LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)
