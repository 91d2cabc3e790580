"""The real-data recipes and the demo flip configs (base + overlay): valid sources, options and flip settings.

That an overlay changes only its own keys is ``tests/test_config_variants.py``.
"""

import collections
import dataclasses
from pathlib import Path

import pytest

from infra_pl.config_files import load_configs
from infra_pl.data.demo import ensure_demo
from infra_pl.data.difficulty import DifficultyOptions
from infra_pl.data.flip import FlipOptions, apply_flip
from infra_pl.data.sources import ADAPTERS, Source, load_source

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
BASES = ("llama3_8b_metamath_oss", "qwen25_7b_stratos")
VARIANTS = ("flip", "reverse_flip", "no_exploration")
# (base, overlay or None): the recipes, their variants, and the demo flips.
RECIPES = ([(b, None) for b in BASES] + [(b, f"{b}_{v}") for b in BASES for v in VARIANTS]
           + [("demo", "flip"), ("demo", "reverse_flip")])
SOURCE_FIELDS = {f.name for f in dataclasses.fields(Source)}


def _config(base, overlay=None):
    paths = [CONFIGS / f"{base}.yaml"] + ([CONFIGS / "variants" / f"{overlay}.yaml"] if overlay else [])
    return load_configs(paths)


@pytest.mark.parametrize("base, overlay", RECIPES)
def test_recipe_sources_and_options_are_valid(base, overlay):
    name = f"{base} + {overlay}"
    data = _config(base, overlay)["data"]
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
        assert data.get("pool") or "demo" in data, f"{name}: a flip needs pool sources (the demo has its own pool)"
    if "difficulty" in data:
        DifficultyOptions(**data["difficulty"])


@pytest.mark.parametrize("overlay, mode", [("flip", "flip"), ("reverse_flip", "reverse")])
def test_demo_flip_configs_do_what_they_say(tmp_path, overlay, mode):
    """The demo flip recipe, run through the plain functions the DataModule will call."""
    data = _config("demo", overlay)["data"]
    options = FlipOptions(**data["flip"])
    assert options.mode == mode and data["demo"] == _config("demo")["data"]["demo"]
    files = ensure_demo(tmp_path, seed=0, n_train=120, n_eval=10, n_pool=240)
    train = load_source(Source("demo:train"), files)
    pool = [e for s in data.get("pool") or [{"path": "demo:pool"}] for e in load_source(Source(**s), files)]
    evaluation = load_source(Source("demo:eval_math"), files) + load_source(Source("demo:eval_code"), files)
    flipped, weights, summary = apply_flip(train, pool, options, exclude=evaluation)
    assert weights is None and len(flipped) == len(train)
    assert collections.Counter(e["domain"] for e in flipped) == collections.Counter(e["domain"] for e in train)
    mean = lambda xs, d: sum(e["difficulty"] for e in xs if e["domain"] == d) / sum(e["domain"] == d for e in xs)
    sign = 1 if mode == "flip" else -1
    assert sign * (mean(flipped, "math") - mean(train, "math")) > 0.5
    assert sign * (mean(flipped, "code") - mean(train, "code")) < -0.5


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize(  # every kind of key
    "base, overlay", [("llama3_8b_metamath_oss", None), ("llama3_8b_metamath_oss", "llama3_8b_metamath_oss_no_exploration"),
                      ("qwen25_7b_stratos", "qwen25_7b_stratos_flip"), ("demo", "reverse_flip")]
)
def test_recipes_parse_with_the_cli(base, overlay, capsys):
    from infra_pl.cli import main

    files = ["-c", str(CONFIGS / f"{base}.yaml")] + (["-c", str(CONFIGS / "variants" / f"{overlay}.yaml")] if overlay else [])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *files, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "data:" in capsys.readouterr().out
