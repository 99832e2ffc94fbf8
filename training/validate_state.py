"""A continuous validator's cursor in each region's answer stream, and its running totals.

Saved as one JSON file, replaced atomically after each cycle and *before* that cycle's counts are
exported: a run restarted from the file resumes after the last stream id it counted, so no answer
is counted twice (a crash between the save and the export loses that cycle's metric increments,
never doubles them; the file's totals stay exact).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.exceptions import ValidatorStateError
from training.validate import FeatureTally

VERSION = 1


@dataclass
class ValidatorState:
    """Per region the last stream id validated and the stream time validated up to; per
    ``view:feature`` the totals since the file was created."""

    cursors: dict[str, str] = field(default_factory=dict)
    validated_until_ms: dict[str, int] = field(default_factory=dict)
    totals: dict[str, FeatureTally] = field(default_factory=dict)
    cycles: int = 0

    def add(self, cycle: dict[str, FeatureTally]) -> None:
        for ref, tally in cycle.items():
            self.totals.setdefault(ref, FeatureTally()).merge(tally)
        self.totals = dict(sorted(self.totals.items()))
        self.cycles += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "cursors": self.cursors,
            "validated_until_ms": self.validated_until_ms,
            "cycles": self.cycles,
            "totals": {ref: t.figures() for ref, t in self.totals.items()},
        }


def load_state(path: Path) -> ValidatorState:
    """The state saved at ``path``, or a new one when there is no file."""
    if not path.exists():
        return ValidatorState()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != VERSION:
            raise ValidatorStateError(
                f"{path}: unknown validator state version {raw.get('version')}"
            )
        return ValidatorState(
            cursors={str(k): str(v) for k, v in raw["cursors"].items()},
            validated_until_ms={str(k): int(v) for k, v in raw["validated_until_ms"].items()},
            totals={ref: FeatureTally.from_figures(f) for ref, f in raw["totals"].items()},
            cycles=int(raw["cycles"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValidatorStateError(f"{path}: not a validator state file ({exc})") from None


def save_state(path: Path, state: ValidatorState) -> None:
    """Replace ``path`` with ``state`` atomically (written, flushed to disk, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", encoding="utf-8") as out:
        json.dump(state.to_json(), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
