"""Known errors reach the user as one clear message, not a traceback or pages of parser output.

``infra-pl`` catches the errors whose message already says what is wrong and how to fix it (bad
data rows, a missing checkpoint, mismatched or damaged factors, protocol errors, ...) and prints
that message alone; ``--debug`` (anywhere on the command line) or ``INFRA_PL_DEBUG=1`` shows the
traceback as before. Configuration mistakes get the same treatment: a typo in a callback's option
names the class, the option, the options it does accept and the closest one; a bad value names the
class and repeats the class's own check (``fisher must be 'true' or 'empirical', got 'ture'``),
instead of jsonargparse's usage block and union-type report (80-100 lines).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from typing import Any

DEBUG_ENV = "INFRA_PL_DEBUG"
HINT = "(run with --debug or INFRA_PL_DEBUG=1 for the traceback)"

# (module, class) of the errors whose message is the whole story.
_KNOWN = (
    ("infra_pl.data.schema", "DataError"),
    ("infra_pl.ekfac.factors", "FactorsMismatchError"),
    ("infra_pl.ekfac.eigen", "NonFiniteFactorError"),
    ("infra_pl.checksum", "CorruptFileError"),
    ("infra_pl.protocol", "ProtocolError"),
    ("infra_pl.planner.partition", "PartitionError"),
    ("infra_pl.report.validate", "ReportInputError"),
    ("infra_pl.eval.dcorrect", "TooFewCorrectError"),
    ("infra_pl.data.llm_judge", "JudgeError"),
    ("infra_pl.eval.sandbox", "SandboxError"),
    ("infra_pl.gradcheck", "GradientCheckError"),
)


class ConfigError(ValueError):
    """A configuration value or option was refused; the message says which and what is allowed."""


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def known_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConfigError, FileNotFoundError]
    for module, name in _KNOWN:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def strip_debug_flag(args: list[str]) -> list[str]:
    """``args`` without ``--debug``; sets ``INFRA_PL_DEBUG=1`` when it was there."""
    if "--debug" in args:
        os.environ[DEBUG_ENV] = "1"
        args = [a for a in args if a != "--debug"]
    return args


def run_reporting_known_errors(fn: Any, *args: Any) -> Any:
    """``fn(*args)``; a known error ends the process with its message alone (status 1)."""
    if debug_requested():
        return fn(*args)
    try:
        return fn(*args)
    except known_errors() as err:
        sys.stderr.flush()
        print(f"infra-pl: error: {err}\n{HINT}", file=sys.stderr)
        raise SystemExit(1) from None


# ------------------------------------------------------------------------ configuration errors
def _accepted_options(class_path: str) -> list[str]:
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # noqa: BLE001 - the hint is optional
        return []


def _option_hint(class_path: str, option: str) -> str:
    accepted = _accepted_options(class_path)
    if not accepted:
        return ""
    close = difflib.get_close_matches(option, accepted, n=1)
    return (f" (did you mean '{close[0]}'?)" if close else "") + f"; {class_path.rpartition('.')[2]} accepts: {', '.join(accepted)}"


def condense_parser_error(message: str) -> str:
    """The part of a jsonargparse error that says what is wrong, with the accepted options."""
    key = re.match(r'Parser key "([^"]+)"', message)
    where = f"{key.group(1)}: " if key else ""
    problems = []
    for class_path, reason in re.findall(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", message):
        reason = reason.strip()
        option = re.match(r"Option '([^']+)' is not accepted", reason)
        if option:
            reason += _option_hint(class_path, option.group(1))
        problems.append(f"{where}{class_path}: {reason}")
    if problems:
        return "\n".join(problems)
    kept = [line for line in message.splitlines() if line.strip() and not re.match(r"\s*(Given value|Subtypes):", line)]
    return "\n".join(kept[:8]) if kept else message


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return err


def _raising_class(err: BaseException) -> str | None:
    """The class whose ``__init__`` raised ``err`` (the innermost such frame), if any."""
    tb, name = err.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            cls = type(frame.f_locals["self"])
            name = f"{cls.__module__}.{cls.__qualname__}"
        tb = tb.tb_next
    return name


def config_error(err: BaseException) -> ConfigError:
    """A :class:`ConfigError` for an exception raised while the CLI built the configured classes."""
    root = _root_cause(err)
    owner = _raising_class(root)
    if owner is not None and isinstance(root, (ValueError, TypeError)):
        return ConfigError(f"{owner.rpartition('.')[2]}: {root}")
    return ConfigError(condense_parser_error(str(err)))


def __getattr__(name: str) -> Any:
    # The parser subclasses Lightning's, whose import takes seconds: it lives in infra_pl.cli_app so
    # that `infra-pl --help` and the error helpers above stay light.
    if name == "InfraArgumentParser":
        from infra_pl.cli_app import InfraArgumentParser

        return InfraArgumentParser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
