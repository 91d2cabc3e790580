"""``infra-pl compare``: fit + validate several training mixes over several seeds, then one table.

The paper compares SFT runs on different mixes (Table 1: original / difficulty-flipped /
reverse-flipped; Table 2 right: with and without exploration). This module runs such a
comparison reproducibly and says what is signal and what is seed noise:

* Each (variant, seed) is its own folder ``<out>/runs/<variant>/seed<k>/`` holding the exact
  config it ran (``config.yaml``: the variant's YAML, a base merged with its overlays as
  ``infra-pl fit -c BASE -c OVERLAY`` merges them, with the comparison's overrides, the seed in
  ``seed_everything``, ``data.seed`` and ``model.init_seed``, and every output path inside the
  folder), the checkpoint, ``fit_summary.json`` (optimizer steps, threads, seed), the
  ``correctness.jsonl`` of ``validate`` and, last, ``result.json``. A folder with ``result.json``
  is finished and is never run again (a rerun of the same command resumes: it skips finished
  runs, reuses a finished fit whose validate was interrupted, and redoes a fit that did not end).
  A finished folder whose config differs from the one the command would now write is refused, so
  results of two settings are never mixed.
* Training data curation stays fixed across seeds (``data.curate.seed``, ``data.flip.seed``);
  only the training seed (init, data order, dropout, sampling) changes.
* The table: accuracy per domain and difficulty level, mean over seeds with a t confidence
  interval, and each variant's **paired** difference to the baseline on the *same* seeds (seed k
  of the variant minus seed k of the baseline; seeds one side lacks are left out and counted), its
  t interval and an exact two-sided sign test. With few seeds both have little power: a difference
  is reported as significant only when the interval excludes 0, and otherwise as within seed noise.

Outputs in ``<out>/summary/``: ``runs.csv`` (one row per run, domain and level), ``table.csv`` /
``table.json`` / ``table.md``, ``compare.png`` and TensorBoard events (scalars, the Markdown table
as text, the figure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from infra_pl.config_files import config_paths, load_configs
from infra_pl.data.schema import DataError

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
LEVEL_ALL = "all"
MIN_PAIRS_FOR_VERDICT = 3  # fewer paired seeds: numbers shown, no significance verdict


class CompareError(DataError):
    """A comparison that cannot run or be summarised as asked (the message says why)."""


@dataclass
class Variant:
    """One training mix: config files plus dotted-key overrides (``data.flip.mode: reverse``).

    ``config`` is one file or a list merged in order, as ``infra-pl fit -c A -c B`` merges them
    (a base and an overlay: ``["configs/demo.yaml", "configs/variants/flip.yaml"]``).
    """

    name: str
    config: str | list[str]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return config_paths(self.config)


@dataclass
class CompareSpec:
    """What to compare (``infra-pl compare -c spec.yaml``, or the command-line flags).

    Args:
        out_dir: root of the run folders and the summary.
        seeds: training seeds; every variant runs each of them.
        variants: the mixes; ``baseline`` names the one the others are compared to (default: the first).
        overrides: dotted keys applied to every run's config (e.g. ``trainer.max_steps: 400``); a
            variant's own overrides come after them.
        threads: torch threads per fit/validate (the weights depend on it; keep it fixed).
        ci: confidence level of the intervals.
        in_process: run fit/validate in this process instead of one subprocess per command.
        contrasts: extra paired comparisons ``[a, b]`` (a − b on the same seeds), e.g. ``[curated, random]``.
    """

    out_dir: str
    seeds: list[int]
    variants: list[Variant]
    baseline: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    ci: float = 0.95
    in_process: bool = False
    contrasts: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.variants:
            raise CompareError("compare: no variants given")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise CompareError(f"compare: variant names must be unique, got {names}")
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise CompareError(f"compare: variant name {name!r} cannot be a folder name")
        self.baseline = self.baseline or names[0]
        if self.baseline not in names:
            raise CompareError(f"compare: baseline {self.baseline!r} is not one of the variants {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise CompareError(f"compare: seeds must be a non-empty list without repeats, got {self.seeds}")
        for variant in self.variants:
            if not variant.files:
                raise CompareError(f"compare: variant {variant.name!r} names no config file")
            for path in variant.files:
                if not Path(path).is_file():
                    raise CompareError(f"compare: variant {variant.name!r}: config {path} does not exist")
        for pair in self.contrasts:
            if len(pair) != 2 or any(p not in names for p in pair):
                raise CompareError(f"compare: a contrast names two variants of {names}, got {pair}")
        if not 0.5 <= self.ci < 1.0:
            raise CompareError(f"compare: ci must be in [0.5, 1), got {self.ci}")


# --------------------------------------------------------------------------- per-run configs
def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"`` (creates missing levels)."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def run_config(variant: Variant, seed: int, run_dir: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config one run executes: the variant's YAML files merged, the overrides, the seed, paths in ``run_dir``."""
    config = load_configs(variant.files)
    for key, value in {**overrides, **variant.overrides}.items():
        set_dotted(config, key, value)
    run = str(run_dir)
    config["seed_everything"] = seed
    set_dotted(config, "data.seed", seed)
    set_dotted(config, "model.init_seed", seed)
    set_dotted(config, "model.correctness_file", str(run_dir / "correctness.jsonl"))
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = run
    trainer["enable_progress_bar"] = False
    logger = trainer.get("logger")
    if isinstance(logger, dict) and "TensorBoardLogger" in str(logger.get("class_path", "")):
        logger.setdefault("init_args", {})["save_dir"] = run
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
    curate = (config.get("data") or {}).get("curate")
    if isinstance(curate, dict) and not curate.get("out_dir"):
        curate["out_dir"] = str(run_dir / "curation")
    return config


def config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- running
Runner = Callable[[list[str], Path], None]


def subprocess_runner(args: list[str], log: Path) -> None:
    """``python -m infra_pl <args>`` with output to ``log``; a failure names the log."""
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.call([sys.executable, "-m", "infra_pl", *args], stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-5:])
        raise CompareError(f"`infra-pl {' '.join(args)}` failed (status {code}); see {log}:\n{tail}")


def in_process_runner(args: list[str], log: Path) -> None:
    from infra_pl.cli import run_cli

    log.write_text(f"in process: infra-pl {' '.join(args)}\n", encoding="utf-8")
    run_cli(list(args))


def read_correctness(path: Path) -> dict[str, dict[str, list[int]]]:
    """domain -> level ("all", "1", ...) -> [correct, total] from ``correctness.jsonl``."""
    table: dict[str, dict[str, list[int]]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            levels = table.setdefault(row["domain"], {})
            for level in (LEVEL_ALL, str(row.get("difficulty"))):
                entry = levels.setdefault(level, [0, 0])
                entry[0] += int(bool(row["correct"]))
                entry[1] += 1
    return table


def _fit_complete(run_dir: Path, digest: str) -> bool:
    summary = run_dir / "checkpoints" / "fit_summary.json"
    started = run_dir / "fit_started.json"
    if not (summary.exists() and (run_dir / "checkpoints" / "last.ckpt").exists() and started.exists()):
        return False
    if json.loads(started.read_text()).get("config_sha256") != digest:
        return False
    info = json.loads(summary.read_text())
    return info.get("planned_steps") is None or info.get("optimizer_steps") == info.get("planned_steps")


def run_one(variant: Variant, seed: int, spec: CompareSpec, runner: Runner, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit + validate one (variant, seed) unless its folder already holds a finished result."""
    import yaml

    run_dir = Path(spec.out_dir) / "runs" / variant.name / f"seed{seed}"
    config = run_config(variant, seed, run_dir, spec.overrides)
    digest = config_digest(config)
    result_path = run_dir / RESULT_FILE
    if result_path.exists():
        result = json.loads(result_path.read_text(encoding="utf-8"))
        if result.get("config_sha256") != digest:
            raise CompareError(
                f"{run_dir} finished with another configuration than this comparison would run now (its config.yaml "
                "differs: another variant config, override, seed or step count). Delete that folder to rerun it, or "
                "compare into another --out"
            )
        log(f"[compare] {variant.name} seed {seed}: finished before, reusing {result_path}")
        return result
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    threads = ["--threads", str(spec.threads)]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    started = time.time()
    if _fit_complete(run_dir, digest):
        log(f"[compare] {variant.name} seed {seed}: fit finished before, validating it")
    else:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "fit_started.json").write_text(json.dumps({"config_sha256": digest}), encoding="utf-8")
        log(f"[compare] {variant.name} seed {seed}: fit ({run_dir})")
        runner(["fit", "-c", str(config_path), *threads], run_dir / "fit.log")
    fit_seconds = time.time() - started
    correctness = run_dir / "correctness.jsonl"
    correctness.unlink(missing_ok=True)
    log(f"[compare] {variant.name} seed {seed}: validate")
    started = time.time()
    runner(["validate", "-c", str(config_path), "--ckpt_path", str(ckpt), *threads], run_dir / "validate.log")
    validate_seconds = time.time() - started
    if not correctness.exists():
        raise CompareError(f"{variant.name} seed {seed}: validate wrote no {correctness}")
    fit_summary = json.loads((run_dir / "checkpoints" / "fit_summary.json").read_text(encoding="utf-8"))
    result = {
        "variant": variant.name,
        "seed": seed,
        "config": variant.config,
        "config_sha256": digest,
        "correct": read_correctness(correctness),
        "fit": fit_summary,
        "fit_wall_seconds": round(fit_seconds, 1),
        "validate_wall_seconds": round(validate_seconds, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = result_path.with_name(result_path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, result_path)  # the marker appears only once everything above exists
    return result


def run_all(spec: CompareSpec, runner: Runner | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (variant, seed), seed-major (so a partial comparison has all variants at the first seeds)."""
    runner = runner or (in_process_runner if spec.in_process else subprocess_runner)
    results = []
    for seed in spec.seeds:
        for variant in spec.variants:
            results.append(run_one(variant, seed, spec, runner, log))
    return results


def collect(spec: CompareSpec) -> list[dict[str, Any]]:
    """The finished results on disk for this spec's variants and seeds (partial comparisons too)."""
    found = []
    for variant in spec.variants:
        for seed in spec.seeds:
            path = Path(spec.out_dir) / "runs" / variant.name / f"seed{seed}" / RESULT_FILE
            if path.exists():
                found.append(json.loads(path.read_text(encoding="utf-8")))
    return found


# --------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], ci: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; a single value has an infinite interval."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, -math.inf, math.inf
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + ci / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def sign_test(differences: Sequence[float]) -> tuple[int, int, int, float]:
    """(wins, losses, ties, exact two-sided p) of the sign test; ties are left out of the test."""
    from scipy import stats

    wins = sum(1 for d in differences if d > 0)
    losses = sum(1 for d in differences if d < 0)
    ties = len(differences) - wins - losses
    n = wins + losses
    p = 1.0 if n == 0 else float(stats.binomtest(wins, n, 0.5, alternative="two-sided").pvalue)
    return wins, losses, ties, p


def accuracy_by_run(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[int, float]]:
    """(variant, domain, level) -> {seed: accuracy}."""
    table: dict[tuple[str, str, str], dict[int, float]] = {}
    for result in results:
        for domain, levels in result["correct"].items():
            for level, (correct, total) in levels.items():
                if total:
                    table.setdefault((result["variant"], domain, level), {})[int(result["seed"])] = correct / total
    return table


def _level_order(level: str) -> tuple[int, float, str]:
    if level == LEVEL_ALL:
        return (0, 0.0, level)
    try:
        return (1, float(level), level)
    except ValueError:
        return (2, 0.0, level)


def compare_table(results: Sequence[Mapping[str, Any]], baseline: str, variants: Sequence[str] | None = None,
                  ci: float = 0.95) -> list[dict[str, Any]]:
    """One row per (variant, domain, level): mean accuracy over seeds with its interval, and the
    paired difference to ``baseline`` over the seeds both have (interval, sign test, verdict)."""
    by_run = accuracy_by_run(results)
    names = list(variants) if variants is not None else sorted({r["variant"] for r in results})
    keys = sorted({(d, lvl) for (_, d, lvl) in by_run}, key=lambda k: (k[0], _level_order(k[1])))
    rows = []
    for name in names:
        for domain, level in keys:
            accs = by_run.get((name, domain, level), {})
            if not accs:
                continue
            seeds = sorted(accs)
            mean, low, high = t_interval([accs[s] for s in seeds], ci)
            row: dict[str, Any] = {
                "variant": name, "domain": domain, "level": level, "n_seeds": len(seeds), "seeds": seeds,
                "accuracy_mean": mean, "accuracy_low": low, "accuracy_high": high,
                "accuracy_per_seed": [accs[s] for s in seeds],
            }
            base = by_run.get((baseline, domain, level), {})
            if name != baseline:
                row.update({"versus": baseline, **paired_difference(accs, base, ci)})
            rows.append(row)
    return rows


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], ci: float = 0.95) -> dict[str, Any]:
    """``a − b`` per seed over the seeds both have: mean, t interval, sign test and a verdict."""
    paired = sorted(s for s in a if s in b)
    out: dict[str, Any] = {"paired_seeds": paired, "n_pairs": len(paired),
                           "unpaired_seeds": sorted(set(a) ^ set(b))}
    if not paired:
        return out
    diffs = [a[s] - b[s] for s in paired]
    d_mean, d_low, d_high = t_interval(diffs, ci)
    wins, losses, ties, p = sign_test(diffs)
    if len(paired) < MIN_PAIRS_FOR_VERDICT:
        verdict = "too few seeds"  # a 2-seed t interval is degenerate whenever the two differences agree
    else:
        verdict = "higher" if d_low > 0 else "lower" if d_high < 0 else "within seed noise"
    out.update({"diff_mean": d_mean, "diff_low": d_low, "diff_high": d_high, "diff_per_seed": diffs,
                "wins": wins, "losses": losses, "ties": ties, "sign_p": p, "verdict": verdict})
    return out


def contrast_table(results: Sequence[Mapping[str, Any]], contrasts: Sequence[Sequence[str]],
                   ci: float = 0.95) -> list[dict[str, Any]]:
    """Extra paired comparisons between two variants (e.g. curated − random), per domain and level."""
    by_run = accuracy_by_run(results)
    keys = sorted({(d, lvl) for (_, d, lvl) in by_run}, key=lambda k: (k[0], _level_order(k[1])))
    rows = []
    for a, b in contrasts:
        for domain, level in keys:
            first, second = by_run.get((a, domain, level), {}), by_run.get((b, domain, level), {})
            if first and second:
                rows.append({"variant": a, "versus": b, "domain": domain, "level": level,
                             **paired_difference(first, second, ci)})
    return rows


# --------------------------------------------------------------------------- outputs
def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _diff_cell(r: Mapping[str, Any]) -> str:
    if "diff_mean" not in r:
        return ""
    mark = {"higher": " **↑**", "lower": " **↓**"}.get(r["verdict"], "")
    return (f"{100 * r['diff_mean']:+.1f} [{_pct(r['diff_low'])}, {_pct(r['diff_high'])}] "
            f"{r['wins']}/{r['losses']}/{r['ties']} p={r['sign_p']:.2g}{mark}")


def _contrast_markdown(contrasts: Sequence[Mapping[str, Any]], level_keys: Sequence[str], conf: str) -> list[str]:
    if not contrasts:
        return []
    index = {(r["variant"], r["versus"], r["domain"], r["level"]): r for r in contrasts}
    pairs = list(dict.fromkeys((r["variant"], r["versus"]) for r in contrasts))
    domains = sorted({r["domain"] for r in contrasts})
    out = [f"**Paired contrasts between variants (points; mean [{conf} t-CI], wins/losses/ties, sign-test p)**", "",
           "| contrast | domain | pairs | " + " | ".join("all" if lvl == LEVEL_ALL else f"L{lvl}" for lvl in level_keys) + " |",
           "|---|---|---|" + "---|" * len(level_keys)]
    for a, b in pairs:
        for domain in domains:
            cells = [index.get((a, b, domain, lvl), {}) for lvl in level_keys]
            n = max((c.get("n_pairs", 0) for c in cells), default=0)
            out.append(f"| {a} − {b} | {domain} | {n} | " + " | ".join(_diff_cell(c) for c in cells) + " |")
    return out + [""]


def markdown_table(rows: Sequence[Mapping[str, Any]], baseline: str, ci: float = 0.95, title: str | None = None,
                   contrasts: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Per domain: accuracy (%) per variant and level, then the paired differences to the baseline."""
    level_keys = sorted({r["level"] for r in rows}, key=_level_order)
    domains = sorted({r["domain"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    index = {(r["variant"], r["domain"], r["level"]): r for r in rows}
    conf = f"{round(100 * ci)}%"
    out = [f"## {title}", ""] if title else []
    header = "| variant | seeds | " + " | ".join("all" if lvl == LEVEL_ALL else f"L{lvl}" for lvl in level_keys) + " |"
    rule = "|---|---|" + "---|" * len(level_keys)
    for domain in domains:
        out += [f"**{domain}: accuracy % (mean over seeds [{conf} t-CI])**", "", header, rule]
        for name in variants:
            cells = []
            n = 0
            for lvl in level_keys:
                r = index.get((name, domain, lvl))
                if r is None:
                    cells.append("")
                    continue
                n = max(n, r["n_seeds"])
                cells.append(f"{_pct(r['accuracy_mean'])} [{_pct(r['accuracy_low'])}, {_pct(r['accuracy_high'])}]")
            out.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
        out += ["", f"**{domain}: paired difference to `{baseline}` (points; mean [{conf} t-CI], wins/losses/ties, "
                    "exact sign-test p)**", "", header, rule]
        for name in variants:
            if name == baseline:
                continue
            cells = []
            n = 0
            for lvl in level_keys:
                r = index.get((name, domain, lvl))
                if r is None or "diff_mean" not in r:
                    cells.append("")
                    continue
                n = max(n, r["n_pairs"])
                cells.append(_diff_cell(r))
            out.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
        out.append("")
    out += _contrast_markdown(contrasts or [], level_keys, conf)
    out.append(f"↑/↓: the {conf} interval of the paired difference excludes 0 (with at least {MIN_PAIRS_FOR_VERDICT} "
               "paired seeds); everything else is within seed noise. "
               "With n paired seeds the exact sign test cannot go below p = 2·0.5^n (0.0625 for 5 seeds): "
               "it is reported, not relied on.")
    return "\n".join(out) + "\n"


def runs_frame(results: Sequence[Mapping[str, Any]]) -> Any:
    import pandas as pd

    rows = []
    for r in results:
        for domain, levels in r["correct"].items():
            for level, (correct, total) in levels.items():
                rows.append({
                    "variant": r["variant"], "seed": r["seed"], "domain": domain, "level": level,
                    "correct": correct, "total": total, "accuracy": correct / total if total else None,
                    "optimizer_steps": (r.get("fit") or {}).get("optimizer_steps"),
                    "torch_threads": (r.get("fit") or {}).get("torch_threads"),
                    "fit_wall_seconds": r.get("fit_wall_seconds"), "validate_wall_seconds": r.get("validate_wall_seconds"),
                })
    return pd.DataFrame(rows)


def plot_table(rows: Sequence[Mapping[str, Any]], baseline: str, path: Path, ci: float = 0.95) -> Any:
    """Per domain: mean accuracy per level and variant (with intervals), and paired differences."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    domains = sorted({r["domain"] for r in rows})
    levels = sorted({r["level"] for r in rows}, key=_level_order)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    index = {(r["variant"], r["domain"], r["level"]): r for r in rows}
    figure = Figure(figsize=(5.5 * max(1, len(domains)), 7.0))
    FigureCanvasAgg(figure)
    width = 0.8 / max(1, len(variants))
    for col, domain in enumerate(domains):
        for row_k, (what, key) in enumerate((("accuracy", "accuracy"), ("paired difference to " + baseline, "diff"))):
            axis = figure.add_subplot(2, max(1, len(domains)), row_k * len(domains) + col + 1)
            for k, name in enumerate(variants):
                if key == "diff" and name == baseline:
                    continue
                xs, ys, lo, hi = [], [], [], []
                for j, lvl in enumerate(levels):
                    r = index.get((name, domain, lvl))
                    if r is None or f"{key}_mean" not in r:
                        continue
                    mean, low, high = (r[f"{key}_mean"], r[f"{key}_low"], r[f"{key}_high"])
                    xs.append(j + (k - (len(variants) - 1) / 2) * width)
                    ys.append(100 * mean)
                    lo.append(100 * (mean - low) if math.isfinite(low) else 0.0)
                    hi.append(100 * (high - mean) if math.isfinite(high) else 0.0)
                if xs:
                    axis.bar(xs, ys, width=width, yerr=np.array([lo, hi]), capsize=2, label=name, color=f"C{k % 10}")
            axis.set_xticks(range(len(levels)))
            axis.set_xticklabels(["all" if lvl == LEVEL_ALL else f"L{lvl}" for lvl in levels])
            axis.set_title(f"{domain}: {what}")
            axis.set_ylabel("accuracy %" if key == "accuracy" else "points")
            if key == "diff":
                axis.axhline(0.0, color="black", linewidth=0.8)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
    figure.suptitle(f"mean over seeds, {round(100 * ci)}% t intervals; differences paired by seed")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return figure


def write_summary(spec: CompareSpec, results: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Table (CSV/JSON/Markdown), per-run CSV, figure and TensorBoard events under ``<out>/summary``."""
    results = collect(spec) if results is None else list(results)
    if not results:
        raise CompareError(f"compare: no finished runs under {spec.out_dir}/runs to summarise")
    out = Path(spec.out_dir) / "summary"
    out.mkdir(parents=True, exist_ok=True)
    names = [v.name for v in spec.variants]
    rows = compare_table(results, spec.baseline, names, spec.ci)
    done = {n: sorted(r["seed"] for r in results if r["variant"] == n) for n in names}
    complete = all(len(done[n]) == len(spec.seeds) for n in names)
    steps = sorted({(r.get("fit") or {}).get("optimizer_steps") for r in results}, key=str)
    title = (f"{'Comparison' if complete else 'PARTIAL comparison'}: {len(results)} of "
             f"{len(names) * len(spec.seeds)} runs (seeds done per variant: "
             + ", ".join(f"{n} {done[n]}" for n in names) + f"); optimizer steps per fit: {steps}")
    paths = {
        "runs_csv": out / "runs.csv", "table_csv": out / "table.csv", "table_json": out / "table.json",
        "table_md": out / "table.md", "figure": out / "compare.png", "tensorboard": out / "tensorboard",
    }
    runs_frame(results).to_csv(paths["runs_csv"], index=False)
    import pandas as pd

    contrasts = contrast_table(results, spec.contrasts, spec.ci)
    flat = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()}
                         for r in [*rows, *contrasts]])
    flat.to_csv(paths["table_csv"], index=False)
    meta = {"title": title, "complete": complete, "baseline": spec.baseline, "ci": spec.ci, "seeds": spec.seeds,
            "variants": {v.name: {"config": v.config, "overrides": v.overrides} for v in spec.variants},
            "overrides": spec.overrides, "optimizer_steps": steps}
    paths["table_json"].write_text(json.dumps({"meta": meta, "rows": rows, "contrasts": contrasts}, indent=2,
                                              default=_json_default) + "\n",
                                   encoding="utf-8")
    text = markdown_table(rows, spec.baseline, spec.ci, title, contrasts)
    paths["table_md"].write_text(text, encoding="utf-8")
    figure = plot_table(rows, spec.baseline, paths["figure"], spec.ci)
    _tensorboard(paths["tensorboard"], rows + contrasts, results, text, figure)
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _tensorboard(directory: Path, rows: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]], text: str,
                 figure: Any) -> None:
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(directory, ignore_errors=True)  # one summary, rewritten whole (no stale points)
    writer = SummaryWriter(str(directory))
    try:
        for r in rows:
            tag = f"{r['domain']}_{'all' if r['level'] == LEVEL_ALL else 'L' + r['level']}"
            if "accuracy_mean" in r:
                writer.add_scalar(f"accuracy_mean/{tag}/{r['variant']}", r["accuracy_mean"], 0)
            if "diff_mean" in r:
                writer.add_scalar(f"paired_diff/{tag}/{r['variant']}-{r['versus']}", r["diff_mean"], 0)
        for res in results:  # per-seed points: x = seed
            for domain, levels in res["correct"].items():
                correct, total = levels[LEVEL_ALL]
                writer.add_scalar(f"accuracy_per_seed/{domain}/{res['variant']}", correct / total, int(res["seed"]))
        writer.add_text("compare/table", text)
        writer.add_figure("compare/figure", figure)
    finally:
        writer.close()


# --------------------------------------------------------------------------- command line
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def spec_from_args(argv: Sequence[str] | None = None) -> tuple[CompareSpec, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="infra-pl compare",
        description="Fit + validate each variant config over each seed (resumable), then a table of accuracy per "
                    "domain and level with paired differences to the baseline (CSV/JSON/Markdown, figure, TensorBoard).",
    )
    parser.add_argument("-c", "--config", help="comparison spec YAML (out_dir, seeds, baseline, overrides, variants)")
    parser.add_argument("--out", help="output folder (overrides the spec's out_dir)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=CONFIG[,OVERLAY...]",
                        help="a variant (repeatable): a config, or a base and overlays merged in order as `infra-pl "
                             "fit -c BASE -c OVERLAY` merges them (e.g. flip=configs/demo.yaml,configs/variants/flip.yaml); "
                             "the first variant is the baseline unless --baseline says otherwise")
    parser.add_argument("--baseline", help="name of the baseline variant")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, dotted key (e.g. trainer.max_steps=400); repeatable")
    parser.add_argument("--contrast", action="append", default=[], metavar="A:B",
                        help="an extra paired comparison A − B on the same seeds (repeatable), e.g. curated:random")
    parser.add_argument("--threads", type=int, help="torch threads per fit/validate (default 1)")
    parser.add_argument("--ci", type=float, help="confidence level (default 0.95)")
    parser.add_argument("--in-process", action="store_true", help="run fit/validate in this process")
    parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the finished runs")
    args = parser.parse_args(list(argv) if argv is not None else None)
    raw: dict[str, Any] = {}
    if args.config:
        import yaml

        raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}

    def _files(value: Any) -> str | list[str]:
        return [str(c) for c in value] if isinstance(value, (list, tuple)) else str(value)

    variants = [Variant(name=n, config=_files(v["config"]) if isinstance(v, dict) else _files(v),
                        overrides=dict((v.get("overrides") or {}) if isinstance(v, dict) else {}))
                for n, v in (raw.get("variants") or {}).items()]
    for item in args.variant:
        name, _, config = item.partition("=")
        if not config:
            raise CompareError(f"--variant wants NAME=CONFIG[,OVERLAY...], got {item!r}")
        files = [part for part in config.split(",") if part]
        variants = [v for v in variants if v.name != name] + [Variant(name, files[0] if len(files) == 1 else files)]
    overrides = dict(raw.get("overrides") or {})
    for item in args.set:
        key, _, value = item.partition("=")
        if not _:
            raise CompareError(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    out_dir = args.out or raw.get("out_dir")
    if not out_dir:
        raise CompareError("compare: give an output folder (--out or out_dir in the spec)")
    spec = CompareSpec(
        out_dir=str(out_dir),
        seeds=list(args.seeds if args.seeds is not None else raw.get("seeds") or [0]),
        variants=variants,
        baseline=args.baseline or raw.get("baseline"),
        overrides=overrides,
        threads=args.threads if args.threads is not None else int(raw.get("threads", 1)),
        ci=args.ci if args.ci is not None else float(raw.get("ci", 0.95)),
        in_process=args.in_process or bool(raw.get("in_process", False)),
        contrasts=[list(p) for p in raw.get("contrasts") or []] + [item.split(":", 1) for item in args.contrast],
    )
    return spec, args


def main(argv: Sequence[str] | None = None) -> None:
    """``infra-pl compare -c spec.yaml`` (or flags): run what is missing, then write the summary."""
    spec, args = spec_from_args(argv)
    if not args.summary_only:
        run_all(spec)
    paths = write_summary(spec)
    print(paths["table_md"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        print(f"  {name:<12}: {path}")


if __name__ == "__main__":
    from infra_pl.errors import run_reporting_known_errors

    run_reporting_known_errors(main)
