"""Settings a run takes from elsewhere than the command line, made explicit.

Two places used to override what the user gave without a word:

* **A checkpoint's hyperparameters.** LightningCLI reads ``hyper_parameters`` from ``--ckpt_path``
  and lays all of them over the parsed config, so ``validate --model.max_new_tokens 64`` generated
  with the fit's value and ``--model.model_config`` with another architecture silently ran the
  checkpoint's. :func:`merge_checkpoint_hparams` decides key by key: a setting the user did not give
  comes from the checkpoint; one that decides the network's shape (:data:`ARCHITECTURE_KEYS`) and
  differs is refused, naming each differing key with both values; any other given setting is kept,
  with a line naming the key, what was given and what the checkpoint had.
* **Output paths pinned in a config.** With ``save_dir: runs/demo`` and ``dirpath:
  runs/demo/checkpoints`` in the YAML, ``--trainer.default_root_dir X`` moved nothing. The shipped
  demo configs write those keys as ``${trainer.default_root_dir}`` and
  ``${trainer.default_root_dir}/checkpoints``; :func:`expand_root_placeholder` puts the root folder
  of the run in their place after parsing, so the command line's root moves the logs, the
  checkpoints and the correctness file (which follows the logger) together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# Hyperparameters that decide which network the checkpoint's weights belong to.
ARCHITECTURE_KEYS = ("name_or_path", "model_config", "lora")
# Hyperparameters that decide weights the checkpoint may not hold (a LoRA checkpoint keeps only its
# adapters; the base weights come from this seed's random init): the checkpoint's value is used.
CHECKPOINT_WINS_KEYS = ("init_seed",)
# Settings of the optimisation alone: they change nothing in validate/attribute.
TRAINING_ONLY_KEYS = ("learning_rate", "weight_decay", "betas", "warmup_fraction", "min_lr_ratio", "time_budget_s")


def plain(value: Any) -> Any:
    """Dataclasses, jsonargparse Namespaces, tuples: nested plain dicts and lists, for comparison."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equal as plain values (``96`` and ``"96"`` count as equal: a command line gives strings)."""
    a, b = plain(a), plain(b)
    if a == b:
        return True

    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str).replace('"', "")

    return text(a) == text(b)


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else json.dumps(plain(value), default=str)


_MISSING = object()


def differences(key: str, given: Any, stored: Any) -> list[str]:
    """``key.sub: config X, checkpoint Y`` for each differing entry (dicts compared entry by entry)."""
    given, stored = plain(given), plain(stored)
    if isinstance(given, dict) and isinstance(stored, dict):
        lines = []
        for sub in sorted(set(given) | set(stored)):
            a, b = given.get(sub, _MISSING), stored.get(sub, _MISSING)
            if a is _MISSING or b is _MISSING or not same(a, b):
                lines.append(f"model.{key}.{sub}: config {_show(a)}, checkpoint {_show(b)}")
        return lines
    return [] if same(given, stored) else [f"model.{key}: config {_show(given)}, checkpoint {_show(stored)}"]


@dataclasses.dataclass
class CheckpointMerge:
    """What :func:`merge_checkpoint_hparams` decided: values to take, notices to print, refusals."""

    take: dict[str, Any] = dataclasses.field(default_factory=dict)
    notices: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)


def merge_checkpoint_hparams(
    stored: dict[str, Any], given: dict[str, Any], defaults: dict[str, Any], subcommand: str
) -> CheckpointMerge:
    """Key by key: the checkpoint's value where none was given, the given one where it was, or a conflict.

    ``stored``: the checkpoint's ``hyper_parameters``; ``given``: the parsed ``model`` config (the
    YAML and command line); ``defaults``: the parser's defaults for ``model`` (a value equal to its
    default counts as not given).
    """
    merge = CheckpointMerge()
    for key, value in stored.items():
        if key.startswith("_"):
            continue
        if key not in given:
            merge.ignored.append(key)
            continue
        mine = given[key]
        if same(mine, value):
            continue
        was_given = key not in defaults or not same(mine, defaults[key])
        if not was_given:
            merge.take[key] = value
            continue
        if key in ARCHITECTURE_KEYS:
            merge.conflicts.extend(differences(key, mine, value))
        elif key in CHECKPOINT_WINS_KEYS:
            merge.take[key] = value
            merge.notices.append(f"--model.{key}: using the checkpoint's {_show(value)}, not the given {_show(mine)} "
                                 "(it decides base weights the checkpoint may not hold)")
        elif key in TRAINING_ONLY_KEYS and subcommand != "fit":
            continue  # the optimiser's settings do not act outside fit
        else:
            merge.notices.append(f"--model.{key}: using the given {_show(mine)}; the checkpoint was saved with {_show(value)}")
    return merge


def conflict_message(ckpt_path: str, conflicts: list[str]) -> str:
    return (
        f"--ckpt_path {ckpt_path} holds the weights of another model than the config describes:\n  "
        + "\n  ".join(conflicts)
        + "\nThe weights fit only the architecture they were trained with. Drop these settings from the config "
        "and command line (the checkpoint's are then used), or give the checkpoint trained with them."
    )


# ------------------------------------------------------------------------------------ run paths
ROOT_PLACEHOLDER = "${trainer.default_root_dir}"


def expand_root_placeholder(config: Any, root: str | None = None) -> list[str]:
    """Replace ``${trainer.default_root_dir}`` in every string of a parsed config (in place).

    ``root`` defaults to the config's own ``trainer.default_root_dir`` (the current folder when it
    is unset, as in Lightning). Returns the dotted keys that were expanded. Strings without the
    placeholder, absolute or relative, are left as they are.
    """
    if root is None:
        trainer = _child(config, "trainer")
        root = (_child(trainer, "default_root_dir") if trainer is not None else None) or os.getcwd()
    root = str(root).rstrip("/") or "/"
    expanded: list[str] = []

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str):
            if ROOT_PLACEHOLDER in node:
                expanded.append(where)
                return node.replace(ROOT_PLACEHOLDER, root)
            return node
        if isinstance(node, list):
            for i, item in enumerate(node):
                node[i] = walk(item, f"{where}[{i}]")
        elif isinstance(node, dict):
            for key in list(node):
                node[key] = walk(node[key], f"{where}.{key}" if where else str(key))
        elif hasattr(node, "__dict__") and type(node).__name__ == "Namespace":
            for key, value in list(vars(node).items()):
                setattr(node, key, walk(value, f"{where}.{key}" if where else key))
        return node

    walk(config, "")
    return expanded


def _child(node: Any, key: str) -> Any:
    if node is None:
        return None
    return node.get(key) if isinstance(node, dict) else getattr(node, key, None)
