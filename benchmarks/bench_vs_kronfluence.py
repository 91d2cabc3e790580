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

Usage::

    python benchmarks/bench_vs_kronfluence.py                  # the fixed setting, 2 threads, 5 paired repeats
    python benchmarks/bench_vs_kronfluence.py --threads 1 --clock cpu
    python benchmarks/bench_vs_kronfluence.py --scale --hidden 256 --layers 8 --seq-len 256 --n-train 512
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
    p.add_argument("--repeats", type=int, default=5,
                   help="paired repeats of every phase (each repeat runs both libraries back to back)")
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
    p.add_argument("--only", choices=["kronfluence", "infra"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
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
    changed = [k for k, v in fixed.items() if getattr(args, k) != v]
    if changed and not args.scale:
        p.error(f"{changed} differ from the fixed setting; pass --scale to run a bigger/smaller one")
    return args


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
def run_kronfluence(args: argparse.Namespace) -> dict:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments
    from kronfluence.task import Task

    from infra_pl.lds.kronfluence_ref import ekfac_factor_arguments

    model, train, query = setup(args)
    names = [f"model.layers.{i}.mlp.{p}_proj" for i in range(args.layers) for p in ("gate", "up", "down")]

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

    task = SummedNLLTask()
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


def serve(phases: dict, finish, out: dict, args: argparse.Namespace) -> None:
    """Child side: run the phases the parent names on stdin, one per line, and answer with the time.

    ``finish`` ends the loop and the child writes its results. Memory: the kernel's RSS high-water
    mark is reset before every phase and read after it, so each phase's peak (the maximum over its
    repeats) and the child's lifetime peak (the maximum of those and of the setup) are both exact.
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

    def __init__(self, args: argparse.Namespace, which: str, tmp: Path) -> None:
        self.which = which
        self.out = tmp / f"{which}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", which, "--out", str(self.out)]
        for key in ("threads", "repeats", "clock", "batch_size", "streams", "compute_dtype", "hidden", "intermediate", "layers", "heads",
                    "vocab", "seq_len", "n_train", "n_query"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        if args.scale:
            cmd.append("--scale")
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        result = run_infra(args) if args.only == "infra" else run_kronfluence(args)
        Path(args.out).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench_vs_kron_") as tmp:
        kron, infra = run_interleaved(args, Path(tmp))
    report(args, kron, infra)


if __name__ == "__main__":
    main()
