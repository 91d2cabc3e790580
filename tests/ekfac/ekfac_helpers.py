"""Tiny models and padded batches shared by the EK-FAC tests (everything seeded, CPU, < 1 s).

A plain module (not conftest) so test files can import the builders by a name that cannot
clash with the repository-level conftest."""

from __future__ import annotations

import torch

from tests.batches import padded_batches

VOCAB = 50


def make_batches(
    lengths: list[list[int]], prompt_len: int = 3, max_len: int = 10, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of ids below ``VOCAB`` (see :func:`tests.batches.padded_batches`)."""
    return padded_batches(lengths, VOCAB, prompt_len, max_len, seed)


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def tiny_lora_llama(seed: int = 0) -> torch.nn.Module:
    """LoRA on every linear of a tiny Llama, B initialised randomly (a trained adapter, not B = 0)."""
    import peft

    model = tiny_llama(seed)
    torch.manual_seed(seed + 1)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    return peft.get_peft_model(model, config).eval()


# -- brute force, written independently of infra_pl.ekfac ------------------------------------------

LLAMA_MLP = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over labels != -100 (one sequence or a batch, all summed)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def float64_loss(model, batch, sample_labels: bool) -> torch.Tensor:
    """Per-sequence summed NLL with a float64 log-softmax (a loss_fn for float64 reference runs)."""
    assert not sample_labels
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(logp * labels.ne(-100)).sum(dim=1)


def sequences(batches: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every sequence of every batch as (input_ids [1, L], labels [1, L]) with its padding cut off."""
    out = []
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][row].sum())
            out.append((batch["input_ids"][row : row + 1, :length], batch["labels"][row : row + 1, :length]))
    return out


def single_sequence_tokens(model, names, input_ids, labels):
    """For one unpadded sequence: {name: (inputs [L, in], output grads [L, out])} via autograd."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o))) for n in names]
    try:
        logits = model(input_ids=input_ids).logits
        outputs = [seen[n][1] for n in names]
        grads = torch.autograd.grad(summed_nll(logits, labels), outputs)
    finally:
        for h in handles:
            h.remove()
    return {n: (seen[n][0][0].detach().double(), g[0].double()) for n, g in zip(names, grads)}


def single_sequence_weight_grads(model, names, input_ids, labels):
    """For one unpadded sequence: {name: dL/dW as [out, in(+1)]} from autograd on the parameters."""
    modules = dict(model.named_modules())
    params = []
    for n in names:
        params.append(modules[n].weight)
        if getattr(modules[n], "bias", None) is not None:
            params.append(modules[n].bias)
    logits = model(input_ids=input_ids).logits
    grads = list(torch.autograd.grad(summed_nll(logits, labels), params))
    result = {}
    for n in names:
        w = grads.pop(0).double()
        if type(modules[n]).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            w = w.t()
        if getattr(modules[n], "bias", None) is not None:
            w = torch.cat([w, grads.pop(0).double().unsqueeze(1)], dim=1)
        result[n] = w
    return result


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max())
