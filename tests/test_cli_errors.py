"""Known errors and configuration mistakes print one clear message, not a traceback or pages of
parser output; --debug / INFRA_PL_DEBUG=1 shows the traceback (issue 18)."""

import json
from pathlib import Path

import pytest
import yaml

from infra_pl.cli import main
from tests.test_cli import CONFIG, tiny_args


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("INFRA_PL_DEBUG", raising=False)


def demo_with_factors_args(tmp_path: Path, **changes) -> str:
    config = yaml.safe_load(Path(CONFIG).read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EKFACFactors"):
            callback["init_args"].update(changes)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    start = err.index("infra-pl: error:")  # what comes before are the run's own log lines
    return err[start:].strip().splitlines()


def test_a_bad_callback_value_names_the_class_the_option_and_the_allowed_values(tmp_path, tiny_cache, capsys):
    args = tiny_args(tiny_cache)
    args[args.index(CONFIG)] = demo_with_factors_args(tmp_path, fisher="ture")
    code, err = run(["attribute", *args], capsys)
    assert code == 1
    lines = error_lines(err)
    assert lines[0] == ("infra-pl: error: EKFACFactors: fisher must be 'true' (labels sampled from the model) or "
                        "'empirical', got 'ture'")
    assert len(lines) == 2 and "Traceback" not in err and "Union subtypes" not in err


def test_a_typo_in_a_callback_option_names_it_and_the_accepted_options(tmp_path, tiny_cache, capsys):
    args = tiny_args(tiny_cache)
    args[args.index(CONFIG)] = demo_with_factors_args(tmp_path, fishr="true")
    code, err = run(["attribute", *args], capsys)
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 2 and "usage:" not in err and "Given value" not in err, err
    assert "infra_pl.callbacks.EKFACFactors: Option 'fishr' is not accepted (did you mean 'fisher'?)" in lines[0]
    assert "EKFACFactors accepts: modules, fisher, damping" in lines[0]


def test_a_missing_checkpoint_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["attribute", *tiny_args(tiny_cache), "--ckpt_path", str(tmp_path / "nope.ckpt")]
    code, err = run(args, capsys)
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [f"infra-pl: error: checkpoint not found: {tmp_path / 'nope.ckpt'}",
                                "(run with --debug or INFRA_PL_DEBUG=1 for the traceback)"]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main([*args, "--debug"])


def test_a_bad_data_row_is_one_message(tmp_path, monkeypatch, tiny_cache, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"domain": "math", "messages": [\n')
    args = ["fit", *tiny_args(tiny_cache), "--data.train", json.dumps([{"path": str(bad)}]), "--trainer.max_steps", "1"]
    code, err = run(args, capsys)
    assert code == 1 and "Traceback" not in err
    assert error_lines(err)[0].startswith(f"infra-pl: error: {bad}, row 1: malformed JSON")
