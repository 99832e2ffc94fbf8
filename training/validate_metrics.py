"""The validator's Prometheus metrics, per view, feature and class.

Two ways out, one per way of running (docs/training.md, "Metrics"):

- a continuous run (a long-lived Ray job) exports through Ray's metrics API, as the pipeline's
  actors and serving do (``actors/metrics.py``): Ray's metrics agent serves them on the head's
  metrics port with a ``ray_`` prefix (``ray_freshline_validator_answers_total``), where the
  stack's Prometheus already scrapes;
- a one-shot run writes a file for node_exporter's textfile collector (``--metrics-file``): a
  process that exits would take Ray-exported series with it before the next scrape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from training.validate import CLASSES, FeatureTally

PREFIX = "freshline_validator"


def _labels(ref: str, **extra: str) -> str:
    view, _, feature = ref.partition(":")
    pairs = {"view": view, "feature": feature, **extra}
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def textfile(tallies: Mapping[str, FeatureTally], finished_s: float) -> str:
    """One run's figures in the Prometheus text format: answers per class (every class, zeros
    included, so a series never vanishes), the largest errors, and when the run finished."""
    lines = [
        f"# HELP {PREFIX}_run_answers logged answers of the last run, per class",
        f"# TYPE {PREFIX}_run_answers gauge",
    ]
    for ref, tally in tallies.items():
        for kind in CLASSES:
            lines.append(f"{PREFIX}_run_answers{{{_labels(ref, **{'class': kind})}}} "
                         f"{tally.counts[kind]}")  # fmt: skip
    for name, what in (("max_abs_error", "absolute"), ("max_rel_error", "relative")):
        lines += [
            f"# HELP {PREFIX}_run_{name} largest {what} error against the offline value",
            f"# TYPE {PREFIX}_run_{name} gauge",
        ]
        for ref, tally in tallies.items():
            value = getattr(tally, name)
            if value is not None:
                lines.append(f"{PREFIX}_run_{name}{{{_labels(ref)}}} {float(value)!r}")
    lines += [
        f"# HELP {PREFIX}_run_finished_seconds when the last run finished (Unix time)",
        f"# TYPE {PREFIX}_run_finished_seconds gauge",
        f"{PREFIX}_run_finished_seconds {finished_s!r}",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` atomically (the collector must never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class RayValidatorMetrics:
    """A continuous run's counters and gauges, through Ray's metrics API (needs ``ray.init``)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._answers = metrics.Counter(
            f"{PREFIX}_answers",
            "logged answers validated, per class",
            ("view", "feature", "class"),
        )
        self._abs = metrics.Gauge(
            f"{PREFIX}_max_abs_error",
            "largest absolute error against the offline value since the run started",
            ("view", "feature"),
        )
        self._rel = metrics.Gauge(
            f"{PREFIX}_max_rel_error",
            "largest relative error against the offline value since the run started",
            ("view", "feature"),
        )
        self._validated = metrics.Gauge(
            f"{PREFIX}_validated_until_ms",
            "the stream time up to which a region's answers are validated",
            ("region",),
        )

    def export(
        self,
        cycle: Mapping[str, FeatureTally],
        totals: Mapping[str, FeatureTally],
        validated_until_ms: Mapping[str, int],
    ) -> None:
        """Add one cycle's counts; set the gauges from the run's totals."""
        for ref, tally in cycle.items():
            view, _, feature = ref.partition(":")
            for kind, count in tally.counts.items():
                if count:
                    self._answers.inc(count, {"view": view, "feature": feature, "class": kind})
        for ref, tally in totals.items():
            view, _, feature = ref.partition(":")
            tags = {"view": view, "feature": feature}
            if tally.max_abs_error is not None:
                self._abs.set(tally.max_abs_error, tags)
            if tally.max_rel_error is not None:
                self._rel.set(tally.max_rel_error, tags)
        for region, until in validated_until_ms.items():
            self._validated.set(until, {"region": region})
