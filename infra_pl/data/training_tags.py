"""Behaviour labels of a whole training set, before any attribution pass.

Tagging runs first so a tagger that cannot work (an unreachable judge, rules that find nothing on
this data) stops the run before hours of factor passes; labels are cached per trace under the
scores folder, so a resumed run does not tag again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra_pl.console import log
from infra_pl.data.schema import BEHAVIOURS
from infra_pl.data.tagging import agreement, resolve_tagger, tag_examples, tagger_name


@dataclass
class Tags:
    """Behaviour labels of every training trace (``tagged`` None: no tagger), who made them, and a
    judge's agreement with the rules (Cohen's kappa per behaviour; None for the rules themselves)."""

    tagged: list[Any] | None
    tagger: Any
    agreement: dict[str, float] | None = None


class TaggingError(ValueError):
    """The tagger cannot label this training set (no traces to read, or no behaviour found anywhere)."""


def resolve_auto_tagger(tagger: Any, data: Any) -> Any | None:
    """``auto``: the rules when ``data`` gives chat examples (``attribution_example``), else no tagger (logged)."""
    if tagger != "auto":
        return tagger
    readable = callable(getattr(data, "attribution_example", None))
    if not readable:
        log(f"behaviours: tagger 'auto' found no attribution_example on {type(data).__name__} (no traces to read), "
            "so no behaviour analyses; set tagger: rules with a datamodule that has it")
    return resolve_tagger("rules" if readable else "none")


def tag_training_set(data: Any, tagger: Any, cache_dir: Path | None, workers: int = 1) -> Tags:
    """Labels of every training trace of ``data`` (``attribution_example("train", i)``), cached in ``cache_dir``.

    A tagger other than the rules is also compared with the rules (kappa per sentence, logged and
    kept). A tagger that finds no behaviour in any trace is an error: every behaviour table would
    be empty.
    """
    if tagger is None:
        log("behaviours: no tagger, so no behaviour columns and no sentence behaviour labels")
        return Tags(None, None)
    name = tagger_name(tagger)
    if not callable(getattr(data, "attribution_example", None)):
        raise TaggingError(f"tagger '{name}' reads the training traces through the datamodule's "
                           "attribution_example(split, index); set tagger: none without it")
    examples = [data.attribution_example("train", i) for i in range(len(data.attribution_ids("train")))]
    cache = cache_dir / f"{name.replace('/', '_').replace(':', '_')}.jsonl" if cache_dir is not None else None
    tagged = tag_examples(examples, tagger, cache, workers=workers)
    kappa = None
    if name != "rules":  # a judge (or own tagger): measure its agreement with the rules
        rules_cache = cache_dir / "rules.jsonl" if cache_dir is not None else None
        kappa = agreement(tagged, tag_examples(examples, resolve_tagger("rules"), rules_cache, workers=workers))
        log(f"behaviours: agreement of '{name}' with the rules (Cohen's kappa per sentence): "
            + ", ".join(f"{b} {k:.2f}" for b, k in kappa.items()))
    totals = {b: sum(1 for t in tagged if t.counts()[b] > 0) for b in BEHAVIOURS}
    log(f"behaviours ({name}): traces showing each behaviour of {len(tagged)}: "
        + ", ".join(f"{b} {n}" for b, n in totals.items()))
    if not any(totals.values()):
        raise TaggingError(
            f"the behaviour tagger '{name}' found no behaviour in any of the {len(tagged)} training traces, so every "
            "behaviour table would be empty. Check the tagger on a few traces (infra_pl.data.behaviours.tag_sentences), "
            "choose another (LLMJudgeTagger), or set tagger: none"
        )
    return Tags(tagged, tagger, kappa)
