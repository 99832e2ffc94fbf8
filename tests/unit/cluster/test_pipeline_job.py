"""The pipeline job's driver loop (cluster/pipeline_job.supervise): what it logs, when it says the
pipeline is ready, and when it gives up, with the supervisor's status and the clock injected."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import pipeline_job
from cluster.pipeline import READY_LINE
from cluster.pipeline_job import Liveness, summary, supervise
from cluster.settings_env import settings_from_env

FAST = Liveness(poll_s=0.0, report_s=10.0, fatal_after_s=60.0)


def _state(ready: list[bool], lag: int = 0) -> dict[str, Any]:
    return {
        "consumers": [{"ready": r, "events_in": 10, "lag": {"0": lag}} for r in ready],
        "sinks": [{"region": "us-east", "store": "redis", "lag": 3}],
        "registry_version": 4,
        "replaced": 1,
    }


class _Script:
    """Answers the driver's reads from a list (an exception instance is raised), then sets
    ``stop``; the clock advances ``step_s`` per read."""

    def __init__(self, answers: list[Any], stop: threading.Event, step_s: float = 1.0) -> None:
        self._answers: Iterator[Any] = iter(answers)
        self._stop, self._step, self.now = stop, step_s, 0.0

    def clock(self) -> float:
        return self.now

    def read(self) -> dict[str, Any] | None:
        self.now += self._step
        try:
            answer = next(self._answers)
        except StopIteration:
            self._stop.set()
            return _state([True])
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line]


def test_ready_is_said_once_when_every_consumer_has_restored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop = threading.Event()
    script = _Script([_state([True, False]), _state([True, True]), _state([True, True])], stop)
    assert supervise(script.read, stop, FAST, script.clock) == 0
    assert _lines(capsys.readouterr().out).count(READY_LINE) == 1


def test_a_status_line_every_report_interval(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    script = _Script([_state([True], lag=7)] * 25, stop, step_s=1.0)
    supervise(script.read, stop, FAST, script.clock)
    statuses = [json.loads(x) for x in _lines(capsys.readouterr().out) if x.startswith("{")]
    assert len(statuses) == 2  # at 10 s and 20 s of 26
    assert statuses[0] == {
        "event": "status",
        "registry_version": 4,
        "consumers_ready": 1,
        "consumers": 1,
        "events_in": 10,
        "lag": 7,
        "sink_lag": {"us-east/redis": 3},
        "replaced": 1,
    }


def test_a_supervisor_gone_from_the_namespace_is_fatal_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop = threading.Event()
    script = _Script([_state([True]), None], stop)
    assert supervise(script.read, stop, FAST, script.clock) == 1
    assert '"event": "fatal"' in capsys.readouterr().out


def test_an_unreachable_supervisor_is_waited_for_then_fatal() -> None:
    stop = threading.Event()
    restarting = [TimeoutError("restarting")] * 30
    script = _Script([_state([True]), *restarting, _state([True])], stop, step_s=1.0)
    assert supervise(script.read, stop, FAST, script.clock) == 0, "30 s is within 60 s"

    stop = threading.Event()
    lost = [TimeoutError("no node")] * 61
    script = _Script([_state([True]), *lost], stop, step_s=1.0)
    assert supervise(script.read, stop, FAST, script.clock) == 1


def test_stop_ends_the_loop_with_status_zero() -> None:
    stop = threading.Event()
    stop.set()
    assert supervise(lambda: None, stop, FAST) == 0, "a drain is not a failure"


def test_summary_sums_consumers_and_names_each_sink() -> None:
    state = _state([True, False], lag=5)
    line = summary(state)
    assert (line["consumers_ready"], line["consumers"], line["lag"]) == (1, 2, 10)
    assert line["events_in"] == 20


def test_summary_sums_a_stores_shards_and_says_none_while_one_has_no_figure() -> None:
    state = _state([True])
    state["sinks"] = [
        {"region": "us-east", "store": "redis", "shard": 0, "lag": 3},
        {"region": "us-east", "store": "redis", "shard": 1, "lag": 4},
        {"region": "us-east", "store": "dynamodb", "shard": 0, "lag": 5},
        {"region": "us-east", "store": "dynamodb", "shard": 1, "lag": None},
    ]
    assert summary(state)["sink_lag"] == {"us-east/redis": 7, "us-east/dynamodb": None}


def test_the_pipeline_gets_its_sink_shards_and_offline_writers(tmp_path: Path) -> None:
    settings = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)})
    config = pipeline_job.pipeline_config(settings, consumers=2, sink_shards=3, offline_writers=4)
    assert (config.consumers, config.sink_shards, config.offline_writers) == (2, 3, 4)


def test_the_pipeline_computes_for_the_stack_tenant(tmp_path: Path) -> None:
    settings = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path), "FRESHLINE_TENANT": "acme"})
    config = pipeline_job.pipeline_config(settings, consumers=2)
    assert config.tenant == config.consumer_config().tenant == "acme"
