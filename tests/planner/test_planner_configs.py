"""The real LLaMA3-8B / Qwen2.5-7B / 14B configs (local JSON, meta device) and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra_pl.planner import Settings, estimate_from_config, load_config, meta_model
from infra_pl.planner.__main__ import main
from infra_pl.planner.model import parameter_count

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"

# Published parameter counts (model cards / safetensors index totals).
REAL = {
    "llama3_8b.json": (8_030_261_248, 96, (14336, 4096)),
    "qwen25_7b.json": (7_615_616_512, 84, (18944, 3584)),
    "qwen25_14b.json": (14_770_033_664, 144, (13824, 5120)),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_configs_build_on_meta_with_published_sizes(name):
    count, n_modules, (intermediate, hidden) = REAL[name]
    model = meta_model(load_config(CONFIGS / name))
    assert parameter_count(model) == count
    assert all(p.device.type == "meta" for p in model.parameters())
    est = estimate_from_config(load_config(CONFIGS / name), Settings(batch_size=1, seq_len=4096))
    assert len(est.modules) == n_modules  # gate, up, down per layer
    assert {(m.out_features, m.in_dim) for m in est.modules} == {(intermediate, hidden), (hidden, intermediate)}
    assert est.weight_bytes >= 2 * count  # bf16 weights (+ rotary buffers)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path)
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type"):
        load_config(bad)


def test_command_prints_the_plan_and_json(capsys):
    config = str(CONFIGS / "qwen25_7b.json")
    assert main(["--model-config", config, "--budget", "80GiB", "--seq-len", "4096"]) == 0
    text = capsys.readouterr().out
    assert "| lambda pass |" in text and "partition(s)" in text and "Qwen/Qwen2.5-7B-Instruct" in text
    assert main(["--model-config", config, "--budget", "80GiB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    flat = [name for group in plan["partitions"] for name in group]
    assert flat == plan["modules"] and len(plan["partitions"]) > 1
    # the training index's disk size: Σ_modules min(k, out)·min(k, in) int8 values + a float32 scale per module
    assert main(["--model-config", config, "--json", "--n-train", "1000", "--index-rank", "64"]) == 0
    index = json.loads(capsys.readouterr().out)["index"]
    assert index["modules"] == 84 and index["bytes_per_example"] == 84 * (64 * 64 + 4)
    assert index["total_bytes"] == 1000 * index["bytes_per_example"]
    assert main(["--model-config", config, "--index-dtype", "float16", "--index-rank", "32"]) == 0
    assert f"{84 * (32 * 32 * 2 + 4) / 1024:.1f} KiB per example" in capsys.readouterr().out
    # a budget that cannot hold the model and one batch: exit code 2 and the reason
    assert main(["--model-config", config, "--budget", "8GiB"]) == 2
    assert "before any module's factors" in capsys.readouterr().err


def test_command_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--model-config", "--budget", "--headroom", "--batch-size", "--seq-len", "--dtype", "--factor-dtype",
                   "--modules", "--measurements", "--fisher", "--padding", "--lora", "--json", "--index-rank",
                   "--index-dtype", "--n-train"):
        assert option in text
