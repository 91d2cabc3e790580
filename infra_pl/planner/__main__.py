"""``python -m infra_pl.planner`` / ``infra-pl-plan``: print the memory plan of an attribution run.

Example::

    python -m infra_pl.planner --model-config configs/models/llama3_8b.json --budget 80GiB \\
        --batch-size 1 --seq-len 4096 --dtype bf16 --measurements 2
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

from infra_pl.dtypes import parse_dtype
from infra_pl.planner.estimate import Settings, estimate_from_config
from infra_pl.planner.partition import PartitionError, parse_bytes, plan_partitions
from infra_pl.planner.report import plan_json, plan_table


def _dtype(name: str) -> torch.dtype:
    try:
        return parse_dtype(name, "dtype")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _lora(text: str) -> dict:
    """``r=16,alpha=32,targets=gate_proj+up_proj+down_proj`` -> LoraOptions keywords."""
    options: dict = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key == "r":
            options["r"] = int(value)
        elif key == "alpha":
            options["alpha"] = int(value)
        elif key in ("targets", "target_modules"):
            options["target_modules"] = [t for t in value.split("+") if t]
        else:
            raise argparse.ArgumentTypeError(f"unknown LoRA option {key!r} in {text!r}; use r=, alpha=, targets=a+b+c")
    return options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infra-pl-plan",
        description=(
            "Estimate the per-device memory of each EK-FAC attribution phase (covariance, eigendecomposition, "
            "lambda, measurement, directions, instance and token scores) from a model config alone (the model "
            "is built on the meta device: no weights, no download), and choose the fewest partitions of the "
            "tracked modules that fit the budget. Estimates are live tensor bytes (torch.cuda.max_memory_allocated); "
            "keep --headroom for the CUDA context, library workspaces and fragmentation. Under DDP every rank "
            "holds all of this."
        ),
    )
    p.add_argument("--model-config", required=True, help="HF config.json file or a folder holding one (local only).")
    p.add_argument("--budget", default=None, help="device memory, e.g. 80GiB, 141GB, 24GiB; omit to print the estimate only.")
    p.add_argument("--headroom", type=float, default=0.1, help="fraction of the budget kept free (default 0.1).")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per batch in the attribution passes (default 1).")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per (padded) sequence (default 4096).")
    p.add_argument("--dtype", type=_dtype, default=torch.bfloat16, help="model dtype: bf16 (default), fp16, fp32.")
    p.add_argument("--factor-dtype", type=_dtype, default=torch.float32,
                   help="accumulation dtype of factors, captures and directions: fp32 (default) or fp64.")
    p.add_argument("--compute-dtype", type=_dtype, default=None,
                   help="operand dtype of the factor passes' products (EKFACFactors compute_dtype): bf16 or fp32; "
                        "default: the factor dtype.")
    p.add_argument("--modules", default=None,
                   help="regex of tracked module names (default: the EK-FAC rule, MLP projections / LoRA adapters).")
    p.add_argument("--measurements", type=int, default=2, help="number of measurements M (default 2: math, code).")
    p.add_argument("--fisher", choices=("true", "empirical"), default="true",
                   help="'true' samples labels from the model (default), 'empirical' uses the data labels.")
    p.add_argument("--padding", action="store_true",
                   help="batches contain padding (mask copies in the captures, attention mask, repeated GQA heads).")
    p.add_argument("--offload-covariance", action="store_true",
                   help="A and S leave the device after the eigendecomposition (default: they stay, as the callbacks "
                        "do now, through the lambda pass and preconditioning).")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="the gradient passes checkpoint every decoder block (EKFACFactors / InfluenceScores "
                        "activation_checkpointing): only each block's input is kept, one block is replayed at a time.")
    p.add_argument("--fsdp-ranks", type=int, default=1,
                   help="attribute under FSDP on this many ranks: every rank holds the gathered full weights plus "
                        "its shard (default 1: no FSDP)")
    p.add_argument("--lora", type=_lora, default=None,
                   help="LoRA adapters, e.g. r=16,alpha=32,targets=gate_proj+up_proj+down_proj (tracks the adapters).")
    from infra_pl.influence.options import ScoreOptions

    defaults = ScoreOptions.__dataclass_fields__
    p.add_argument("--index-rank", type=int, default=defaults["index_rank"].default,
                   help="rank k of the training-gradient index (InfluenceScores index: true) whose disk size is "
                        "estimated (default: %(default)s, the option's default).")
    p.add_argument("--index-dtype", choices=("int8", "float16", "float32"), default=defaults["index_dtype"].default,
                   help="storage dtype of the index (default: %(default)s).")
    p.add_argument("--n-train", type=int, default=None,
                   help="training examples, to size the whole index on disk (default: per example only).")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (partitions as lists of module names).")
    return p


def index_size(args: argparse.Namespace) -> dict | None:
    """Disk size of the training-gradient index for this model (None with LoRA: adapters are not sized here)."""
    if args.lora is not None:
        return None
    from infra_pl.influence.index import model_index_bytes

    size = model_index_bytes(args.model_config, args.index_rank, args.index_dtype, args.modules)
    if args.n_train is not None:
        size["n_train"] = args.n_train
        size["total_bytes"] = size["bytes_per_example"] * args.n_train
    return size


def index_line(size: dict) -> str:
    line = (f"Training index (index: true, rank {size['rank']}, {size['dtype']}, {size['modules']} modules): "
            f"{size['bytes_per_example'] / 1024:.1f} KiB per example on disk")
    if "total_bytes" in size:
        line += f", {size['total_bytes'] / 1e9:.1f} GB for {size['n_train']:,} examples"
    return line + " (written in the instance pass; memory stays flat in N)."


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        measurements=args.measurements,
        factor_dtype=args.factor_dtype,
        fisher=args.fisher,
        padding=args.padding,
        keep_covariance=not args.offload_covariance,
        compute_dtype=args.compute_dtype,
        activation_checkpointing=args.activation_checkpointing, fsdp_ranks=args.fsdp_ranks,
    )
    est = estimate_from_config(args.model_config, settings, dtype=args.dtype, modules=args.modules, lora=args.lora)
    plan, budget = None, None
    if args.budget is not None:
        budget = parse_bytes(args.budget)
        try:
            plan = plan_partitions(est, budget, headroom=args.headroom)
        except PartitionError as err:
            print(plan_table(est, None), file=sys.stderr)
            print(f"\nerror: {err}", file=sys.stderr)
            return 2
    index = index_size(args)
    if args.json:
        print(json.dumps({**plan_json(est, plan), "index": index}, indent=1))
    else:
        print(plan_table(est, plan, budget))
        if index is not None:
            print("\n" + index_line(index))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
