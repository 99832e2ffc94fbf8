"""The shipped alert rules and dashboard (cluster/observability): valid PromQL, alerts that fire on
the series they page for and stay silent below their thresholds (promtool's rule tests), written
against metric names the code exports, and each pointing at a runbook that names it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
OBSERVABILITY = ROOT / "cluster" / "observability"
EXPORTERS = (ROOT / "actors" / "metrics.py", ROOT / "serve_apps" / "metrics.py")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make setup` installs Debian's prometheus package"
    return subprocess.run(
        [tool, *args], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60, check=False
    )


def _alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _exported() -> set[str]:
    names: set[str] = set()
    for path in EXPORTERS:
        names |= set(re.findall(r'"(freshline_[a-z_]+)"', path.read_text()))
    return names


def _base(name: str, exported: set[str]) -> str:
    """A sample name's metric (``..._total``, ``..._bucket``: the counter or histogram)."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in exported:
            return name.removesuffix(suffix)
    return name


def _referenced(expr: str) -> set[str]:
    exported = _exported()
    return {_base(n, exported) for n in re.findall(r"\bray_(freshline_[a-z_]+)", expr)}


def test_the_rules_are_valid_and_pass_their_promtool_tests() -> None:
    checked = _promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_exercised_by_a_rule_test() -> None:
    tests = yaml.safe_load((OBSERVABILITY / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {str(rule["alert"]) for rule in _alerts()}


def test_alerts_and_dashboard_use_only_metrics_the_code_exports() -> None:
    exported = _exported()
    assert "freshline_serving_requests" in exported and "freshline_sink_lag" in exported
    used = set()
    for expr in [str(rule["expr"]) for rule in _alerts()] + _dashboard_exprs():
        used |= _referenced(expr)
    assert used, "no metric referenced: the check would pass vacuously"
    assert used <= exported, sorted(used - exported)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"freshline:dashboard_{i}", "expr": expr}
                    for i, expr in enumerate(_dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: str(r["alert"]))
def test_each_alert_sends_the_operator_to_a_runbook_that_names_it(rule: dict[str, object]) -> None:
    annotations = rule["annotations"]
    assert isinstance(annotations, dict)
    runbook = ROOT / str(annotations["runbook"])
    assert runbook.is_file(), runbook
    assert f"`{rule['alert']}`" in runbook.read_text()
