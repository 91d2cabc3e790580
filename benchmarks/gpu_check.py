"""One short GPU check: a ~0.5B Qwen2-style model in bf16, a few SFT steps, EK-FAC factors and scores.

What it prints, per phase: wall time, that time in epoch-equivalents (one plain forward+backward
over the training sequences = 1.0), the measured peak memory (``torch.cuda.max_memory_allocated``
during the phase) and the memory planner's estimate of the same peak (``infra_pl.planner``), with
their ratio. Each phase starts with only what the planner counts as resident on the device:
weights, plus the phase's inputs (covariance sums for the eigendecomposition, eigenbases for the
lambda pass, Q_A/Q_S/Λ and ∇f for the directions, the directions for scoring); everything else
is moved to the CPU in between, as the partitioned passes do. All tracked modules form one
partition (the 0.5B model's factors fit an H200 easily).

Default run (one H200, a few minutes)::

    python benchmarks/gpu_check.py

Qwen2.5-0.5B's shape (hidden 896, MLP 4864, 24 layers, 14 heads, 2 KV heads, vocab 151936, tied
embeddings), random init, bf16; 256 training sequences of 1024 random tokens (the first quarter
of each is a prompt, masked out of the loss), batch 8; 2 measurements of 32 sequences each;
factors in float32 (true Fisher), instance scores for all 256 sequences, token scores (JVP) for 32.

Smoke test on CPU (seconds): ``python benchmarks/gpu_check.py --device cpu --tiny`` (memory
there is the RSS high-water mark above the phase start, not allocator bytes).

FSDP path (``--fsdp``): the same model, data and measurements through Lightning, as a user runs
them: a few SFT steps under ``strategy=fsdp`` (one FSDP unit per decoder layer, ``--wrap root``:
Lightning's default single unit), the checkpoint written as FSDP writes it (``--state-dict
sharded``: a folder of shards, or ``full``), then ``InfraTrainer.attribute`` of that checkpoint
under the same strategy (``EKFACFactors`` + ``InfluenceScores``; the weights are gathered on every
rank for the attribution, :mod:`infra_pl.fsdp`). Per phase it prints the wall time, the time in
epochs (one forward+backward of the training sequences through the FSDP model = 1.0), the
measured peak (``max_memory_allocated`` from the phase's start; the eigendecomposition and the
directions are the gaps after the covariance and the last measurement pass) and the planner's
estimate, plus the shard each rank also keeps while the full weights are gathered (weights /
ranks; none on one device, where FSDP does not shard). ``--compare`` (with ``--state-dict full``)
also attributes the checkpoint without FSDP and prints the largest relative differences.

    python benchmarks/gpu_check.py --fsdp                 # one GPU (nccl, one rank), a few minutes
    python benchmarks/gpu_check.py --fsdp --devices 2     # two GPUs: Lightning starts the second rank
    python benchmarks/gpu_check.py --fsdp --device cpu --tiny   # smoke test (gloo; a CPU FSDP strategy)
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import current_peak_mb, current_rss_mb, reset_peak  # noqa: E402

QWEN25_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
TINY = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy model and a few short sequences (smoke test)")
    p.add_argument("--n-train", type=int, default=None, help="training sequences (default 256; tiny: 16)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; tiny: 32)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of every pass (default 8; tiny: 4)")
    p.add_argument("--n-measure", type=int, default=None, help="sequences per measurement (default 32; tiny: 4)")
    p.add_argument("--n-token", type=int, default=None, help="sequences scored per token (default 32; tiny: 4)")
    p.add_argument("--sft-steps", type=int, default=None, help="SFT optimizer steps (default 5; tiny: 2)")
    p.add_argument("--measurements", type=int, default=2, help="number of measurements M (default 2)")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="operand dtype of the factor passes' products (infra_pl.ekfac.precision); the model is "
                        "bf16, so bfloat16 also skips the float32 copies of its activations and gradients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="run every data pass with each decoder block checkpointed (infra_pl.ekfac.checkpointing); "
                        "the planner estimate then counts it too")
    fsdp = p.add_argument_group("FSDP path (--fsdp)")
    fsdp.add_argument("--fsdp", action="store_true",
                      help="fit and attribute through Lightning under strategy=fsdp instead of the pure-torch phases")
    fsdp.add_argument("--devices", type=int, default=1, help="ranks (one per GPU; default 1)")
    fsdp.add_argument("--wrap", choices=["layers", "root"], default="layers",
                      help="FSDP units: one per decoder layer (default) or Lightning's default single unit")
    fsdp.add_argument("--state-dict", choices=["sharded", "full"], default="sharded",
                      help="checkpoint format of the fit: a folder of shards (default) or one file")
    fsdp.add_argument("--compare", action="store_true",
                      help="also attribute the checkpoint without FSDP and print the largest relative differences "
                           "of factors and scores (needs --state-dict full)")
    fsdp.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    args = p.parse_args(argv)
    defaults = dict(n_train=16, seq_len=32, batch_size=4, n_measure=4, n_token=4, sft_steps=2) if args.tiny else dict(
        n_train=256, seq_len=1024, batch_size=8, n_measure=32, n_token=32, sft_steps=5
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------------------------ memory probes
class Probe:
    """Peak memory of a phase: allocator bytes on CUDA, RSS high-water mark on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.baseline = current_rss_mb() or 0.0
            reset_peak()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = current_peak_mb()
        return int(((peak or 0.0) - self.baseline) * 2**20)


@dataclass
class Row:
    phase: str
    seconds: float
    epochs: float
    measured: int
    estimate: int | None
    note: str = ""


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


# ------------------------------------------------------------------------------------------- data
def make_batches(n: int, seq_len: int, batch_size: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Random token sequences on the CPU; the first quarter of each is a prompt (label -100)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len), generator=generator)
    labels = ids.clone()
    labels[:, : seq_len // 4] = -100
    return [
        {"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size]),
         "labels": labels[i : i + batch_size]}
        for i in range(0, n, batch_size)
    ]


def on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------- steps
def sft(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], steps: int, device: torch.device) -> None:
    """A few AdamW steps with the project's SFT loss (optimizer freed afterwards)."""
    from infra_pl.log_likelihood import mean_token_nll

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for step in range(steps):
        batch = on(batches[step % len(batches)], device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = mean_token_nll(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    del optimizer


def plain_epoch(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> None:
    """The time unit: one ordinary forward + backward over the training sequences."""
    from infra_pl.log_likelihood import mean_token_nll

    for batch in batches:
        batch = on(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean_token_nll(logits, batch["labels"])[0].backward()
    model.zero_grad(set_to_none=True)


def to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if hasattr(tree, "__dataclass_fields__"):
        return type(tree)(**{k: to_cpu(getattr(tree, k)) for k in tree.__dataclass_fields__})
    return tree


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for the smoke test")
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.fsdp:
        return fsdp_main(args, device)

    from transformers import AutoConfig, AutoModelForCausalLM

    from infra_pl.ekfac import (
        CovarianceAccumulator,
        EigenBasis,
        Factors,
        LambdaAccumulator,
        eigendecompose,
        find_tracked_modules,
    )
    from infra_pl.ekfac.factors import ModuleFactors
    from infra_pl.influence import instance_scores, measurement_directions, measurement_gradient, token_scores
    from infra_pl.planner import Settings, estimate, format_bytes
    from infra_pl.planner.estimate import COVARIANCE, DIRECTIONS, EIGEN, INSTANCE, LAMBDA, MEASUREMENT, TOKENS

    spec = dict(TINY if args.tiny else QWEN25_05B)
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to(device)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    m = args.measurements
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}); "
          f"model {model_type} {n_params / 1e6:.1f}M parameters, bf16; {args.n_train} x {args.seq_len} tokens, "
          f"batch {args.batch_size}; {m} measurements x {args.n_measure} sequences; factors float32", flush=True)

    train = make_batches(args.n_train, args.seq_len, args.batch_size, config.vocab_size, args.seed + 1)
    measure_sets = [make_batches(args.n_measure, args.seq_len, args.batch_size, config.vocab_size, args.seed + 10 + k)
                    for k in range(m)]
    token_batches = train[: max(1, args.n_token // args.batch_size)]
    n_token = sum(b["input_ids"].shape[0] for b in token_batches)

    # Planner estimate for the same model (built on meta from the same config) and batch shape.
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    settings = Settings(batch_size=args.batch_size, seq_len=args.seq_len, measurements=m, fisher="true",
                        keep_covariance=False, activation_checkpointing=args.activation_checkpointing)  # A and S go to the CPU after the eigendecomposition, below
    plan = estimate(meta, settings)

    probe = Probe(device)
    rows: list[Row] = []

    sft_seconds, _ = timed(lambda: sft(model, train, args.sft_steps, device), device)
    print(f"SFT: {args.sft_steps} steps in {sft_seconds:.1f} s", flush=True)
    plain_epoch(model, train[:1], device)  # warm-up: kernels, workspaces, lazy imports
    probe.start()
    epoch, _ = timed(lambda: plain_epoch(model, train, device), device)
    rows.append(Row("forward+backward epoch", epoch, 1.0, probe.peak_bytes(), None, "time unit"))

    tracked = find_tracked_modules(model)

    def planned(phase: str) -> int:
        """The planner's peak; on CPU minus weights and batch, which sit below the RSS baseline there."""
        cost = plan.phases[phase]
        below = cost.fixed.get("weights", 0) + cost.fixed.get("batch", 0) if device.type == "cpu" else 0
        return cost.peak() - below

    def run(phase: str, fn: Callable[[], Any], note: str = "", scale: float = 1.0) -> Any:
        import contextlib

        from infra_pl.ekfac.checkpointing import activation_checkpointing

        probe.start()
        with activation_checkpointing(model) if args.activation_checkpointing else contextlib.nullcontext():
            seconds, out = timed(fn, device)
        rows.append(Row(phase, seconds, seconds * scale / epoch, probe.peak_bytes(), planned(phase), note))
        print(f"  {phase}: {seconds:.1f} s", flush=True)
        return out

    def covariance() -> Any:
        acc = CovarianceAccumulator(model, tracked, fisher="true", dtype=torch.float32, compute_dtype=args.compute_dtype)
        for batch in train:
            acc.step(batch)
        return acc.state

    torch.manual_seed(args.seed)
    state = run(COVARIANCE, covariance)
    eigen = run(EIGEN, lambda: eigendecompose(state))
    state = to_cpu(state)  # A and S are not needed on the device any more

    def lambdas() -> Any:
        acc = LambdaAccumulator(model, tracked, eigen, fisher="true", dtype=torch.float32,
                                compute_dtype=args.compute_dtype)
        for batch in train:
            acc.step(batch)
        return acc.state

    torch.manual_seed(args.seed)
    lambda_state = run(LAMBDA, lambdas)
    factors = Factors.from_states(to_cpu(state), to_cpu(eigen), to_cpu(lambda_state), fisher="true")
    del eigen, lambda_state, state

    grads = run(MEASUREMENT, lambda: {f"m{k}": measurement_gradient(model, measure_sets[k], tracked) for k in range(m)},
                note=f"{m} x {args.n_measure} seqs")

    # Preconditioning needs Q_A, Q_S, Λ on the device (A and S stay on the CPU).
    empty = torch.empty(0, device=device)
    on_device = Factors(
        modules={
            name: ModuleFactors(
                mf.shape, empty, empty,
                EigenBasis(*(t.to(device) for t in (mf.eigen.activation_eigenvectors, mf.eigen.activation_eigenvalues,
                                                    mf.eigen.gradient_eigenvectors, mf.eigen.gradient_eigenvalues))),
                mf.lambdas.to(device), mf.damping, mf.n_tokens, mf.n_gradient_tokens, mf.n_sequences,
            )
            for name, mf in factors.modules.items()
        },
        fisher=factors.fisher, damping_rule=factors.damping_rule, dtype=factors.dtype,
    )
    directions = run(DIRECTIONS, lambda: measurement_directions(on_device, grads))
    del on_device, grads

    def instance() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([instance_scores(model, batch, directions, tracked).cpu() for batch in train])

    scores = run(INSTANCE, instance, note=f"{args.n_train} seqs")

    def tokens() -> list[torch.Tensor]:
        return [token_scores(model, batch, directions, tracked).cpu() for batch in token_batches]

    token = run(TOKENS, tokens, note=f"{n_token} seqs; epochs scaled to {args.n_train}", scale=args.n_train / n_token)

    # Σ_t s_t = S(z): the token pass must agree with the instance pass.
    sums = torch.cat([t.sum(-1) for t in token], dim=1).t()  # [n_token, M]
    reference = scores[: sums.shape[0]]
    rel = float((sums - reference).abs().max() / reference.abs().max().clamp_min(1e-30))

    print()
    print("| phase | time | epochs | peak memory (measured) | planner estimate | estimate / measured | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        est = format_bytes(row.estimate) if row.estimate is not None else ""
        ratio = f"{row.estimate / row.measured:.2f}" if row.estimate and row.measured > 0 else ""
        print(f"| {row.phase} | {row.seconds:.2f} s | {row.epochs:.2f} | {format_bytes(row.measured)} | {est} | {ratio} | {row.note} |")
    judged = [abs(r.estimate / r.measured - 1) for r in rows if r.estimate and r.measured > 0]
    print(f"\nlargest |estimate/measured - 1|: {max(judged):.2f}" if judged else "")
    print(f"token scores vs instance scores: max |Σ_t s_t − S(z)| / max|S| = {rel:.1e} "
          "(bf16 model: the JVP runs in bf16, the instance pass accumulates in float32)")
    if device.type == "cpu":
        print("(CPU: memory is the RSS high-water mark above each phase's start and the estimates exclude weights "
              "and batch; at --tiny sizes fixed process overheads dominate, so the ratios mean little there)")
    return 0


# ------------------------------------------------------------------------------------ FSDP path
def _model_config(args: argparse.Namespace) -> Any:
    from transformers import AutoConfig

    spec = dict(TINY if args.tiny else QWEN25_05B)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    return config


def _fsdp_classes(args: argparse.Namespace, config: Any, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """The LightningModule, DataModule, measurement and phase-probe callback of the FSDP path."""
    import lightning as L
    from torch.utils.data import DataLoader

    from infra_pl.log_likelihood import mean_token_nll, per_example_nll
    from infra_pl.measurements import Measurement, MeasurementSpec

    class CheckLM(L.LightningModule):
        """A causal LM with the attribution protocol (infra_pl.protocol); built in bf16 from ``config``."""

        def __init__(self, seed: int) -> None:
            super().__init__()
            from transformers import AutoModelForCausalLM

            torch.manual_seed(seed)
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return mean_token_nll(self(batch), batch["labels"])[0]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-5)

        def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            return None

        def attribution_model(self) -> torch.nn.Module:
            return self.model

        def per_example_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return per_example_nll(self(batch), batch["labels"])

        def attribution_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self(batch)

    def rows_of(n: int, seed: int) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        """``collate`` of a DataLoader over row numbers of ``n`` random sequences (the pure-torch path's data)."""
        data = make_batches(n, args.seq_len, n, config.vocab_size, seed)[0]

        def collate(rows: list[int]) -> dict[str, torch.Tensor]:
            index = torch.tensor(rows)
            return {"input_ids": data["input_ids"][index], "attention_mask": data["attention_mask"][index],
                    "labels": data["labels"][index], "index": index}

        return collate

    collate = rows_of(args.n_train, args.seed + 1)

    class RandomTokens(L.LightningDataModule):
        """The random training sequences with the attribution data protocol (one domain)."""

        max_length = args.seq_len
        eval_batch_size = args.batch_size

        def train_dataloader(self) -> DataLoader:
            return DataLoader(list(range(args.n_train)), batch_size=args.batch_size, shuffle=False, collate_fn=collate)

        def attribution_ids(self, split: str) -> list[str]:
            return [f"seq-{i}" for i in range(args.n_train)]

        def attribution_dataloader(self, split: str = "train", batch_size: int | None = None,
                                   indices: list[int] | None = None) -> DataLoader:
            rows = list(range(args.n_train)) if indices is None else list(indices)
            return DataLoader(rows, batch_size=batch_size or args.batch_size, shuffle=False, collate_fn=collate)

        def attribution_metadata(self, split: str) -> list[dict[str, Any]]:
            return [{"domain": "random"} for _ in range(args.n_train)]

    class RandomSequences(Measurement):
        """f = summed log-likelihood of ``n_measure`` random sequences (the pure-torch path's measurement sets)."""

        def __init__(self, k: int) -> None:
            self.name = f"m{k}"
            self.collate = rows_of(args.n_measure, args.seed + 10 + k)

        def build(self, context: Any) -> list[MeasurementSpec]:
            # A loader over rows, so that under several ranks each gets its share (Lightning's sampler).
            loader = DataLoader(list(range(args.n_measure)), batch_size=args.batch_size, collate_fn=self.collate)
            return [MeasurementSpec(self.name, loader, {"name": self.name, "kind": "random sequences"})]

    class PhaseProbe(L.Callback):
        """Wall time and peak memory of every attribution pass, and of the gaps between them."""

        GAPS = {"ekfac/covariance": "eigendecomposition", "influence/measure": "directions (H^-1 grad f)"}

        def __init__(self) -> None:
            self.probe = Probe(device)
            self.records: list[tuple[str, float, int]] = []
            self._start = 0.0
            self._last: str | None = None

        def _now(self) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter()

        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            if self._last in self.GAPS and trainer.attribution_phase != self._last:  # not between two measurements
                self.records.append((self.GAPS[self._last], self._now() - self._start, self.probe.peak_bytes()))
            self._last = None
            self.probe.start()
            self._start = self._now()

        def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
            self.records.append((trainer.attribution_phase, self._now() - self._start, self.probe.peak_bytes()))
            self._last = trainer.attribution_phase
            self.probe.start()
            self._start = self._now()

    return CheckLM, RandomTokens, RandomSequences, PhaseProbe


def _fsdp_strategy(args: argparse.Namespace, device: torch.device, config: Any) -> Any:
    kwargs: dict[str, Any] = {"state_dict_type": args.state_dict}
    if args.wrap == "layers":
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

        kwargs["auto_wrap_policy"] = {Qwen2DecoderLayer}
    if device.type == "cpu":  # Lightning refuses FSDP without a GPU: the tests' CPU strategy (device_id=cpu, gloo)
        from tests.scripts.attribute_fsdp import CPUFSDPStrategy

        return CPUFSDPStrategy(**kwargs)
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(**kwargs)


def fsdp_main(args: argparse.Namespace, device: torch.device) -> int:
    """Fit under FSDP, attribute the checkpoint under FSDP; per phase: time, epochs, measured peak, estimate."""
    import tempfile

    from infra_pl.callbacks import EKFACFactors, InfluenceScores
    from infra_pl.log_likelihood import mean_token_nll
    from infra_pl.planner import format_bytes
    from infra_pl.planner.estimate import COVARIANCE, DIRECTIONS, EIGEN, INSTANCE, LAMBDA, MEASUREMENT, TOKENS
    from infra_pl.trainer import InfraTrainer

    if args.compare and args.state_dict != "full":
        raise SystemExit("--compare attributes the checkpoint in one process too: use --state-dict full")
    config = _model_config(args)
    CheckLM, RandomTokens, RandomSequences, PhaseProbe = _fsdp_classes(args, config, device)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_fsdp_"))
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    precision = "bf16-true"
    common = dict(accelerator=accelerator, devices=args.devices, precision=precision, logger=False,
                  enable_progress_bar=False, enable_model_summary=False)

    fit = InfraTrainer(strategy=_fsdp_strategy(args, device, config), max_steps=args.sft_steps,
                       enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                       default_root_dir=str(out / "fit"), **common)
    fit_seconds, _ = timed(lambda: fit.fit(CheckLM(args.seed), datamodule=RandomTokens()), device)
    ckpt = out / "fitted.ckpt"
    fit.save_checkpoint(ckpt, weights_only=True)
    if fit.is_global_zero:
        print(f"FSDP fit: {args.sft_steps} steps in {fit_seconds:.1f} s on {fit.world_size} rank(s); checkpoint {ckpt} "
              f"({'folder of shards' if ckpt.is_dir() else 'one file'})", flush=True)

    def attribute(strategy: Any, folder: Path, probe: Any = None) -> tuple[Any, Any, Any]:
        factors = EKFACFactors(batch_size=args.batch_size, log_spectra=False, output_dir=str(folder / "factors"),
                               compute_dtype=args.compute_dtype, activation_checkpointing=args.activation_checkpointing)
        scores = InfluenceScores(measurements=[RandomSequences(k) for k in range(args.measurements)],
                                 batch_size=args.batch_size, token_top_k=args.n_token, sentence_top_k=0,
                                 output_dir=str(folder / "scores"), activation_checkpointing=args.activation_checkpointing)
        trainer = InfraTrainer(strategy=strategy, default_root_dir=str(folder),
                               callbacks=[factors, scores] + ([probe] if probe else []), **common)
        module, data = CheckLM(args.seed + 1), RandomTokens()  # other initial weights: the checkpoint must load
        seconds, state = timed(lambda: trainer.attribute(module, datamodule=data, ckpt_path=str(ckpt)), device)
        if trainer.is_global_zero:
            print(f"attribute ({type(trainer.strategy).__name__}): {seconds:.1f} s", flush=True)
        return trainer, module, state

    probe = PhaseProbe()
    trainer, module, state = attribute(_fsdp_strategy(args, device, config), out / "fsdp", probe)

    # The time unit: one forward+backward of the training sequences through the FSDP model (as in fit).
    root, data = trainer.strategy.model, RandomTokens()

    def plain_epoch_fsdp(limit: int | None = None) -> None:
        for k, batch in enumerate(data.attribution_dataloader("train")):
            if limit is not None and k >= limit:
                break
            batch = on(batch, trainer.strategy.root_device)
            mean_token_nll(root(batch), batch["labels"])[0].backward()
        root.zero_grad(set_to_none=True)

    with torch.enable_grad():
        plain_epoch_fsdp(limit=1)  # warm-up
        epoch, _ = timed(plain_epoch_fsdp, device)

    with torch.device("meta"):
        meta = CheckLM(args.seed).model
    plan = trainer.callbacks[[type(c).__name__ for c in trainer.callbacks].index("EKFACFactors")].memory_estimate(
        meta, data, measurements=args.measurements)
    world = trainer.world_size
    shard = plan.phases[COVARIANCE].fixed.get("weights", 0) // world if world > 1 else 0
    phase_of = {"ekfac/covariance": COVARIANCE, "eigendecomposition": EIGEN, "ekfac/lambda": LAMBDA,
                "influence/measure": MEASUREMENT, "directions (H^-1 grad f)": DIRECTIONS, "influence/instance": INSTANCE,
                "influence/tokens": TOKENS}
    merged: dict[str, list[Any]] = {}
    for name, seconds, peak in probe.records:  # one measurement pass per measurement: summed time, largest peak
        entry = merged.setdefault(name, [0.0, 0, 0])
        entry[0] += seconds
        entry[1] = max(entry[1], peak)
        entry[2] += 1
    rows = [Row("forward+backward epoch (FSDP)", epoch, 1.0, 0, None, "time unit")]
    for name, (seconds, peak, count) in merged.items():
        phase = phase_of.get(name)
        estimate = plan.phases[phase].peak() + shard if phase else None
        note = f"{count} passes" if count > 1 else ""
        if name == "influence/tokens":
            note = f"{args.n_token} seqs"
        rows.append(Row(phase or name, seconds, seconds / epoch, peak, estimate, note))

    differences: dict[str, float] = {}
    single_kind = "one process" if args.devices == 1 else f"DDP, {args.devices} ranks"
    if args.compare:
        from infra_pl.ekfac import Factors

        single, _, single_state = attribute("auto", out / "single")
        if single.is_global_zero:
            def rel(a: torch.Tensor, b: torch.Tensor) -> float:
                return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))

            got, want = Factors.load(out / "fsdp" / "factors"), Factors.load(out / "single" / "factors")
            differences["fingerprints equal"] = float(got.model_fingerprint == want.model_fingerprint)
            differences["factors (A, S, lambda)"] = max(
                rel(getattr(got.modules[n], k), getattr(want.modules[n], k))
                for n in want.modules for k in ("activation_covariance", "gradient_covariance", "lambdas"))
            a = state.scores.instance_scores.set_index("id").sort_index()
            b = single_state.scores.instance_scores.set_index("id").sort_index()
            columns = [c for c in b.columns if c.startswith("score_")]
            differences["instance scores"] = rel(torch.tensor(a[columns].to_numpy()), torch.tensor(b[columns].to_numpy()))

    if not trainer.is_global_zero:
        return 0
    print(f"\nFSDP ({args.wrap} units, {args.state_dict} checkpoint) on {world} rank(s), {device.type}; "
          f"model {sum(p.numel() for p in meta.parameters()) / 1e6:.1f}M parameters, bf16; {args.n_train} x "
          f"{args.seq_len} tokens, batch {args.batch_size}; {args.measurements} measurements x {args.n_measure} sequences")
    print("| phase | time | epochs | peak memory (measured) | planner estimate (+ shard) | estimate / measured | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        est = format_bytes(row.estimate) if row.estimate is not None else ""
        ratio = f"{row.estimate / row.measured:.2f}" if row.estimate and row.measured > 0 else ""
        measured = format_bytes(row.measured) if row.measured else ""
        print(f"| {row.phase} | {row.seconds:.2f} s | {row.epochs:.2f} | {measured} | {est} | {ratio} | {row.note} |")
    judged = [abs(r.estimate / r.measured - 1) for r in rows if r.estimate and r.measured > 0]
    print(f"\nlargest |estimate/measured - 1|: {max(judged):.2f}" if judged else "")
    for name, value in differences.items():
        print(f"FSDP vs without FSDP ({single_kind}), {name}: " + (("yes" if value else "NO") if name == "fingerprints equal"
                                                  else f"max relative difference {value:.1e}"))
    if device.type == "cpu":
        print("(CPU: memory is the RSS high-water mark above each phase's start; the estimates include weights and "
              "batch, which sit below that baseline, so the ratios mean little there)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
