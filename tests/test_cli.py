"""The CLI in-process: --help, --print_config, fit then validate on a tiny demo."""

import json
from pathlib import Path

import pytest

from infra_pl.cli import run_cli as main
from infra_pl.planner import format_bytes
from tests.conftest import TINY_DEMO, TINY_MODEL

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def tiny_args(cache) -> list[str]:
    args = ["-c", CONFIG, "--data.cache_dir", str(cache), "--model.max_new_tokens", "16", "--data.eval_batch_size", "10"]
    for key, value in TINY_DEMO.items():
        args += [f"--data.demo.{key}", str(value)]
    args += ["--model.model_config", json.dumps(TINY_MODEL)]
    return args


def test_help_documents_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.time_budget_s", "--model.lora", "--data.max_length", "--data.train", "--threads"):
        assert option in out
    assert "wall-clock time" in out  # docstring help text reaches --help


def test_print_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", CONFIG, "--print_config"])
    out = capsys.readouterr().out
    # The resolved demo config: the step schedule, no wall-clock budget, the attribution callbacks.
    assert "max_steps: 1500" in out and "time_budget_s: null" in out
    assert "class_path: infra_pl.callbacks.EKFACFactors" in out and "class_path: infra_pl.callbacks.InfluenceScores" in out


def test_fit_then_validate_writes_checkpoint_logs_and_correctness(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *tiny_args(tiny_cache), "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false"])
    ckpt = tmp_path / "runs/demo/checkpoints/last.ckpt"
    assert ckpt.exists()
    cli = main(["validate", *tiny_args(tiny_cache), "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "correctness file" in out and "TensorBoard logs" in out and "checkpoint" in out
    path = cli.model.last_correctness_path
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2 * TINY_DEMO["n_eval"]
    assert {r["domain"] for r in rows} == {"math", "code"}
    assert set(rows[0]) >= {"id", "domain", "correct", "generated", "status"}
    events = list((tmp_path / "runs/demo/tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard event files are written"


def print_plan(tiny_cache, capsys, *extra: str) -> str:
    """Run ``attribute --print_plan true`` (it must exit 0) and return what it printed."""
    with pytest.raises(SystemExit) as exit_info:
        main(["attribute", *tiny_args(tiny_cache), *extra, "--print_plan", "true"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def factors_callback_yaml(path: Path, device_budget: str) -> str:
    """A config that replaces the callbacks with an EKFACFactors holding ``device_budget``."""
    path.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: infra_pl.callbacks.EKFACFactors\n"
        f"      init_args: {{batch_size: 4, device_budget: {device_budget}}}\n"
    )
    return str(path)


def test_attribute_print_plan_prints_the_estimate_and_attributes_nothing(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    out = print_plan(tiny_cache, capsys)
    assert "Memory plan for LlamaForCausalLM" in out
    assert "2 measurement(s)" in out  # the default measurement: one per evaluation domain (math, code)
    for phase in ("covariance pass", "lambda pass", "instance scores", "token scores (JVP)"):
        assert f"| {phase} |" in out
    assert "no partition plan" in out  # CPU model and no device_budget: estimate only, and how to get a plan
    assert not (tmp_path / "runs/demo/attribution").exists()


def test_attribute_print_plan_with_a_budget_plans_partitions(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    out = print_plan(tiny_cache, capsys, "-c", factors_callback_yaml(tmp_path / "budget.yaml", "8GiB"))
    assert f"budget {format_bytes(8 * 2**30)} per device" in out, out[:400]
    assert "1 partition(s); highest peak" in out and "batch 4 x" in out


def test_attribute_print_plan_says_when_nothing_fits(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    out = print_plan(tiny_cache, capsys, "-c", factors_callback_yaml(tmp_path / "budget.yaml", "1MiB"))
    assert "| covariance pass |" in out  # the estimate is still shown ...
    assert "\nerror: " in out and "partition(s); highest peak" not in out  # ... with why no plan exists


def test_print_plan_is_refused_outside_attribute(tiny_cache):
    with pytest.raises(ValueError, match="applies to `attribute`"):
        main(["fit", *tiny_args(tiny_cache), "--print_plan", "true"])
