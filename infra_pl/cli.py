"""Command line: ``infra-pl fit|validate|attribute -c configs/demo.yaml`` (LightningCLI).

This module is the console entry point and stays light: importing Lightning takes seconds (7-8 s
on the project's machine, most of ``infra-pl --help``), so ``infra-pl`` and ``infra-pl --help``
are answered here without it, and the LightningCLI side (:mod:`infra_pl.cli_app`) is imported
only when a subcommand runs or asks for its own ``--help``. ``InfraCLI``, ``run_cli`` and the
other names of :mod:`infra_pl.cli_app` can still be imported from here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from infra_pl.errors import DEBUG_ENV, run_reporting_known_errors, strip_debug_flag

DESCRIPTION = "infra-pl: SFT on math/code reasoning data + influence attribution."

# What `infra-pl --help` lists; every LightningCLI subcommand's own `--help` has its options.
SUBCOMMAND_HELP = {
    "fit": "Fine-tune the model (SFTModule) on the training data.",
    "validate": "Score greedy generations per domain and difficulty; writes correctness.jsonl.",
    "test": "Lightning's test loop over the test set.",
    "predict": "Lightning's predict loop.",
    "attribute": "EK-FAC factors, influence scores and the report (the attribution callbacks' options: "
                 "`infra-pl attribute --help` says how to list them).",
    "check": "Per-example gradients of padded batches against one-by-one float32 ones, per tracked module.",
}

# `infra-pl curate` (a training mixture from instance scores) and `infra-pl compare` (fit + validate
# variants over seeds, paired table): the loop from scores to a better training mix.
EXTRA_COMMANDS = {"curate": "infra_pl.curate", "compare": "infra_pl.compare"}
EXTRA_HELP = {
    "curate": "A training mixture from instance scores (top/drop/reweight; `infra-pl curate --help`).",
    "compare": "Fit + validate variants over seeds, paired table (`infra-pl compare --help`).",
}

_APP_NAMES = ("InfraCLI", "InfraArgumentParser", "run_cli", "memory_plan_text", "correctness_table",
              "last_checkpoint_without_version")


def __getattr__(name: str) -> Any:
    if name in _APP_NAMES:
        from infra_pl import cli_app

        return getattr(cli_app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def top_level_help() -> str:
    """``infra-pl --help``: the subcommands and where each one's options are listed."""
    names = [*SUBCOMMAND_HELP, *EXTRA_COMMANDS]
    rows = [f"    {name:<12}{(SUBCOMMAND_HELP | EXTRA_HELP)[name]}" for name in names]
    return "\n".join([
        f"usage: infra-pl [-c CONFIG] {{{','.join(names)}}} ...",
        "",
        DESCRIPTION,
        "",
        "options:",
        "  -h, --help            Show this help message and exit.",
        "  -c CONFIG, --config CONFIG",
        "                        Path to a configuration file in json or yaml format.",
        "  --print_config [=flags]",
        "                        Print the configuration after applying all other arguments and exit.",
        "  --debug               Show the traceback of known errors (also INFRA_PL_DEBUG=1).",
        "",
        "subcommands (`infra-pl SUBCOMMAND --help` lists each one's options):",
        *rows,
        "",
        "Example: infra-pl fit -c configs/demo.yaml; infra-pl validate -c configs/demo.yaml "
        "--ckpt_path runs/demo/checkpoints/last.ckpt",
    ])


def main(args: list[str] | None = None) -> None:
    """Console entry point (``infra-pl``); returns nothing so the exit status is 0 on success.

    Known errors print their message alone (status 1); ``--debug`` anywhere on the command line,
    or ``INFRA_PL_DEBUG=1``, shows the traceback.
    """
    previous = os.environ.get(DEBUG_ENV)
    try:
        _main(args)
    finally:  # `--debug` holds for this command only (in-process callers run several)
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous


def _main(args: list[str] | None) -> None:
    if args is None:
        sys.argv[1:] = strip_debug_flag(sys.argv[1:])
    else:
        args = strip_debug_flag(list(args))
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):  # answered without importing Lightning
        print(top_level_help(), file=sys.stdout if argv else sys.stderr)
        if not argv:
            print("infra-pl: error: give a subcommand", file=sys.stderr)
        raise SystemExit(0 if argv else 2)
    if argv[0] in EXTRA_COMMANDS:  # plain programs beside the Lightning subcommands
        import importlib

        program = importlib.import_module(EXTRA_COMMANDS[argv[0]]).main
        run_reporting_known_errors(program, argv[1:])
        return
    from infra_pl.cli_app import run_cli

    run_reporting_known_errors(run_cli, args)


if __name__ == "__main__":
    main()
