"""configs/variants/*.yaml: each variant is a small overlay over its base config, composed as
``infra-pl fit -c BASE -c OVERLAY``. They replaced twelve full copies of the bases (issue 19).

For every overlay: the resolved configuration (``--print_config``) of base + overlay equals that of
the base except on the keys the overlay sets, and those hold the values the old full copy had
(written down below from the old files' resolved configs); every key the overlay sets changes the
resolved value (no copied base keys); and ``infra-pl compare``'s own YAML merge gives the same
configuration as the CLI's.
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import pytest
import yaml

from infra_pl.config_files import load_configs

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ("qwen25_7b_stratos", "llama3_8b_metamath_oss")

FLIP = {"mode": "flip", "fraction": 0.5, "seed": 0}
REVERSE = {"mode": "reverse", "fraction": 0.5, "seed": 0}
SCORES = "runs/demo/attribution/scores/instance_scores.parquet"
CURATE_TOP = {"scores": SCORES, "mode": "top", "by": "mean_z", "per_token": False, "fraction": 0.5,
              "quotas": "proportional", "seed": 0}
POOL = {
    "qwen25_7b_stratos": [{"path": "open-thoughts/OpenThoughts-114k", "adapter": "openthoughts",
                           "config_name": "default", "split": "train",
                           "options": {"bad_rows": "skip", "system": "@long_cot"}}],
    "llama3_8b_metamath_oss": [
        {"path": "meta-math/MetaMathQA", "adapter": "metamathqa", "split": "train",
         "options": {"bad_rows": "skip", "system": "@short_math"}},
        {"path": "ise-uiuc/Magicoder-Evol-Instruct-110K", "adapter": "magicoder", "split": "train",
         "options": {"bad_rows": "skip", "system": "@short_code"}},
    ],
}
STANDARD_CALLBACKS = [
    "lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.LearningRateMonitor", "lightning.pytorch.callbacks.RichProgressBar",
    "infra_pl.callbacks.EKFACFactors", "infra_pl.callbacks.InfluenceScores", "infra_pl.callbacks.AttributionReport",
]

# overlay -> (its base, {resolved key: the value the old full copy had there}). The demo's flip
# overlays leave data.pool unset: the DataModule then draws from demo:pool, as the old copies said
# explicitly. The old demo variant copies also carried stale attribution settings
# (InfluenceScores sentence_top_k 5, no pairwise); the overlays take the base's.
VARIANTS: dict[str, tuple[str, dict]] = {
    "flip": ("demo", {"trainer.default_root_dir": "runs/demo_flip", "data.flip": FLIP}),
    "reverse_flip": ("demo", {"trainer.default_root_dir": "runs/demo_reverse_flip", "data.flip": REVERSE}),
    "no_exploration": ("demo", {"trainer.default_root_dir": "runs/demo_no_exploration", "data.remove_exploration": True}),
    "curated": ("demo", {"trainer.default_root_dir": "runs/demo_curated", "data.curate": {**CURATE_TOP, "random": False}}),
    "curated_random": ("demo", {"trainer.default_root_dir": "runs/demo_curated_random",
                                "data.curate": {**CURATE_TOP, "random": True}}),
    "derived_flip": ("demo", {"trainer.default_root_dir": "runs/demo_derived_flip",
                              "data.curate": {"scores": SCORES, "mode": "derived_flip", "by": "mean_z",
                                              "per_token": False, "fraction": 0.5, "seed": 0}}),
    "standard_callbacks": ("demo", {
        "trainer.default_root_dir": "runs/demo_standard",
        "trainer.check_val_every_n_epoch": 1,
        "trainer.logger": [{"class_path": "lightning.pytorch.loggers.TensorBoardLogger"},
                           {"class_path": "lightning.pytorch.loggers.CSVLogger"}],
        "trainer.callbacks": [{"class_path": name} for name in STANDARD_CALLBACKS],
    }),
    **{f"{recipe}_flip": (recipe, {"trainer.default_root_dir": f"runs/{recipe}_flip", "data.flip": FLIP,
                                   "data.pool": POOL[recipe]}) for recipe in RECIPES},
    **{f"{recipe}_reverse_flip": (recipe, {"trainer.default_root_dir": f"runs/{recipe}_reverse_flip",
                                           "data.flip": REVERSE, "data.pool": POOL[recipe]}) for recipe in RECIPES},
    **{f"{recipe}_no_exploration": (recipe, {"trainer.default_root_dir": f"runs/{recipe}_no_exploration",
                                             "data.remove_exploration": True}) for recipe in RECIPES},
}


@functools.lru_cache(maxsize=None)
def resolved(*files: str) -> dict:
    """``infra-pl fit -c FILE ... --print_config``, parsed."""
    from infra_pl.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *[arg for f in files for arg in ("-c", f)], "--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()[-2000:]
    return yaml.safe_load(out.getvalue())


def composed(name: str) -> dict:
    base, _ = VARIANTS[name]
    return resolved(str(CONFIGS / f"{base}.yaml"), str(CONFIGS / "variants" / f"{name}.yaml"))


def leaves(node, prefix: str = "") -> dict:
    """Dotted key -> value for every mapping leaf; a list is one leaf (a later -c file replaces it whole)."""
    if isinstance(node, dict) and node:
        found = {}
        for key, value in node.items():
            found.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {prefix: node}


def matches(actual, expected) -> bool:
    """``expected`` is contained in ``actual`` (mappings: its keys; lists: item by item)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(matches(actual.get(k, "<absent>"), v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(matches, actual, expected))
    return actual == expected


def under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def test_every_overlay_is_listed_here():
    assert sorted(p.stem for p in (CONFIGS / "variants").glob("*.yaml")) == sorted(VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_overlay_changes_exactly_its_keys_to_the_old_values(name):
    base, expected = VARIANTS[name]
    before, after = leaves(resolved(str(CONFIGS / f"{base}.yaml"))), leaves(composed(name))
    changed = {k for k in set(before) | set(after) if before.get(k, "<absent>") != after.get(k, "<absent>")}
    assert all(under(k, expected) for k in changed), sorted(k for k in changed if not under(k, expected))
    merged = composed(name)
    for key, value in expected.items():
        node = merged
        for part in key.split("."):
            node = node[part]
        assert matches(node, value), (key, node, value)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_overlay_holds_only_keys_that_differ_from_its_base(name):
    base, _ = VARIANTS[name]
    overlay = yaml.safe_load((CONFIGS / "variants" / f"{name}.yaml").read_text())
    before, after = leaves(resolved(str(CONFIGS / f"{base}.yaml"))), leaves(composed(name))
    for key in leaves(overlay):
        assert key in after, f"variants/{name}.yaml sets {key}, which the resolved config does not have"
        assert before.get(key, "<absent>") != after[key], f"variants/{name}.yaml repeats {key} of {base}.yaml"
    assert "default_root_dir" in overlay["trainer"], "each variant writes its own run folder"


@pytest.mark.parametrize("name", ["flip", "standard_callbacks", "qwen25_7b_stratos_flip"])
def test_compare_merges_the_yaml_as_the_cli_does(name, tmp_path):
    base, _ = VARIANTS[name]
    merged = load_configs([CONFIGS / f"{base}.yaml", CONFIGS / "variants" / f"{name}.yaml"])
    path = tmp_path / "merged.yaml"
    path.write_text(yaml.safe_dump(merged))
    assert resolved(str(path)) == composed(name)
