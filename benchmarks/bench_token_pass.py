"""Timing of the Eq. 9 token pass (one JVP per measurement) against the hooked instance pass.

    OMP_NUM_THREADS=1 python benchmarks/bench_token_pass.py                           # the defaults below
    OMP_NUM_THREADS=1 python benchmarks/bench_token_pass.py --repeats 1 --measurements 1  # a quick check

Prints the median CPU time (one thread) over repeats on a 4-layer Llama (hidden 64), 8 sequences × 128 tokens, CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra_pl.ekfac import find_tracked_modules, layer_shape  # noqa: E402
from infra_pl.influence import Directions, instance_scores, token_scores  # noqa: E402


def median_seconds(fn, repeats: int = 9) -> float:
    fn()  # warm-up (first JVP loads torch's forward-mode decompositions)
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU time of this process: robust to other jobs on shared cores
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9, help="timed repeats per pass, after one warm-up (median reported)")
    p.add_argument("--measurements", type=int, nargs="+", default=[1, 2, 4],
                   help="numbers of measurements M (query directions) to time")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=512, max_position_embeddings=256, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    modules = find_tracked_modules(model)
    ids = torch.randint(0, 512, (8, 128))
    labels = ids.clone()
    labels[:, :16] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def directions(m: int) -> Directions:
        return Directions([f"m{k}" for k in range(m)],
                          {n: torch.randn(m, *layer_shape(mod).matrix_shape) for n, mod in modules.items()})

    with torch.no_grad():
        forward = median_seconds(lambda: model(input_ids=ids, use_cache=False), args.repeats)
    print(f"plain forward: {forward * 1e3:.1f} ms")
    for m in args.measurements:
        d = directions(m)
        inst = median_seconds(lambda: instance_scores(model, batch, d, modules), args.repeats)
        inst_seq = median_seconds(lambda: instance_scores(model, batch, d, modules, contraction="sequence"), args.repeats)
        inst_tok = median_seconds(lambda: instance_scores(model, batch, d, modules, contraction="token"), args.repeats)
        vmapped = median_seconds(lambda: token_scores(model, batch, d, modules), args.repeats)
        looped = median_seconds(lambda: token_scores(model, batch, d, modules, vectorize=False), args.repeats)
        print(f"M={m}: instance {inst * 1e3:.1f} ms (sequence {inst_seq * 1e3:.1f}, token {inst_tok * 1e3:.1f}); "
              f"token JVP vmap {vmapped * 1e3:.1f} ms = {vmapped / inst:.2f}x instance; "
              f"loop {looped * 1e3:.1f} ms (vmap/loop {vmapped / looped:.2f})")


if __name__ == "__main__":
    main()
