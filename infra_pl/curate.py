"""Influence-guided curation: turn instance scores into a new training mixture.

Input: the ``instance_scores.parquet`` that ``infra-pl attribute`` wrote for *this* training set
(one row per example: ``id``, ``domain``, ``difficulty``, ``n_target_tokens``,
``score_<measurement>``). Output: a training set (and, for ``reweight``, sampling weights), plus
the selected ids and the rule that produced them, written beside the run.

What each ``mode`` does (all deterministic from ``seed``):

``top``
    Keep the highest-scored ``fraction`` of the training set. The result is a *subset*
    (``fraction × N`` examples): the scores exist only for the scored training set, so nothing
    can be added back from a pool. Fits are step-based, so a curated run still takes the same
    number of optimizer steps (it sees its examples more often).
``drop``
    Drop the lowest-scored ``fraction`` of each domain; with ``drop_only_negative`` (default)
    only examples whose score is below zero are dropped, so fewer may go.
``reweight``
    Keep every example; sample with weights ``exp(beta · z)`` (``z``: the score standardised within
    the domain, clipped to ±3), scaled to average 1 within each domain, so the expected domain mix
    (and the epoch size) is unchanged.
``derived_flip``
    The attribute-level rule learned from the aggregates: for each domain, regress the score on
    the difficulty level; a positive slope means "harder examples of this domain help", so that
    domain is resampled toward harder levels from ``data.pool`` (and a negative slope toward
    easier ones), with the same machinery, size and per-domain counts as the paper's fixed flip
    (:mod:`infra_pl.data.flip`). The measured domain × level table, the slopes and the derived
    directions (next to the paper's) go into the rule file.

The score that ranks examples (``by``): one measurement (``math``), a list of them (the mean of
their z-scores, each z-scored over the whole training set) or ``mean_z`` (all measurements in the
file). ``per_token: true`` divides each score by the example's target-token count first.

Quotas (``top`` and ``drop``) fix how many examples each domain keeps, so no domain is wiped out:
``proportional`` (default: every domain keeps ``fraction`` of its own examples, so the domain mix
is unchanged), ``global`` (one ranking across domains; ``min_share`` guarantees each domain that
share of the result), or a mapping ``{domain: count}`` (integers) / ``{domain: share}`` (floats
summing to 1) of the result.

``random: true`` is the control: the same mode and options are applied first, then an equally
large random selection is drawn with the same count per domain (``top``/``drop``), the same number
of random swaps per domain from the pool (``derived_flip``) or the same weights shuffled within
each domain (``reweight``).

Bad input stops before anything trains (:class:`CurationError`, a ``DataError``): a score file
from another dataset (its ids are not this training set's), an unknown measurement, a quota that
cannot be met.
"""

from __future__ import annotations

import collections
import difflib
import hashlib
import json
import math
import random as _random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from infra_pl.data.schema import DataError

MODES = ("top", "drop", "reweight", "derived_flip")
QUOTA_KINDS = ("proportional", "global")
SCORE_PREFIX = "score_"
RULE_FILE = "curation.json"
IDS_FILE = "selected_ids.jsonl"


class CurationError(DataError):
    """Curation input that cannot be used (wrong score file, unknown measurement, impossible quota)."""


@dataclass
class CurateOptions:
    """How to build a training mixture from instance scores (``data.curate`` in YAML).

    Args:
        scores: path of the ``instance_scores.parquet`` written by ``infra-pl attribute`` on this
            same training set (before curation).
        mode: ``top`` (keep the best ``fraction``), ``drop`` (drop the worst ``fraction``),
            ``reweight`` (sampling weights by score, same data) or ``derived_flip`` (the difficulty
            flip with per-domain directions learned from the domain × difficulty score table,
            resampled from ``data.pool``).
        by: the ranking score: a measurement name (``math``), a list of names (mean of their
            z-scores) or ``mean_z`` (all measurements in the file).
        per_token: divide scores by the example's target-token count before ranking.
        fraction: ``top``: share kept; ``drop``: share dropped; ``derived_flip``: share of each
            domain swapped. Ignored by ``reweight``.
        drop_only_negative: ``drop`` removes only examples with a negative score.
        quotas: examples per domain in the result: ``proportional``, ``global`` (with
            ``min_share``), or ``{domain: count}`` / ``{domain: share}``.
        min_share: with ``quotas: global``, the smallest share of the result each domain keeps.
        beta: ``reweight`` strength: weight ∝ exp(beta · z-score within the domain).
        random: the matched random control of this curation (same size and counts per domain).
        seed: tie-breaking and the control's draw; independent of the training seed, so the mixture
            stays fixed while training seeds vary.
        out_dir: where ``curation.json`` (the rule) and ``selected_ids.jsonl`` go; default
            ``<trainer.default_root_dir>/curation``.
        min_abs_t: ``derived_flip``: a domain whose slope has ``|t|`` below this keeps its examples
            (no direction is learned from a slope within noise); 0 follows the sign alone.
    """

    scores: str = ""
    mode: Literal["top", "drop", "reweight", "derived_flip"] = "top"
    by: str | list[str] = "mean_z"
    per_token: bool = False
    fraction: float = 0.5
    drop_only_negative: bool = True
    quotas: str | dict[str, float] = "proportional"
    min_share: float = 0.0
    beta: float = 1.0
    random: bool = False
    seed: int = 0
    out_dir: str | None = None
    min_abs_t: float = 0.0

    def __post_init__(self) -> None:
        if not self.scores:
            raise CurationError("data.curate needs `scores`: the instance_scores.parquet written by `infra-pl attribute`")
        if self.mode not in MODES:
            raise CurationError(f"data.curate mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise CurationError(f"data.curate fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.min_share < 1.0:
            raise CurationError(f"data.curate min_share must be in [0, 1), got {self.min_share}")
        if isinstance(self.quotas, str) and self.quotas not in QUOTA_KINDS:
            raise CurationError(
                f"data.curate quotas must be one of {QUOTA_KINDS} or a {{domain: count|share}} mapping, got {self.quotas!r}"
            )
        if self.mode in ("reweight", "derived_flip") and self.quotas != "proportional":
            raise CurationError(
                f"data.curate quotas apply to modes top and drop; mode {self.mode!r} keeps every domain's count "
                "(remove `quotas`)"
            )
        if isinstance(self.by, list) and not self.by:
            raise CurationError("data.curate by: an empty list names no measurement")

    @property
    def needs_pool(self) -> bool:
        return self.mode == "derived_flip"


@dataclass
class Curation:
    """A curated training set, its sampling weights (``reweight``) and the rule that made it."""

    examples: list[dict[str, Any]]
    weights: list[float] | None
    rule: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per kept example: id, domain, difficulty, score, weight

    def describe(self) -> str:
        r = self.rule
        counts = ", ".join(f"{d}: {r['counts_before'].get(d, 0)} -> {n}" for d, n in r["counts_after"].items())
        what = f"{r['mode']}{' (random control)' if r['random'] else ''} by {r['score']}"
        extra = ""
        if r["mode"] == "derived_flip":
            extra = "; directions " + ", ".join(f"{d}: {v}" for d, v in r["derived"]["directions"].items())
        return f"curation {what}: {r['size_before']} -> {r['size_after']} examples ({counts}){extra}"


# --------------------------------------------------------------------------- score file
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_scores(path: str | Path) -> Any:
    """The instance-score table (pandas), checked for the columns curation reads."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise CurationError(
            f"data.curate scores: {path} does not exist; run `infra-pl attribute` on the uncurated training set first "
            "(it writes <default_root_dir>/attribution/scores/instance_scores.parquet)"
        )
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise CurationError(f"data.curate scores: cannot read {path} as Parquet ({err})") from None
    missing = [c for c in ("id", "domain") if c not in frame.columns]
    if missing or not measurements_in(frame):
        raise CurationError(
            f"data.curate scores: {path} is not an instance-score table (needs id, domain and score_<measurement> "
            f"columns; it has {list(frame.columns)})"
        )
    duplicated = frame["id"][frame["id"].duplicated()].tolist()
    if duplicated:
        raise CurationError(f"data.curate scores: {path} lists {len(duplicated)} id(s) twice, e.g. {duplicated[:3]}")
    return frame


def measurements_in(frame: Any) -> list[str]:
    return [c[len(SCORE_PREFIX):] for c in frame.columns if c.startswith(SCORE_PREFIX)]


def check_ids(train_ids: Sequence[str], frame: Any, path: str | Path) -> None:
    """Every training example has exactly one score and the file scores nothing else."""
    train = set(train_ids)
    scored = set(frame["id"])
    missing, extra = train - scored, scored - train
    if not missing and not extra:
        return
    common = len(train & scored)
    if common == 0:
        raise CurationError(
            f"data.curate scores: {path} scores none of the {len(train)} training examples (its {len(scored)} ids, "
            f"e.g. {sorted(scored)[:2]}, are all from another dataset or data configuration). Use the scores that "
            "`infra-pl attribute` wrote for this training set, without curation or a flip applied"
        )
    raise CurationError(
        f"data.curate scores: {path} does not match the training set: {len(missing)} of {len(train)} training "
        f"examples have no score (e.g. {sorted(missing)[:2]}) and {len(extra)} scored ids are not in it "
        f"(e.g. {sorted(extra)[:2]}). The scores must come from `attribute` on this same training set"
    )


def ranking_score(frame: Any, by: str | Sequence[str], per_token: bool = False, path: str | Path = "") -> tuple[Any, str]:
    """(score per row of ``frame`` as a pandas Series, its label). Unknown measurements are an error."""
    import numpy as np

    available = measurements_in(frame)
    if by == "mean_z":
        names = list(available)
    else:
        names = [by] if isinstance(by, str) else list(by)
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CurationError(
                f"data.curate by: measurement {name!r} is not in {path}{hint}; it has {available}, "
                "or use `mean_z` for the mean of all their z-scores"
            )
    columns = {}
    for name in names:
        values = frame[SCORE_PREFIX + name].astype(float)
        if per_token:
            if "n_target_tokens" not in frame.columns:
                raise CurationError(f"data.curate per_token: {path} has no n_target_tokens column")
            values = values / frame["n_target_tokens"].clip(lower=1).astype(float)
        if not np.isfinite(values.to_numpy()).all():
            raise CurationError(f"data.curate: {path} has non-finite {SCORE_PREFIX}{name} values")
        columns[name] = values
    suffix = " per token" if per_token else ""
    if len(names) == 1 and by != "mean_z":
        return columns[names[0]], f"{names[0]}{suffix}"
    z = []
    for name, values in columns.items():
        sd = float(values.std(ddof=0))
        z.append((values - float(values.mean())) / (sd if sd > 0 else 1.0))
    return sum(z) / len(z), f"mean z-score of {'+'.join(names)}{suffix}"


# --------------------------------------------------------------------------- quotas and selection
def _domain_counts(examples: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(collections.Counter(e["domain"] for e in examples).items()))


def _rank(ids: Sequence[str], score: Mapping[str, float], rng: _random.Random) -> list[str]:
    """Highest score first, ties in a seeded random order."""
    order = list(ids)
    rng.shuffle(order)
    return sorted(order, key=lambda i: -score[i])


def quota_counts(counts: Mapping[str, int], size: int, quotas: str | Mapping[str, float], min_share: float) -> dict[str, int] | None:
    """Examples per domain in a result of ``size`` (``None`` for ``global``: decided by the ranking).

    Raises :class:`CurationError` when a quota cannot be met (more than a domain has, unknown domain).
    """
    if quotas == "global":
        floor = math.ceil(min_share * size)
        short = {d: n for d, n in counts.items() if n < floor}
        if short:
            raise CurationError(
                f"data.curate quota cannot be met: min_share {min_share} of {size} examples needs {floor} per domain, "
                f"but {', '.join(f'{d} has {n}' for d, n in short.items())}"
            )
        if floor * len(counts) > size:
            raise CurationError(
                f"data.curate quota cannot be met: min_share {min_share} x {len(counts)} domains exceeds the result"
            )
        return None
    total = sum(counts.values())
    if quotas == "proportional":
        wanted = {d: n * size / total for d, n in counts.items()}
    else:
        unknown = sorted(set(quotas) - set(counts))
        if unknown:
            raise CurationError(f"data.curate quotas name domain(s) {unknown} the training set does not have ({sorted(counts)})")
        absent = sorted(set(counts) - set(quotas))
        if absent:
            raise CurationError(
                f"data.curate quotas give no quota for {absent}: every domain needs one (0 drops a domain on purpose)"
            )
        values = list(quotas.values())
        if all(float(v).is_integer() and v >= 1 or v == 0 for v in values) and any(v >= 1 for v in values):
            wanted = {d: float(quotas[d]) for d in counts}
        else:
            share = sum(float(v) for v in values)
            if abs(share - 1.0) > 1e-6:
                raise CurationError(f"data.curate quotas as shares must sum to 1, got {share:.4g} ({dict(quotas)})")
            wanted = {d: float(quotas[d]) * size for d in counts}
    result = _round_preserving_sum(wanted) if quotas == "proportional" else {d: int(round(v)) for d, v in wanted.items()}
    over = {d: (k, counts[d]) for d, k in result.items() if k > counts[d]}
    if over:
        raise CurationError(
            "data.curate quota cannot be met: "
            + ", ".join(f"{d} needs {k} examples but the training set has {n}" for d, (k, n) in over.items())
        )
    if quotas == "proportional":  # a domain is never wiped out by rounding
        for d, n in counts.items():
            if n > 0 and result[d] == 0:
                result[d] = 1
    return result


def _round_preserving_sum(wanted: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding: integer counts that add up to the rounded total."""
    total = int(round(sum(wanted.values())))
    floors = {d: int(math.floor(v)) for d, v in wanted.items()}
    left = total - sum(floors.values())
    for d in sorted(wanted, key=lambda d: (-(wanted[d] - floors[d]), d))[: max(0, left)]:
        floors[d] += 1
    return floors


def select_top(
    ids_by_domain: Mapping[str, Sequence[str]],
    score: Mapping[str, float],
    per_domain: Mapping[str, int] | None,
    size: int,
    min_share: float,
    rng: _random.Random,
) -> list[str]:
    """Ids kept: each domain's best ``per_domain[d]``, or (``None``) the best ``size`` overall with
    every domain holding at least ``ceil(min_share · size)``."""
    ranked = {d: _rank(ids, score, rng) for d, ids in sorted(ids_by_domain.items())}
    if per_domain is not None:
        return [i for d, order in ranked.items() for i in order[: per_domain.get(d, 0)]]
    floor = math.ceil(min_share * size)
    kept = [i for order in ranked.values() for i in order[:floor]]
    chosen = set(kept)
    rest = _rank([i for order in ranked.values() for i in order if i not in chosen], score, rng)
    return kept + rest[: size - len(kept)]


# --------------------------------------------------------------------------- the derived rule
def domain_difficulty_rule(frame: Any, score: Any, min_examples: int = 2, min_abs_t: float = 0.0) -> dict[str, Any]:
    """Per domain: mean score per level, the least-squares slope of score on level (with its
    standard error and t), and the direction it implies (slope > 0: harder helps); a domain whose
    ``|t|`` is below ``min_abs_t`` gets no direction (``keep``)."""
    import numpy as np

    table: dict[str, Any] = {}
    directions: dict[str, str] = {}
    for domain in sorted(frame["domain"].unique()):
        mask = (frame["domain"] == domain) & frame["difficulty"].notna() if "difficulty" in frame.columns else None
        if mask is None or int(mask.sum()) < min_examples:
            table[domain] = {"levels": {}, "slope": None, "note": "no difficulty levels"}
            continue
        x = frame.loc[mask, "difficulty"].astype(float).to_numpy()
        y = score[mask].astype(float).to_numpy()
        levels = {
            str(int(lvl) if float(lvl).is_integer() else lvl): {"n": int((x == lvl).sum()), "mean_score": float(y[x == lvl].mean())}
            for lvl in sorted(set(x))
        }
        entry: dict[str, Any] = {"levels": levels, "slope": None, "slope_se": None, "t": None}
        if len(set(x)) >= 2:
            xc = x - x.mean()
            slope = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
            resid = y - y.mean() - slope * xc
            dof = max(1, len(x) - 2)
            se = float(math.sqrt((resid ** 2).sum() / dof / (xc ** 2).sum()))
            t = slope / se if se > 0 else float("inf") * float(np.sign(slope))
            entry.update(slope=slope, slope_se=se, t=t)
            if abs(t) >= min_abs_t and slope != 0:
                directions[domain] = "harder" if slope > 0 else "easier"
            entry["direction"] = directions.get(domain, "keep")
        table[domain] = entry
    return {"table": table, "directions": directions}


# --------------------------------------------------------------------------- the entry point
def curate(
    train: Sequence[Mapping[str, Any]],
    options: CurateOptions,
    pool: Sequence[Mapping[str, Any]] = (),
    exclude: Sequence[Mapping[str, Any]] = (),
) -> Curation:
    """The curated training set for ``options`` (see the module docstring for the modes)."""
    frame = load_scores(options.scores)
    check_ids([e["id"] for e in train], frame, options.scores)
    score_series, label = ranking_score(frame, options.by, options.per_token, options.scores)
    score = dict(zip(frame["id"], score_series.astype(float)))
    rng = _random.Random(f"infra-curate:{options.seed}")
    counts = _domain_counts(train)
    by_domain: dict[str, list[str]] = collections.defaultdict(list)
    for e in train:
        by_domain[e["domain"]].append(e["id"])
    rule: dict[str, Any] = {
        "options": asdict(options),
        "mode": options.mode,
        "random": options.random,
        "score": label,
        "scores_file": str(options.scores),
        "scores_sha256": file_digest(Path(options.scores)),
        "measurements_in_file": measurements_in(frame),
        "size_before": len(train),
        "counts_before": counts,
    }
    weights: list[float] | None = None
    if options.mode in ("top", "drop"):
        examples, rule_extra = _subset(train, by_domain, score, counts, options, rng)
        rule.update(rule_extra)
    elif options.mode == "reweight":
        examples = [dict(e) for e in train]
        weights = _score_weights(train, score, options.beta)
        if options.random:
            weights = _shuffled_within_domain(train, weights, rng)
        rule["beta"] = options.beta
    else:
        examples, rule_extra = _derived_flip(train, frame, score_series, options, pool, exclude, rng)
        rule.update(rule_extra)
    rule["size_after"] = len(examples)
    rule["counts_after"] = _domain_counts(examples)
    if weights is not None:
        rule["expected_counts_after"] = {
            d: round(sum(w for e, w in zip(examples, weights) if e["domain"] == d), 3) for d in rule["counts_after"]
        }
    rows = [
        {
            "id": e["id"],
            "domain": e["domain"],
            "difficulty": e.get("difficulty"),
            "score": score.get(e["id"]),  # None for examples drawn from the pool (never scored)
            **({"weight": weights[k]} if weights is not None else {}),
        }
        for k, e in enumerate(examples)
    ]
    return Curation(examples, weights, rule, rows)


def _subset(train, by_domain, score, counts, options, rng) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    total = len(train)
    if options.mode == "top":
        size = max(1, int(round(options.fraction * total)))
        per_domain = quota_counts(counts, size, options.quotas, options.min_share)
    else:  # drop: as many as the fraction allows (only negative ones by default), per domain or overall
        if options.quotas == "proportional":
            per_domain = {}
            for d, ids in by_domain.items():
                limit = int(round(options.fraction * len(ids)))
                droppable = sum(1 for i in ids if score[i] < 0) if options.drop_only_negative else len(ids)
                per_domain[d] = len(ids) - min(limit, droppable)
            size = sum(per_domain.values())
        else:
            limit = int(round(options.fraction * total))
            droppable = sum(1 for s in (score[e["id"]] for e in train) if s < 0) if options.drop_only_negative else total
            size = total - min(limit, droppable)
            per_domain = quota_counts(counts, size, options.quotas, options.min_share)
    kept = select_top(by_domain, score, per_domain, size, options.min_share, rng)
    domain_of = {e["id"]: e["domain"] for e in train}
    kept_counts = collections.Counter(domain_of[i] for i in kept)
    lowest: dict[str, float] = {}
    for i in kept:
        lowest[domain_of[i]] = min(lowest.get(domain_of[i], math.inf), score[i])
    extra: dict[str, Any] = {
        "size_rule": f"{options.mode} {options.fraction} with quotas {options.quotas}",
        "min_score_kept": {d: lowest.get(d) for d in sorted(by_domain)},
    }
    if options.random:
        # The control: the same count per domain, drawn uniformly from that domain.
        draw = []
        for d in sorted(by_domain):
            draw.extend(rng.sample(sorted(by_domain[d]), kept_counts.get(d, 0)))
        extra["control_of"] = {d: kept_counts.get(d, 0) for d in sorted(by_domain)}
        kept = draw
    keep = set(kept)
    return [dict(e) for e in train if e["id"] in keep], extra


def _score_weights(train: Sequence[Mapping[str, Any]], score: Mapping[str, float], beta: float) -> list[float]:
    by_domain: dict[str, list[int]] = collections.defaultdict(list)
    for k, e in enumerate(train):
        by_domain[e["domain"]].append(k)
    weights = [1.0] * len(train)
    for indices in by_domain.values():
        values = [score[train[k]["id"]] for k in indices]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) or 1.0
        raw = [math.exp(beta * max(-3.0, min(3.0, (v - mean) / sd))) for v in values]
        scale = len(raw) / sum(raw)
        for k, w in zip(indices, raw):
            weights[k] = w * scale
    return weights


def _shuffled_within_domain(train: Sequence[Mapping[str, Any]], weights: list[float], rng: _random.Random) -> list[float]:
    out = list(weights)
    by_domain: dict[str, list[int]] = collections.defaultdict(list)
    for k, e in enumerate(train):
        by_domain[e["domain"]].append(k)
    for d in sorted(by_domain):
        indices = by_domain[d]
        values = [weights[k] for k in indices]
        rng.shuffle(values)
        for k, w in zip(indices, values):
            out[k] = w
    return out


def _derived_flip(train, frame, score_series, options, pool, exclude, rng) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from infra_pl.data.flip import PAPER_DIRECTIONS, FlipOptions, _prompt_key, flip_difficulty

    if not pool:
        raise CurationError("data.curate mode derived_flip needs data.pool sources to draw replacements from")
    derived = domain_difficulty_rule(frame, score_series, min_abs_t=options.min_abs_t)
    if not derived["directions"]:
        raise CurationError(
            f"data.curate derived_flip: {options.scores} gives no domain a direction (each needs two or more difficulty "
            f"levels and a slope with |t| >= min_abs_t = {options.min_abs_t}): "
            + ", ".join(f"{d}: t={e.get('t')}" for d, e in derived["table"].items())
        )
    flip_options = FlipOptions(mode="flip", fraction=options.fraction, seed=options.seed, directions=dict(derived["directions"]))
    result = flip_difficulty(train, pool, flip_options, exclude)
    swaps = {d: r.swapped for d, r in result.domains.items()}
    extra: dict[str, Any] = {
        "derived": {
            **derived,
            "paper_directions": dict(PAPER_DIRECTIONS),
            "agrees_with_paper": {d: derived["directions"].get(d) == v for d, v in PAPER_DIRECTIONS.items()
                                  if d in derived["directions"]},
        },
        "swaps": swaps,
        "mean_difficulty": {d: [r.mean_before, r.mean_after] for d, r in result.domains.items()},
    }
    if not options.random:
        extra["pairs"] = {d: r.pairs for d, r in result.domains.items()}
        return result.examples, extra
    # The control: as many swaps per domain, random training examples out, random pool examples in.
    out = [dict(e) for e in train]
    taken = {_prompt_key(e) for e in (*train, *exclude)}
    train_ids = {e["id"] for e in train}
    pairs: dict[str, list[tuple[str, str]]] = {}
    for d in sorted(swaps):
        positions = [k for k, e in enumerate(train) if e["domain"] == d]
        candidates = [p for p in pool if p["domain"] == d and p["id"] not in train_ids and _prompt_key(p) not in taken]
        unique: dict[str, Mapping[str, Any]] = {}
        for p in candidates:
            unique.setdefault(_prompt_key(p), p)
        incoming = rng.sample(sorted(unique.values(), key=lambda p: p["id"]), min(swaps[d], len(unique)))
        outgoing = rng.sample(positions, len(incoming))
        pairs[d] = []
        for k, p in zip(outgoing, incoming):
            pairs[d].append((out[k]["id"], p["id"]))
            out[k] = dict(p)
    extra["pairs"] = pairs
    extra["control_of"] = swaps
    return out, extra


# --------------------------------------------------------------------------- files
def write_curation(curation: Curation, out_dir: str | Path) -> tuple[Path, Path]:
    """``curation.json`` (the rule, counts, score file digest) and ``selected_ids.jsonl`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rule_path, ids_path = out_dir / RULE_FILE, out_dir / IDS_FILE
    rule_path.write_text(json.dumps(curation.rule, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    with ids_path.open("w", encoding="utf-8") as handle:
        for row in curation.rows:
            handle.write(json.dumps(row) + "\n")
    return rule_path, ids_path


# --------------------------------------------------------------------------- `infra-pl curate`
def main(argv: Sequence[str] | None = None) -> None:
    """``infra-pl curate -c BASE [-c OVERLAY ...] [--out DIR]``: build the mixture, write it, train nothing.

    Merges the config files in order as ``infra-pl fit -c BASE -c OVERLAY`` does (e.g.
    ``-c configs/demo.yaml -c configs/variants/curated.yaml``), loads the ``data`` section (the same ``ReasoningDataModule`` options ``fit`` uses,
    ``data.curate`` included), applies curation and writes the rule, the selected ids and the
    curated examples (``train.jsonl``, loadable as a ``data.train`` source) to ``--out``.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="infra-pl curate", description=main.__doc__)
    parser.add_argument("-c", "--config", required=True, action="append",
                        help="YAML with a data.curate section; repeat to merge a base and overlays in order, "
                             "as `infra-pl fit -c BASE -c OVERLAY` does")
    parser.add_argument("--out", default=None, help="output folder (default: data.curate.out_dir, else "
                        "<trainer.default_root_dir>/curation)")
    parser.add_argument("--scores", default=None, help="override data.curate.scores")
    parser.add_argument("--random", action="store_true", help="write the matched random control instead")
    args = parser.parse_args(list(argv) if argv is not None else None)
    datamodule, root = datamodule_from_config(args.config)
    if datamodule.curate is None:
        raise CurationError(f"{' + '.join(args.config)} has no data.curate section")
    if args.scores:
        datamodule.curate.scores = args.scores
    if args.random:
        datamodule.curate.random = True
    out = Path(args.out or datamodule.curate.out_dir or Path(root) / "curation")
    datamodule.curate.out_dir = str(out)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_path = out / "train.jsonl"
    with train_path.open("w", encoding="utf-8") as handle:
        for example in datamodule.train_examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")
    print(datamodule.curation.describe())
    print(f"  rule         : {out / RULE_FILE}")
    print(f"  selected ids : {out / IDS_FILE}")
    print(f"  examples     : {train_path}")


def datamodule_from_config(config: str | Path | Sequence[str | Path]) -> tuple[Any, str]:
    """The ``ReasoningDataModule`` a config's ``data`` section describes, and its default_root_dir.

    ``config``: one file, or several merged in order (a base and its overlays).
    """
    from jsonargparse import ArgumentParser

    from infra_pl.config_files import config_paths, load_configs
    from infra_pl.data.datamodule import ReasoningDataModule

    raw = load_configs(config)
    config = " + ".join(config_paths(config))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ReasoningDataModule, "data")
    try:
        parsed = parser.parse_object({"data": raw.get("data") or {}})
        init = (parser.instantiate if hasattr(parser, "instantiate") else parser.instantiate_classes)(parsed)
    except CurationError:
        raise
    except Exception as err:  # noqa: BLE001 - a parser error becomes one line naming the file
        cause = err.__cause__ or err.__context__
        if isinstance(cause, CurationError):
            raise cause from None
        raise CurationError(f"{config}: data section refused: {str(err).splitlines()[0]}") from None
    root = (raw.get("trainer") or {}).get("default_root_dir") or "."
    return init.data, root
