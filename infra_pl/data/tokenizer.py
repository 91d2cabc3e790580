"""Tokenizers: a real one from a path, or a small BPE trained locally on the demo text.

Why train one: nothing can be downloaded at run time, and a tiny model learns arithmetic far
better when every digit is its own token, so the demo tokenizer splits digits individually and
keeps the chat and Bespoke-Stratos markers as single tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, PreTrainedTokenizerFast

THOUGHT_MARKERS = (
    "<|begin_of_thought|>",
    "<|end_of_thought|>",
    "<|begin_of_solution|>",
    "<|end_of_solution|>",
)
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
PAD, BOS, UNK = "<|pad|>", "<|bos|>", "<|unk|>"

# One turn = role token, newline, content, end token, newline. The assistant's end token is part
# of its target so the model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TOKENIZER_VERSION = 1


def _corpus_fingerprint(texts: list[str], vocab_size: int) -> str:
    digest = hashlib.sha256(f"v{TOKENIZER_VERSION}|{vocab_size}".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with single-digit splitting and the chat/marker special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = [PAD, BOS, UNK, *CHAT_TOKENS, *THOUGHT_MARKERS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token="<|end|>",
        unk_token=UNK,
        additional_special_tokens=[*CHAT_TOKENS[:3], *THOUGHT_MARKERS],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def example_texts(examples: Iterable[dict]) -> Iterable[str]:
    """All message contents of schema examples (what the tokenizer is trained on)."""
    for example in examples:
        for message in example["messages"]:
            yield message["content"]


def cached_demo_tokenizer(
    examples: list[dict], cache_dir: str | os.PathLike, vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """Train the demo tokenizer once per corpus and reuse it from ``cache_dir`` afterwards."""
    texts = list(example_texts(examples))
    key = _corpus_fingerprint(texts, vocab_size)
    target = Path(cache_dir) / f"tokenizer-{key}"
    if (target / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(target))
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tokenizer-"))
    tokenizer.save_pretrained(str(staging))
    (staging / "infra_pl.json").write_text(json.dumps({"fingerprint": key, "vocab_size": vocab_size}))
    try:
        os.replace(staging, target)  # atomic: a concurrent or interrupted run never sees half a tokenizer
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)  # another process won the race; use its copy
    return AutoTokenizer.from_pretrained(str(target))


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """A real tokenizer from a local path (or a hub name where the hub is reachable)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
