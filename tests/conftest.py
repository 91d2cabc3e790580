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


TINY_MODEL = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
TINY_DEMO = {"seed": 0, "n_train": 60, "n_eval": 5, "n_pool": 10}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache dir holding a tiny demo and its tokenizer, shared by the end-to-end tests."""
    from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule

    cache = tmp_path_factory.mktemp("infra_cache")
    dm = ReasoningDataModule(cache_dir=str(cache), demo=DemoOptions(**TINY_DEMO))
    dm.prepare_data()
    dm.setup()
    return cache


@pytest.fixture()
def tiny_datamodule(tiny_cache):
    from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule

    return ReasoningDataModule(cache_dir=str(tiny_cache), demo=DemoOptions(**TINY_DEMO), batch_size=8, eval_batch_size=8)
