"""Markdown tables of an LDS run (what ``benchmarks/lds.py`` prints and the README quotes)."""

from __future__ import annotations

from typing import Any

from infra_pl.lds.metrics import Interval
from infra_pl.lds.scoring import describe


def _interval(data: dict[str, float], digits: int = 3) -> str:
    return Interval(data["value"], data["low"], data["high"]).format(digits)


def lds_markdown(results: dict[str, Any]) -> str:
    """One row per method: per-domain LDS (mean, each), per-item LDS, paired gaps to the reference."""
    names = list(results["measurements"])
    reference = next((row.get("reference") for row in results["lds"].values()), None)
    head = (
        "| method | LDS (mean of " + ", ".join(names) + ") [95% CI] | "
        + " | ".join(names)
        + f" | {reference} − method, paired [95% CI] | per-item LDS [95% CI] | {reference} − method, per item [95% CI] |"
    )
    lines = [head, "|" + "---|" * (5 + len(names))]
    for method, row in results["lds"].items():
        cells = [f"`{method}`", _interval(row["lds"])]
        cells += [f"{row['per_measurement'][n]:.3f}" for n in names]
        cells.append(_interval(row["vs_reference"]) if "vs_reference" in row else "—")
        cells.append(_interval(row["item_lds"]))
        cells.append(_interval(row["item_vs_reference"]) if "item_vs_reference" in row else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- `{method}`: {describe(method)}" for method in results["lds"]]
    return "\n".join(lines)


def removal_markdown(results: dict[str, Any]) -> str:
    """One row per (measurement, k): the f drops of each removal, and top-k minus each control."""
    method = results["options"]["topk_method"]
    controls = [c for c in ("random", "domain_random") if any(f"{c}_drop" in r for r in results["removal"])]
    label = {"random": "k random", "domain_random": "k random of the same domain"}
    head = f"| measurement | k | top-k in the measurement's domain | f drop, top-k by {method} removed |"
    head += "".join(f" f drop, {label[c]} removed | top-k − {label[c]} (paired by seed) |" for c in controls)
    lines = [head, "|" + "---|" * (4 + 2 * len(controls))]
    for row in results["removal"]:
        cells = [row["measurement"], str(row["k"]), f"{row['top_same_domain']}/{row['k']}", _interval(row["top_drop"])]
        for c in controls:
            cells += [_interval(row[f"{c}_drop"]), _interval(row[f"difference_{c}"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(results: dict[str, Any]) -> str:
    s, o = results["setting"], results["options"]
    parts = [
        f"### LDS on the demo (setting {results['digest']})",
        "",
        f"{o['n_subsets']} random subsets of {round(o['alpha'] * results['n_train'])} of the {results['n_train']} training "
        f"examples (α = {o['alpha']}); every retrain fine-tunes the same base model for {s['finetune']['steps']} steps "
        f"(batch {s['finetune']['batch_size']}, peak lr {s['finetune']['learning_rate']}) with training seed "
        f"{o['train_seed']}. Scores are computed on the model fine-tuned on all {results['n_train']} examples. "
        f"LDS = Spearman(measured f, Σ_{{z∈S}} score(z)) over the retrains; 95% CI: bootstrap over retrains "
        f"({o['n_bootstrap']} resamples).",
        "",
    ]
    for name, info in results["measurements"].items():
        what = (
            f"FALLBACK: reference answers of all {info['n_used']} items ({info['n_available']} answered correctly)"
            if info["fallback"]
            else f"D_correct, {info['n_used']} of {info['n_available']} correctly answered items"
        )
        parts.append(f"- measurement `{name}`: {what}")
    if results["methods_skipped"]:
        parts.append("- skipped: " + "; ".join(f"{k} ({v})" for k, v in results["methods_skipped"].items()))
    parts += ["", lds_markdown(results), ""]
    noise = results.get("noise_ceiling")
    if noise:
        per = ", ".join(f"{k} {v:.3f}" for k, v in noise["per_measurement"].items())
        parts += [
            f"Noise ceiling: the same {noise['n_subsets']} subsets retrained with another training seed; Spearman of "
            f"f between the two seeds: mean {noise['mean']:.3f} ({per}); per item {noise['item_mean']:.3f}.",
            "",
        ]
    if results["removal"]:
        seeds = ", ".join(str(x) for x in o["topk_seeds"])
        parts += [
            f"Top-k removal: retrain without the k examples with the highest score for each measurement, or without k "
            f"random examples (of any domain, or of the measurement's own domain), with training seeds {seeds}; "
            "f drop = f(full set) − f(reduced set) at the same seed, mean [95% t-interval over seeds].",
            "",
            removal_markdown(results),
            "",
        ]
    t = results["timings"]
    parts.append(
        f"Median retrain: {results['retrain_seconds_median']:.1f} s; this call: {t['total (this call)']:.0f} s "
        f"({results['torch_threads']} torch thread(s))."
    )
    return "\n".join(parts) + "\n"
