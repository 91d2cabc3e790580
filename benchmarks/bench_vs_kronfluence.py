"""infra-pl vs kronfluence 1.0.1 on one fixed toy setting (issue 6).

Setting: a 4-layer Llama (hidden 128, MLP 512, 4 heads, vocab 2048), fp32, ``torch.manual_seed(0)``
init; 256 training and 32 query sequences of 128 random tokens, every token a target, no padding;
the 12 MLP projections tracked; EMPIRICAL Fisher; damping 0.1 * mean(Lambda) per module.

Phases timed (each ``--repeats`` times, min and median seconds of ``--clock``: wall seconds by
default; ``--clock cpu`` for process CPU seconds, which with ``--threads 1`` measures the work and not
the waiting on a shared machine):
* factors       -- kronfluence ``fit_all_factors`` (ekfac) vs ``infra_pl.ekfac.fit_factors``.
* pairwise      -- 32 x 256 scores: kronfluence ``compute_pairwise_scores`` vs ``query_directions``
                   + one batched instance pass over the training set.
* token scores  -- per-token scores of all 256 training sequences for ONE measurement (the summed
                   NLL of all 32 queries): kronfluence ``compute_per_token_scores=True`` with
                   ``aggregate_query_gradients=True`` (split by the position where weights act)
                   vs infra-pl ``token_scores`` (Eq. 9, by target token, one JVP per batch).
* instance pass -- (infra-pl only) instance scores of the 256 sequences for that one direction:
                   the yardstick of the token-score target.
* epoch         -- one plain forward + backward over the 256 training sequences; every phase is
                   also shown as a multiple of it.

Each library runs in its own long-lived subprocess (the script re-invokes itself with ``--only``),
so the peak RSS (``ru_maxrss``) of one cannot hide in the other's. The parent drives both and
INTERLEAVES them phase by phase: repeat r of a phase runs in one library and then at once in the
other, and which one goes first alternates (ABBA). On a machine shared with other jobs the speed
drifts over minutes; back-to-back runs see nearly the same machine, so the ratio of each pair is
far steadier than a ratio of two medians taken minutes apart. The speed verdict uses the median of
the per-repeat paired ratios of factors + pairwise. kronfluence writes its factors and scores to a
temporary directory (its normal mode of operation), which is inside its timings.

infra-pl runs with ``--streams`` (default: one stream per thread, i.e. 2): every batch is split in
halves that run at once on one core each (``infra_pl.ekfac.streams``, the documented ``streams``
option of ``fit_factors``, ``query_directions``, ``instance_scores_over`` and the callbacks). The
instance pass, the yardstick of the token-score target, runs with the same streams; token scores
run as one stream (no gain measured from streams there). ``--streams 1`` gives the plain path.
With ``--compute-dtype bfloat16`` (the default where the CPU has bfloat16 matrix units) the factor
fit and the pairwise pass multiply bfloat16 operands (``compute_dtype`` of ``fit_factors``, bfloat16
query directions); sums, eigendecompositions and factors stay float32 and the model is not cast.
kronfluence runs in float32, so the Pearson row measures what that costs in accuracy.
The score passes are ``instance_scores_over``/``token_scores_over``, whole-loader passes that
return freed heap to the OS at their start and end, as every pass of ``infra-pl attribute`` does.

Sign conventions: infra-pl's pairwise score is grad L(q)^T H^-1 grad L(z) (it negates both
log-likelihood gradients), which is what kronfluence computes with measurement = summed NLL of
the query; the two matrices are compared as they are.

Whole attribution (``--whole N [N ...]``, issue 21): the same model with N training sequences of
``--seq-len`` tokens (the 32 queries unchanged), one pair of children per N, and every phase also
as epoch-equivalents of the plain epoch of the same child (one repeat per N unless ``--repeats``):
* infra-pl whole attribution = factors (``fit_factors``, empirical Fisher, the factor sample of
  ``FactorOptions``' defaults ``covariance_max_examples``/``lambda_max_examples``, ``auto``: a fixed
  count, every example up to it; or ``--covariance-max-examples``/``--lambda-max-examples``: a count,
  a fraction, ``auto`` or ``none``)
  + direction (``measurement_gradient`` over the queries + ``measurement_directions``)
  + instance+index (one pass over the N sequences that scores them and writes the training-gradient
  index with ``scores_and_projections``/``IndexWriter`` at ``ScoreOptions``' default ``index_rank``
  and ``index_dtype``, as ``bench_index.py``; one stream: that call takes whole batches)
  + top-K tokens (``token_scores_over`` the ``--top-k`` sequences of largest |instance score|).
* new measurement from the index (not in the total): a measurement unknown at index time (the mean
  log-likelihood of a second query set, 32 sequences, seed 3): its gradient + H^-1 +
  ``TrainingIndex.scores``. Untimed extras: its exact instance scores (Pearson, Spearman, top-100
  overlap of the index's scores against them) and, when a factor sample is set (and N is at most
  ``--skip-factor-accuracy-above``), full-data factors and the direction's instance scores with them.
* kronfluence whole attribution = ``fit_all_factors`` (its default sample sizes, 100,000 examples)
  + ``compute_pairwise_scores`` with ``aggregate_query_gradients`` (one score per training sequence)
  + per-token scores of the same top-K sequences; ``--skip-kronfluence-above N`` leaves it out above N.
Peak RSS per phase at each N (does it grow with N?) and the index's size on disk are printed too.

Usage::

    python benchmarks/bench_vs_kronfluence.py                  # the fixed setting, 2 threads, 5 paired repeats
    python benchmarks/bench_vs_kronfluence.py --threads 1 --clock cpu
    python benchmarks/bench_vs_kronfluence.py --scale --hidden 256 --layers 8 --seq-len 256 --n-train 512
    OMP_NUM_THREADS=1 python benchmarks/bench_vs_kronfluence.py --whole 2048 8192 32768 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    TokenDataset,
    batches,
    build_model,
    current_peak_mb,
    current_rss_mb,
    med,
    peak_rss_mb,
    plain_epoch,
    random_tokens,
    reset_peak,
    set_clock,
    set_threads,
    summed_nll,
    timed,
)

MLP_REGEX = r"\.mlp\.(gate|up|down)_proj$"
PHASES = ["epoch", "factors", "pairwise", "factors+pairwise", "token scores", "instance pass"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each library's subprocess")
    p.add_argument("--repeats", type=int, default=None,
                   help="paired repeats of every phase (each repeat runs both libraries back to back); default 5, "
                        "and 1 per N with --whole")
    p.add_argument("--clock", choices=["cpu", "wall"], default="wall",
                   help="wall: elapsed seconds (the pairing cancels slow drifts of a shared machine); cpu: process "
                        "CPU seconds (with --threads 1 it measures the work, not the waiting; with several threads "
                        "it also counts OpenMP spin-waiting, which depends on the other load)")
    p.add_argument("--malloc-arenas", type=int, default=1,
                   help="MALLOC_ARENA_MAX for BOTH children (0: leave glibc's default). With several threads, "
                        "per-thread arenas fragment and inflate the RSS of either library; infra-pl's CLI caps "
                        "them itself (infra_pl.allocator.limit_malloc_arenas)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size for both libraries")
    p.add_argument("--streams", type=int, default=None,
                   help="infra-pl's `streams` option (batches run at once, each on threads/streams intra-op "
                        "threads) for factors, pairwise and the instance pass; default: --threads (one thread "
                        "per stream). Token scores run as one stream: their forward-mode pass already uses both "
                        "cores well (measured: no gain from streams). kronfluence has no such option")
    p.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="infra-pl's `compute_dtype` for factors and pairwise (operands of the big EK-FAC products; "
                        "sums, eigendecompositions and factors stay float32; the model is never cast) and the dtype "
                        "of the query directions. auto: bfloat16 where this CPU multiplies bfloat16 in hardware "
                        "(AMX/AVX512-BF16), else float32. The token-score and instance-pass rows stay float32. "
                        "kronfluence runs float32 throughout, the reference the Pearson target is measured against")
    p.add_argument("--scale", action="store_true", help="allow the size flags below to differ from the fixed setting")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=None, help="default 4 x hidden")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-query", type=int, default=32)
    whole = p.add_argument_group("whole attribution (--whole)")
    whole.add_argument("--whole", type=int, nargs="+", default=None, metavar="N",
                       help="the whole-attribution mode: for each N (training sequences of the fixed model) one plain "
                            "epoch, infra-pl's whole attribution and kronfluence's, in epoch-equivalents")
    whole.add_argument("--top-k", type=int, default=64,
                       help="token scores for the top-K training sequences by |instance score| (default 64)")
    whole.add_argument("--covariance-max-examples", default=None,
                       help="infra-pl's factor sample for A and S: a count, a fraction in (0, 1], or 'none' (every "
                            "example); default: FactorOptions' default")
    whole.add_argument("--lambda-max-examples", default=None,
                       help="infra-pl's factor sample for Lambda (as --covariance-max-examples)")
    whole.add_argument("--skip-kronfluence-above", type=int, default=None, metavar="N",
                       help="run kronfluence only at N up to this (its child is not started above)")
    whole.add_argument("--skip-factor-accuracy-above", type=int, default=None, metavar="N",
                       help="compare sampled with full-data factors only at N up to this (an untimed extra factor "
                            "fit and instance pass; nothing to compare when the sample is every example)")
    p.add_argument("--topk-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--only", choices=["kronfluence", "infra"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.whole else 5
    if args.whole:
        args.covariance_max_examples = sample_option(args.covariance_max_examples, "covariance_max_examples")
        args.lambda_max_examples = sample_option(args.lambda_max_examples, "lambda_max_examples")
        if args.only:
            args.n_train = args.whole[0]  # a child runs one N
    if args.intermediate is None:
        args.intermediate = 4 * args.hidden
    if args.streams is None:
        args.streams = args.threads
    args.bf16_units = None
    if args.compute_dtype == "auto":
        from infra_pl.ekfac.precision import bf16_detection

        native, args.bf16_units = bf16_detection("cpu")  # from the CPU's flags: never an emulated bfloat16 path
        args.compute_dtype = "bfloat16" if native else "float32"
        if not args.only:
            print(f"--compute-dtype auto -> {args.compute_dtype}: {args.bf16_units}", flush=True)
    fixed = dict(hidden=128, intermediate=512, layers=4, heads=4, vocab=2048, seq_len=128, n_train=256, n_query=32)
    changed = [k for k, v in fixed.items() if getattr(args, k) != v and not (args.whole and k == "n_train")]
    if changed and not args.scale:
        p.error(f"{changed} differ from the fixed setting; pass --scale to run a bigger/smaller one")
    return args


def sample_option(text: str | None, field: str) -> int | float | str | None:
    """A factor-sample flag: None (not given) -> FactorOptions' default; 'none' -> every example; 'auto' (the
    library's own rule); else a count or a fraction."""
    if text is None:
        from dataclasses import fields

        from infra_pl.ekfac.options import FactorOptions

        return next(f.default for f in fields(FactorOptions) if f.name == field)
    if isinstance(text, (int, float)):
        return text
    if text.strip().lower() in ("none", "null", "all"):
        return None
    if text.strip().lower() == "auto":
        return "auto"
    return float(text) if any(c in text for c in ".eE") else int(text)


def factor_sample(args: argparse.Namespace, n: int) -> dict | None:
    """The factor sample infra-pl draws at N training examples (``FactorOptions.sample_spec``: ``auto`` resolved,
    a count covering N is no sample); None: both passes see every example."""
    from infra_pl.ekfac.options import FactorOptions

    options = FactorOptions(covariance_max_examples=args.covariance_max_examples,
                            lambda_max_examples=args.lambda_max_examples)
    return options.sample_spec(n)


def setup(args: argparse.Namespace):
    set_threads(args.threads)
    set_clock(args.clock)
    model = build_model(args.hidden, args.intermediate, args.layers, args.heads, args.vocab, seed=0)
    train = random_tokens(args.n_train, args.seq_len, args.vocab, seed=1)
    query = random_tokens(args.n_query, args.seq_len, args.vocab, seed=2)
    return model, train, query


# ----------------------------------------------------------------------------------------------- infra
def run_infra(args: argparse.Namespace) -> dict:
    from infra_pl.ekfac import find_tracked_modules, fit_factors
    from infra_pl.influence import (
        instance_scores_over,
        measurement_directions,
        measurement_gradient,
        query_directions,
        token_scores_over,
    )

    model, train, query = setup(args)
    train_loader = batches(train, args.batch_size)
    query_loader = batches(query, args.batch_size)
    modules = find_tracked_modules(model, MLP_REGEX)
    assert len(modules) == 3 * args.layers
    baseline = current_rss_mb()
    out: dict = {"times": {}, "phase_peak_mb": {}}

    def epoch():
        plain_epoch(model, train_loader)

    state: dict = {}

    def factors():
        state["factors"] = fit_factors(
            model, train_loader, modules=modules, fisher="empirical", progress=False, streams=args.streams,
            compute_dtype=args.compute_dtype,
        )

    def pairwise():
        directions = query_directions(model, query_loader, state["factors"], modules, streams=args.streams,
                                      dtype=getattr(torch, args.compute_dtype))
        with torch.no_grad():
            scores = instance_scores_over(model, train_loader, directions, modules, streams=args.streams)
        return scores.t().contiguous()  # [Q, N]

    def one_direction():
        grad = measurement_gradient(model, query_loader, modules)
        # f = mean log p over queries; kronfluence's aggregated measurement is the summed NLL, i.e.
        # -n_query * f: same direction up to a factor, which does not change timings.
        return measurement_directions(state["factors"], {"queries": grad})

    def tokens():
        direction = state["direction"]
        return torch.cat([part[0] for part in token_scores_over(model, train_loader, direction, modules)])

    def instance():
        direction = state["direction"]
        with torch.no_grad():
            return instance_scores_over(model, train_loader, direction, modules, streams=args.streams)[:, 0]

    def tokens_with_direction():
        if "direction" not in state:
            state["direction"] = one_direction()  # once, outside any timing
        return tokens()

    def instance_with_direction():
        if "direction" not in state:
            state["direction"] = one_direction()
        return instance()

    epoch()  # warm-up (allocator, thread pool)
    phases = {"epoch": epoch, "factors": factors, "pairwise": pairwise, "token scores": tokens_with_direction,
              "instance pass": instance_with_direction}

    def finish(results: dict) -> None:
        tok, inst = results["token scores"], results["instance pass"]
        out["token_vs_instance_max_abs_diff"] = float((tok.sum(-1) - inst).abs().max())
        out["token_vs_instance_scale"] = float(inst.abs().max())
        out["baseline_rss_mb"] = baseline
        torch.save(results["pairwise"], Path(args.out).with_suffix(".pt"))

    serve(phases, finish, out, args)
    return out


# ------------------------------------------------------------------------------------------ kronfluence
def summed_nll_task(names: list[str]):
    """kronfluence's Task for both modes: summed NLL as training loss and measurement, ``names`` tracked."""
    from kronfluence.task import Task

    class SummedNLLTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            assert not sample, "empirical Fisher only"
            return summed_nll(logits, batch["labels"])

        def compute_measurement(self, batch, model):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return summed_nll(logits, batch["labels"])

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return SummedNLLTask()


def run_kronfluence(args: argparse.Namespace) -> dict:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments

    from infra_pl.lds.kronfluence_ref import ekfac_factor_arguments

    model, train, query = setup(args)
    names = [f"model.layers.{i}.mlp.{p}_proj" for i in range(args.layers) for p in ("gate", "up", "down")]

    train_loader = batches(train, args.batch_size)
    out: dict = {"times": {}, "phase_peak_mb": {}}
    plain_epoch(model, train_loader)  # warm-up

    def epoch():
        # prepare_model (below) freezes every parameter; a plain epoch trains them all, as in infra-pl's
        # child, so unfreeze them for the epoch only. With trainable weights kronfluence's
        # TrackedModule.forward returns the wrapped layer's output unchanged: the same plain epoch.
        flags = {param: param.requires_grad for param in model.parameters()}  # incl. its own _constant
        for param in flags:
            param.requires_grad_(True)
        try:
            plain_epoch(model, train_loader)
        finally:
            for param, flag in flags.items():
                param.requires_grad_(flag)

    task = summed_nll_task(names)
    model = prepare_model(model, task)
    baseline = current_rss_mb()
    train_ds, query_ds = TokenDataset(train), TokenDataset(query)
    workdir = tempfile.mkdtemp(prefix="kron_bench_")
    analyzer = Analyzer(
        analysis_name="bench", model=model, task=task, cpu=True, log_level=logging.WARNING,
        disable_tqdm=True, output_dir=workdir,
    )
    factor_args = ekfac_factor_arguments(empirical=True)
    score_args = ScoreArguments(
        damping_factor=None, amp_dtype=None, per_sample_gradient_dtype=torch.float32,
        precondition_dtype=torch.float32, score_dtype=torch.float32,
    )
    token_args = ScoreArguments(
        damping_factor=None, amp_dtype=None, per_sample_gradient_dtype=torch.float32,
        precondition_dtype=torch.float32, score_dtype=torch.float32,
        compute_per_token_scores=True, aggregate_query_gradients=True,
    )

    def factors():
        analyzer.fit_all_factors(
            "ekfac", train_ds, per_device_batch_size=args.batch_size, factor_args=factor_args,
            overwrite_output_dir=True,
        )

    def pairwise():
        analyzer.compute_pairwise_scores(
            "pairwise", "ekfac", query_ds, train_ds, per_device_query_batch_size=args.n_query,
            per_device_train_batch_size=args.batch_size, score_args=score_args, overwrite_output_dir=True,
        )
        return analyzer.load_pairwise_scores("pairwise")["all_modules"]

    def tokens():
        analyzer.compute_pairwise_scores(
            "tokens", "ekfac", query_ds, train_ds, per_device_query_batch_size=args.n_query,
            per_device_train_batch_size=args.batch_size, score_args=token_args, overwrite_output_dir=True,
        )
        return analyzer.load_pairwise_scores("tokens")["all_modules"]

    phases = {"epoch": epoch, "factors": factors, "pairwise": pairwise, "token scores": tokens}

    def finish(results: dict) -> None:
        out["token_scores_shape"] = list(results["token scores"].shape)
        out["baseline_rss_mb"] = baseline
        torch.save(results["pairwise"].float(), Path(args.out).with_suffix(".pt"))

    serve(phases, finish, out, args)
    return out


# ------------------------------------------------------------------------------------------ child loop
PROTOCOL = "@@bench "  # prefix of the lines a child sends its parent (anything else on stdout is ignored)


def serve(phases: dict, finish, out: dict, args: argparse.Namespace, prepare: dict | None = None) -> None:
    """Child side: run the phases the parent names on stdin, one per line, and answer with the time.

    ``finish`` ends the loop and the child writes its results. Memory: the kernel's RSS high-water
    mark is reset before every phase and read after it, so each phase's peak (the maximum over its
    repeats) and the child's lifetime peak (the maximum of those and of the setup) are both exact.
    ``prepare`` (optional): per phase, a callable run before the phase, outside its timing and its peak.
    """
    set_clock(args.clock)
    results: dict = {}
    print(PROTOCOL + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "finish":
            finish(results)
            return
        if command not in phases:
            raise SystemExit(f"unknown phase {command!r}; known: {sorted(phases)}")
        if prepare and command in prepare:
            prepare[command]()
        before = peak_rss_mb()  # the high-water mark so far (setup, warm-up, earlier phases)
        out["peak_rss_mb"] = max(out.get("peak_rss_mb", 0.0), before)
        tracked = reset_peak()  # outside the timing: this phase's own peak is read afterwards
        seconds, results[command] = timed(phases[command], 1)
        out["times"].setdefault(command, []).append(seconds[0])
        peak = current_peak_mb() if tracked else None
        if peak is not None:
            out["phase_peak_mb"][command] = max(out["phase_peak_mb"].get(command, 0.0), peak)
            out["peak_rss_mb"] = max(out["peak_rss_mb"], peak)
        print(PROTOCOL + json.dumps({"phase": command, "seconds": seconds[0]}), flush=True)


# ----------------------------------------------------------------------------------------------- parent
class Worker:
    """Parent side of one library's subprocess: ask it to run a phase, read back the seconds."""

    def __init__(self, args: argparse.Namespace, which: str, tmp: Path, extra: list[str] | None = None) -> None:
        self.which = which
        self.out = tmp / f"{which}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", which, "--out", str(self.out)]
        for key in ("threads", "repeats", "clock", "batch_size", "streams", "compute_dtype", "hidden", "intermediate", "layers", "heads",
                    "vocab", "seq_len", "n_train", "n_query"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        if args.scale:
            cmd.append("--scale")
        cmd += extra or []
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if args.malloc_arenas > 0:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arenas)  # the same allocator setting for both libraries
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # "ready": setup and warm-up are done

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        raise RuntimeError(f"the {self.which} benchmark process exited with code {self.proc.wait()}")

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def run(self, phase: str) -> float:
        self._send(phase)
        return float(self._read()["seconds"])

    def finish(self) -> dict:
        self._send("finish")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError(f"the {self.which} benchmark process failed with code {self.proc.returncode}")
        result = json.loads(self.out.read_text())
        result["scores"] = torch.load(self.out.with_suffix(".pt"))
        return result


SHARED_PHASES = ["epoch", "factors", "pairwise", "token scores"]


def run_interleaved(args: argparse.Namespace, tmp: Path) -> tuple[dict, dict]:
    """Both libraries, phase by phase, back to back, alternating which goes first (ABBA)."""
    kron = Worker(args, "kronfluence", tmp)
    infra = Worker(args, "infra", tmp)
    for repeat in range(args.repeats):
        for index, phase in enumerate(SHARED_PHASES):
            pair = [kron, infra] if (repeat + index) % 2 == 0 else [infra, kron]
            seconds = {w.which: w.run(phase) for w in pair}
            print(f"repeat {repeat + 1}/{args.repeats} {phase:<13} kronfluence {seconds['kronfluence']:7.2f} s  "
                  f"infra-pl {seconds['infra']:7.2f} s  ratio {seconds['infra'] / seconds['kronfluence']:.2f}",
                  flush=True)
        infra.run("instance pass")
    return kron.finish(), infra.finish()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x, dtype=torch.float64)
        r[x.argsort()] = torch.arange(x.numel(), dtype=torch.float64)
        return r

    return pearson(ranks(a.flatten()), ranks(b.flatten()))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def library_peak(result: dict) -> float:
    """Highest RSS during any phase of the library itself (the plain epoch is the benchmark's yardstick)."""
    return max(v for k, v in result["phase_peak_mb"].items() if k != "epoch" and v is not None)


def report(args: argparse.Namespace, kron: dict, infra: dict) -> None:
    kt, it = kron["times"], infra["times"]
    kt["factors+pairwise"] = [f + p for f, p in zip(kt["factors"], kt["pairwise"])]
    it["factors+pairwise"] = [f + p for f, p in zip(it["factors"], it["pairwise"])]
    epoch, kron_epoch = med(it["epoch"]), med(kt["epoch"])

    def cell(times):
        return f"{min(times):8.2f} / {med(times):8.2f}" if times else f"{'-':>8} / {'-':>8}"

    print()
    print(f"setting: Llama hidden={args.hidden} mlp={args.intermediate} layers={args.layers} heads={args.heads} "
          f"vocab={args.vocab}; {args.n_train} train + {args.n_query} query x {args.seq_len} tokens; "
          f"batch {args.batch_size}; threads={args.threads}; infra-pl streams={args.streams} compute_dtype={args.compute_dtype}{f' (auto; {args.bf16_units})' if args.bf16_units else ''}; repeats={args.repeats}; clock={args.clock} seconds; "
          f"MALLOC_ARENA_MAX={args.malloc_arenas or 'default'} (both); "
          f"torch {torch.__version__}")
    print(f"one epoch (plain fwd+bwd over {args.n_train} seqs, the same code in both children): infra child median "
          f"{epoch:.2f} s, kronfluence child median {kron_epoch:.2f} s (a difference here is machine noise); "
          f"phases interleaved back to back, ABBA")
    print()
    header = (f"{'phase':<17} | {'kronfluence min/med s':>21} | {'infra-pl min/med s':>19} | {'ratio':>6} | "
              f"{'kron epochs':>11} | {'infra epochs':>12} | {'epoch ratio':>11}")
    print(header)
    print("-" * len(header))
    for phase in PHASES:
        k, i = kt.get(phase, []), it.get(phase, [])
        ratio = f"{med(i) / med(k):6.2f}" if k and i else f"{'-':>6}"
        ke = f"{med(k) / kron_epoch:11.2f}" if k else f"{'-':>11}"
        ie = f"{med(i) / epoch:12.2f}" if i else f"{'-':>12}"
        er = f"{(med(i) / epoch) / (med(k) / kron_epoch):11.2f}" if k and i else f"{'-':>11}"
        print(f"{phase:<17} | {cell(k):>21} | {cell(i):>19} | {ratio} | {ke} | {ie} | {er}")
    print("(ratio = infra median / kronfluence median; epochs = a phase's median / the median plain epoch of the same "
          "child; epoch ratio = infra epochs / kron epochs, which cancels a machine that is slower during one child)")
    print()
    print(f"{'peak RSS (MB)':<17} | {'kronfluence':>11} | {'infra-pl':>9}")
    kron_lib, infra_lib = library_peak(kron), library_peak(infra)
    print(f"{'whole process':<17} | {kron['peak_rss_mb']:11.0f} | {infra['peak_rss_mb']:9.0f}")
    print(f"{'library phases':<17} | {kron_lib:11.0f} | {infra_lib:9.0f}")
    print(f"{'after setup':<17} | {kron['baseline_rss_mb']:11.0f} | {infra['baseline_rss_mb']:9.0f}")
    for phase in ["epoch", "factors", "pairwise", "token scores", "instance pass"]:
        k, i = kron["phase_peak_mb"].get(phase), infra["phase_peak_mb"].get(phase)
        fk = f"{k:11.0f}" if k is not None else f"{'-':>11}"
        fi = f"{i:9.0f}" if i is not None else f"{'-':>9}"
        print(f"{'  ' + phase:<17} | {fk} | {fi}")
    print("(whole process: the child's lifetime peak, setup and the plain epoch included; library phases: the highest "
          "of the per-phase rows except the plain epoch, which is the benchmark's yardstick, not part of either "
          "library; per-phase rows: the highest RSS during any repeat of that phase, read from the kernel's "
          "high-water mark reset just before it)")
    print()
    ks, is_ = kron["scores"], infra["scores"]
    print(f"pairwise scores: kronfluence {tuple(ks.shape)}, infra-pl {tuple(is_.shape)}")
    r, rho = pearson(ks, is_), spearman(ks, is_)
    rel = float((ks.double() - is_.double()).norm() / ks.double().norm())
    print(f"Pearson {r:.6f}  Spearman {rho:.6f}  relative Frobenius difference {rel:.2e}")
    print(f"token scores: kronfluence shape {tuple(kron['token_scores_shape'])} (by position); infra-pl sum_t s_t vs "
          f"instance score max |diff| {infra['token_vs_instance_max_abs_diff']:.2e} (max |S| "
          f"{infra['token_vs_instance_scale']:.2e})")
    paired = [i / k for i, k in zip(it["factors+pairwise"], kt["factors+pairwise"])]
    paired_epochs = [i / k for i, k in zip(it["epoch"], kt["epoch"])]
    print("paired ratios per repeat (infra-pl / kronfluence, run back to back):")
    print(f"  factors+pairwise: {' '.join(f'{x:.2f}' for x in paired)}  (median {med(paired):.2f}, "
          f"min {min(paired):.2f}, max {max(paired):.2f})")
    print(f"  plain epoch:      {' '.join(f'{x:.2f}' for x in paired_epochs)}  (the same code in both: its spread is "
          f"the machine's noise)")
    print()
    fp = med(paired)
    tok = med(it["token scores"]) / med(it["instance pass"])
    mem_ok = infra_lib <= kron_lib
    fp_epochs = (med(it["factors+pairwise"]) / med(it["epoch"])) / (med(kt["factors+pairwise"]) / med(kt["epoch"]))
    print(f"{'PASS' if fp <= 0.8 else 'FAIL'}: factors+pairwise = {fp:.2f}x kronfluence, median of "
          f"{len(paired)} paired repeats (target <= 0.8x); ratio of medians "
          f"{med(it['factors+pairwise']) / med(kt['factors+pairwise']):.2f}x; in epochs of each child: {fp_epochs:.2f}x")
    print(f"{'PASS' if r >= 0.999 else 'FAIL'}: Pearson = {r:.6f} (target >= 0.999)")
    print(f"{'PASS' if tok <= 1.5 else 'FAIL'}: token scores for {args.n_train} seqs = {tok:.2f}x our instance-score pass (target <= 1.5x)")
    print(f"{'PASS' if mem_ok else 'FAIL'}: peak RSS of the library phases infra-pl {infra_lib:.0f} MB vs kronfluence "
          f"{kron_lib:.0f} MB (target <=); whole process {infra['peak_rss_mb']:.0f} vs {kron['peak_rss_mb']:.0f} MB")


# ------------------------------------------------------------------------------------ whole attribution
WHOLE_INFRA = ["epoch", "factors", "direction", "instance+index", "top-K tokens", "new measurement"]
WHOLE_INFRA_TOTAL = ["factors", "direction", "instance+index", "top-K tokens"]
WHOLE_INFRA_EXTRA = ["exact new measurement", "full-data factors"]  # untimed: accuracy only
WHOLE_KRON = ["epoch", "factors", "aggregated measurement", "top-K tokens"]
WHOLE_KRON_TOTAL = ["factors", "aggregated measurement", "top-K tokens"]


def indexed_batches(tokens: torch.Tensor, batch_size: int, indices: list[int] | None = None) -> list[dict]:
    """``batches`` with each row's training index (the factor sample picks rows by it)."""
    indices = list(range(tokens.shape[0])) if indices is None else indices
    out = batches(tokens, batch_size)
    for start, batch in zip(range(0, len(indices), batch_size), out):
        batch["index"] = torch.tensor(indices[start : start + batch_size])
    return out


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` training indices of largest |score|, in training order."""
    return sorted(scores.abs().argsort(descending=True)[:k].tolist())


def overlap(got: torch.Tensor, exact: torch.Tensor, top: int = 100) -> float:
    top = min(top, got.numel())
    return len(set(got.argsort(descending=True)[:top].tolist()) & set(exact.argsort(descending=True)[:top].tolist())) / top


def run_infra_whole(args: argparse.Namespace) -> dict:
    """infra-pl's whole attribution at one N: factors, one direction, the instance pass that writes the index,
    top-K token scores; then a new measurement scored from the index (and, untimed, its exact scores and
    sampled-vs-full factors)."""
    import shutil
    from dataclasses import fields

    from infra_pl.ekfac import find_tracked_modules, fit_factors
    from infra_pl.influence import instance_scores_over, measurement_directions, measurement_gradient, token_scores_over
    from infra_pl.influence.index import IndexWriter, TrainingIndex, eigen_basis, index_key, scores_and_projections
    from infra_pl.influence.options import ScoreOptions

    defaults = {f.name: f.default for f in fields(ScoreOptions)}
    rank, dtype = defaults["index_rank"], defaults["index_dtype"]
    model, train, query = setup(args)
    n = train.shape[0]
    query2 = random_tokens(args.n_query, args.seq_len, args.vocab, seed=3)  # a measurement not known at index time
    train_loader = indexed_batches(train, args.batch_size)
    query_loader, query2_loader = batches(query, args.batch_size), batches(query2, args.batch_size)
    modules = find_tracked_modules(model, MLP_REGEX)
    compute_dtype = args.compute_dtype
    root = Path(tempfile.mkdtemp(prefix="infra_whole_index_"))
    plain_epoch(model, train_loader[:4])  # warm-up (allocator, thread pool) on a few batches, not a whole epoch
    baseline = current_rss_mb()
    out: dict = {"times": {}, "phase_peak_mb": {}, "index_rank": rank, "index_dtype": dtype, "n_train": n}
    state: dict = {"repeat": 0}

    def fit(sampled: bool):
        return fit_factors(
            model, train_loader, modules=modules, fisher="empirical", progress=False, streams=args.streams,
            compute_dtype=compute_dtype, train_ids=range(n),
            covariance_max_examples=args.covariance_max_examples if sampled else None,
            lambda_max_examples=args.lambda_max_examples if sampled else None,
        )

    def epoch():
        plain_epoch(model, train_loader)

    def factors():
        state["factors"] = fit(sampled=True)

    def direction():
        state["grad"] = measurement_gradient(model, query_loader, modules)
        state["direction"] = measurement_directions(state["factors"], {"queries": state["grad"]})

    def new_folder():  # outside the timing: a fresh folder per repeat, the previous one removed
        if "folder" in state:
            shutil.rmtree(state["folder"], ignore_errors=True)
        state["repeat"] += 1
        state["folder"] = root / f"index-{state['repeat']}"

    def instance_and_index():
        # As benchmarks/bench_index.py::write_index: one hooked pass gives the instance scores and the index rows.
        # scores_and_projections takes one batch at a time (no streams option): this pass runs as one stream.
        basis = eigen_basis(state["factors"], rank)
        writer = IndexWriter(state["folder"], basis, dtype, index_key(basis, dtype, None, None), {"n_train": n})
        scores = torch.zeros(n)
        with torch.no_grad():
            for batch in train_loader:
                indices = batch["index"].tolist()
                part, rows = scores_and_projections(model, batch, state["direction"], basis, modules)
                scores[batch["index"]] = part[:, 0].float()
                writer.add(indices, [str(i) for i in indices], rows)
            writer.flush()
        state["scores"] = scores
        state["top"] = top_k(scores, args.top_k)
        if args.topk_file:
            Path(args.topk_file).write_text(json.dumps(state["top"]))
        return scores

    def tokens():
        loader = batches(train[state["top"]], args.batch_size)
        return torch.cat([part[0] for part in token_scores_over(model, loader, state["direction"], modules)])

    def new_measurement():
        grad = measurement_gradient(model, query2_loader, modules)
        state["new_direction"] = measurement_directions(state["factors"], {"new": grad})
        order, _, matrix = TrainingIndex.open(state["folder"]).scores(state["new_direction"])
        scores = torch.zeros(n, dtype=torch.float64)
        scores[torch.as_tensor(order)] = torch.as_tensor(matrix[:, 0])
        return scores

    def exact_new():
        with torch.no_grad():
            return instance_scores_over(model, train_loader, state["new_direction"], modules, streams=args.streams)[:, 0]

    sample = factor_sample(args, n)
    sampled = sample is not None
    skip_accuracy = args.skip_factor_accuracy_above is not None and n > args.skip_factor_accuracy_above

    def full_factors():
        if not sampled or skip_accuracy:
            return None
        full = fit(sampled=False)
        directions = measurement_directions(full, {"queries": state["grad"]})
        with torch.no_grad():
            return instance_scores_over(model, train_loader, directions, modules, streams=args.streams)[:, 0]

    phases = {"epoch": epoch, "factors": factors, "direction": direction, "instance+index": instance_and_index,
              "top-K tokens": tokens, "new measurement": new_measurement, "exact new measurement": exact_new,
              "full-data factors": full_factors}

    def finish(results: dict) -> None:
        folder = state["folder"]
        out["index_bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        manifest = json.loads((folder / "manifest.json").read_text())
        out["index_bytes_per_example"] = int(manifest["bytes_per_example"])
        info = manifest.get("basis_info", {})
        out["index_kept"] = {k: info.get(k) for k in ("energy", "effective")}
        out["index_parts"] = len(list(folder.glob("part-*.json")))
        shutil.rmtree(root, ignore_errors=True)
        inst, tok = results["instance+index"], results["top-K tokens"]
        out["token_vs_instance_max_abs_diff"] = float((tok.sum(-1) - inst[state["top"]]).abs().max())
        out["instance_scale"] = float(inst.abs().max())
        got, exact = results["new measurement"], results.get("exact new measurement")
        if exact is not None:
            out["index_pearson"], out["index_spearman"] = pearson(got, exact), spearman(got, exact)
            out["index_top100"] = overlap(got, exact.double())
        full = results.get("full-data factors")
        out["factor_sample"] = {"covariance_max_examples": args.covariance_max_examples,
                                "lambda_max_examples": args.lambda_max_examples, "at this N": sample}
        if full is not None:
            out["sample_pearson"], out["sample_spearman"] = pearson(inst, full), spearman(inst, full)
        out["factor_accuracy"] = ("compared" if full is not None else "skipped" if sampled else "no sample")
        out["baseline_rss_mb"] = baseline
        torch.save(inst, Path(args.out).with_suffix(".pt"))

    serve(phases, finish, out, args, prepare={"instance+index": new_folder})
    return out


def run_kronfluence_whole(args: argparse.Namespace) -> dict:
    """kronfluence's whole attribution at one N: all factors, one aggregated measurement over the training set,
    per-token scores of the top-K sequences (infra-pl's top-K when its file is there, else kronfluence's own)."""
    import shutil

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments

    from infra_pl.lds.kronfluence_ref import ekfac_factor_arguments

    model, train, query = setup(args)
    names = [f"model.layers.{i}.mlp.{p}_proj" for i in range(args.layers) for p in ("gate", "up", "down")]

    train_loader = batches(train, args.batch_size)
    out: dict = {"times": {}, "phase_peak_mb": {}}
    plain_epoch(model, train_loader[:4])  # warm-up on a few batches

    def epoch():  # as run_kronfluence: every parameter trainable for the plain epoch only
        flags = {param: param.requires_grad for param in model.parameters()}
        for param in flags:
            param.requires_grad_(True)
        try:
            plain_epoch(model, train_loader)
        finally:
            for param, flag in flags.items():
                param.requires_grad_(flag)

    task = summed_nll_task(names)
    model = prepare_model(model, task)
    baseline = current_rss_mb()
    train_ds, query_ds = TokenDataset(train), TokenDataset(query)
    workdir = tempfile.mkdtemp(prefix="kron_whole_")
    analyzer = Analyzer(
        analysis_name="bench", model=model, task=task, cpu=True, log_level=logging.WARNING,
        disable_tqdm=True, output_dir=workdir,
    )
    factor_args = ekfac_factor_arguments(empirical=True)  # kronfluence's own sample sizes (100,000 examples)

    def score_args(per_token: bool) -> ScoreArguments:
        return ScoreArguments(
            damping_factor=None, amp_dtype=None, per_sample_gradient_dtype=torch.float32,
            precondition_dtype=torch.float32, score_dtype=torch.float32,
            compute_per_token_scores=per_token, aggregate_query_gradients=True,
        )

    state: dict = {}

    def factors():
        analyzer.fit_all_factors(
            "ekfac", train_ds, per_device_batch_size=args.batch_size, factor_args=factor_args,
            overwrite_output_dir=True,
        )

    def measurement():
        analyzer.compute_pairwise_scores(
            "aggregated", "ekfac", query_ds, train_ds, per_device_query_batch_size=args.n_query,
            per_device_train_batch_size=args.batch_size, score_args=score_args(False), overwrite_output_dir=True,
        )
        state["scores"] = analyzer.load_pairwise_scores("aggregated")["all_modules"][0].float()  # [N]
        return state["scores"]

    def tokens():
        source = Path(args.topk_file) if args.topk_file else None
        top = json.loads(source.read_text()) if source is not None and source.exists() else top_k(state["scores"], args.top_k)
        state["top_source"] = "infra-pl's" if source is not None and source.exists() else "kronfluence's own"
        analyzer.compute_pairwise_scores(
            "tokens", "ekfac", query_ds, TokenDataset(train[top]), per_device_query_batch_size=args.n_query,
            per_device_train_batch_size=args.batch_size, score_args=score_args(True), overwrite_output_dir=True,
        )
        return analyzer.load_pairwise_scores("tokens")["all_modules"]

    phases = {"epoch": epoch, "factors": factors, "aggregated measurement": measurement, "top-K tokens": tokens}

    def finish(results: dict) -> None:
        out["token_scores_shape"] = list(results["top-K tokens"].shape)
        out["top_source"] = state.get("top_source")
        out["baseline_rss_mb"] = baseline
        shutil.rmtree(workdir, ignore_errors=True)
        torch.save(results["aggregated measurement"], Path(args.out).with_suffix(".pt"))

    serve(phases, finish, out, args)
    return out


def run_whole_point(args: argparse.Namespace, n: int, tmp: Path) -> dict:
    """Both children at one N; phases back to back, alternating which library goes first."""
    point = argparse.Namespace(**vars(args))
    point.n_train = n
    topk = tmp / f"topk-{n}.json"

    def sample_flag(value) -> str:
        return "none" if value is None else str(value)

    extra = ["--whole", str(n), "--top-k", str(args.top_k), "--topk-file", str(topk),
             "--covariance-max-examples", sample_flag(args.covariance_max_examples),
             "--lambda-max-examples", sample_flag(args.lambda_max_examples)]
    if args.skip_factor_accuracy_above is not None:
        extra += ["--skip-factor-accuracy-above", str(args.skip_factor_accuracy_above)]
    run_kron = args.skip_kronfluence_above is None or n <= args.skip_kronfluence_above
    infra = Worker(point, "infra", tmp / str(n), extra)
    kron = Worker(point, "kronfluence", tmp / str(n), extra) if run_kron else None

    def step(repeat: int, k: int, infra_phases: list[str], kron_phases: list[str], label: str = "") -> None:
        seconds = {}
        order = [("infra", infra, infra_phases), ("kronfluence", kron, kron_phases)]
        if (repeat + k) % 2:
            order.reverse()
        for which, worker, names in order:
            for phase in names if worker is not None else []:
                seconds[f"{which} {phase}"] = worker.run(phase)
        print(f"N={n} {label or f'repeat {repeat + 1}/{args.repeats}'}  "
              + "  ".join(f"{name} {s:.1f} s" for name, s in seconds.items()), flush=True)

    for repeat in range(args.repeats):
        step(repeat, 0, ["epoch"], ["epoch"])
        step(repeat, 1, ["factors"], ["factors"])
        step(repeat, 0, ["direction", "instance+index"], ["aggregated measurement"])  # infra's top-K file first
        step(repeat, 1, ["top-K tokens"], ["top-K tokens"])
        step(repeat, 0, ["new measurement"], [])
    sampled = factor_sample(args, n) is not None
    compare = sampled and (args.skip_factor_accuracy_above is None or n <= args.skip_factor_accuracy_above)
    extras = WHOLE_INFRA_EXTRA if compare else WHOLE_INFRA_EXTRA[:1]
    step(0, 0, extras, [], label="untimed extras (accuracy only)")
    result = {"n": n, "infra": infra.finish(), "kron": kron.finish() if kron is not None else None}
    report_whole_point(args, result)
    return result


def epochs(result: dict, phases: list[str]) -> float:
    times = result["times"]
    return sum(med(times[p]) for p in phases) / med(times["epoch"])


def report_whole_point(args: argparse.Namespace, result: dict) -> None:
    n, infra, kron = result["n"], result["infra"], result["kron"]
    it, epoch = infra["times"], med(infra["times"]["epoch"])
    print()
    print(f"### N = {n}")
    print()
    print("| library | phase | min / med s | epoch-eq | peak RSS MB |")
    print("|---|---|---|---|---|")

    def row(library: str, lib: dict, phase: str, unit: float, note: str = "") -> None:
        times = lib["times"].get(phase)
        peak = lib["phase_peak_mb"].get(phase)
        cell = f"{min(times):.2f} / {med(times):.2f}" if times else "-"
        eq = f"{med(times) / unit:.3f}" if times else "-"
        print(f"| {library} | {phase}{note} | {cell} | {eq} | {peak:.0f} |" if peak is not None else
              f"| {library} | {phase}{note} | {cell} | {eq} | - |")

    for phase in WHOLE_INFRA:
        row("infra-pl", infra, phase, epoch, " (not in total)" if phase in ("epoch", "new measurement") else "")
    print(f"| infra-pl | **whole attribution** (factors + direction + instance+index + top-K tokens) | "
          f"{sum(med(it[p]) for p in WHOLE_INFRA_TOTAL):.2f} | **{epochs(infra, WHOLE_INFRA_TOTAL):.3f}** | "
          f"{library_peak_of(infra, WHOLE_INFRA_TOTAL):.0f} |")
    for phase in WHOLE_INFRA_EXTRA:
        if phase in it:
            row("infra-pl", infra, phase, epoch, " (untimed extra: accuracy)")
    if kron is not None:
        kt, kron_epoch = kron["times"], med(kron["times"]["epoch"])
        for phase in WHOLE_KRON:
            row("kronfluence", kron, phase, kron_epoch, " (not in total)" if phase == "epoch" else "")
        print(f"| kronfluence | **whole attribution** (factors + aggregated measurement + top-K tokens) | "
              f"{sum(med(kt[p]) for p in WHOLE_KRON_TOTAL):.2f} | **{epochs(kron, WHOLE_KRON_TOTAL):.3f}** | "
              f"{library_peak_of(kron, WHOLE_KRON_TOTAL):.0f} |")
    print()
    size = infra["index_bytes"]
    print(f"index: rank {infra['index_rank']} {infra['index_dtype']} (ScoreOptions defaults), "
          f"{infra['index_bytes_per_example']} bytes/example (manifest), {size / 1e6:.1f} MB on disk in "
          f"{infra['index_parts']} parts ({size / n:.0f} bytes/example with manifest and basis); kept share of the "
          f"gradients' energy (sum of Lambda) {fmt(infra['index_kept']['energy'])}, of the effective directions "
          f"(sum of Lambda/(Lambda+damping)) {fmt(infra['index_kept']['effective'])}")
    if "index_pearson" in infra:
        print(f"new measurement (query set 2, seed 3) from the index vs its exact instance scores: Pearson "
              f"{infra['index_pearson']:.4f}, Spearman {infra['index_spearman']:.4f}, top-100 overlap "
              f"{infra['index_top100']:.2f}")
    sample = infra["factor_sample"]
    if infra["factor_accuracy"] == "compared":
        print(f"factor sample {sample} vs full-data factors (instance scores of the direction): Pearson "
              f"{infra['sample_pearson']:.4f}, Spearman {infra['sample_spearman']:.4f}")
    elif infra["factor_accuracy"] == "skipped":
        print(f"factor sample {sample}: comparison with full-data factors skipped at this N")
    else:
        print(f"factor sample {sample}: every example (nothing to compare with full-data factors)")
    print(f"top-K token scores: sum over tokens vs instance score max |diff| {infra['token_vs_instance_max_abs_diff']:.2e} "
          f"(max |S| {infra['instance_scale']:.2e})")
    if kron is not None:
        ks, is_ = kron["scores"].double(), infra["scores"].double()
        print(f"kronfluence aggregated scores vs infra-pl instance scores (same measurement up to scale and sign: "
              f"infra-pl's f is the mean log-likelihood, kronfluence's the summed NLL): Pearson {pearson(ks, is_):.4f}, "
              f"Spearman {spearman(ks, is_):.4f}; kronfluence token scores {tuple(kron['token_scores_shape'])} for "
              f"{kron['top_source']} top-{args.top_k}")
    print(f"RSS after setup (model + data): infra-pl {infra['baseline_rss_mb']:.0f} MB"
          + (f", kronfluence {kron['baseline_rss_mb']:.0f} MB" if kron is not None else ""), flush=True)


def fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def library_peak_of(result: dict, phases: list[str]) -> float:
    values = [result["phase_peak_mb"].get(p) for p in phases]
    return max((v for v in values if v is not None), default=float("nan"))


def run_whole(args: argparse.Namespace) -> None:
    print(f"whole attribution: Llama hidden={args.hidden} mlp={args.intermediate} layers={args.layers} "
          f"heads={args.heads} vocab={args.vocab}; N = {args.whole} training + {args.n_query} query x {args.seq_len} "
          f"tokens; batch {args.batch_size}; threads={args.threads}; infra-pl streams={args.streams} (the "
          f"instance+index pass: one stream) compute_dtype={args.compute_dtype}; EMPIRICAL Fisher in both libraries; "
          f"infra-pl factor sample covariance_max_examples={args.covariance_max_examples} lambda_max_examples="
          f"{args.lambda_max_examples} (None: every example; auto: the library's default count, every example up to it); "
          f"kronfluence: its default sample sizes (100,000 "
          f"examples, all N here); top-K={args.top_k}; repeats={args.repeats}; clock={args.clock} seconds; "
          f"MALLOC_ARENA_MAX={args.malloc_arenas or 'default'}; torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_whole_") as tmp:
        for n in args.whole:
            (Path(tmp) / str(n)).mkdir()
            rows.append(run_whole_point(args, n, Path(tmp)))
    report_whole(args, rows)


def report_whole(args: argparse.Namespace, rows: list[dict]) -> None:
    print()
    print("## Summary: whole attribution in epoch-equivalents (one plain forward + backward over the N training "
          "sequences, timed in the same child)")
    print()
    print("| N | epoch s | infra factors | direction | instance+index | top-K tokens | infra total | kron total | "
          "infra / kron | new measurement from index | index Pearson / Spearman / top-100 | sampled vs full factors "
          "Pearson / Spearman | peak RSS infra / kron MB | index MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in rows:
        n, infra, kron = result["n"], result["infra"], result["kron"]
        it, epoch = infra["times"], med(infra["times"]["epoch"])
        eq = [f"{med(it[p]) / epoch:.3f}" for p in WHOLE_INFRA_TOTAL]
        total = epochs(infra, WHOLE_INFRA_TOTAL)
        kron_total = epochs(kron, WHOLE_KRON_TOTAL) if kron is not None else None
        accuracy = (f"{infra['index_pearson']:.4f} / {infra['index_spearman']:.4f} / {infra['index_top100']:.2f}"
                    if "index_pearson" in infra else "-")
        sample = {"compared": f"{infra.get('sample_pearson', float('nan')):.4f} / "
                              f"{infra.get('sample_spearman', float('nan')):.4f}", "skipped": "skipped",
                  "no sample": "1 (no sample)"}[infra["factor_accuracy"]]
        peaks = f"{library_peak_of(infra, WHOLE_INFRA_TOTAL + ['new measurement']):.0f} / " + (
            f"{library_peak_of(kron, WHOLE_KRON_TOTAL):.0f}" if kron is not None else "skipped")
        print(f"| {n} | {epoch:.1f} | {' | '.join(eq)} | {total:.3f} | "
              f"{f'{kron_total:.3f}' if kron_total is not None else 'skipped'} | "
              f"{f'{total / kron_total:.2f}' if kron_total is not None else '-'} | "
              f"{med(it['new measurement']) / epoch:.4f} | {accuracy} | {sample} | {peaks} | "
              f"{infra['index_bytes'] / 1e6:.1f} |")
    print()
    print("Peak RSS (MB) of each phase at each N (memory flat in N: a row that does not grow with N):")
    print()
    print("| library | phase | " + " | ".join(f"N={r['n']}" for r in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for library, key, phases in (("infra-pl", "infra", WHOLE_INFRA + WHOLE_INFRA_EXTRA),
                                 ("kronfluence", "kron", WHOLE_KRON)):
        for phase in phases:
            cells = []
            for r in rows:
                value = r[key]["phase_peak_mb"].get(phase) if r[key] is not None else None
                cells.append(f"{value:.0f}" if value is not None else "-")
            if any(c != "-" for c in cells):
                print(f"| {library} | {phase} | " + " | ".join(cells) + " |")
        cells = [f"{r[key]['baseline_rss_mb']:.0f}" if r[key] is not None else "-" for r in rows]
        if any(c != "-" for c in cells):
            print(f"| {library} | after setup (model + data) | " + " | ".join(cells) + " |")
    print()
    print("Epoch-equivalents: a phase's median seconds / the median plain epoch (forward + backward, summed NLL, "
          "over the N training sequences) of the same child. infra-pl total = factors (fit_factors, empirical "
          "Fisher, the factor sample above) + direction (measurement gradient over the 32 queries + H^-1) + "
          "instance+index (one pass over the N sequences: instance scores and the training-gradient index at "
          "ScoreOptions' default rank and dtype, written to disk) + top-K tokens (token_scores_over the top-K "
          "sequences by |instance score|). kronfluence total = fit_all_factors + compute_pairwise_scores with "
          "aggregate_query_gradients (one score per training sequence for the 32 queries' summed NLL) + per-token "
          "scores of the same top-K sequences; it writes factors and scores to a temporary folder, inside its "
          "timings. New measurement from index = measurement gradient of a second query set (32 sequences, seed 3) "
          "+ H^-1 + TrainingIndex.scores, not in the total. Untimed extras (accuracy only): the exact instance pass "
          "of the new measurement; full-data factors + an instance pass when a factor sample is set.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        if args.whole:
            result = run_infra_whole(args) if args.only == "infra" else run_kronfluence_whole(args)
        else:
            result = run_infra(args) if args.only == "infra" else run_kronfluence(args)
        Path(args.out).write_text(json.dumps(result))
        return
    if args.whole:
        run_whole(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_vs_kron_") as tmp:
        kron, infra = run_interleaved(args, Path(tmp))
    report(args, kron, infra)


if __name__ == "__main__":
    main()
