"""How much the training ranking depends on which evaluation items form D_correct (paper App. C).

The instance score of a measurement is the mean over its evaluation items (Eq. 6): every table of
the report is conditional on one draw of D_correct. The bootstrap intervals of the report resample
*training examples*; they say nothing about that draw. With per-query scores
(``pairwise_scores.parquet``, one row per evaluation item x training example) the draw can be
measured directly: rank the training set by the mean over a random n-subset of the items and
compare with the ranking from all of them, as Table 3 does (n = 10, 25, 50 against n = 100).

* :func:`dcorrect_robustness` - that comparison per measurement and n, over several random draws.
* :func:`robustness_wide` - the Table 3 view (measurement x n).
* :func:`ci_coverage_caption` - the sentence every CI caption should carry: what the intervals
  cover, what they do not, and (when measured) how large the D_correct part is.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from infra_pl.report.validate import ReportInputError, require_columns, require_finite

__all__ = ["PAIRWISE_COLUMNS", "ci_coverage_caption", "dcorrect_robustness", "robustness_wide"]

PAIRWISE_COLUMNS = ("query_id", "query_domain", "train_id", "score")
_COLUMNS = [
    "measurement", "kind", "n", "n_available", "n_train", "draws", "measurable", "note",
    "spearman_mean", "spearman_min", "spearman_max",
    "pearson_mean", "pearson_min", "pearson_max",
    "top_k", "jaccard_top_k_mean", "jaccard_top_k_min", "jaccard_top_k_max",
    "split_spearman_mean", "split_spearman_min", "split_spearman_max",
]
_WHAT = "pairwise scores"
NO_DOMAIN = "all queries"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (no ranking to compare)."""
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else math.nan


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy(dtype=float)


def _top(values: np.ndarray, k: int) -> set[int]:
    """Indices of the k largest values (ties broken by position, so the set is deterministic)."""
    return set(np.argsort(-values, kind="stable")[:k].tolist())


def _matrix(part: pd.DataFrame, measurement: str) -> tuple[np.ndarray, list[Any]]:
    """Queries x training examples; every query must score every training example exactly once."""
    dup = part.duplicated(["query_id", "train_id"])
    if dup.any():
        raise ReportInputError(f"{_WHAT}: measurement '{measurement}' has {int(dup.sum())} duplicated (query_id, train_id) row(s)")
    wide = part.pivot(index="query_id", columns="train_id", values="score")
    if wide.isna().any().any():
        holes = int(wide.isna().to_numpy().sum())
        raise ReportInputError(
            f"{_WHAT}: measurement '{measurement}' lacks {holes} (query, training example) score(s): every query must "
            "score the same training examples; re-run or finish the pairwise pass"
        )
    return wide.to_numpy(dtype=float), list(wide.columns)


def _stats(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or np.isnan(arr).all():
        return math.nan, math.nan, math.nan
    return float(np.nanmean(arr)), float(np.nanmin(arr)), float(np.nanmax(arr))


def dcorrect_robustness(
    pairwise_df: pd.DataFrame,
    sizes: Sequence[int] = (10, 25, 50),
    draws: int = 5,
    seed: int = 0,
    top_k: int = 100,
    measurements: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Agreement of the training ranking from n random evaluation items with the ranking from all.

    For each measurement (the ``query_domain`` of the queries; one group named ``all queries``
    when the domain is missing) and each n in ``sizes`` below the number of items available, draw
    ``draws`` random n-subsets of the items without replacement, score every training example by
    its mean over the subset (the instance score Eq. 6 would give with that D_correct) and compare
    with the mean over all items (the reference, the score the report uses):

    * ``spearman_*`` - Spearman correlation, i.e. the Pearson correlation of the *rankings*, the
      statistic of the paper's Table 3; mean, min and max over the draws.
    * ``pearson_*`` - Pearson correlation of the scores themselves.
    * ``jaccard_top_k_*`` - overlap |A ∩ B| / |A ∪ B| of the top-``top_k`` training examples
      (the proponents the report shows), with ``top_k`` capped at 10% of the training set so the
      overlap is never trivially the whole set (column ``top_k`` holds the k used).
    * ``split_spearman_*`` - Spearman correlation between two *disjoint* n-subsets (only where 2n
      items exist). The subset is part of the reference, which inflates the first correlations
      towards 1 as n nears the total (at n = 50 of 100 half the reference is the subset itself);
      two disjoint draws measure how far two independent D_correct of size n disagree.

    A size at or above the number of items cannot be measured (the subset would be the reference):
    it gets a row with ``measurable`` False, a ``note`` saying why and NaN statistics, and is listed
    in ``attrs["not_measurable"]``. One ``kind == "reference"`` row per measurement (n = all items,
    correlations 1) completes the Table 3 layout. Draws come from
    ``numpy.random.default_rng([seed, crc32(measurement)])``: deterministic given ``seed``, and a
    measurement's draws do not depend on which other measurements exist.
    """
    if int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    bad = [n for n in sizes if int(n) != n or n < 1]
    if bad:
        raise ValueError(f"sizes must be positive integers, got {bad}")
    require_columns(pairwise_df, PAIRWISE_COLUMNS, _WHAT)
    require_finite(pairwise_df, ["score"], _WHAT, id_column="train_id")
    if pairwise_df.empty:
        raise ReportInputError(f"{_WHAT}: the table is empty")
    domain = pairwise_df["query_domain"].astype(object).where(pairwise_df["query_domain"].notna(), NO_DOMAIN).astype(str)
    frame = pairwise_df.assign(_m=domain)
    names = list(dict.fromkeys(frame["_m"]))
    if measurements is not None:
        wanted = [measurements] if isinstance(measurements, str) else list(measurements)
        wanted = [m.removeprefix("score_") for m in wanted]
        absent = sorted(set(wanted) - set(names))
        if absent:
            raise ReportInputError(f"{_WHAT}: no queries of measurement(s) {absent}; present: {names}")
        names = list(dict.fromkeys(wanted))

    rows: list[dict[str, Any]] = []
    not_measurable: list[tuple[str, int]] = []
    for name in names:
        scores, _ = _matrix(frame[frame["_m"] == name], name)
        n_queries, n_train = scores.shape
        k = max(1, min(int(top_k), int(math.ceil(0.1 * n_train))))
        reference = scores.mean(axis=0)
        reference_ranks = _ranks(reference)
        reference_top = _top(reference, k)
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
        base = {"measurement": name, "n_available": n_queries, "n_train": n_train, "top_k": k}
        for n in sorted(dict.fromkeys(int(s) for s in sizes)):
            row = {**base, "kind": "subset", "n": n, "draws": draws}
            if n >= n_queries:
                row.update({"measurable": False, "draws": 0,
                            "note": f"not measurable: only {n_queries} item(s) available; n must be below that to differ from the reference"})
                not_measurable.append((name, n))
                rows.append(row)
                continue
            spearman, pearson, jaccard, split = [], [], [], []
            for _ in range(int(draws)):
                order = rng.permutation(n_queries)
                subset = scores[order[:n]].mean(axis=0)
                spearman.append(_corr(_ranks(subset), reference_ranks))
                pearson.append(_corr(subset, reference))
                top = _top(subset, k)
                jaccard.append(len(top & reference_top) / len(top | reference_top))
                if 2 * n <= n_queries:
                    other = scores[order[n:2 * n]].mean(axis=0)
                    split.append(_corr(_ranks(subset), _ranks(other)))
            row.update({"measurable": True, "note": "" if split else f"no disjoint pair: 2n > {n_queries} items"})
            for key, values in (("spearman", spearman), ("pearson", pearson), ("jaccard_top_k", jaccard), ("split_spearman", split)):
                row[f"{key}_mean"], row[f"{key}_min"], row[f"{key}_max"] = _stats(values)
            rows.append(row)
        ref = {**base, "kind": "reference", "n": n_queries, "draws": 1, "measurable": True,
               "note": "reference: all items (the score the report uses)"}
        for key in ("spearman", "pearson", "jaccard_top_k"):
            ref[f"{key}_mean"] = ref[f"{key}_min"] = ref[f"{key}_max"] = 1.0
        rows.append(ref)
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table["measurable"] = table["measurable"].astype(bool)
    table["note"] = table["note"].fillna("")
    table.attrs.update({"not_measurable": not_measurable, "seed": seed, "draws": draws, "sizes": list(sizes)})
    return table


def robustness_wide(table: pd.DataFrame, stat: str = "spearman_mean") -> pd.DataFrame:
    """Table 3's layout: one row per measurement, one column per n (``n=10``, ``n=25``, ..., ``all``).

    Cells hold ``stat``; sizes that were not measurable are NaN (shown as a dash in the reports).
    """
    require_columns(table, ["measurement", "kind", "n", stat], "robustness table")
    out: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for _, row in table.iterrows():
        label = "all" if row["kind"] == "reference" else f"n={int(row['n'])}"
        if label not in columns:
            columns.append(label)
        out.setdefault(str(row["measurement"]), {})[label] = row[stat]
    subset_columns = sorted((c for c in columns if c != "all"), key=lambda c: int(c[2:]))
    wide = pd.DataFrame.from_dict(out, orient="index")
    wide = wide.reindex(columns=[*subset_columns, *(["all"] if "all" in columns else [])])
    wide.index.name = "measurement"
    return wide.reset_index()


def _fisher_clause(fisher: str | None) -> tuple[str | None, str | None]:
    """(what is not covered, a note) for the Fisher of the EK-FAC fit."""
    if fisher is None:
        return "the labels sampled for the EK-FAC Fisher (when it samples them)", None
    if str(fisher) == "empirical":
        return None, "The EK-FAC Fisher uses the training labels (fisher: empirical), so it samples no labels."
    return f"the labels sampled from the model for the EK-FAC Fisher (fisher: {fisher})", None


def _measured_clause(robustness: pd.DataFrame) -> str:
    parts = []
    for name, part in robustness.groupby("measurement", sort=False):
        subset = part[(part["kind"] == "subset") & part["measurable"]]
        available = int(part["n_available"].iloc[0])
        if subset.empty:
            parts.append(f"{name}: not measurable (only {available} items)")
            continue
        cells = [f"n = {int(r['n'])}: \u03c1 {r['spearman_mean']:.2f} ({r['spearman_min']:.2f}\u2013{r['spearman_max']:.2f})"
                 for _, r in subset.iterrows()]
        parts.append(f"{name} ({available} items): " + ", ".join(cells))
    draws = int(robustness["draws"].max()) if "draws" in robustness else 0
    return (
        "The D_correct draw is measured in the D_correct robustness table (paper Table 3): Spearman correlation of the "
        f"training ranking from n random items with the ranking from all items, mean and range over {draws} draws: "
        + "; ".join(parts) + "."
    )


def ci_coverage_caption(
    robustness: pd.DataFrame | None = None,
    ci: float = 0.95,
    n_boot: int | None = None,
    fisher: str | None = None,
) -> str:
    """The sentence to append to every CI caption: which randomness the interval covers and which not.

    Covered: the resampling of training examples (which examples a group happens to hold). Not
    covered: the draw of D_correct, the Fisher's sampled labels, the training seed. When a
    :func:`dcorrect_robustness` table is given its numbers are quoted as the measured size of the
    first; without one the caption says it was not measured and how to measure it. ``fisher`` is
    the EK-FAC fit's setting ("true" samples labels, "empirical" does not); None keeps it generic.
    """
    resamples = f", {n_boot} resamples" if n_boot else ""
    fisher_missing, fisher_note = _fisher_clause(fisher)
    missing = ["the draw of D_correct (which evaluation items define f)"]
    if fisher_missing:
        missing.append(fisher_missing)
    missing.append("the training seed of the fine-tuned model")
    sentences = [
        f"Intervals are {ci:.0%} percentile-bootstrap intervals over resampled training examples{resamples}: they "
        "cover which examples fall in each group, and nothing that would change the scores themselves.",
        "They do not cover " + ", ".join(missing[:-1]) + " or " + missing[-1] + ".",
    ]
    if fisher_note:
        sentences.append(fisher_note)
    others = "the effect of the Fisher label draw and of the training seed" if fisher_missing else "the effect of the training seed"
    if robustness is not None and len(robustness):
        sentences.append(_measured_clause(robustness))
        sentences.append(f"{others[0].upper()}{others[1:]} is not measured (it would take repeated EK-FAC fits or trainings).")
    else:
        sentences.append(
            "The D_correct draw was not measured in this run (it needs per-query scores: InfluenceScores(pairwise=True)); "
            f"nor is {others} (it would take repeated EK-FAC fits or trainings)."
        )
    return " ".join(sentences)
