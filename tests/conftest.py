"""Test-wide settings: one torch thread (2 shared cores: oversubscription makes runs up to 10x slower)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_tokenizer():
    """A tokenizer trained in a second on a few chat strings (same code path as the demo's)."""
    from infra_pl.data.tokenizer import train_bpe_tokenizer

    texts = [
        "What is 3 + 4? Let me add. 3 + 4 = 7. The answer is \\boxed{7}.",
        "Write a function f(x) that adds 3. def f(x):\n    return x + 3",
        "You are a helpful assistant that reasons step by step.",
    ] * 20
    return train_bpe_tokenizer(texts, vocab_size=300)
