"""Shared helpers for the benchmarks: the toy Llama, random token data, timers and memory probes.

Memory: ``peak_rss_mb`` is the process high-water mark (``ru_maxrss``). On Linux the high-water mark
can be reset by writing ``5`` to ``/proc/self/clear_refs``; ``reset_peak`` does that when allowed,
so a phase's own peak can be read with ``current_peak_mb`` afterwards (``None`` if unsupported).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Any, Callable

import torch


def build_model(hidden: int, intermediate: int, layers: int, heads: int, vocab: int, seed: int = 0) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=vocab,
        max_position_embeddings=max(2048, 4 * hidden),
    )
    config.use_cache = False
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float()
    model.eval()
    return model


def random_tokens(n: int, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq_len), generator=generator)


def batches(tokens: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Dict batches with every token a target and no padding (labels aligned with inputs, HF style)."""
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        ids = tokens[start : start + batch_size]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.tokens[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over the whole batch (fp32 log-softmax)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )


def plain_epoch(model: torch.nn.Module, loader: list[dict[str, torch.Tensor]]) -> None:
    """One ordinary forward + backward over the loader (parameter .grad written, then cleared)."""
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        summed_nll(logits, batch["labels"]).backward()
    model.zero_grad(set_to_none=True)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def set_clock(name: str) -> None:
    """Time phases by ``wall`` seconds or by the process's ``cpu`` seconds (user + sys, all threads).

    On cores shared with other jobs, wall time of the same work varied 2x between consecutive
    runs here, while CPU time stayed within ~5%: with one thread the CPU clock measures the work,
    not the waiting. With several threads CPU time adds up every thread's time.
    """
    global _clock
    _clock = CLOCKS[name]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        start = _clock()
        result = fn()
        times.append(_clock() - start)
    return times, result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def current_peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def med(values: list[float]) -> float:
    return statistics.median(values)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (the growth exponent)."""
    import math

    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den if den else float("nan")


def rowwise_correlations(a: "np.ndarray", b: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Pearson and Spearman correlation of every row of ``a`` with the same row of ``b`` ([Q, N] each)."""
    import numpy as np
    from scipy.stats import rankdata

    def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = x - x.mean(1, keepdims=True)
        y = y - y.mean(1, keepdims=True)
        return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))

    return pearson(a, b), pearson(np.apply_along_axis(rankdata, 1, a), np.apply_along_axis(rankdata, 1, b))
