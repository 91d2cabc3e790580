"""Help and end-of-run messages say what a user needs (issue 18, item 9).

``infra-pl --help`` answers without importing Lightning (it took 7-8 s, most of it Lightning's
import); ``attribute --help`` lists the attribution options and how to see their documentation;
``--ckpt_path`` has a description; ``fit`` says when it stopped on its time budget.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from infra_pl.cli import EXTRA_COMMANDS, SUBCOMMAND_HELP
from tests.test_cli import tiny_args

PROBE = """
import sys, time
start = time.perf_counter()
from infra_pl.cli import main
try:
    main(["--help"])
except SystemExit as exit:
    code = exit.code
print("SECONDS", time.perf_counter() - start, "CODE", code, "LIGHTNING", "lightning" in sys.modules, "TORCH", "torch" in sys.modules)
"""


def test_top_level_help_does_not_import_lightning():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[2:] == ["CODE", "0", "LIGHTNING", "False", "TORCH", "False"], done.stdout[-500:]
    for name in ("fit", "validate", "attribute", "SUBCOMMAND --help"):
        assert name in done.stdout


def test_top_level_help_lists_every_subcommand():
    from infra_pl.cli_app import InfraCLI

    assert list(SUBCOMMAND_HELP) == list(InfraCLI.subcommands())
    assert set(EXTRA_COMMANDS).isdisjoint(SUBCOMMAND_HELP)


def test_no_subcommand_prints_the_help_and_fails(capsys):
    from infra_pl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "give a subcommand" in capsys.readouterr().err


def test_attribute_help_lists_the_attribution_options_and_describes_ckpt_path(capsys):
    from infra_pl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["attribute", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("EKFACFactors", "InfluenceScores", "AttributionReport"):
        assert f"infra-pl attribute --trainer.callbacks.help infra_pl.callbacks.{name}" in out
    for option in ("fisher", "damping", "compute_dtype", "n_correct", "token_top_k", "n_boot"):
        assert option in out
    ckpt = out[out.index("--ckpt_path CKPT_PATH\n"):]
    assert "the fitted weights to attribute" in ckpt.split("(type:")[0]


def test_fit_says_it_stopped_on_its_time_budget(tmp_path, monkeypatch, tiny_cache, capsys):
    from infra_pl.cli import run_cli

    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    cli = run_cli(["fit", *tiny_args(tiny_cache), "--trainer.max_steps", "100000", "--model.time_budget_s", "0.5",
                   "--trainer.enable_progress_bar", "false", "--trainer.check_val_every_n_epoch", "1000"])
    assert time.monotonic() - started < 120
    captured = capsys.readouterr()
    steps = cli.model.fit_summary["optimizer_steps"]
    assert cli.model.fit_summary["stopped_by_time_budget"] and steps < 100000
    assert (f"[infra-pl] fit: wall-clock budget of 0.5 s (model.time_budget_s) used up after {steps} optimizer steps "
            "of 100000 planned; stopping here") in captured.err
    assert f"stopped          : wall-clock budget of 0.5 s (model.time_budget_s) used up after {steps}" in captured.out


def test_debug_flag_holds_for_one_command_only(monkeypatch):
    """`--debug` used to set INFRA_PL_DEBUG for the rest of the process: later in-process commands
    (tests, `infra-pl compare` running fits) printed tracebacks instead of one-line errors."""
    import os

    from infra_pl.cli import main

    monkeypatch.delenv("INFRA_PL_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        main(["--help", "--debug"])
    assert "INFRA_PL_DEBUG" not in os.environ
