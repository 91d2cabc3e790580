"""A second `fit` into the same folder replaces last.ckpt (no last-v1.ckpt beside a stale one), and
`validate`/`attribute` name the checkpoint they load: path, global step, file time (issue 18)."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from infra_pl.cli import run_cli as main
from infra_pl.trainer import AttributionStep, InfraTrainer
from tests.test_cli import CONFIG, tiny_args

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def checkpoint_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("[infra-pl] checkpoint: ")]
    assert lines, err[-2000:]
    return lines[-1]


def test_second_fit_overwrites_last_and_validate_names_path_step_and_time(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt_dir = tmp_path / "runs/demo/checkpoints"
    main(["fit", *tiny_args(tiny_cache), *QUIET, "--trainer.max_steps", "2"])
    main(["fit", *tiny_args(tiny_cache), *QUIET, "--trainer.max_steps", "3"])
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == ["last.ckpt"]
    ckpt = ckpt_dir / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3  # the newer fit
    capsys.readouterr()

    main(["validate", *tiny_args(tiny_cache), *QUIET, "--ckpt_path", str(ckpt)])
    captured = capsys.readouterr()
    line = checkpoint_line(captured.err)
    assert str(ckpt) in line and "global step 3" in line
    assert re.search(r"written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)
    assert f"checkpoint       : {ckpt} (global step 3" in captured.out  # and in the end-of-run summary


def test_a_config_without_the_setting_gets_no_version_counter_on_last(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(Path(CONFIG).read_text())
    for callback in config["trainer"]["callbacks"]:
        callback.get("init_args", {}).pop("enable_version_counter", None)
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(config))
    for steps in ("1", "2"):
        args = tiny_args(tiny_cache)
        args[args.index(CONFIG)] = str(own)  # in place of the shipped config (a second -c would merge them)
        main(["fit", *args, *QUIET, "--trainer.max_steps", steps])
    assert "version counter off" in capsys.readouterr().err
    ckpt_dir = tmp_path / "runs/demo/checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == ["last.ckpt"]
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2


class OnePass(AttributionStep):
    """The smallest attribution step: one batch, which restores the checkpoint."""

    order = 10

    def run_attribution(self, trainer, pl_module, datamodule):
        limit = trainer.limit_predict_batches
        trainer.limit_predict_batches = 1
        try:
            trainer.run_attribution_pass("ekfac/setup", pl_module, datamodule, split="train", batch_size=1)
        finally:
            trainer.limit_predict_batches = limit


def test_attribute_names_the_checkpoint_it_loads(tmp_path, tiny_datamodule, capsys):
    from infra_pl.module import SFTModule
    from tests.conftest import TINY_MODEL

    trainer = InfraTrainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                           enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(SFTModule(model_config=TINY_MODEL, init_seed=1), datamodule=tiny_datamodule)
    ckpt = tmp_path / "fitted.ckpt"
    trainer.save_checkpoint(ckpt)

    attribute = InfraTrainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=tmp_path, callbacks=[OnePass()])
    capsys.readouterr()
    attribute.attribute(SFTModule(model_config=TINY_MODEL, init_seed=2), datamodule=tiny_datamodule, ckpt_path=str(ckpt))
    line = checkpoint_line(capsys.readouterr().err)
    assert str(ckpt) in line and "global step 2" in line and "written " in line
    assert attribute.loaded_checkpoint == line.removeprefix("[infra-pl] checkpoint: ")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(CONFIG).parent).glob("*.yaml")))
def test_shipped_configs_keep_last_without_a_version(name):
    config = yaml.safe_load((Path(CONFIG).parent / name).read_text())
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        args = callback.get("init_args") or {}
        if callback["class_path"].endswith("ModelCheckpoint") and args.get("save_last"):
            assert args.get("enable_version_counter") is False, name
