"""Options declared once: dataclass fields carry default, type and help text.

A driver takes an options dataclass (:class:`infra_pl.ekfac.options.FactorOptions`,
:class:`infra_pl.influence.options.ScoreOptions`); the callback that wraps it gets its
``__init__`` signature and the ``Args:`` section of its docstring generated from the same fields
(:func:`callback_options`), so ``LightningCLI`` shows the same names, defaults and help in
``--help`` and YAML as the pure API. Phase keys (what decides whether a stored phase is reused)
are the fields marked ``key=True``; nothing else lists the options again.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")

def option(default: Any, help: str, key: bool = False) -> Any:  # noqa: A002 - the word users read
    """A dataclass field with its help text; ``key=True``: part of the phase key (changing it refits)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, "key": key})
    return dataclasses.field(default=default, metadata={"help": help, "key": key})


def key_values(options: Any) -> dict[str, Any]:
    """The ``key=True`` fields of an options dataclass (values as they are stored in phase keys)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.metadata.get("key")}


def options_doc(cls: type) -> str:
    """A Google-style ``Args:`` section from the fields' help texts (``--help`` reads it)."""
    lines = ["Args:"]
    for f in dataclasses.fields(cls):
        text = textwrap.fill(f.metadata.get("help", ""), width=96, initial_indent="", subsequent_indent=" " * 8)
        lines.append(f"    {f.name}: {text}")
    return "\n".join(lines)


def options_signature(cls: type) -> inspect.Signature:
    """``(self, <field>=<default>, ...)`` with resolved annotations, for a generated ``__init__``."""
    hints = typing.get_type_hints(cls)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[f.name]))
    return inspect.Signature(params)


def callback_options(options_cls: type) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``__init__(**options)`` builds ``self.options = options_cls(**options)``.

    The signature and the docstring's ``Args:`` section come from ``options_cls``, so the
    callback's YAML keys, defaults and ``--help`` text are the options dataclass's, declared once.
    The class may define ``_setup(self)`` for what it derives from its options.
    """

    def decorate(cls: type[T]) -> type[T]:
        def __init__(self: Any, **values: Any) -> None:
            unknown = sorted(set(values) - {f.name for f in dataclasses.fields(options_cls)})
            if unknown:
                raise TypeError(f"{cls.__name__} got unknown option(s) {unknown}")
            try:
                self.options = options_cls(**values)
            except (ValueError, TypeError) as err:  # raised here, so the message names the callback, not the options
                raise type(err)(str(err)) from None
            setup = getattr(self, "_setup", None)
            if callable(setup):
                setup()

        __init__.__signature__ = options_signature(options_cls)  # type: ignore[attr-defined]
        __init__.__doc__ = options_doc(options_cls)
        cls.__init__ = __init__  # type: ignore[misc]
        cls.__doc__ = (inspect.cleandoc(cls.__doc__ or "") + "\n\n" + options_doc(options_cls)).strip()
        return cls

    return decorate
