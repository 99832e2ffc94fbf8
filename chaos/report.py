"""A drill's outcome: pass criteria with their measured values, figures, and the timeline, written
as ``report.json`` and ``timeline.png`` under the reports folder, and shown as a verdict table.

A criterion is a named check with the target in words and the measured value; the drill passes
only when every criterion does. Figures are the numbers an operator wants (switch time, peak
memory, stall) whether or not a criterion judges them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from chaos.timeline import Timeline, per_second
from cluster.results import current_command, record_run

INGEST_COUNTER = "events in"  # a gauge the drills sample: events read by the consumers
Figure = float | int | str | bool | None


class Criterion(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    target: str
    measured: str
    passed: bool


class DrillReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    drill: str
    quick: bool
    started_at: str  # ISO 8601, UTC
    duration_s: float
    criteria: tuple[Criterion, ...]
    figures: dict[str, Figure] = Field(default_factory=dict)
    notes: tuple[str, ...] = ()
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.criteria) and all(c.passed for c in self.criteria)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


class Verdict:
    """Collects criteria and figures while a drill runs."""

    def __init__(self) -> None:
        self.criteria: list[Criterion] = []
        self.figures: dict[str, Figure] = {}
        self.notes: list[str] = []

    def check(self, name: str, passed: bool, *, target: str, measured: object) -> bool:
        self.criteria.append(
            Criterion(name=name, target=target, measured=_fmt(measured), passed=bool(passed))
        )
        return bool(passed)

    def figure(self, name: str, value: Figure) -> None:
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, 3)
        self.figures[name] = value

    def note(self, text: str) -> None:
        self.notes.append(text)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:,.3f}".rstrip("0").rstrip(".")
    return str(value)


def finish(
    drill: str,
    *,
    quick: bool,
    started: datetime,
    timeline: Timeline,
    verdict: Verdict,
    out_dir: Path,
    results_dir: Path | None = None,
    command: str | None = None,
) -> DrillReport:
    """Write ``report.json`` into ``out_dir``, append the run's line to ``drill-<drill>.jsonl``
    in the results folder (``cluster.results``; ``command`` defaults to this process's command
    line), then draw ``timeline.png``, and return the report. The line comes before the plot, so
    a plotting failure cannot lose a finished drill's verdict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out_dir / "report.json"), "png": str(out_dir / "timeline.png")}
    report = DrillReport(
        drill=drill,
        quick=quick,
        started_at=started.astimezone(UTC).isoformat(),
        duration_s=round(timeline.now_s(), 3),
        criteria=tuple(verdict.criteria),
        figures=verdict.figures,
        notes=tuple(verdict.notes),
        files=files,
    )
    body = {
        **report.model_dump(),
        "verdict": report.verdict,
        "faults": [asdict(f) for f in timeline.faults],
        "per_second": [asdict(s) for s in per_second(timeline.samples)],
        "gauges": timeline.gauges,
    }
    Path(files["json"]).write_bytes(
        orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    record_run(
        f"drill-{drill}",
        result_figures(report),
        command=command if command is not None else current_command(),
        results_dir=results_dir,
    )
    plot_timeline(timeline, f"{drill}{' (quick)' if quick else ''}: {report.verdict}", files["png"])
    return report


def result_figures(report: DrillReport) -> dict[str, Any]:
    """A drill run's figures for its results line: the verdict, every check and every figure
    (the verdict and checks win over a figure of the same name)."""
    checks = [
        {"name": c.name, "passed": c.passed, "target": c.target, "measured": c.measured}
        for c in report.criteria
    ]
    return {
        **report.figures,
        "verdict": report.verdict,
        "quick": report.quick,
        "duration_s": report.duration_s,
        "checks": checks,
    }


def plot_timeline(timeline: Timeline, title: str, path: str) -> None:
    """Panels over time, faults shaded: latency p50/p99, error rate and requests/s when the drill
    drove HTTP load; ingest events/s when it sampled the consumers; then every other gauge."""
    import matplotlib

    matplotlib.use("Agg")  # no display; drills run in CI and over SSH
    import matplotlib.pyplot as plt

    gauges = dict(timeline.gauges)
    ingest = _rate(gauges.pop(INGEST_COUNTER, []))
    panels: list[Callable[[Any], None]] = []
    if timeline.samples:
        panels += _http_panels(timeline)
    if ingest:
        panels.append(lambda ax: _plot_series(ax, {"events/s": ingest}, "ingest (/s)", log=False))
    panels.append(lambda ax: _plot_series(ax, gauges, "gauges (lag, MiB, ...)", log=True))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), sharex=True)
    for ax, draw in zip(axes if len(panels) > 1 else [axes], panels, strict=True):
        draw(ax)
        for window in timeline.faults:
            ax.axvspan(window.start_s, window.end_s, color="tab:orange", alpha=0.2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
    ax.set_xlabel("seconds since the drill started")
    labels = ", ".join(f"{w.label} {w.start_s:.0f}-{w.end_s:.0f}s" for w in timeline.faults)
    fig.suptitle(f"{title}\nfaults (shaded): {labels or 'none'}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _http_panels(timeline: Timeline) -> list[Callable[[Any], None]]:
    seconds = per_second(timeline.samples)
    t = [s.t_s for s in seconds]

    def latency(ax: Any) -> None:
        ax.plot(t, [s.p50_ms for s in seconds], label="p50")
        ax.plot(t, [s.p99_ms for s in seconds], label="p99")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("symlog", linthresh=10)

    def errors(ax: Any) -> None:
        ax.plot(t, [100 * s.error_rate for s in seconds], color="tab:red", label="errors")
        ax.plot(t, [100 * s.shed / max(1, s.requests) for s in seconds], label="503 shed")
        ax.set_ylabel("errors (%)")

    def throughput(ax: Any) -> None:
        ax.plot(t, [s.requests for s in seconds], color="tab:green", label="requests/s")
        ax.set_ylabel("throughput (/s)")

    return [latency, errors, throughput]


def _rate(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-second rate of a sampled counter; a counter that restarted (a restarted consumer
    counts from zero again) contributes nothing for that interval instead of a negative rate."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 > t0:
            out.append((t1, max(0.0, v1 - v0) / (t1 - t0)))
    return out


def _plot_series(
    ax: Any, series: dict[str, list[tuple[float, float]]], label: str, *, log: bool
) -> None:
    for name, points in sorted(series.items()):
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_ylabel(label)
    if log:
        ax.set_yscale("symlog", linthresh=10)


def verdict_table(report: DrillReport) -> Any:
    """A rich table of the criteria, for people."""
    from rich.table import Table

    table = Table(title=f"{report.drill}{' --quick' if report.quick else ''}: {report.verdict}")
    table.add_column("criterion")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("", justify="center")
    for c in report.criteria:
        table.add_row(
            c.name, c.target, c.measured, "[green]pass[/]" if c.passed else "[red]FAIL[/]"
        )
    return table
