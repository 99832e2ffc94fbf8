"""Every drill as a pytest: its quick version against a real stack must pass every criterion.

CI runs the drills marked for it (``Drill.in_ci``); the others are marked ``chaos_full`` and run
with ``make chaos`` (full versions through the CLI) or ``pytest tests/chaos -m chaos_full``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.drills import DRILLS
from chaos.runner import run_drill
from cluster.stack import Stack

pytestmark = pytest.mark.integration
REPORTS = Path(__file__).resolve().parents[2] / "reports" / "chaos-tests"


def _params() -> list[object]:
    return [
        pytest.param(name, marks=() if drill.in_ci else (pytest.mark.chaos_full,), id=name)
        for name, drill in DRILLS.items()
    ]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", _params())
def test_drill_passes_every_criterion(chaos_stack: Stack, name: str) -> None:
    report = run_drill(chaos_stack, name, quick=True, reports_dir=REPORTS)
    failed = [
        f"{c.name}: {c.measured} (target {c.target})" for c in report.criteria if not c.passed
    ]
    assert report.passed, f"{name} failed: {failed}; figures {report.figures}; notes {report.notes}"
    assert Path(report.files["json"]).stat().st_size > 0
    assert Path(report.files["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
