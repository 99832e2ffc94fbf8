"""Running a drill: prepare the system, run it on a fresh timeline, always write its report.

An exception inside a drill (a probe that cannot reach the head, a fault that could not be
undone) still produces a report: one failed criterion naming the exception type, so a broken
drill is never mistaken for a passing one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from chaos.context import DrillContext
from chaos.drills import DRILLS
from chaos.exceptions import UnknownDrill
from chaos.report import DrillReport, Verdict, finish
from chaos.timeline import Timeline
from cluster.stack import Stack

_log = logging.getLogger(__name__)


def drill_names(selection: str) -> list[str]:
    """``all``, ``ci`` (the quick set CI runs) or one drill's name."""
    if selection == "all":
        return list(DRILLS)
    if selection == "ci":
        return [name for name, drill in DRILLS.items() if drill.in_ci]
    if selection not in DRILLS:
        raise UnknownDrill(selection, ["all", "ci", *DRILLS])
    return [selection]


def run_drill(
    stack: Stack,
    name: str,
    *,
    quick: bool,
    reports_dir: Path,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DrillReport:
    """Prepare the stack (idempotent), run drill ``name`` and write its report folder."""
    drill = DRILLS[drill_names(name)[0]]
    started = now()
    out_dir = reports_dir / f"{drill.name}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    ctx = DrillContext(stack=stack, quick=quick, out_dir=out_dir)
    timeline = Timeline(monotonic=time.monotonic)
    verdict = Verdict()
    try:
        ctx.prepare()
        timeline = Timeline(monotonic=time.monotonic)  # time 0 is when the drill itself starts
        drill.run(ctx, timeline, verdict)
    except Exception as exc:  # reported as a failed criterion, never swallowed
        _log.exception("drill %s stopped early", drill.name)
        verdict.check(
            "drill ran to the end",
            False,
            target="no exception",
            measured=f"{type(exc).__name__}: {str(exc)[:300]}",
        )
    finally:
        if not all(c.passed for c in verdict.criteria):
            _note_sinks(ctx, verdict)
        ctx.close()
    return finish(
        drill.name,
        quick=quick,
        started=started,
        timeline=timeline,
        verdict=verdict,
        out_dir=out_dir,
    )


def _note_sinks(ctx: DrillContext, verdict: Verdict) -> None:
    """A failed drill's report says what the sinks were doing: the first thing to look at."""
    try:
        verdict.notes.append(f"sinks at the end: {ctx.sink_summary()}")
    except Exception as exc:  # the diagnosis must never hide the failure it explains
        verdict.notes.append(f"sinks at the end: unavailable ({type(exc).__name__})")
