"""``python -m cluster.events``: arguments to config, one JSON line out, exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.events.__main__ import main
from cluster.events.exceptions import BrokerUnavailable
from cluster.events.runner import GeneratorReport
from cluster.events.synth import EventKind, GeneratorConfig


def fake_report(config: GeneratorConfig, bootstrap: str, topic: str, ledger: str) -> Any:
    return GeneratorReport(
        run_id=config.run_id,
        topic=topic,
        ledger=ledger,
        planned=config.planned_events,
        sent=config.planned_events,
        acked=config.planned_events,
        failed=0,
        counts_by_kind={"valid": config.planned_events},
        target_rate_per_s=config.rate_per_s,
        events_per_s=config.rate_per_s,
        duration_s=1.0,
    )


def test_the_documented_command_line_runs_and_prints_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[GeneratorConfig] = []

    def run(config: GeneratorConfig, *args: Any) -> Any:
        seen.append(config)
        return fake_report(config, *args)

    argv = "--bootstrap 127.0.0.1:19092 --rate 500 --duration 30 --malformed-share 0.01"
    argv += " --late-share 0.005 --ledger l.jsonl --malformed-kinds future,bad_json"
    assert main(argv.split(), run=run) == 0
    (config,) = seen
    assert config.planned_events == 15_000 and config.late_share == 0.005
    assert config.malformed_kinds == (EventKind.BAD_JSON, EventKind.FUTURE)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["acked"] == 15_000


def test_a_bad_setting_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--ledger", "l.jsonl", "--late-share", "2"]
    assert main(argv, run=fake_report) == 2
    assert json.loads(capsys.readouterr().err)["field"] == "late_share"


def test_a_broker_failure_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: Any) -> Any:
        raise BrokerUnavailable("127.0.0.1:1", "refused")

    assert main(["--ledger", "l.jsonl", "--max-events", "5"], run=run) == 1
    assert json.loads(capsys.readouterr().err)["error"] == "BrokerUnavailable"
