"""The scaling benchmark's arithmetic: CPU read from /proc, per-event costs, its headline."""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.scaling import cpu_seconds, marginal_us, per_event_us, summary

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(command: str, utime: int, stime: int) -> str:
    # Fields 3.. of proc(5): state, ppid, pgrp, session, tty, tpgid, flags, minflt, cminflt,
    # majflt, cmajflt, utime, stime, ...
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
    return f"4242 ({command}) " + " ".join([*rest, "0", "0", "20", "0", "1", "0", "99"])


def test_cpu_is_user_plus_system_time_even_when_the_command_name_has_parentheses() -> None:
    assert cpu_seconds(_stat("ray::_ConsumerActor", 3 * TICKS, TICKS)) == 4.0
    assert cpu_seconds(_stat("a) (b c) d", TICKS, 0)) == 1.0


def test_cpu_of_this_process_grows_while_it_computes() -> None:
    before = cpu_seconds(Path("/proc/self/stat").read_text())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        sum(range(10_000))
    after = cpu_seconds(Path("/proc/self/stat").read_text())
    assert after - before >= 0.2


def test_per_event_cost_is_the_cpu_spent_over_the_events_and_none_when_a_process_was_lost() -> None:
    before = {"consumers": 10.0, "broker": 5.0, "moto": None}
    after = {"consumers": 12.5, "broker": 5.5, "moto": 9.0}
    assert per_event_us(before, after, 100_000) == {
        "consumers": 25.0,
        "broker": 5.0,
        "moto": None,
    }


def test_summary_keys_each_case_by_nodes_and_consumers_and_takes_medians() -> None:
    def case(nodes: int, consumers: int, eps: int, us: float | None) -> dict[str, object]:
        cost = {"consumers": us, "broker": 4.0}
        return {
            "nodes": nodes,
            "consumers": consumers,
            "events_per_s": eps,
            "cpu_us_per_event": cost,
            "marginal_us_per_event": {k: None if v is None else v / 2 for k, v in cost.items()},
            "idle_cores": {"consumers": 0.01 * consumers, "broker": 0.05},
        }

    cases = [case(1, 1, 10_000, 20.0), case(1, 2, 18_000, 22.0), case(2, 1, 9_000, None)]
    result = summary(cases)  # type: ignore[arg-type]
    assert result["events_per_s"] == {"1n1c": 10_000, "1n2c": 18_000, "2n1c": 9_000}
    assert result["consumer_us_per_event"]["2n1c"] is None
    assert result["median_cpu_us_per_event"] == {"broker": 4.0, "consumers": 21.0}
    assert result["median_marginal_us_per_event"] == {"broker": 2.0, "consumers": 10.5}
    assert result["median_idle_cores"] == {"broker": 0.05, "consumers": 0.01}


def test_marginal_cost_leaves_out_what_the_group_spends_with_no_event() -> None:
    # 10 s at 0.2 idle cores is 2 CPU-seconds of the 3 spent; 1 s over 100,000 events is 10 µs.
    before = {"broker": 1.0, "moto": None}
    after = {"broker": 4.0, "moto": 2.0}
    idle = {"broker": 0.2, "moto": 0.1}
    assert marginal_us(before, after, idle, 10.0, 100_000) == {"broker": 10.0, "moto": None}


def test_a_case_with_sink_shards_is_keyed_by_them_and_reports_the_sinks_cost() -> None:
    def case(shards: int, redis_us: float) -> dict[str, object]:
        cost = {"consumers": 100.0, "redis_sinks": redis_us, "dynamodb_sinks": 20.0}
        return {
            "nodes": 1,
            "consumers": 2,
            "sink_shards": shards,
            "events_per_s": 6_000,
            "cpu_us_per_event": cost,
            "marginal_us_per_event": cost,
            "idle_cores": {"redis_sinks": 0.02 * shards},
        }

    result = summary([case(1, 15.0), case(2, 18.0)])  # type: ignore[arg-type]
    assert list(result["events_per_s"]) == ["1n2c", "1n2c2s"], "one shard keeps the old key"
    assert result["sink_marginal_us_per_event"]["1n2c2s"] == {
        "redis_sinks": 18.0,
        "dynamodb_sinks": 20.0,
        "offline_writer": None,
    }
    writers = {**case(1, 15.0), "offline_writers": 2}
    assert list(summary([writers])["events_per_s"]) == ["1n2c2w"]  # type: ignore[list-item]
