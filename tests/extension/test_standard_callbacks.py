"""configs/demo.yaml + configs/variants/standard_callbacks.yaml (tiny variant): our callbacks + ModelCheckpoint, EarlyStopping,
LearningRateMonitor, RichProgressBar, CSVLogger + TensorBoardLogger, and a user hook callback listed in
YAML, through fit, validate and attribute."""

import csv
import json
from pathlib import Path

import pandas as pd
import torch
import yaml

from infra_pl.cli import run_cli
from infra_pl.config_files import load_configs
from tests.conftest import TINY_DEMO, TINY_MODEL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG = [CONFIGS / "demo.yaml", CONFIGS / "variants" / "standard_callbacks.yaml"]  # -c BASE -c OVERLAY


def tiny_config(tmp_path: Path, cache: Path) -> Path:
    config = load_configs(CONFIG)
    config["model"].update({"model_config": TINY_MODEL, "time_budget_s": None, "max_new_tokens": 16})
    config["data"].update({"demo": TINY_DEMO, "cache_dir": str(cache), "eval_batch_size": 10})
    config["trainer"]["max_steps"] = 12  # 60 examples / 16 per batch: 3 epochs, a validation after each
    # CSV first: figures must still reach TensorBoard, which is then not `trainer.logger`.
    config["trainer"]["logger"] = config["trainer"]["logger"][::-1]
    for callback in config["trainer"]["callbacks"]:
        args = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("InfluenceScores"):
            args.update({"token_top_k": 2, "sentence_top_k": 1})
            args["measurements"][1]["init_args"].update({"n": 3, "domains": ["math"]})  # AnswerMargin
        if callback["class_path"].endswith("AttributionReport"):
            args.update({"top_k": 1, "n_boot": 100, "tensorboard_heatmaps": 0})  # figures are the slow part
    config["trainer"]["callbacks"].append(
        {"class_path": "top_proponents_callback.TopProponentsJSONL", "init_args": {"k": 5}}  # examples/ is on sys.path
    )
    path = tmp_path / "standard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_validate_attribute_with_standard_callbacks_and_two_loggers(tmp_path, monkeypatch, tiny_cache):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    config = str(tiny_config(tmp_path, tiny_cache))
    root = tmp_path / "runs/demo_standard"

    fit = run_cli(["fit", "-c", config])
    kinds = {type(c).__name__ for c in fit.trainer.callbacks}
    assert {"ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "RichProgressBar", "EKFACFactors",
            "InfluenceScores", "AttributionReport", "TopProponentsJSONL"} <= kinds
    ckpt = root / "checkpoints/last.ckpt"
    best = [p for p in (root / "checkpoints").glob("epoch*.ckpt")]
    assert ckpt.exists() and len(best) == 1, "ModelCheckpoint kept the best val/loss checkpoint and last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert any("EarlyStopping" in key for key in saved["callbacks"]), "EarlyStopping tracked val/loss"
    with next(root.glob("csv/version_*/metrics.csv")).open() as handle:
        columns = set(next(csv.reader(handle)))
    assert {"train/loss", "val/loss", "lr-AdamW/pg1"} <= columns, columns

    validate = run_cli(["validate", "-c", config, "--ckpt_path", str(ckpt)])
    correctness = validate.model.last_correctness_path
    rows = [json.loads(line) for line in correctness.read_text().splitlines()]
    assert len(rows) == 2 * TINY_DEMO["n_eval"]
    # The 12-step model emits only newlines, which hold no target token; give its wrong rows a text
    # answer (another item's reference) so AnswerMargin has (reference, own answer) pairs to measure.
    references = {e["id"]: e["messages"][-1]["content"] for e in validate.datamodule.eval_examples}
    ids = [r["id"] for r in rows]
    for k, row in enumerate(rows):
        if not row["correct"] and not row["generated"].strip():
            row["generated"] = references[ids[(k + 1) % len(ids)]]
    correctness.write_text("".join(json.dumps(r) + "\n" for r in rows))

    attribute = run_cli(["attribute", "-c", config, "--ckpt_path", str(ckpt)])
    state = attribute.trainer.attribution_state
    scores = pd.read_parquet(state.scores.instance_scores_path)
    measured = [c for c in scores.columns if c.startswith("score_")]
    assert measured == ["score_code", "score_math", "score_margin_math"]
    assert len(scores) == TINY_DEMO["n_train"]
    info = json.loads((root / "attribution/scores/measurement_info.json").read_text())
    assert all("f_value" in item for item in info.values())
    assert Path(state.report.html_path).exists()

    # The user's hook callback, listed in YAML, saw all three products and exported the top 5 per measurement.
    export = next(c for c in attribute.trainer.callbacks if type(c).__name__ == "TopProponentsJSONL")
    assert export.events == ["factors", "scores", "report"]
    rows = [json.loads(line) for line in export.path.read_text().splitlines()]
    for column in measured:
        name = column.removeprefix("score_")
        assert [r["id"] for r in rows if r["measurement"] == name] == list(scores.nlargest(5, column)["id"])

    # Figures reach the TensorBoard logger although the CSV logger comes first.
    tensorboard_dirs = sorted(root.glob("tensorboard/version_*"))
    images = set()
    for directory in tensorboard_dirs:
        events = EventAccumulator(str(directory), size_guidance={"images": 0})
        events.Reload()
        images |= set(events.Tags()["images"])
    assert {"ekfac/spectra", "attribution/score_histograms", "top_proponents/math"} <= images, images
