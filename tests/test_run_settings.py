"""Settings are not overridden without a word (issue 18, item 4).

A checkpoint's hyperparameters used to replace every given model setting (a different
``--model.model_config`` ran the checkpoint's and gave identical scores; ``--model.max_new_tokens``
was ignored), and ``--trainer.default_root_dir`` moved nothing because the demo config pinned the
logger's and the checkpoints' folders to ``runs/demo``.
"""

from __future__ import annotations

import json

import pytest
from jsonargparse import Namespace

from infra_pl.cli import run_cli as main
from infra_pl.errors import ConfigError
from infra_pl.run_settings import expand_root_placeholder, merge_checkpoint_hparams
from tests.test_cli import tiny_args

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_merge_takes_unset_keeps_given_refuses_another_architecture():
    stored = {"model_config": {"hidden_size": 32, "num_hidden_layers": 2}, "max_new_tokens": 16, "dtype": "float32",
              "learning_rate": 0.005, "init_seed": 0, "old_option": 1, "_instantiator": "x"}
    defaults = {"model_config": None, "max_new_tokens": 256, "dtype": "float32", "learning_rate": 3e-3, "init_seed": 0}
    same_model = {**defaults, "model_config": {"hidden_size": "32", "num_hidden_layers": 2}}

    merge = merge_checkpoint_hparams(stored, {**same_model, "learning_rate": 0.1}, defaults, "validate")
    assert merge.take == {"max_new_tokens": 16} and not merge.conflicts and not merge.notices  # lr: fit only
    assert merge.ignored == ["old_option"]

    merge = merge_checkpoint_hparams(stored, {**same_model, "max_new_tokens": 64, "init_seed": 3}, defaults, "validate")
    assert merge.take == {"init_seed": 0, "learning_rate": 0.005}  # the unset learning rate: the checkpoint's
    assert any(n.startswith("--model.max_new_tokens: using the given 64") and "saved with 16" in n for n in merge.notices)
    assert any(n.startswith("--model.init_seed: using the checkpoint's 0") for n in merge.notices)

    merge = merge_checkpoint_hparams(stored, {**same_model, "learning_rate": 0.1}, defaults, "fit")  # a resumed fit
    assert any("--model.learning_rate: using the given 0.1" in n for n in merge.notices)

    other = {**defaults, "model_config": {"hidden_size": 48}}
    merge = merge_checkpoint_hparams(stored, other, defaults, "attribute")
    assert merge.conflicts == ["model.model_config.hidden_size: config 48, checkpoint 32",
                               "model.model_config.num_hidden_layers: config (not set), checkpoint 2"]


def test_root_placeholder_is_expanded_everywhere_and_nothing_else_changes(tmp_path, monkeypatch):
    config = Namespace(
        trainer=Namespace(
            default_root_dir="elsewhere",
            logger=[Namespace(class_path="TensorBoardLogger", init_args=Namespace(save_dir="${trainer.default_root_dir}")),
                    Namespace(class_path="CSVLogger", init_args=Namespace(save_dir="pinned"))],
            callbacks=[Namespace(class_path="ModelCheckpoint",
                                 init_args=Namespace(dirpath="${trainer.default_root_dir}/checkpoints"))],
        ),
        model=Namespace(correctness_file="${trainer.default_root_dir}/c.jsonl", model_config={"a": "${x}"}),
    )
    assert sorted(expand_root_placeholder(config)) == ["model.correctness_file", "trainer.callbacks[0].init_args.dirpath",
                                                       "trainer.logger[0].init_args.save_dir"]
    assert config.trainer.logger[0].init_args.save_dir == "elsewhere" and config.trainer.logger[1].init_args.save_dir == "pinned"
    assert config.trainer.callbacks[0].init_args.dirpath == "elsewhere/checkpoints"
    assert config.model.correctness_file == "elsewhere/c.jsonl" and config.model.model_config == {"a": "${x}"}
    monkeypatch.chdir(tmp_path)  # no root: the current folder, as in Lightning
    unset = Namespace(trainer=Namespace(default_root_dir=None, logger=Namespace(save_dir="${trainer.default_root_dir}")))
    expand_root_placeholder(unset)
    assert unset.trainer.logger.save_dir == str(tmp_path)


def test_root_dir_moves_every_output_and_checkpoint_values_never_override_silently(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "elsewhere"
    args = [*tiny_args(tiny_cache), *QUIET, "--trainer.default_root_dir", str(root)]
    main(["fit", *args, "--trainer.max_steps", "2"])
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.exists(), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.ckpt"))
    assert list((root / "tensorboard").rglob("events.out.tfevents.*"))
    capsys.readouterr()

    # A given generation length is used (the checkpoint was saved with 16), and said so.
    cli = main(["validate", *args, "--ckpt_path", str(ckpt), "--model.max_new_tokens", "3"])
    err = capsys.readouterr().err
    assert cli.model.hparams.max_new_tokens == 3
    assert "--model.max_new_tokens: using the given 3; the checkpoint was saved with 16" in err
    assert cli.model.last_correctness_path.is_relative_to(root)
    assert cli.model.last_correctness_path.is_file()
    assert not (tmp_path / "runs").exists()  # nothing went to the config's old folders

    # Another architecture than the checkpoint's is refused, naming each key with both values.
    other = json.dumps({**json.loads(args[args.index("--model.model_config") + 1]), "hidden_size": 48})
    with pytest.raises(ConfigError) as refused:
        main(["validate", *args, "--ckpt_path", str(ckpt), "--model.model_config", other])
    assert "model.model_config.hidden_size: config 48, checkpoint 32" in str(refused.value)
