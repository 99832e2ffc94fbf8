"""Errors of the chaos suite, under the one Freshline root::

    FreshlineError
    ├── ConfigError
    │   └── UnknownDrill        ``freshline chaos run <name>`` with a name no drill has
    └── StackError
        └── DrillSetupFailed    the stack, the pipeline or serving could not be brought to the
                                drill's starting state; nothing was injected

A drill whose criteria fail is not an exception: it returns a report whose verdict is FAIL, so
that its figures are written and shown like a passing one's.
"""

from __future__ import annotations

from collections.abc import Iterable

from features.errors import ConfigError, StackError


class UnknownDrill(ConfigError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(f"no drill {name!r}; drills: {', '.join(known)}", field="drill")


class DrillSetupFailed(StackError):
    """The drill could not reach its starting state (no fault was injected)."""
