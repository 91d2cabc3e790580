"""Tiny models, padded batches and brute-force references for the influence tests.

The references here use plain autograd on the model's parameters (one backward per target token
or per sequence) and never the hooks of ``infra_pl``, so they check the library independently.
A plain module (not conftest) so test files import it by a name that cannot clash.
"""

from __future__ import annotations

import functools

import torch

from tests.batches import padded_batches

VOCAB = 40


def make_batches(
    lengths: list[list[int]], prompt_len: int = 3, max_len: int = 10, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches with random (non-pad) ids in the padding, so masking cannot rely on them."""
    return padded_batches(lengths, VOCAB, prompt_len, max_len, seed, index=True)


def tiny_llama(seed: int = 0, hidden: int = 16, intermediate: int = 32, vocab: int = VOCAB) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises biases to zero; make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model


def tiny_lora_llama(seed: int = 0) -> torch.nn.Module:
    """LoRA adapters on the MLPs and attention of a tiny Llama, B random (as after training)."""
    import peft

    model = tiny_llama(seed)
    torch.manual_seed(seed + 1)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], init_lora_weights=False
    )
    return peft.get_peft_model(model, config).eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "lora": tiny_lora_llama}


@functools.lru_cache(maxsize=None)
def scenario(kind: str):
    """(model, tracked modules, batches, Directions with 2 measurements from fitted EK-FAC factors)."""
    from infra_pl.ekfac import find_tracked_modules, fit_factors
    from infra_pl.influence import measurement_directions, measurement_gradient

    model = MODELS[kind]()
    modules = find_tracked_modules(model)
    batches = make_batches([[10, 6, 8, 4], [9, 10, 5]])
    measure_a = make_batches([[10, 7], [8]], seed=1)
    measure_b = make_batches([[9, 9, 6]], seed=2)
    factors = fit_factors(model, batches, fisher="empirical", modules=modules, progress=False)
    grads = {
        "math": measurement_gradient(model, measure_a, modules),
        "code": measurement_gradient(model, measure_b, modules),
    }
    return model, modules, batches, measurement_directions(factors, grads), factors


# -- brute force -------------------------------------------------------------------------------


def canonical_params(model, names):
    """The tracked parameters and a function mapping their gradients to [out, in(+1)] matrices."""
    modules = dict(model.named_modules())
    params, layout = [], []
    for n in names:
        module = modules[n]
        params.append(module.weight)
        has_bias = getattr(module, "bias", None) is not None
        if has_bias:
            params.append(module.bias)
        layout.append((n, type(module).__name__ == "Conv1D", has_bias))

    def to_canonical(grads):
        grads, out = list(grads), {}
        for n, conv1d, has_bias in layout:
            w = grads.pop(0).double()
            w = w.t() if conv1d else w
            if has_bias:
                w = torch.cat([w, grads.pop(0).double().unsqueeze(1)], dim=1)
            out[n] = w
        return out

    return params, to_canonical


def sequence_log_probs(model, input_ids, labels):
    """log p(label_{t+1} | ≤ t) for one unpadded sequence [1, L] -> [L-1] (float64 softmax)."""
    logits = model(input_ids=input_ids).logits[0, :-1].double()
    targets = labels[0, 1:]
    return torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1), targets.ne(-100)


def unpadded(batch, row):
    length = int(batch["attention_mask"][row].sum())
    return batch["input_ids"][row : row + 1, :length], batch["labels"][row : row + 1, :length]


def brute_token_scores(model, names, directions, input_ids, labels) -> torch.Tensor:
    """[M, L-1]: for each target t, autograd of log p(z_t | z_<t) w.r.t. the weights, dotted with v."""
    params, to_canonical = canonical_params(model, names)
    log_probs, mask = sequence_log_probs(model, input_ids, labels)
    out = torch.zeros(len(directions), log_probs.shape[0], dtype=torch.float64)
    for t in mask.nonzero().flatten().tolist():
        grads = to_canonical(torch.autograd.grad(log_probs[t], params, retain_graph=True))
        for m in range(len(directions)):
            out[m, t] = sum((directions.per_module[n][m].double() * grads[n]).sum() for n in names)
    return out


def brute_log_prob_grad(model, names, input_ids, labels) -> dict[str, torch.Tensor]:
    """∇ log p(z) (summed over targets) of one unpadded sequence, canonical layout."""
    params, to_canonical = canonical_params(model, names)
    log_probs, mask = sequence_log_probs(model, input_ids, labels)
    return to_canonical(torch.autograd.grad((log_probs * mask).sum(), params))


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max())
