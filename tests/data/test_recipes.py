"""The real-data recipes and the demo flip configs: valid sources, options and flip settings."""

import collections
import dataclasses
from pathlib import Path

import pytest
import yaml

from infra_pl.data.demo import ensure_demo
from infra_pl.data.difficulty import DifficultyOptions
from infra_pl.data.flip import FlipOptions, apply_flip
from infra_pl.data.sources import ADAPTERS, Source, load_source

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
BASES = ("llama3_8b_metamath_oss", "qwen25_7b_stratos")
VARIANTS = ("flip", "reverse_flip", "no_exploration")
RECIPES = [f"{b}.yaml" for b in BASES] + [f"{b}_{v}.yaml" for b in BASES for v in VARIANTS] + ["demo_flip.yaml", "demo_reverse_flip.yaml"]
# Data keys the variants add (flip, pool loading, difficulty, exploration cut).
NEW_DATA_KEYS = {"flip", "difficulty", "remove_exploration"}
SOURCE_FIELDS = {f.name for f in dataclasses.fields(Source)}


def _config(name):
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_sources_and_options_are_valid(name):
    data = _config(name)["data"]
    for role in ("train", "eval", "pool"):
        for source in data.get(role) or []:
            assert set(source) <= SOURCE_FIELDS, (name, source)
            assert source.get("adapter", "infra") in ADAPTERS, (name, source)
            adapter = ADAPTERS[source.get("adapter", "infra")]
            if hasattr(adapter, "bind"):
                options = dict(source.get("options") or {})
                if isinstance(options.get("difficulty_table"), dict):  # a local export the user makes: use the fixture
                    options["difficulty_table"] = {**options["difficulty_table"], "path": str(HUB / "math_train_levels.jsonl")}
                adapter.bind(options, source["path"])  # unknown option names fail here
    if "flip" in data:
        FlipOptions(**data["flip"])
        assert data.get("pool"), f"{name}: a flip needs pool sources"
    if "difficulty" in data:
        DifficultyOptions(**data["difficulty"])


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_change_only_their_own_keys(base, variant):
    original, changed = _config(f"{base}.yaml"), _config(f"{base}_{variant}.yaml")
    added = set(changed["data"]) - set(original["data"])
    assert added <= NEW_DATA_KEYS | {"pool"}
    for key in added:
        changed["data"].pop(key)
    assert repr(changed).replace(f"runs/{base}_{variant}", f"runs/{base}") == repr(original)
    if variant == "no_exploration":
        assert added == {"remove_exploration"}
    else:
        assert _config(f"{base}_{variant}.yaml")["data"]["flip"]["mode"] == ("flip" if variant == "flip" else "reverse")


@pytest.mark.parametrize("name, mode", [("demo_flip.yaml", "flip"), ("demo_reverse_flip.yaml", "reverse")])
def test_demo_flip_configs_do_what_they_say(tmp_path, name, mode):
    """The demo flip recipe, run through the plain functions the DataModule will call."""
    data = _config(name)["data"]
    options = FlipOptions(**data["flip"])
    assert options.mode == mode and data["demo"] == _config("demo.yaml")["data"]["demo"]
    files = ensure_demo(tmp_path, seed=0, n_train=120, n_eval=10, n_pool=240)
    train = load_source(Source("demo:train"), files)
    pool = [e for s in data["pool"] for e in load_source(Source(**s), files)]
    evaluation = load_source(Source("demo:eval_math"), files) + load_source(Source("demo:eval_code"), files)
    flipped, weights, summary = apply_flip(train, pool, options, exclude=evaluation)
    assert weights is None and len(flipped) == len(train)
    assert collections.Counter(e["domain"] for e in flipped) == collections.Counter(e["domain"] for e in train)
    mean = lambda xs, d: sum(e["difficulty"] for e in xs if e["domain"] == d) / sum(e["domain"] == d for e in xs)
    sign = 1 if mode == "flip" else -1
    assert sign * (mean(flipped, "math") - mean(train, "math")) > 0.5
    assert sign * (mean(flipped, "code") - mean(train, "code")) < -0.5


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize(  # every kind of key; the other variants differ from these only as checked above
    "name", ["llama3_8b_metamath_oss.yaml", "llama3_8b_metamath_oss_no_exploration.yaml", "qwen25_7b_stratos_flip.yaml", "demo_reverse_flip.yaml"]
)
def test_recipes_parse_with_the_cli(name, capsys):
    from infra_pl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "data:" in capsys.readouterr().out
