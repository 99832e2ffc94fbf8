"""The pure parts of the alerts drill's Prometheus (chaos/prometheus.py): the rule copy whose
``for:`` alone is shortened, the config, and alert episodes read from the HTTP API's JSON."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos.prometheus import (
    SHIPPED_RULES,
    AlertLog,
    PrometheusApiError,
    drill_rules,
    format_duration,
    parse_alerts,
    parse_duration,
    parse_vector,
    render_config,
    rule_differences,
    rule_errors,
)
from features.errors import DataError


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make setup` installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def _rules(text: str) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("90s", 90_000), ("5m", 300_000), ("1h30m", 5_400_000), ("2d", 172_800_000)],
)
def test_durations_parse_to_milliseconds(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "5mx", "1.5m"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(DataError):
        parse_duration(text)


def test_durations_format_in_their_shortest_exact_unit() -> None:
    assert [format_duration(ms) for ms in (500, 1_000, 5_000, 60_000, 90_000)] == [
        "500ms",
        "1s",
        "5s",
        "1m",
        "90s",
    ]


def test_the_drill_copy_shortens_every_for_and_keeps_each_expression_byte_identical() -> None:
    shipped = SHIPPED_RULES.read_text()
    copy = drill_rules(shipped, speedup=60, floor_ms=1_000)
    old, new = _rules(shipped), _rules(copy)
    assert len(new) == len(old) >= 9
    assert [r["expr"] for r in new] == [r["expr"] for r in old]
    # The raw expression text too (the parsed strings above would hide a re-quoted block).
    for rule in old:
        assert rule["expr"].splitlines()[0] in copy
    expected = {r["alert"]: max(1_000, parse_duration(r["for"]) // 60) for r in old}
    assert {r["alert"]: parse_duration(r["for"]) for r in new} == expected
    assert expected["FreshlineSinkLagging"] == 5_000
    assert expected["FreshlineBreakerOpen"] == 1_000
    assert rule_differences(shipped, copy) == []


def test_a_copy_that_changed_an_expression_or_a_label_is_caught() -> None:
    shipped = SHIPPED_RULES.read_text()
    copy = drill_rules(shipped, speedup=60, floor_ms=1_000)
    edited = copy.replace("> 50000", "> 5000", 1)
    assert any("FreshlineSinkLagging: expr differs" in p for p in rule_differences(shipped, edited))
    relabelled = copy.replace("severity: page", "severity: ticket", 1)
    assert any("labels differs" in p for p in rule_differences(shipped, relabelled))
    dropped = copy.replace("- alert: FreshlineBreakerOpen", "- alert: FreshlineBreakerShut")
    assert rule_differences(shipped, dropped)


def test_a_reformatted_expression_with_the_same_meaning_is_still_a_difference() -> None:
    shipped = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: x  >  1\n    for: 5m\n"
    spaced = shipped.replace("x  >  1", "x > 1")
    assert rule_differences(shipped, drill_rules(shipped, speedup=60, floor_ms=1_000)) == []
    assert rule_differences(shipped, spaced)


def test_the_shortened_copy_is_valid_for_promtool(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text(drill_rules(SHIPPED_RULES.read_text(), speedup=60, floor_ms=1_000))
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "9 rules found" in checked.stdout


def test_the_config_scrapes_the_target_and_evaluates_the_copy(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yml"
    text = render_config(target="127.0.0.1:18080", rule_file=rules, scrape_s=1.0, eval_s=0.5)
    config = yaml.safe_load(text)
    assert config["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "500ms",
    }
    assert config["rule_files"] == [str(rules)]
    [job] = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:18080"]}]
    rules.write_text(drill_rules(SHIPPED_RULES.read_text(), speedup=60, floor_ms=1_000))
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    checked = _promtool("check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _alert(name: str, state: str, value: str = "1e+00", **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": "page", **labels},
        "annotations": {"summary": "x"},
        "state": state,
        "activeAt": "2026-12-05T11:00:00Z",
        "value": value,
    }


def _answer(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"alerts": list(alerts)}}


def test_alerts_are_read_from_the_api_answer() -> None:
    [state] = parse_alerts(
        _answer(_alert("FreshlineSinkLagging", "firing", "6e+04", region="eu-west", store="redis"))
    )
    assert state.name == "FreshlineSinkLagging"
    assert state.labels == (("region", "eu-west"), ("severity", "page"), ("store", "redis"))
    assert state.state == "firing"
    assert state.value == 60_000.0


def test_an_error_answer_is_an_error_not_an_empty_list() -> None:
    with pytest.raises(PrometheusApiError):
        parse_alerts({"status": "error", "errorType": "bad_data", "error": "boom"})
    with pytest.raises(PrometheusApiError):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})


def test_an_instant_vector_reads_as_labels_and_values() -> None:
    payload = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"region": "eu-west"}, "value": [1733396400.0, "61234"]}],
        },
    }
    assert parse_vector(payload) == [({"region": "eu-west"}, 61_234.0)]


def test_rules_in_error_are_named() -> None:
    payload = {
        "status": "success",
        "data": {
            "groups": [
                {
                    "rules": [
                        {"name": "A", "health": "ok"},
                        {"name": "B", "health": "err", "lastError": "many-to-many matching"},
                        {"name": "C", "health": "unknown"},
                    ]
                }
            ]
        },
    }
    assert rule_errors(payload) == ["B: many-to-many matching"]


LAG = {"region": "eu-west", "store": "redis"}


def test_an_episode_runs_from_pending_through_firing_to_gone() -> None:
    log = AlertLog()
    log.observe(0.0, parse_alerts(_answer()))
    log.observe(1.0, parse_alerts(_answer(_alert("FreshlineSinkLagging", "pending", **LAG))))
    log.observe(2.0, parse_alerts(_answer(_alert("FreshlineSinkLagging", "firing", **LAG))))
    assert log.firing_now("FreshlineSinkLagging", {"store": "redis"})
    log.observe(3.0, parse_alerts(_answer(_alert("FreshlineSinkLagging", "firing", **LAG))))
    log.observe(4.5, parse_alerts(_answer()))
    [episode] = log.episodes
    assert (episode.seen_s, episode.firing_s, episode.gone_s) == (1.0, 2.0, 4.5)
    assert not log.active_now("FreshlineSinkLagging", LAG)
    assert episode.describe() == "FreshlineSinkLagging{region=eu-west,store=redis}"


def test_alerts_with_other_labels_are_other_episodes() -> None:
    log = AlertLog()
    log.observe(
        1.0,
        parse_alerts(
            _answer(
                _alert("FreshlineSinkLagging", "firing", **LAG),
                _alert("FreshlineSinkLagging", "pending", region="us-east", store="dynamodb"),
            )
        ),
    )
    assert log.firing_now("FreshlineSinkLagging", LAG)
    assert not log.firing_now("FreshlineSinkLagging", {"store": "dynamodb"})
    assert log.active_now("FreshlineSinkLagging", {"store": "dynamodb"})
    assert not log.active_now("FreshlineBreakerOpen", {})
    assert len(log.episodes) == 2


def test_a_pending_alert_that_never_fired_is_not_a_firing() -> None:
    log = AlertLog()
    log.observe(1.0, parse_alerts(_answer(_alert("FreshlineBreakerOpen", "pending"))))
    log.observe(2.0, parse_alerts(_answer()))
    assert log.first_firing("FreshlineBreakerOpen", {}, after_s=0.0) is None
    assert log.fired_between(0.0, 10.0) == []
    assert log.episodes[0].gone_s == 2.0


def test_an_alert_that_fires_again_opens_a_new_episode_and_each_is_found_by_its_time() -> None:
    log = AlertLog()
    firing = _answer(_alert("FreshlineBreakerOpen", "firing", region="us-east"))
    for t, answer in [(1.0, firing), (2.0, _answer()), (10.0, firing), (11.0, _answer())]:
        log.observe(t, parse_alerts(answer))
    assert [(e.firing_s, e.gone_s) for e in log.episodes] == [(1.0, 2.0), (10.0, 11.0)]
    later = log.first_firing("FreshlineBreakerOpen", {"region": "us-east"}, after_s=5.0)
    assert later is not None and later.firing_s == 10.0
    assert log.first_firing("FreshlineBreakerOpen", {"region": "eu-west"}, after_s=0.0) is None
    assert [e.firing_s for e in log.fired_between(1.5, 1.9)] == [1.0]
    assert log.fired_between(3.0, 9.0) == []
