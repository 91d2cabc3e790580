"""Difficulty-flip resampling (paper §4.2, Figure 5b, Table 1) and its reweighting variant.

Finding 2 of the paper: hard math and easy code help most. The "difficulty-flipped" training set
swaps the easiest math examples for harder ones from a larger pool of the same distribution
(OpenThoughts-114k for BS-17k) and the hardest code examples for easier ones, keeping the
total size and each domain's count; the "reverse" control does the opposite. Plain functions,
deterministic from a seed, so the DataModule (or a script) can call them and the same seed always
gives the same training set.

Choice of replacements: the removed examples are the most extreme ones in the wrong direction
(easiest math first), the added ones the most extreme in the right direction (hardest pool math
first), ties broken by the seed, and a pair is swapped only if the added example is strictly
harder (math) / easier (code) than the one it replaces. So a flip can never move a domain's
difficulty the wrong way, and a pool with too few suitable examples yields fewer swaps (reported).
"""

from __future__ import annotations

import collections
import json
import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from infra_pl.data.schema import DOMAINS
from infra_pl.data.traces import problem_from_prompt

MODES = ("flip", "reverse", "reweight")
HARDER, EASIER = "harder", "easier"
# The paper's direction per domain (Finding 2); ``reverse`` swaps every direction.
PAPER_DIRECTIONS: dict[str, str] = {"math": HARDER, "code": EASIER}


@dataclass
class FlipOptions:
    """How to change the difficulty mix of the training set (``data.flip`` in YAML).

    Args:
        mode: ``flip`` (paper: harder math, easier code, from the pool), ``reverse`` (the control:
            easier math, harder code), or ``reweight`` (no pool: per-example sampling weights).
        fraction: share of each domain's examples (with a known level) to replace.
        seed: tie-breaking among equally difficult examples.
        beta: reweight strength per difficulty level (weight ∝ exp(±beta·level)).
        directions: per-domain direction (``harder``/``easier``) for ``flip``; default the paper's.
    """

    mode: Literal["flip", "reverse", "reweight"] = "flip"
    fraction: float = 0.5
    seed: int = 0
    beta: float = 0.5
    directions: dict[str, str] = field(default_factory=lambda: dict(PAPER_DIRECTIONS))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"flip mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"flip fraction must be in [0, 1], got {self.fraction}")
        bad = {d: v for d, v in self.directions.items() if v not in (HARDER, EASIER)}
        if bad:
            raise ValueError(f"flip directions must be '{HARDER}' or '{EASIER}', got {bad}")

    def effective_directions(self) -> dict[str, str]:
        """Directions after ``reverse`` is applied."""
        if self.mode != "reverse":
            return dict(self.directions)
        return {d: EASIER if v == HARDER else HARDER for d, v in self.directions.items()}


@dataclass
class DomainFlip:
    """What happened to one domain: planned and made swaps, and mean difficulty before/after."""

    direction: str
    planned: int
    swapped: int
    unknown_difficulty: int
    mean_before: float | None
    mean_after: float | None
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (removed id, added id)


@dataclass
class FlipResult:
    examples: list[dict[str, Any]]
    domains: dict[str, DomainFlip]

    def describe(self) -> str:
        parts = []
        for domain, d in sorted(self.domains.items()):
            parts.append(
                f"{domain} ({d.direction}): swapped {d.swapped}/{d.planned}, mean difficulty "
                f"{_fmt(d.mean_before)} -> {_fmt(d.mean_after)}"
            )
        return "difficulty flip: " + "; ".join(parts)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mean(values: Sequence[int]) -> float | None:
    return sum(values) / len(values) if values else None


def _ranked(items: list[tuple[int, Mapping[str, Any]]], hardest_first: bool, rng: random.Random) -> list[tuple[int, Mapping[str, Any]]]:
    """Sort by difficulty, ties in a seeded random order (shuffle first, then a stable sort)."""
    items = list(items)
    rng.shuffle(items)
    return sorted(items, key=lambda pair: pair[1]["difficulty"], reverse=hardest_first)


def _prompt_key(example: Mapping[str, Any]) -> str:
    """What makes two items "the same question": the last user turn without an answer-format
    instruction (BS-17k prompts carry one, OpenThoughts metadata problems do not), whitespace-normalised."""
    users = [m["content"] for m in example["messages"] if m["role"] == "user"]
    return " ".join(problem_from_prompt(users[-1]).split()) if users else ""


def flip_difficulty(
    train: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    options: FlipOptions | None = None,
    exclude: Sequence[Mapping[str, Any]] = (),
) -> FlipResult:
    """The flipped (or reverse-flipped) training set: same size, same count per domain.

    A pool example is never added if its id or its question is already in ``train`` (the paper's
    pool, OpenThoughts-114k, shares question sources with BS-17k) or in ``exclude`` (pass the
    evaluation examples, so resampling cannot leak test questions into training). Each pool
    example is used at most once; replacements take the removed example's position.
    """
    options = options or FlipOptions()
    if options.mode == "reweight":
        raise ValueError("flip_difficulty does resampling; use difficulty_weights for mode 'reweight'")
    directions = options.effective_directions()
    rng = random.Random(f"infra-flip:{options.seed}")
    out = [dict(e) for e in train]
    train_ids = {e["id"] for e in train}
    taken = {_prompt_key(e) for e in (*train, *exclude)}
    result = FlipResult(out, {})
    for domain in sorted({e["domain"] for e in train}):
        direction = directions.get(domain)
        members = [(i, e) for i, e in enumerate(train) if e["domain"] == domain]
        known = [(i, e) for i, e in members if e.get("difficulty") is not None]
        before = [e["difficulty"] for _, e in known]
        if direction is None:
            continue
        harder = direction == HARDER
        planned = round(options.fraction * len(known))
        out_order = _ranked(known, hardest_first=not harder, rng=rng)[:planned]
        candidates = [
            (j, p) for j, p in enumerate(pool)
            if p["domain"] == domain and p.get("difficulty") is not None and p["id"] not in train_ids
            and _prompt_key(p) not in taken
        ]
        in_order = _ranked(candidates, hardest_first=harder, rng=rng)
        flip = DomainFlip(direction, planned, 0, len(members) - len(known), _mean(before), None)
        used: set[str] = set()
        incoming = iter(in_order)
        for position, removed in out_order:
            added = next(incoming, None)
            while added is not None and _prompt_key(added[1]) in used:  # the same question twice in the pool
                added = next(incoming, None)
            if added is None:
                break
            better = added[1]["difficulty"] > removed["difficulty"] if harder else added[1]["difficulty"] < removed["difficulty"]
            if not better:
                break  # both lists are sorted: no later pair can improve either
            used.add(_prompt_key(added[1]))
            out[position] = dict(added[1])
            flip.pairs.append((removed["id"], added[1]["id"]))
        flip.swapped = len(flip.pairs)
        flip.mean_after = _mean([e["difficulty"] for e in out if e["domain"] == domain and e.get("difficulty") is not None])
        if flip.swapped < planned:
            warnings.warn(
                f"difficulty flip, {domain}: only {flip.swapped} of {planned} planned swaps; the pool has no further "
                f"{domain} examples (with a known level, not in the training set) "
                f"{'harder' if harder else 'easier'} than the ones left to replace",
                stacklevel=2,
            )
        result.domains[domain] = flip
    return result


def difficulty_weights(
    examples: Sequence[Mapping[str, Any]],
    beta: float = 0.5,
    directions: Mapping[str, str] | None = None,
    reverse: bool = False,
) -> list[float]:
    """Per-example sampling weights that tilt each domain toward its direction (no pool needed).

    ``w ∝ exp(±beta · (level − domain mean level))``, ``+`` for ``harder`` (default directions:
    the paper's, harder math and easier code); weights are then scaled to average 1 within each
    domain, so the expected domain mix is unchanged. ``reverse=True`` (or a negative ``beta``)
    tilts the other way, the control. Examples without a level, or in a domain without a
    direction, keep weight 1. Use with a seeded ``torch.utils.data.WeightedRandomSampler``.
    """
    directions = dict(PAPER_DIRECTIONS if directions is None else directions)
    if reverse:
        beta = -beta
    weights = [1.0] * len(examples)
    by_domain: dict[str, list[int]] = collections.defaultdict(list)
    for i, e in enumerate(examples):
        if e.get("difficulty") is not None and e["domain"] in directions:
            by_domain[e["domain"]].append(i)
    for domain, indices in by_domain.items():
        sign = 1.0 if directions[domain] == HARDER else -1.0
        mean = sum(examples[i]["difficulty"] for i in indices) / len(indices)
        raw = [math.exp(sign * beta * (examples[i]["difficulty"] - mean)) for i in indices]
        # Examples of this domain without a level keep weight 1; scale the rest to average 1.
        scale = len(raw) / sum(raw)
        for i, w in zip(indices, raw):
            weights[i] = w * scale
    return weights


def apply_flip(
    train: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]] | None,
    options: FlipOptions,
    exclude: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[dict[str, Any]], list[float] | None, str]:
    """One entry point for the DataModule: (training examples, sampling weights or None, summary).

    ``flip``/``reverse`` resample from ``pool`` (required), never adding a question in
    ``exclude`` (the evaluation examples); ``reweight`` keeps the examples and returns weights.
    """
    if options.mode == "reweight":
        weights = difficulty_weights(train, options.beta, options.directions)
        means = {
            d: (expected_difficulty(train, [1.0] * len(train), d), expected_difficulty(train, weights, d))
            for d in sorted({e["domain"] for e in train})
        }
        text = "; ".join(f"{d}: {_fmt(a)} -> {_fmt(b)}" for d, (a, b) in means.items())
        return [dict(e) for e in train], weights, f"difficulty reweight (beta={options.beta}): expected level {text}"
    if not pool:
        raise ValueError(f"difficulty flip mode '{options.mode}' needs pool examples (data.pool)")
    result = flip_difficulty(train, pool, options, exclude)
    return result.examples, None, result.describe()


def expected_difficulty(examples: Sequence[Mapping[str, Any]], weights: Sequence[float], domain: str) -> float | None:
    """Mean level of ``domain`` under sampling ``weights`` (for checking a reweighting)."""
    pairs = [(e["difficulty"], w) for e, w in zip(examples, weights) if e["domain"] == domain and e.get("difficulty") is not None]
    total = sum(w for _, w in pairs)
    return sum(d * w for d, w in pairs) / total if total else None


def difficulty_counts(
    examples: Sequence[Mapping[str, Any]], weights: Sequence[float] | None = None
) -> dict[str, dict[str, float]]:
    """Domain -> level -> count (or summed weight); unknown levels under ``"unknown"``."""
    counts: dict[str, dict[str, float]] = {}
    for i, e in enumerate(examples):
        level = "unknown" if e.get("difficulty") is None else str(e["difficulty"])
        per = counts.setdefault(e["domain"], {})
        per[level] = per.get(level, 0) + (1 if weights is None else weights[i])
    return {
        d: dict(sorted(levels.items(), key=lambda kv: (kv[0] == "unknown", int(kv[0]) if kv[0] != "unknown" else 0)))
        for d, levels in sorted(counts.items())
    }


def write_difficulty_histograms(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    name: str = "difficulty_flip",
    after_weights: Sequence[float] | None = None,
    labels: tuple[str, str] = ("original", "flipped"),
    source_note: str | None = None,
) -> tuple[Path, Path]:
    """Figure 5b: per-domain bars of examples per level, before vs after. Writes PNG + JSON.

    ``after_weights`` plots expected counts under a reweighting instead of a resampled set.
    ``source_note`` (e.g. "difficulty = length quintile") titles the figure and goes to the JSON,
    so a length-proxy flip is never read as a difficulty flip.
    Uses the Agg canvas directly (no pyplot, no global backend switch), so it is safe on
    headless machines and inside a running training process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {labels[0]: difficulty_counts(before), labels[1]: difficulty_counts(after, after_weights)}
    present = set(counts[labels[0]]) | set(counts[labels[1]])
    domains = [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))
    payload = {
        "difficulty_source_note": source_note,
        "labels": list(labels),
        "counts": counts,
        "mean_difficulty": {
            label: {
                d: _weighted_mean(counts[label].get(d, {})) for d in domains
            }
            for label in labels
        },
    }
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    figure = Figure(figsize=(4.2 * max(1, len(domains)), 3.4))
    FigureCanvasAgg(figure)
    for k, domain in enumerate(domains):
        axis = figure.add_subplot(1, max(1, len(domains)), k + 1)
        levels = sorted(
            {lvl for label in labels for lvl in counts[label].get(domain, {})},
            key=lambda lvl: (lvl == "unknown", int(lvl) if lvl != "unknown" else 0),
        )
        xs = range(len(levels))
        width = 0.4
        for offset, label in ((-width / 2, labels[0]), (width / 2, labels[1])):
            ys = [counts[label].get(domain, {}).get(lvl, 0) for lvl in levels]
            axis.bar([x + offset for x in xs], ys, width=width, label=label)
        axis.set_xticks(list(xs))
        axis.set_xticklabels(levels)
        axis.set_xlabel("difficulty level" if source_note is None else "length quintile (difficulty proxy)")
        axis.set_ylabel("examples")
        axis.set_title(domain)
        axis.legend()
    if source_note is not None:
        figure.suptitle(source_note, color="firebrick")
    figure.tight_layout()
    png_path = out_dir / f"{name}.png"
    figure.savefig(png_path, dpi=120)
    return png_path, json_path


def _weighted_mean(levels: Mapping[str, float]) -> float | None:
    known = {int(k): v for k, v in levels.items() if k != "unknown"}
    total = sum(known.values())
    return sum(k * v for k, v in known.items()) / total if total else None
