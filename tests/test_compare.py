"""`infra-pl compare` (issue 25): paired statistics on matching seeds, the table, and a tiny
2-variant x 2-seed comparison that resumes without redoing a finished run."""

import json
from pathlib import Path

import pytest
import yaml

from infra_pl.compare import (
    CompareError,
    CompareSpec,
    Variant,
    compare_table,
    contrast_table,
    in_process_runner,
    markdown_table,
    run_all,
    run_config,
    sign_test,
    spec_from_args,
    t_interval,
    write_summary,
)
from tests.conftest import TINY_DEMO, TINY_MODEL

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def result(variant, seed, math_correct, code_correct=5, total=10):
    return {"variant": variant, "seed": seed, "fit": {"optimizer_steps": 100},
            "correct": {"math": {"all": [math_correct, total], "1": [math_correct, total]},
                        "code": {"all": [code_correct, total]}}}


def test_sign_test_and_t_interval():
    assert sign_test([0.1] * 5) == (5, 0, 0, pytest.approx(0.0625))
    assert sign_test([0.1, -0.1, 0.0]) == (1, 1, 1, pytest.approx(1.0))
    mean, low, high = t_interval([1.0, 2.0, 3.0], 0.95)
    assert mean == 2.0 and low == pytest.approx(2.0 - 4.302653 / 3 ** 0.5) and high == pytest.approx(2.0 + 4.302653 / 3 ** 0.5)
    assert t_interval([0.5])[1] == float("-inf")


def test_paired_differences_use_matching_seeds_only():
    # Baseline has seeds 0, 1, 2; the variant 1, 2, 3. Seed 1 and 2 pair up; 0 and 3 are left out.
    # Paired, the variant is +1 item on each shared seed; unpaired means would say +2.33 items.
    results = [result("base", 0, 1), result("base", 1, 4), result("base", 2, 6),
               result("var", 1, 5), result("var", 2, 7), result("var", 3, 9)]
    rows = {(r["variant"], r["domain"], r["level"]): r for r in compare_table(results, "base", ["base", "var"])}
    row = rows[("var", "math", "all")]
    assert row["paired_seeds"] == [1, 2] and row["n_pairs"] == 2 and sorted(row["unpaired_seeds"]) == [0, 3]
    assert row["diff_per_seed"] == pytest.approx([0.1, 0.1]) and row["diff_mean"] == pytest.approx(0.1)
    assert row["accuracy_mean"] == pytest.approx(0.7) and rows[("base", "math", "all")]["accuracy_mean"] == pytest.approx(11 / 30)
    assert (row["wins"], row["losses"], row["ties"]) == (2, 0, 0) and row["sign_p"] == pytest.approx(0.5)
    assert "diff_mean" not in rows[("base", "math", "all")]
    # Two pairs get numbers but no verdict (their t interval is degenerate when the differences agree).
    assert row["verdict"] == "too few seeds"
    three = results + [result("base", 3, 8), result("var", 0, 3)]  # differences +0.2, +0.1, +0.1, +0.1
    rows3 = {(r["variant"], r["domain"], r["level"]): r for r in compare_table(three, "base", ["base", "var"])}
    assert rows3[("var", "math", "all")]["n_pairs"] == 4 and rows3[("var", "math", "all")]["verdict"] == "higher"
    assert rows3[("var", "code", "all")]["verdict"] == "within seed noise"
    # An extra contrast between two variants pairs them the same way.
    contrast = {(r["domain"], r["level"]): r for r in contrast_table(results, [["var", "base"]])}
    assert contrast[("math", "all")]["diff_per_seed"] == row["diff_per_seed"] and contrast[("math", "all")]["versus"] == "base"
    # Shuffling the order of the results (or of seeds within them) changes nothing.
    again = {(r["variant"], r["domain"], r["level"]): r for r in compare_table(results[::-1], "base", ["base", "var"])}
    assert again[("var", "math", "all")]["diff_per_seed"] == row["diff_per_seed"]


def test_markdown_table_lists_levels_and_differences():
    results = [result("base", s, 3 + s) for s in range(3)] + [result("var", s, 2 + s + (s % 2)) for s in range(3)]
    rows = compare_table(results, "base", ["base", "var"])
    text = markdown_table(rows, "base", title="demo")
    assert "## demo" in text and "| variant | seeds | all | L1 |" in text
    assert "paired difference to `base`" in text and "p=" in text and "within seed noise" in text


def _tiny_overrides(cache: Path) -> dict:
    return {
        "model.model_config": TINY_MODEL, "model.max_new_tokens": 8, "data.demo": TINY_DEMO,
        "data.cache_dir": str(cache), "data.eval_batch_size": 10, "trainer.max_steps": 6,
    }


def test_run_config_sets_seeds_and_paths(tmp_path):
    flip = Variant("flip", [str(CONFIGS / "demo.yaml"), str(CONFIGS / "variants" / "flip.yaml")])
    config = run_config(flip, 3, tmp_path / "r", {"trainer.max_steps": 7})
    assert config["seed_everything"] == 3 and config["data"]["seed"] == 3 and config["model"]["init_seed"] == 3
    # The overlay merged over the base; the mix (data.flip.seed) stays fixed across training seeds.
    assert config["data"]["flip"] == {"mode": "flip", "fraction": 0.5, "seed": 0}
    assert config["data"]["demo"]["n_train"] == 2000 and config["trainer"]["max_steps"] == 7
    assert config["trainer"]["max_steps"] == 7 and config["trainer"]["default_root_dir"] == str(tmp_path / "r")
    checkpoint = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    assert checkpoint["init_args"]["dirpath"] == str(tmp_path / "r" / "checkpoints")
    assert config["model"]["correctness_file"] == str(tmp_path / "r" / "correctness.jsonl")



def test_a_variant_is_a_base_and_its_overlays(tmp_path):
    """`--variant NAME=BASE,OVERLAY` or `config: [BASE, OVERLAY]` in a spec: merged as `fit -c BASE -c OVERLAY`."""
    demo, flip = str(CONFIGS / "demo.yaml"), str(CONFIGS / "variants" / "flip.yaml")
    spec, _ = spec_from_args(["--out", str(tmp_path), "--variant", f"baseline={demo}", "--variant", f"flip={demo},{flip}"])
    assert [v.files for v in spec.variants] == [[demo], [demo, flip]]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"out_dir": str(tmp_path), "variants": {
        "baseline": demo, "flip": {"config": [demo, flip], "overrides": {"data.flip.fraction": 0.25}}}}))
    spec, _ = spec_from_args(["-c", str(spec_file)])
    config = run_config(spec.variants[1], 0, tmp_path / "r", {})
    assert config["data"]["flip"] == {"mode": "flip", "fraction": 0.25, "seed": 0}
    with pytest.raises(CompareError, match="does not exist"):
        spec_from_args(["--out", str(tmp_path), "--variant", f"flip={demo},{tmp_path / 'missing.yaml'}"])

@pytest.mark.slow
def test_tiny_compare_resumes_without_redoing_finished_runs(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = CompareSpec(
        out_dir=str(tmp_path / "cmp"), seeds=[0, 1],
        variants=[Variant("baseline", str(CONFIGS / "demo.yaml")),
                  Variant("flip", [str(CONFIGS / "demo.yaml"), str(CONFIGS / "variants" / "flip.yaml")])],
        overrides=_tiny_overrides(tiny_cache), in_process=True, contrasts=[["flip", "baseline"]],
    )
    calls = []

    def counting(args, log):
        calls.append((args[0], str(Path(args[2]).parent)))
        in_process_runner(args, log)

    first = run_all(spec, counting, log=lambda line: None)
    assert [c[0] for c in calls] == ["fit", "validate"] * 4
    for res in first:  # every run its own folder, its own seed, the fixed step count recorded
        run = tmp_path / "cmp" / "runs" / res["variant"] / f"seed{res['seed']}"
        assert (run / "result.json").exists() and (run / "checkpoints" / "last.ckpt").exists()
        assert res["fit"]["seed"] == res["seed"] and res["fit"]["optimizer_steps"] == 6
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_seed"] == res["seed"]
        assert sum(total for _, total in (v["all"] for v in res["correct"].values())) == 2 * TINY_DEMO["n_eval"]

    # A rerun finds every result and trains nothing.
    calls.clear()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp" / "runs").rglob("last.ckpt")}
    again = run_all(spec, counting, log=lambda line: None)
    assert calls == [] and again == first
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp" / "runs").rglob("last.ckpt")}

    # An interrupted validate (finished fit, no result.json): only validate runs again.
    (tmp_path / "cmp" / "runs" / "flip" / "seed1" / "result.json").unlink()
    run_all(spec, counting, log=lambda line: None)
    assert [c[0] for c in calls] == ["validate"]

    # A finished run is never silently mixed with another setting.
    changed = CompareSpec(**{**spec.__dict__, "overrides": {**spec.overrides, "trainer.max_steps": 7}})
    with pytest.raises(CompareError, match="finished with another configuration"):
        run_all(changed, counting, log=lambda line: None)

    paths = write_summary(spec)
    table = json.loads(paths["table_json"].read_text())
    flip_all = next(r for r in table["rows"] if r["variant"] == "flip" and r["domain"] == "math" and r["level"] == "all")
    assert flip_all["paired_seeds"] == [0, 1] and table["meta"]["complete"]
    assert paths["figure"].exists() and paths["runs_csv"].exists() and list(paths["tensorboard"].glob("events.*"))
    assert "paired difference to `baseline`" in paths["table_md"].read_text()
    assert "| flip − baseline | math | 2 |" in paths["table_md"].read_text() and table["contrasts"]
