"""Check the memory planner's per-phase estimates against measured peaks on small Llama models (CPU).

Each (config, phase) runs in a fresh subprocess with one torch thread: build the model and two
batches, read the RSS (the baseline), create the phase's inputs (factor sums, eigenbases,
measurement gradients or directions, as the planner assumes them resident), reset the RSS
high-water mark (``/proc/self/clear_refs``), run the real library phase (``infra_pl.ekfac`` /
``infra_pl.influence``) over the two batches, and report VmHWM - baseline.

The planner estimates live tensor bytes (what ``torch.cuda.max_memory_allocated`` reports on a
GPU). On CPU, glibc keeps freed blocks below its (dynamic) mmap threshold in the heap, so RSS can
lag behind or run ahead of the live bytes; the children run with ``MALLOC_MMAP_THRESHOLD_=65536``
so every tensor of 64 KiB or more is its own mapping, returned to the OS when freed, and the RSS
high-water mark tracks live tensor bytes. Compared: the estimate of the phase peak minus weights
and batch (both exist before the baseline) against the measured increase.

Usage::

    python benchmarks/planner_check.py                  # every config and phase (~6-10 min on 2 cores)
    python benchmarks/planner_check.py --configs vocab --phases "covariance pass"
    python benchmarks/planner_check.py --configs mlp-ckpt wide-ckpt --phases "covariance pass" "lambda pass" \
        "measurement pass" "instance scores"          # activation checkpointing (gradient passes)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import current_peak_mb, current_rss_mb, reset_peak  # noqa: E402

from infra_pl.planner.estimate import (  # noqa: E402
    COVARIANCE,
    DIRECTIONS,
    EIGEN,
    INSTANCE,
    LAMBDA,
    MEASUREMENT,
    PHASES,
    TOKENS,
    Settings,
    estimate,
)

# Small Llama configs that stress different terms: saved activations with GQA and padding ("mlp"),
# the [B, T, vocab] logits chain ("vocab"), factor and eigendecomposition sizes in bf16 ("wide"),
# and the gradient passes with every block checkpointed ("mlp-ckpt", "wide-ckpt": infra_pl.ekfac.checkpointing).
CONFIGS: dict[str, dict[str, Any]] = {
    "mlp": {
        "model": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 2048},
        "dtype": "float32", "batch_size": 4, "seq_len": 512, "measurements": 2, "padding": True,
    },
    "vocab": {
        "model": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "vocab_size": 32000},
        "dtype": "float32", "batch_size": 2, "seq_len": 512, "measurements": 1, "padding": False,
    },
    "wide": {
        "model": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 2, "num_attention_heads": 8,
                  "num_key_value_heads": 8, "vocab_size": 4096},
        "dtype": "bfloat16", "batch_size": 2, "seq_len": 128, "measurements": 2, "padding": False,
    },
}
CONFIGS["mlp-ckpt"] = {**CONFIGS["mlp"], "checkpointing": True}
CONFIGS["wide-ckpt"] = {**CONFIGS["wide"], "seq_len": 512, "checkpointing": True}
N_BATCHES = 2
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(max_position_embeddings=4096, **spec["model"])
    config._attn_implementation = "sdpa"
    config.use_cache = False
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, spec["dtype"]))
    return model.eval()


def settings_of(spec: dict[str, Any]) -> Settings:
    """The run's settings; the measured phases hold only their own inputs (no A and S after the eigendecomposition)."""
    return Settings(
        batch_size=spec["batch_size"], seq_len=spec["seq_len"], measurements=spec["measurements"],
        padding=spec["padding"], fisher="true", keep_covariance=False,
        compute_dtype=getattr(torch, spec["compute_dtype"]) if spec.get("compute_dtype") else None,
        activation_checkpointing=bool(spec.get("checkpointing")),
    )


def make_batches(spec: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Random tokens; with padding, each sequence keeps a random length >= half and is right-padded."""
    generator = torch.Generator().manual_seed(1)
    b, t, vocab = spec["batch_size"], spec["seq_len"], spec["model"]["vocab_size"]
    out = []
    for _ in range(N_BATCHES):
        ids = torch.randint(0, vocab, (b, t), generator=generator)
        mask = torch.ones_like(ids)
        if spec["padding"]:
            lengths = torch.randint(t // 2, t, (b,), generator=generator)
            mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


# ------------------------------------------------------------------------------------------ child
def warm_up(model: torch.nn.Module, tracked: dict, shapes: dict, m: int, phase: str) -> None:
    """One-time process costs before the baseline: lazy imports (transformers' masking, torch.func),
    BLAS/LAPACK buffers, the autograd engine. A GPU run pays them before its first phase too, and
    the planner does not count them (they are not per-phase tensors)."""
    from infra_pl.ekfac.loss import causal_lm_loss
    from infra_pl.influence import Directions, measurement_gradient, token_scores

    ids = torch.randint(0, 100, (1, 16))
    tiny = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    if phase in (EIGEN, DIRECTIONS):
        torch.linalg.eigh(torch.eye(64, dtype=torch.float64))
        torch.randn(64, 64) @ torch.randn(64, 64)
    elif phase == TOKENS:
        directions = Directions([f"m{k}" for k in range(m)], {n: torch.zeros(m, *s.matrix_shape) for n, s in shapes.items()})
        token_scores(model, tiny, directions, tracked)
    else:
        with torch.no_grad():
            causal_lm_loss(model, tiny, True)
        measurement_gradient(model, [tiny], tracked)


def run_phase(spec: dict[str, Any], phase: str) -> dict[str, float]:
    """Measure one phase in this (fresh) process: peak RSS increase over the post-setup baseline."""
    from infra_pl.ekfac import EigenBasis, find_tracked_modules
    from infra_pl.ekfac.checkpointing import activation_checkpointing
    from infra_pl.ekfac.covariance import CovarianceState
    from infra_pl.ekfac.factors import Factors, ModuleFactors
    from infra_pl.ekfac.modules import layer_shape
    from infra_pl.influence import Directions

    torch.set_num_threads(1)
    model = build_model(spec)
    batches = make_batches(spec)
    tracked = find_tracked_modules(model)
    shapes = {n: layer_shape(m) for n, m in tracked.items()}
    m = spec["measurements"]
    f32 = torch.float32
    warm_up(model, tracked, shapes, m, phase)
    gc.collect()
    baseline = current_rss_mb()

    # Inputs the phase finds resident (created after the baseline so they count, as in the estimate).
    inputs: dict[str, Any] = {}
    if phase == EIGEN:
        state = CovarianceState.zeros(tracked, dtype=f32)
        for name, shape in shapes.items():
            for total, n in ((state.activation_sums[name], shape.in_dim), (state.gradient_sums[name], shape.out_features)):
                x = torch.randn(n, n + 8)
                total.copy_(x @ x.t())
                del x
            state.activation_counts[name] += 1
            state.gradient_counts[name] += 1
        inputs["state"] = state
    elif phase in (LAMBDA, DIRECTIONS):
        inputs["eigen"] = {
            n: EigenBasis(torch.eye(s.in_dim), torch.ones(s.in_dim), torch.eye(s.out_features), torch.ones(s.out_features))
            for n, s in shapes.items()
        }
    if phase == DIRECTIONS:
        eigen = inputs["eigen"]
        empty = torch.empty(0)
        modules = {
            n: ModuleFactors(s, empty, empty, eigen[n], torch.rand(s.matrix_shape), 0.1, 1, 1, 1) for n, s in shapes.items()
        }
        inputs["factors"] = Factors(modules=modules, fisher="true", damping_rule="fixed:0.1", dtype=f32)
        inputs["grads"] = {f"m{k}": {n: torch.randn(s.matrix_shape) for n, s in shapes.items()} for k in range(m)}
    if phase in (INSTANCE, TOKENS):
        inputs["directions"] = Directions([f"m{k}" for k in range(m)], {n: torch.randn(m, *s.matrix_shape) for n, s in shapes.items()})
    gc.collect()
    if not reset_peak():
        raise RuntimeError("/proc/self/clear_refs is not writable: cannot reset the RSS high-water mark")

    start = time.perf_counter()
    with activation_checkpointing(model) if spec.get("checkpointing") else contextlib.nullcontext():
        run_library_phase(phase, spec, model, batches, tracked, inputs, m)
    seconds = time.perf_counter() - start
    peak = current_peak_mb()
    return {"measured_mb": peak - baseline, "seconds": seconds, "baseline_mb": baseline}


def run_library_phase(phase: str, spec: dict[str, Any], model: torch.nn.Module, batches: list, tracked: dict,
                      inputs: dict[str, Any], m: int) -> None:
    """The real library phase over the batches (its results are kept alive until it returns)."""
    from infra_pl.ekfac import CovarianceAccumulator, LambdaAccumulator, eigendecompose
    from infra_pl.influence import instance_scores, measurement_directions, measurement_gradient, token_scores

    f32 = torch.float32
    if phase == COVARIANCE:
        acc = CovarianceAccumulator(model, tracked, fisher="true", dtype=f32, compute_dtype=spec.get("compute_dtype"))
        for batch in batches:
            acc.step(batch)
    elif phase == EIGEN:
        result = eigendecompose(inputs["state"])  # noqa: F841 (kept alive: it is part of the phase's peak)
    elif phase == LAMBDA:
        acc = LambdaAccumulator(model, tracked, inputs["eigen"], fisher="true", dtype=f32,
                                compute_dtype=spec.get("compute_dtype"))
        for batch in batches:
            acc.step(batch)
    elif phase == MEASUREMENT:
        grads = [measurement_gradient(model, batches, tracked) for _ in range(m)]  # noqa: F841
    elif phase == DIRECTIONS:
        directions = measurement_directions(inputs["factors"], inputs["grads"])  # noqa: F841
    elif phase == INSTANCE:
        with torch.no_grad():
            for batch in batches:
                instance_scores(model, batch, inputs["directions"], tracked)
    elif phase == TOKENS:
        for batch in batches:
            token_scores(model, batch, inputs["directions"], tracked)
    else:
        raise ValueError(f"unknown phase {phase!r}")


# ----------------------------------------------------------------------------------------- parent
def estimate_mb(spec: dict[str, Any]) -> dict[str, float]:
    """Planner estimate per phase, minus weights and batch (they exist before the baseline)."""
    est = estimate(build_model_meta(spec), settings_of(spec))
    out = {}
    for name, cost in est.phases.items():
        excluded = cost.fixed.get("weights", 0) + cost.fixed.get("batch", 0)
        out[name] = (cost.peak() - excluded) / 2**20
    return out


def build_model_meta(spec: dict[str, Any]) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(spec)


def measure(spec: dict[str, Any], phase: str) -> dict[str, float]:
    """Run one phase of ``spec`` in a fresh child process; returns its measured peak and time."""
    env = {**os.environ, **CHILD_ENV}
    cmd = [sys.executable, __file__, "--child", json.dumps({"spec": spec, "phase": phase})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    p.add_argument("--tolerance", type=float, default=0.25, help="allowed |estimate/measured - 1| (default 0.25)")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default=None,
                   help="EKFACFactors' compute_dtype for the covariance and lambda passes (default: the factor dtype)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(run_phase(job["spec"], job["phase"])))
        return 0

    print("| config | phase | estimate | measured | estimate / measured | time |")
    print("|---|---|---:|---:|---:|---:|")
    worst = 0.0
    for name in args.configs:
        spec = {**CONFIGS[name], "compute_dtype": args.compute_dtype}
        estimates = estimate_mb(spec)
        for phase in args.phases:
            result = measure(spec, phase)
            ratio = estimates[phase] / result["measured_mb"]
            worst = max(worst, abs(ratio - 1.0))
            print(
                f"| {name} | {phase} | {estimates[phase]:.1f} MiB | {result['measured_mb']:.1f} MiB | {ratio:.2f} | "
                f"{result['seconds']:.1f} s |",
                flush=True,
            )
    verdict = "within" if worst <= args.tolerance else "OUTSIDE"
    print(f"\nlargest |estimate/measured - 1| = {worst:.2f} ({verdict} the {args.tolerance:.0%} tolerance)")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
