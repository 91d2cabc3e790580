"""How much does the training-gradient index lose, how big is it, and how fast does it score? (issue 21)

On the LDS benchmark's model (``benchmarks/lds.py``: the demo Llama fine-tuned on 400 examples; its
model, correctness and retrains are cached under ``--out``), with the default EK-FAC factors (true
Fisher, λ = 0.1·mean Λ), one instance pass per compression setting writes an index
(:mod:`infra_pl.influence.index`) while scoring the two domain measurements known at index time. Then
measurements *not known at index time* are scored from each index and compared with exact instance
scores (a pass over the training set with the same directions v = H⁻¹∇f):

* per-item queries: f_q = log p(q) for each of the Q measured items (Pearson and Spearman over the
  training examples, and the overlap of the top-100 examples, averaged over queries; the worst
  query's Pearson in brackets);
* the LDS of those per-item scores and of their domain means on the cached retrains (if present),
  beside the exact scores' LDS.

Compression settings: the EK-FAC eigenbasis (top-k eigenvectors of S and A per module, the
default) and Gaussian random projections of the same size (LoGra's random init), ranks k, stored
in int8 or float16 (per-block scale) or float32.

"Checked" columns: the scores ``from_index`` delivers with its defaults
(:mod:`infra_pl.influence.index_check`): a seeded sample of ``index_check_examples`` scored exactly
calibrates every index score (exact ≈ a·index + b, per measurement) and the ``index_exact_top``
highest and lowest examples of each measurement carry exact scores. Their agreement is computed
from the exact scores of this run (the check pass computes the same numbers); its cost for one
measurement is timed as an instance pass over the chosen examples. Cost: seconds of one new measurement (its measurement
pass + v = H⁻¹∇f + scoring) from the index and by an instance pass, in epoch-equivalents (one plain
forward + backward over the training set, timed in the same run), and the instance pass's time
with and without writing the index. Times are CPU seconds of this process (one thread). Last, the estimated index size per example for the paper's
models at the default rank (the planner's meta models: no weights needed).

    OMP_NUM_THREADS=1 python benchmarks/bench_index.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra_pl.ekfac.loss import causal_lm_loss  # noqa: E402
from infra_pl.influence import instance_scores, measurement_directions, measurement_gradient, query_directions  # noqa: E402
from infra_pl.influence.index import (  # noqa: E402
    IndexWriter,
    TrainingIndex,
    eigen_basis,
    index_key,
    model_index_bytes,
    random_basis,
    scores_and_projections,
)
from infra_pl.influence.index_check import combine, extreme_rows, fit_agreement  # noqa: E402
from infra_pl.influence.options import ScoreOptions  # noqa: E402
from infra_pl.lds import LDSSetting  # noqa: E402
from infra_pl.lds.experiment import LDSExperiment, lds_table  # noqa: E402
from infra_pl.lds.scoring import ScoringContext, _by_length  # noqa: E402
from infra_pl.lds.subsets import draw_subsets  # noqa: E402

# CPU seconds of this process (user + system): with one thread, what other processes on a shared machine
# do barely moves it, unlike wall time (which moved the same pass by up to 2x on the 2 shared cores here).
clock = time.process_time

MODELS = {"LLaMA3-8B": "configs/models/llama3_8b.json", "Qwen2.5-7B": "configs/models/qwen25_7b.json",
          "Qwen2.5-14B": "configs/models/qwen25_14b.json"}


def epoch_seconds(model, batches) -> float:
    """One plain forward + backward (parameter gradients) over the training set."""
    start = clock()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        causal_lm_loss(model, batch, False).sum().backward()
    model.zero_grad(set_to_none=True)
    return clock() - start


def exact_scores(model, batches, directions, modules, n: int) -> tuple[np.ndarray, float]:
    """[M, N] instance scores over the training set and the seconds of that pass."""
    out = np.zeros((len(directions.names), n))
    start = clock()
    with torch.no_grad():
        for batch in batches:
            out[:, batch["index"].numpy()] = instance_scores(model, batch, directions, modules).double().t().numpy()
    return out, clock() - start


def write_index(model, batches, known, basis, modules, folders: dict[str, Path]) -> float:
    """One instance pass (the known measurements) that writes ``basis``'s index in every dtype; its seconds."""
    writers = {dtype: IndexWriter(folder, basis, dtype, index_key(basis, dtype, None, None), {"n_train": None})
               for dtype, folder in folders.items()}
    start = clock()
    with torch.no_grad():
        for batch in batches:
            indices = batch["index"].tolist()
            _, rows = scores_and_projections(model, batch, known, basis, modules)
            for writer in writers.values():
                writer.add(indices, [str(i) for i in indices], rows)
        for writer in writers.values():
            writer.flush()
    return clock() - start


def from_index(folder: Path, directions, n: int) -> tuple[np.ndarray, float, int]:
    """[M, N] scores from a stored index, the seconds (parts verified and read), and bytes per example."""
    start = clock()
    index = TrainingIndex.open(folder)
    order, _, matrix = index.scores(directions)
    seconds = clock() - start
    out = np.zeros((matrix.shape[1], n))
    out[:, order] = matrix.T
    return out, seconds, int(index.groups[0].manifest["bytes_per_example"])


def agreement(got: np.ndarray, exact: np.ndarray, top: int = 100) -> dict[str, float]:
    """Per row: Pearson, Spearman, top-``top`` overlap; their means (and the worst Pearson)."""
    from _common import rowwise_correlations

    pearson, spearman = rowwise_correlations(got, exact)
    overlap = [len(set(np.argsort(-g)[:top]) & set(np.argsort(-e)[:top])) / top for g, e in zip(got, exact)]
    slopes = [np.polyfit(g, e, 1)[0] for g, e in zip(got, exact)]  # exact ≈ slope · got: the scale the estimate misses
    return {"pearson": float(pearson.mean()), "pearson_min": float(pearson.min()),
            "spearman": float(spearman.mean()), "overlap": float(np.mean(overlap)), "slope": float(np.median(slopes))}


def checked_scores(raw: np.ndarray, exact: np.ndarray, sample: list[int], top: int) -> tuple[np.ndarray, list[int]]:
    """[M, N] scores as ``from_index`` delivers them: each row calibrated on ``sample`` and its ``top`` highest and
    lowest examples exact (what the check pass computes: the exact scores of those examples); and the examples
    the first measurement's check pass scores."""
    out = np.empty_like(raw)
    chosen_first: list[int] = []
    for m in range(raw.shape[0]):
        extremes = extreme_rows(raw[m][:, None], top)
        chosen = sorted(set(sample) | set(extremes))
        line = fit_agreement(str(m), raw[m, sample], exact[m, sample])
        merged, _ = combine(raw[m][:, None], {r: exact[m, r : r + 1] for r in chosen}, [line])
        out[m] = merged[:, 0]
        chosen_first = chosen_first or chosen
    return out, chosen_first


def lds_columns(experiment, item_scores: dict[str, np.ndarray], groups, n: int, seed: int) -> dict[str, tuple[str, str]]:
    """Domain and per-item LDS of each [Q, N] score matrix on the cached retrains ('' when absent)."""
    subsets = draw_subsets(n, 0.5, 20, 0)
    records = [experiment.store.get(s, seed) for s in subsets]
    if any(r is None for r in records):
        return {name: ("", "") for name in item_scores}
    table = lds_table(item_scores, records, subsets, groups, n, n_bootstrap=500)
    return {name: (f"{row['lds']['value']:.3f}", f"{row['item_lds']['value']:.3f}") for name, row in table.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/lds", help="the LDS benchmark's output folder (its model)")
    parser.add_argument("--ranks", default="16,32,64,96", help="index ranks (default: %(default)s)")
    parser.add_argument("--dtypes", default="int8,float16", help="storage dtypes below full rank (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", default=None, help="keep the indexes in this folder (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes are the fastest of this many (the "
                        "machine may be shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    defaults = {name: field.default for name, field in ScoreOptions.__dataclass_fields__.items()}
    default_rank, default_dtype = defaults["index_rank"], defaults["index_dtype"]
    check_n, exact_top, check_seed = (defaults["index_check_examples"], defaults["index_exact_top"],
                                      defaults["index_check_seed"])

    experiment = LDSExperiment(LDSSetting(), args.out, log=lambda message: None)
    model = experiment.full_model(0)
    measurements = experiment.measurements(0)
    ctx = ScoringContext(model, experiment.data, measurements.query_indices)
    modules, n = ctx.modules, len(ctx.data.train_features)
    train = list(ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size))
    factors = ctx.factors("true")
    epoch = min(epoch_seconds(model, train) for _ in range(2))

    # Known at index time: the domain measurements (the paper's f per domain).
    start = clock()
    gradients = {name: measurement_gradient(model, ctx.data.batches(ctx.data.eval_features_at(
        [measurements.query_indices[r] for r in rows]), ctx.batch_size), modules) for name, rows in measurements.groups.items()}
    known = measurement_directions(factors, gradients)
    measure_seconds = (clock() - start) / len(gradients)
    # New: one measurement per measured item, in measurement order.
    start = clock()
    queries = query_directions(model, ctx.data.batches(ctx.query_features(), ctx.batch_size), factors, modules=modules)
    query_seconds = clock() - start
    exact_q, pairwise_seconds = exact_scores(model, train, queries, modules, n)
    one = known.select([known.names[0]])
    plain_seconds = [exact_scores(model, train, known, modules, n)[1] for _ in range(args.repeats)]
    one_instance_seconds = min(exact_scores(model, train, one, modules, n)[1] for _ in range(args.repeats))

    from infra_pl.sampling import sample_indices

    domains = [example.get("domain") for example in ctx.data.train_examples]
    sample = sample_indices(domains, check_n, check_seed, "index_check_examples") or list(range(n))
    check_examples = 0
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_index_"))
    rows, item_scores = [], {"exact (instance pass)": exact_q}
    full_rank = max(max(m.shape.matrix_shape) for m in factors.modules.values())
    settings = [("eigen", k) for k in ranks] + [("random", k) for k in ranks] + [("eigen", full_rank)]
    write_seconds = {}
    for kind, rank in settings:
        basis = eigen_basis(factors, rank) if kind == "eigen" else random_basis(
            {name: m.shape.matrix_shape for name, m in factors.modules.items()}, rank, seed=0)
        dtypes = tuple(args.dtypes.split(",")) if rank != full_rank else ("float32",)
        folders, ratios = {}, []
        for dtype in dtypes:  # the first dtype's passes are timed, each right after a pass without the index
            for repeat in range(args.repeats if dtype == dtypes[0] else 1):
                before = exact_scores(model, train, known, modules, n)[1] if dtype == dtypes[0] else None
                folders[dtype] = root / f"{kind}-{rank}-{dtype}" / f"try{repeat}"
                seconds = write_index(model, train, known, basis, modules, {dtype: folders[dtype]})
                if before is not None:
                    plain_seconds.append(before)
                    ratios.append(seconds / before)
        write_seconds[(kind, rank)] = (float(np.median(ratios)), dtypes[0])
        for dtype, folder in folders.items():
            scores_q, seconds_q, size = from_index(folder, queries, n)
            seconds_one = min(from_index(folder, one, n)[1] for _ in range(args.repeats))
            label = f"{kind} k={rank} {dtype}"
            item_scores[label] = scores_q
            checked = None
            if rank != full_rank:
                checked, chosen = checked_scores(scores_q, exact_q, sample, exact_top)
                item_scores[label + " checked"] = checked
                check_examples = len(chosen)
            rows.append((label, kind, rank, dtype, size, agreement(scores_q, exact_q), seconds_one, seconds_q,
                         basis.info.get("energy"), basis.info.get("effective"),
                         agreement(checked, exact_q) if checked is not None else None))
    lds = lds_columns(experiment, item_scores, measurements.groups, n, 0)
    exact_one = exact_scores(model, train, one, modules, n)[0]

    def default_raw_one(label: str) -> np.ndarray:
        kind, rank, dtype = label.split(" ")[0], int(label.split("k=")[1].split(" ")[0]), label.split(" ")[-1]
        return from_index(root / f"{kind}-{rank}-{dtype}" / "try0", one, n)[0]

    tracked = sum(m.shape.out_features * m.shape.in_dim for m in factors.modules.values())
    print(f"model: {len(factors.modules)} tracked modules, {tracked} tracked parameters (float32 gradient "
          f"{tracked * 4} bytes); N = {n} training sequences, Q = {len(ctx.query_indices)} per-item queries; one epoch "
          f"(forward + backward) = {epoch:.2f} s; threads {torch.get_num_threads()}")
    print("\nNew measurements scored from the index vs exact instance scores (per-item queries: mean over queries, "
          "worst Pearson in brackets; exact/raw scale: median least-squares slope of exact on raw index scores; LDS on "
          "the cached retrains: domain f / per item):\n")
    print("| index | bytes / example | kept energy / effective dims | raw: Pearson [worst] | Spearman | top-100 overlap "
          "| exact/raw scale | LDS domain | LDS item | checked: Pearson [worst] | Spearman | top-100 overlap | LDS item "
          "| score 1 measurement (s) | score Q queries (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    exact_lds = lds["exact (instance pass)"]
    print(f"| exact (instance pass) | {tracked * 4} (not stored) | 1 / 1 | 1 | 1 | 1 | 1 | {exact_lds[0]} | {exact_lds[1]} "
          f"| – | – | – | – | {one_instance_seconds:.2f} | {pairwise_seconds:.2f} |")
    for label, kind, rank, dtype, size, agree, seconds_one, seconds_q, energy, effective, checked in rows:
        kept = f"{energy:.3f} / {effective:.3f}" if energy is not None else "–"
        checked_cells = (f"{checked['pearson']:.3f} [{checked['pearson_min']:.3f}] | {checked['spearman']:.3f} | "
                         f"{checked['overlap']:.2f} | {lds[label + ' checked'][1]}") if checked else "– | – | – | –"
        print(f"| {label} | {size} | {kept} | {agree['pearson']:.3f} [{agree['pearson_min']:.3f}] | "
              f"{agree['spearman']:.3f} | {agree['overlap']:.2f} | {agree['slope']:.2f} | {lds[label][0]} | {lds[label][1]} | "
              f"{checked_cells} | {seconds_one:.2f} | {seconds_q:.2f} |")
    print(f"\nChecked: {check_n} sampled examples (seed {check_seed}, stratified by domain) calibrate each measurement's "
          f"index scores and, with its {exact_top} highest and {exact_top} lowest, are scored exactly ({check_examples} "
          "examples for the first query).")

    print("\nCost of one new measurement (measurement pass + v = H⁻¹∇f, then scores), in epoch-equivalents:\n")
    print(f"| new measurement | instance pass over the training set | from the index ({default_dtype}, k = "
          f"{default_rank}), raw | with the exact check |")
    print("|---|---|---|---|")
    default = next((r for r in rows if r[1] == "eigen" and r[2] == default_rank and r[3] == default_dtype), rows[0])
    _, chosen = checked_scores(default_raw_one(default[0]), exact_one, sample, exact_top)
    subset = list(ctx.data.batches(_by_length([ctx.data.train_features[i] for i in chosen]), ctx.batch_size))
    check_seconds = min(exact_scores(model, subset, one, modules, n)[1] for _ in range(args.repeats))
    print(f"| one domain f (its measurement pass: {measure_seconds:.2f} s; the check pass over {len(chosen)} of {n} "
          f"examples: {check_seconds:.2f} s) | {(measure_seconds + one_instance_seconds) / epoch:.2f} | "
          f"{(measure_seconds + default[6]) / epoch:.3f} | {(measure_seconds + default[6] + check_seconds) / epoch:.3f} |")
    print(f"| {len(ctx.query_indices)} per-item queries (their query directions: {query_seconds:.2f} s) | "
          f"{(query_seconds + pairwise_seconds) / epoch:.2f} | {(query_seconds + default[7]) / epoch:.3f} | – |")
    plain = min(plain_seconds)
    print(f"\nInstance pass with the {len(known.names)} known measurements: {plain:.2f} s without the index (fastest "
          f"of {len(plain_seconds)}); writing the index in the same pass takes (median over {args.repeats} pairs, each "
          "index pass timed right after a pass without it): "
          + ", ".join(f"{kind} k={rank} {dtype} {ratio:.2f}x" for (kind, rank), (ratio, dtype) in write_seconds.items()))

    print(f"\nEstimated index size per example at the default k = {default_rank}, {default_dtype} (the tracked MLP "
          "projections; the planner's meta model):\n")
    print("| model | tracked modules | index / example | 100k examples | full gradient / example (16-bit) |")
    print("|---|---|---|---|---|")
    for name, config in MODELS.items():
        size = model_index_bytes(config, default_rank, default_dtype)
        print(f"| {name} | {size['modules']} | {size['bytes_per_example'] / 1024:.0f} KiB | "
              f"{size['bytes_per_example'] * 100_000 / 1e9:.1f} GB | {size['gradient_bytes_per_example'] / 1e9:.1f} GB |")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
