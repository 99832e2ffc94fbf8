"""The consistency validator's judgement: one served answer against its offline recomputations.

Each logged answer (``regions.answer_log.AnswerEntry``) is recomputed offline three ways
(:mod:`training.recompute`):

``truth``      as of the request time from every accepted event (what a training set built
               without an ingestion cutoff holds for that instant);
``known``      as of the request time from the events ingested before it;
``watermark``  as of the request time from the known events up to the answer's served watermark
               (the newest event time the answer shows for the entity's view), with ``lag_ms``:
               the request time minus the earliest ingest time of the known events above it.

and put in exactly one class, the first that holds (:func:`classify`):

``equal``          the answer is ``truth`` (status equal, numbers within the tolerances);
``late_data``      it is ``known``: the difference is events ingested at or after the request;
``freshness_lag``  it is ``watermark`` and ``lag_ms <= freshness target``: the store had not yet
                   applied events that arrived within the view's freshness target;
``fallback``       served by a store other than the region's own Redis (another region, DynamoDB)
                   or by the defaults;
``real_skew``      anything else.

Invariants: every answer lands in one class; a class is a function of the answer and its
recomputations only (no order, no clock), so a run over the same log and snapshot gives the same
report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from regions.answer_log import AnswerEntry

EQUAL = "equal"
LATE_DATA = "late_data"
FRESHNESS_LAG = "freshness_lag"
FALLBACK = "fallback"
REAL_SKEW = "real_skew"
CLASSES = (EQUAL, LATE_DATA, FRESHNESS_LAG, FALLBACK, REAL_SKEW)

DEFAULT_ABS_TOL = 1e-9
DEFAULT_REL_TOL = 1e-9
MAX_EXAMPLES = 5

Offline = tuple[Any, str]
"""An offline (value, status)."""


@dataclass(frozen=True)
class Tolerance:
    """How close two numbers must be to count as equal (either bound suffices)."""

    abs_tol: float = DEFAULT_ABS_TOL
    rel_tol: float = DEFAULT_REL_TOL


@dataclass(frozen=True)
class Verdict:
    """One answer against one offline value; the errors are None unless both are numbers."""

    match: bool
    abs_error: float | None
    rel_error: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def compare(
    served: Any, served_status: str, offline: Any, offline_status: str, tolerance: Tolerance
) -> Verdict:
    """Whether a served (value, status) is the offline one."""
    a, b = _number(served), _number(offline)
    abs_error = rel_error = None
    if a is not None and b is not None:
        abs_error = abs(a - b)
        rel_error = abs_error / abs(b) if b else (0.0 if abs_error == 0 else math.inf)
        same = math.isclose(a, b, rel_tol=tolerance.rel_tol, abs_tol=tolerance.abs_tol)
    else:  # a bool is not the number it equals in Python
        same = type(served) is type(offline) and served == offline
    return Verdict(same and served_status == offline_status, abs_error, rel_error)


@dataclass(frozen=True)
class Recomputed:
    """One answer's offline values (module docstring); ``known`` and ``watermark`` are None when
    not needed (the answer is ``truth``, or is ``known``)."""

    truth: Offline
    known: Offline | None = None
    watermark: Offline | None = None
    lag_ms: int | None = None


@dataclass(frozen=True)
class Judged:
    """An answer's class and its error against ``truth``."""

    kind: str
    verdict: Verdict


def home_store(region: str) -> str:
    """The store a region answers from when nothing has failed: its own Redis (the first link
    of serving's chain, ``serve_apps.wiring``)."""
    return f"redis-{region}"


def matches(entry: AnswerEntry, offline: Offline | None, tolerance: Tolerance) -> bool:
    """Whether ``entry`` served ``offline`` (never, when there is none)."""
    if offline is None:
        return False
    return compare(entry.value, entry.status, offline[0], offline[1], tolerance).match


def classify(
    entry: AnswerEntry, offline: Recomputed, freshness_target_ms: int, tolerance: Tolerance
) -> Judged:
    """The class of ``entry`` (module docstring), with its error against ``truth``."""
    verdict = compare(entry.value, entry.status, *offline.truth, tolerance)
    if verdict.match:
        return Judged(EQUAL, verdict)
    if matches(entry, offline.known, tolerance):
        return Judged(LATE_DATA, verdict)
    lag = offline.lag_ms
    if (
        lag is not None
        and lag <= freshness_target_ms
        and matches(entry, offline.watermark, tolerance)
    ):
        return Judged(FRESHNESS_LAG, verdict)
    if entry.store != home_store(entry.region):
        return Judged(FALLBACK, verdict)
    return Judged(REAL_SKEW, verdict)


@dataclass
class FeatureTally:
    """The figures of one ``view:feature``: answers per class, and the largest error against
    ``truth`` over the answers that are not ``equal``."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return sum(self.counts.values())

    def add(self, entry: AnswerEntry, offline: Recomputed, judged: Judged) -> None:
        self.counts[judged.kind] += 1
        verdict = judged.verdict
        if verdict.abs_error is not None and verdict.rel_error is not None:
            self.max_abs_error = max(self.max_abs_error or 0.0, verdict.abs_error)
            self.max_rel_error = max(self.max_rel_error or 0.0, verdict.rel_error)
        if judged.kind == REAL_SKEW and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                {
                    "request_id": entry.request_id,
                    "region": entry.region,
                    "store": entry.store,
                    "entity_id": entry.entity_id,
                    "as_of_ms": entry.as_of_ms,
                    "watermark_ms": entry.watermark_ms,
                    "served": entry.value,
                    "served_status": entry.status,
                    "offline": offline.truth[0],
                    "offline_status": offline.truth[1],
                }
            )

    def merge(self, other: FeatureTally) -> None:
        """Add ``other``'s figures (a continuous run's cycles into its totals)."""
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        for name in ("max_abs_error", "max_rel_error"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else max(mine, theirs))
        self.examples = (self.examples + other.examples)[:MAX_EXAMPLES]

    def figures(self) -> dict[str, Any]:
        compared = self.compared
        return {
            "compared": compared,
            **self.counts,
            "skew_share": self.counts[REAL_SKEW] / compared if compared else 0.0,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "examples": self.examples,
        }

    @classmethod
    def from_figures(cls, figures: Mapping[str, Any]) -> FeatureTally:
        """The tally :meth:`figures` described (a continuous run's saved totals)."""
        return cls(
            counts={kind: int(figures.get(kind, 0)) for kind in CLASSES},
            max_abs_error=figures.get("max_abs_error"),
            max_rel_error=figures.get("max_rel_error"),
            examples=list(figures.get("examples", ())),
        )


def tally(
    entries: Sequence[AnswerEntry],
    offline: Sequence[Recomputed],
    freshness_target_ms: Mapping[str, int],
    tolerance: Tolerance,
) -> dict[str, FeatureTally]:
    """Per ``view:feature`` (sorted), every entry classified; ``freshness_target_ms`` per view."""
    out: dict[str, FeatureTally] = {}
    for entry, recomputed in zip(entries, offline, strict=True):
        judged = classify(entry, recomputed, freshness_target_ms[entry.view], tolerance)
        out.setdefault(entry.ref, FeatureTally()).add(entry, recomputed, judged)
    return dict(sorted(out.items()))


def failing(tallies: Mapping[str, FeatureTally], max_share: float) -> list[str]:
    """The features whose real-skew share exceeds ``max_share``."""
    return [
        ref
        for ref, t in tallies.items()
        if t.compared and t.counts[REAL_SKEW] / t.compared > max_share
    ]
