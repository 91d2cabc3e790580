"""An LDS run end to end: base model, full model, D_correct, retrains, scores, LDS, removal check.

Layout of ``<out>/<setting digest>/`` (everything is reused when present, so a run resumes):

* ``setting.json``          the :class:`LDSSetting` (the digest is its hash)
* ``cache/``                the generated demo and its tokenizer
* ``base.pt``, ``full.pt``  the pre-trained base weights and the fully fine-tuned model's weights
* ``correctness.jsonl``     greedy verdicts of the full model on every evaluation item
* ``retrains/``             one JSON per finished retrain (:mod:`infra_pl.lds.subsets`)
* ``scores/<method>.npy``   the [Q, N] per-item scores of each method (:mod:`infra_pl.lds.scoring`)
* ``results.json``, ``results.md``  the tables of the last call
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from infra_pl.eval.dcorrect import select_measurement_sets
from infra_pl.lds.config import LDSSetting
from infra_pl.lds.correctness import correctness_rows
from infra_pl.lds.data import LDSData, load_lds_data
from infra_pl.lds.kronfluence_ref import kronfluence_available
from infra_pl.lds.metrics import (
    bootstrap_picks,
    lds_draws,
    lds_per_measurement,
    mean_interval,
    percentile_interval,
    spearman,
    subset_predictions,
)
from infra_pl.lds.scoring import (
    DEFAULT_METHODS,
    ScoringContext,
    check_methods,
    method_pairwise,
)
from infra_pl.lds.subsets import (
    RetrainJob,
    RetrainRecord,
    RetrainStore,
    draw_subsets,
    run_retrains,
    subset_digest,
)
from infra_pl.lds.training import build_model, item_log_likelihoods, train

Log = Callable[[str], None]


@dataclass(frozen=True)
class LDSOptions:
    """What to measure on a setting (none of it changes a retrain's outcome).

    Args:
        n_subsets: M, the number of random subsets retrained for the LDS.
        alpha: subset size as a fraction of the training set.
        subset_seed: seed of the subset draws (and of the random removal sets).
        train_seed: training seed (batch order) of the LDS retrains and of the scored full model.
        methods: attribution methods compared on the same retrains (see ``scoring.METHOD_DESCRIPTIONS``).
        topk: k values of the removal check (empty: no removal check).
        topk_method: the method whose top-k examples are removed.
        topk_seeds: training seeds of the removal retrains (and of the matching full-set baselines).
        topk_controls: what the top-k removal is compared with: ``"random"`` (k random examples)
            and/or ``"domain-random"`` (k random examples of the measurement's own domain, which
            separates "finds the right domain" from "finds the right examples within it").
        noise_subsets: retrain this many of the LDS subsets a second time with training seed
            ``train_seed + 1``; the seed-to-seed Spearman of f is the noise ceiling of the LDS.
        n_bootstrap: bootstrap resamples of the retrains for the LDS interval.
        score_batch_size: batch size of the factor and scoring passes.
        sandbox_workers: parallel sandboxed runs when checking generated code.
    """

    n_subsets: int = 20
    alpha: float = 0.5
    subset_seed: int = 0
    train_seed: int = 0
    methods: tuple[str, ...] = DEFAULT_METHODS
    topk: tuple[int, ...] = (10, 25, 50)
    topk_method: str = "ekfac"
    topk_seeds: tuple[int, ...] = (0, 1, 2)
    topk_controls: tuple[str, ...] = ("random",)
    noise_subsets: int = 0
    n_bootstrap: int = 2000
    score_batch_size: int = 32
    sandbox_workers: int = 2

    def __post_init__(self) -> None:
        if self.n_subsets < 3:
            raise ValueError(f"n_subsets must be >= 3 (a rank correlation needs them), got {self.n_subsets}")
        check_methods(self.methods)
        check_methods([self.topk_method])
        if self.topk and not self.topk_seeds:
            raise ValueError("topk_seeds must name at least one training seed when topk is set")
        unknown = [c for c in self.topk_controls if c not in ("random", "domain-random")]
        if unknown or not self.topk_controls:
            raise ValueError(f"topk_controls must be a non-empty subset of ('random', 'domain-random'), got {self.topk_controls}")
        if any(k < 1 for k in self.topk):
            raise ValueError(f"every k must be >= 1, got {self.topk}")
        if not 0 <= self.noise_subsets <= self.n_subsets:
            raise ValueError(f"noise_subsets must be in [0, n_subsets], got {self.noise_subsets}")


@dataclass
class Measurements:
    """The measurement items (rows of every score matrix) grouped by measurement (domain)."""

    query_indices: list[int]  # positions in eval_features
    groups: dict[str, list[int]]  # measurement -> rows of query_indices
    info: dict[str, dict[str, Any]]  # measurement -> MeasurementSet.info() (fallback label, counts)


class LDSExperiment:
    """The stateful pieces of one setting, each computed once and cached under its folder."""

    def __init__(self, setting: LDSSetting, out_dir: str | Path, log: Log = print, sandbox_workers: int = 2):
        self.setting = setting
        self.root = Path(out_dir) / setting.digest()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "setting.json").write_text(json.dumps(setting.to_dict(), indent=2, sort_keys=True) + "\n")
        self.log = log
        self.sandbox_workers = sandbox_workers
        self.store = RetrainStore(self.root / "retrains")
        self.timings: dict[str, float] = {}
        start = time.perf_counter()
        self.data: LDSData = load_lds_data(setting, self.root / "cache")
        self.timings["data"] = time.perf_counter() - start
        self._base_state: dict[str, torch.Tensor] | None = None
        self._full: nn.Module | None = None
        self._measurements: Measurements | None = None
        self._ctx: ScoringContext | None = None

    # ---------------------------------------------------------------- models
    def _fresh_model(self) -> nn.Module:
        return build_model(self.setting, self.data.tokenizer)

    def base_state(self) -> dict[str, torch.Tensor]:
        """Weights every retrain starts from: the seeded init, pre-trained on the pool if configured."""
        if self._base_state is None:
            path = self.root / "base.pt"
            if path.exists():
                self._base_state = torch.load(path, weights_only=True)
            else:
                start = time.perf_counter()
                model = self._fresh_model()
                if self.setting.n_pretrain:
                    self.log(f"pre-training the base model: {self.setting.pretrain.steps} steps on "
                             f"{len(self.data.pretrain_features)} pool examples")
                    train(model, self.data.pretrain_features, self.setting.pretrain, 0, self.data.pad_token_id)
                self._base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                torch.save(self._base_state, path)
                self.timings["base"] = time.perf_counter() - start
        return self._base_state

    def _model_from_base(self) -> nn.Module:
        model = self._fresh_model()
        model.load_state_dict(self.base_state())
        return model

    def train_on(self, indices: Sequence[int], seed: int) -> nn.Module:
        """A model fine-tuned from the base on the training examples at ``indices`` (in index order)."""
        model = self._model_from_base()
        features = [self.data.train_features[i] for i in sorted(indices)]
        losses = train(model, features, self.setting.finetune, seed, self.data.pad_token_id)
        model.final_loss = float(np.mean(losses[-10:]))  # type: ignore[attr-defined]
        model.steps_taken = len(losses)  # type: ignore[attr-defined]
        return model

    def full_model(self, seed: int) -> nn.Module:
        """The model trained on the full training set (the one attribution explains), cached."""
        if self._full is None:
            path = self.root / f"full_seed{seed}.pt"
            if path.exists():
                model = self._fresh_model()
                model.load_state_dict(torch.load(path, weights_only=True))
                model.eval()
            else:
                self.base_state()
                start = time.perf_counter()
                self.log(f"fine-tuning on the full training set ({len(self.data.train_features)} examples)")
                model = self.train_on(range(len(self.data.train_features)), seed)
                torch.save(model.state_dict(), path)
                self.timings["full"] = time.perf_counter() - start
            self._full = model
        return self._full

    # ----------------------------------------------------------- measurement
    def measurements(self, seed: int) -> Measurements:
        """D_correct per domain from the full model's greedy answers (or the labelled fallback)."""
        if self._measurements is None:
            path = self.root / "correctness.jsonl"
            if path.exists():
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            else:
                start = time.perf_counter()
                self.log(f"greedy answers of the full model on {len(self.data.eval_features)} evaluation items")
                rows = correctness_rows(self.full_model(seed), self.data, self.setting.max_new_tokens, self.sandbox_workers)
                path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                self.timings["correctness"] = time.perf_counter() - start
            s = self.setting
            sets = select_measurement_sets(
                self.data.eval_examples, rows, n=s.n_correct, min_correct=s.min_correct, seed=s.measurement_seed,
                fallback=s.fallback,
            )
            query: list[int] = []
            groups: dict[str, list[int]] = {}
            for name, mset in sets.items():
                groups[name] = list(range(len(query), len(query) + len(mset.indices)))
                query.extend(mset.indices)
            self._measurements = Measurements(query, groups, {n: m.info() for n, m in sets.items()})
        return self._measurements

    def record_of(self, model: nn.Module, indices: Sequence[int], seed: int, seconds: float) -> RetrainRecord:
        m = self._measurements
        assert m is not None, "measurements() must run before retrains"
        items = item_log_likelihoods(model, self.data.batches(self.data.eval_features_at(m.query_indices), 100))
        return RetrainRecord(
            subset=subset_digest(indices),
            seed=int(seed),
            n_examples=len(indices),
            item_log_likelihood=[float(x) for x in items],
            f={name: float(items[rows].mean()) for name, rows in m.groups.items()},
            final_loss=float(getattr(model, "final_loss", float("nan"))),
            seconds=seconds,
            # a fixed step count, never a wall-clock budget; a full model read back from disk was trained
            # by the same recipe
            steps=int(getattr(model, "steps_taken", self.setting.finetune.steps)),
        )

    def retrain(self, indices: Sequence[int], seed: int) -> RetrainRecord:
        start = time.perf_counter()
        model = self.train_on(indices, seed)
        return self.record_of(model, indices, seed, time.perf_counter() - start)

    def ensure_full_record(self, seed: int) -> None:
        """The full model's own measurements, stored like any retrain (so it is not trained twice)."""
        everything = list(range(len(self.data.train_features)))
        if self.store.get(everything, seed) is None:
            self.store.put(self.record_of(self.full_model(seed), everything, seed, self.timings.get("full", float("nan"))))

    # ---------------------------------------------------------------- scores
    def scores(self, method: str, seed: int, batch_size: int = 32) -> np.ndarray:
        """[Q, N] per-item scores of ``method`` on the full model (cached as .npy)."""
        path = self.root / "scores" / f"{method}.npy"
        if path.exists():
            return np.load(path)
        if self._ctx is None:
            self._ctx = ScoringContext(self.full_model(seed), self.data, self.measurements(seed).query_indices, batch_size)
        start = time.perf_counter()
        values = method_pairwise(method, self._ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, values)
        self.timings[f"scores:{method}"] = time.perf_counter() - start
        self.log(f"scores of {method}: {time.perf_counter() - start:.1f} s")
        return values


# ----------------------------------------------------------------------------------- the analysis
def _domain_scores(item_scores: np.ndarray, groups: dict[str, list[int]]) -> np.ndarray:
    """Score for each measurement f = mean_q log p(q): the mean of its items' rows ([D, N])."""
    return np.stack([item_scores[rows].mean(axis=0) for rows in groups.values()])


def _masks(subsets: Sequence[Sequence[int]], n: int) -> np.ndarray:
    masks = np.zeros((len(subsets), n))
    for j, subset in enumerate(subsets):
        masks[j, list(subset)] = 1.0
    return masks


def lds_table(
    item_scores: dict[str, np.ndarray],
    records: Sequence[RetrainRecord],
    subsets: Sequence[Sequence[int]],
    groups: dict[str, list[int]],
    n_train: int,
    n_bootstrap: int = 2000,
    reference: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per method: LDS of the per-domain measurements (mean and each) and of the per-item ones.

    Every method is scored on the same bootstrap resamples of the retrains, so the difference
    ``reference − method`` gets a paired interval (``vs_reference``, ``item_vs_reference``): the
    retrain-to-retrain noise that all methods share cancels out of it.
    """
    masks = _masks(subsets, n_train)
    measured_domain = np.array([[r.f[name] for r in records] for name in groups])  # [D, M]
    measured_items = np.array([r.item_log_likelihood for r in records]).T  # [Q, M]
    picks = bootstrap_picks(len(records), n_bootstrap)
    raw: dict[str, dict[str, Any]] = {}
    for method, scores in item_scores.items():
        domain_pred = subset_predictions(_domain_scores(scores, groups), masks)
        item_pred = subset_predictions(scores, masks)
        per_domain = lds_per_measurement(domain_pred, measured_domain)
        per_item = lds_per_measurement(item_pred, measured_items)
        raw[method] = {
            "domain": (float(np.nanmean(per_domain)), lds_draws(domain_pred, measured_domain, picks), per_domain),
            "item": (float(np.nanmean(per_item)), lds_draws(item_pred, measured_items, picks), per_item),
        }
    reference = reference if reference in raw else next(iter(raw), None)
    table: dict[str, dict[str, Any]] = {}
    for method, parts in raw.items():
        (d_point, d_draws, per_domain), (i_point, i_draws, per_item) = parts["domain"], parts["item"]
        row: dict[str, Any] = {
            "lds": percentile_interval(d_point, d_draws).to_dict(),
            "per_measurement": {name: float(v) for name, v in zip(groups, per_domain)},
            "item_lds": percentile_interval(i_point, i_draws).to_dict(),
            "item_lds_per_measurement": {name: float(np.nanmean(per_item[rows])) for name, rows in groups.items()},
            "reference": reference,
        }
        if reference is not None and method != reference:
            (rd_point, rd_draws, _), (ri_point, ri_draws, _) = raw[reference]["domain"], raw[reference]["item"]
            row["vs_reference"] = percentile_interval(rd_point - d_point, rd_draws - d_draws).to_dict()
            row["item_vs_reference"] = percentile_interval(ri_point - i_point, ri_draws - i_draws).to_dict()
        table[method] = row
    return table


def noise_ceiling(first: Sequence[RetrainRecord], second: Sequence[RetrainRecord], groups: dict[str, list[int]]) -> dict[str, Any]:
    """Seed-to-seed Spearman of f over the same subsets (two training seeds): how predictable f is."""
    a = np.array([[r.f[name] for r in first] for name in groups])
    b = np.array([[r.f[name] for r in second] for name in groups])
    ia = np.array([r.item_log_likelihood for r in first]).T
    ib = np.array([r.item_log_likelihood for r in second]).T
    per = spearman(a, b)
    return {
        "n_subsets": len(first),
        "per_measurement": {name: float(v) for name, v in zip(groups, per)},
        "mean": float(np.nanmean(per)),
        "item_mean": float(np.nanmean(spearman(ia, ib))),
    }


def _drops(
    plan: Sequence[tuple[str, int, str, int, list[int]]],
    reduced: Sequence[RetrainRecord],
    full: dict[int, RetrainRecord],
    kind: str,
    k: int,
    planned_for: str,
    measured: str,
) -> list[float]:
    """f(full set) − f(reduced set) of measurement ``measured``, per seed, for the planned removals."""
    return [
        full[seed].f[measured] - record.f[measured]
        for (p_kind, p_k, p_for, seed, _), record in zip(plan, reduced)
        if p_kind == kind and p_k == k and p_for == planned_for
    ]


def removal_check(
    exp: LDSExperiment,
    options: LDSOptions,
    domain_scores: np.ndarray,
    groups: dict[str, list[int]],
) -> list[dict[str, Any]]:
    """Remove the top-k examples by score (per measurement) vs k random ones, retrain, compare f drops.

    Drops are paired by training seed: Δf = f(full set, seed s) − f(reduced set, seed s). Random
    set r is drawn from (subset_seed, k, r) and trained with the r-th seed.
    """
    n = len(exp.data.train_features)
    everything = list(range(n))
    jobs: list[RetrainJob] = [RetrainJob(f"full set, seed {s}", everything, s) for s in options.topk_seeds]
    plan: list[tuple[str, int, str, int, list[int]]] = []  # (kind, k, measurement, seed, kept)
    same_domain: dict[tuple[int, str], int] = {}  # removed top-k examples from the measurement's own domain
    for k in options.topk:
        if k >= n:
            raise ValueError(f"k={k} removes the whole training set of {n}")
        for row, name in enumerate(groups):
            top = set(np.argsort(-domain_scores[row], kind="stable")[:k].tolist())
            kept = [i for i in everything if i not in top]
            same_domain[(k, name)] = sum(exp.data.train_examples[i]["domain"] == name for i in top)
            for s in options.topk_seeds:
                plan.append(("top", k, name, s, kept))
        for r, s in enumerate(options.topk_seeds):
            if "random" in options.topk_controls:
                removed = set(np.random.default_rng([options.subset_seed, 7919, k, r]).choice(n, size=k, replace=False).tolist())
                plan.append(("random", k, "*", s, [i for i in everything if i not in removed]))
            if "domain-random" in options.topk_controls:
                for row, name in enumerate(groups):
                    pool = [i for i in everything if exp.data.train_examples[i]["domain"] == name]
                    if len(pool) < k:
                        raise ValueError(f"domain-random removal of k={k} needs {k} '{name}' examples, there are {len(pool)}")
                    pick = np.random.default_rng([options.subset_seed, 7927, k, r, row]).choice(
                        len(pool), size=k, replace=False
                    )
                    removed = {pool[int(j)] for j in pick}
                    plan.append(("domain-random", k, name, s, [i for i in everything if i not in removed]))
    jobs += [RetrainJob(f"remove {kind} {k} ({name})", kept, s) for kind, k, name, s, kept in plan]
    for s in options.topk_seeds:
        if s == options.train_seed:
            exp.ensure_full_record(s)
    records = run_retrains(jobs, exp.store, exp.retrain, exp.log)
    full = {job.seed: rec for job, rec in zip(jobs, records) if len(job.indices) == n}
    reduced = records[len(options.topk_seeds) :]
    rows: list[dict[str, Any]] = []
    for k in options.topk:
        for name in groups:
            top = _drops(plan, reduced, full, "top", k, name, name)
            row: dict[str, Any] = {
                "measurement": name,
                "k": k,
                "top_same_domain": same_domain[(k, name)],
                "top_drop": mean_interval(top).to_dict(),
                "top_drops": top,
            }
            for control, key, measurement in (("random", "random", "*"), ("domain-random", "domain_random", name)):
                if control in options.topk_controls:
                    other = _drops(plan, reduced, full, control, k, measurement, name)
                    row[f"{key}_drop"] = mean_interval(other).to_dict()
                    row[f"{key}_drops"] = other
                    row[f"difference_{key}"] = mean_interval([a - b for a, b in zip(top, other)]).to_dict()
            rows.append(row)
    return rows


def run_lds(
    setting: LDSSetting,
    options: LDSOptions = LDSOptions(),
    out_dir: str | Path = "benchmarks/results/lds",
    log: Log = print,
) -> dict[str, Any]:
    """Run (or resume) the whole LDS benchmark on ``setting``; returns the results and writes them.

    Results (also in ``<out_dir>/<digest>/results.json`` and ``results.md``): the measurement
    sets (with their fallback label), per-method LDS with bootstrap 95% intervals (per domain
    measurement and per evaluation item), the optional noise ceiling, the top-k removal table,
    and wall-clock timings.
    """
    start = time.perf_counter()
    exp = LDSExperiment(setting, out_dir, log, options.sandbox_workers)
    seed = options.train_seed
    exp.full_model(seed)
    measurements = exp.measurements(seed)
    for name, info in measurements.info.items():
        label = " -- FALLBACK: reference answers of all items" if info["fallback"] else ""
        log(f"measurement {name}: {info['n_used']} items ({info['n_available']} answered correctly){label}")
    exp.ensure_full_record(seed)

    n = len(exp.data.train_features)
    subsets = draw_subsets(n, options.alpha, options.n_subsets, options.subset_seed)
    t0 = time.perf_counter()
    records = run_retrains(
        [RetrainJob(f"LDS subset {j}", s, seed) for j, s in enumerate(subsets)], exp.store, exp.retrain, log
    )
    exp.timings["lds retrains"] = time.perf_counter() - t0

    methods = list(options.methods)
    skipped: dict[str, str] = {}
    if "kronfluence-ekfac" in methods and not kronfluence_available():
        methods.remove("kronfluence-ekfac")
        skipped["kronfluence-ekfac"] = "kronfluence is not installed"
    needed = list(dict.fromkeys(methods + [options.topk_method] if options.topk else methods))
    item_scores = {m: exp.scores(m, seed, options.score_batch_size) for m in needed}
    table = lds_table(
        {m: item_scores[m] for m in methods}, records, subsets, measurements.groups, n, options.n_bootstrap,
        reference=options.topk_method,
    )

    noise = None
    if options.noise_subsets:
        t0 = time.perf_counter()
        second = run_retrains(
            [RetrainJob(f"noise subset {j}", s, seed + 1) for j, s in enumerate(subsets[: options.noise_subsets])],
            exp.store, exp.retrain, log,
        )
        exp.timings["noise retrains"] = time.perf_counter() - t0
        noise = noise_ceiling(records[: options.noise_subsets], second, measurements.groups)

    removal: list[dict[str, Any]] = []
    if options.topk:
        t0 = time.perf_counter()
        removal = removal_check(exp, options, _domain_scores(item_scores[options.topk_method], measurements.groups), measurements.groups)
        exp.timings["removal retrains"] = time.perf_counter() - t0

    exp.timings["total (this call)"] = time.perf_counter() - start
    results = {
        "setting": setting.to_dict(),
        "digest": setting.digest(),
        "options": asdict(options),
        "n_train": n,
        "measurements": measurements.info,
        "methods_skipped": skipped,
        "lds": table,
        "noise_ceiling": noise,
        "removal": removal,
        "retrain_seconds_median": float(np.median([r.seconds for r in records])),
        "timings": exp.timings,
        "torch_threads": torch.get_num_threads(),
    }
    (exp.root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from infra_pl.lds.report import results_markdown

    (exp.root / "results.md").write_text(results_markdown(results))
    return results
