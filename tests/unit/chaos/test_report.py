"""Reports: a drill passes only when every criterion does; files are written whatever happened."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chaos.exceptions import UnknownDrill
from chaos.load import Sample
from chaos.report import Verdict, finish
from chaos.runner import drill_names
from chaos.timeline import Timeline

STARTED = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _timeline() -> Timeline:
    timeline = Timeline()
    samples = [Sample(t / 10, 0.002, 200, "redis-us-east") for t in range(30)]
    timeline.add_load(samples, timeline.t0)
    timeline.record("events in", 0)
    timeline.record("events in", 500)
    timeline.record("lag us-east/redis", 12)
    timeline.fault("kill redis-us-east", 1.0, 2.0)
    return timeline


def test_a_failed_criterion_fails_the_drill_and_both_files_are_written(tmp_path: Path) -> None:
    verdict = Verdict()
    verdict.check("errors", True, target="<= 1 %", measured=0.0)
    verdict.check("oracle", False, target="0 mismatches", measured="3")
    verdict.figure("switch_s", float("nan"))
    report = finish(
        "redis-kill",
        quick=True,
        started=STARTED,
        timeline=_timeline(),
        verdict=verdict,
        out_dir=tmp_path,
        results_dir=tmp_path / "results",
    )
    assert not report.passed and report.verdict == "FAIL"
    body = json.loads(Path(report.files["json"]).read_text())
    assert body["verdict"] == "FAIL"
    assert body["figures"]["switch_s"] is None, "NaN is written as null, never as invalid JSON"
    assert body["faults"] == [{"label": "kill redis-us-east", "start_s": 1.0, "end_s": 2.0}]
    assert body["per_second"][0]["requests"] == 10
    assert Path(report.files["png"]).read_bytes()[:4] == b"\x89PNG"


def test_a_drill_without_criteria_never_passes(tmp_path: Path) -> None:
    report = finish(
        "x",
        quick=False,
        started=STARTED,
        timeline=Timeline(),
        verdict=Verdict(),
        out_dir=tmp_path,
        results_dir=tmp_path / "results",
    )
    assert not report.passed


def test_every_criterion_passing_passes(tmp_path: Path) -> None:
    verdict = Verdict()
    verdict.check("a", True, target="t", measured=1)
    report = finish(
        "x",
        quick=False,
        started=STARTED,
        timeline=_timeline(),
        verdict=verdict,
        out_dir=tmp_path,
        results_dir=tmp_path / "results",
    )
    assert report.passed and report.started_at == "2026-12-02T12:00:00+00:00"


def test_each_finished_drill_appends_its_verdict_checks_and_figures(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for passed in (True, False):
        verdict = Verdict()
        verdict.check("errors while down", passed, target="<= 1 %", measured=0.25)
        verdict.check("rehydrated equals oracle", True, target="0 mismatches", measured=0)
        verdict.figure("switch_s", 0.0091)
        verdict.figure("fault_p99_ms", float("nan"))
        finish(
            "redis-kill",
            quick=True,
            started=STARTED,
            timeline=_timeline(),
            verdict=verdict,
            out_dir=tmp_path / str(passed),
            results_dir=results,
            command="freshline chaos run redis-kill --quick",
        )
    lines = [
        json.loads(line) for line in (results / "drill-redis-kill.jsonl").read_text().splitlines()
    ]
    assert [line["figures"]["verdict"] for line in lines] == ["PASS", "FAIL"], "one line per run"
    last = lines[-1]
    assert last["name"] == "drill-redis-kill"
    assert last["command"] == "freshline chaos run redis-kill --quick"
    assert last["figures"]["checks"] == [
        {"name": "errors while down", "passed": False, "target": "<= 1 %", "measured": "0.25"},
        {
            "name": "rehydrated equals oracle",
            "passed": True,
            "target": "0 mismatches",
            "measured": "0",
        },
    ]
    assert last["figures"]["switch_s"] == 0.009
    assert last["figures"]["fault_p99_ms"] is None
    assert last["figures"]["quick"] is True


def test_drill_selection() -> None:
    assert drill_names("ci") == [
        "redis-kill",
        "consumer-kill",
        "slow-sink",
        "poison-flood",
        "index-kill",
    ]
    assert len(drill_names("all")) == 12
    assert drill_names("broker-restart") == ["broker-restart"]
    with pytest.raises(UnknownDrill, match="drills: all, ci, redis-kill"):
        drill_names("redis-kil")
