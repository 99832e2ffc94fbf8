"""``freshline shadow``'s output: the report as JSON, or a table with one row per feature; it
exits 0 whenever the report could be computed."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from rich.console import Console

from cluster import shadow_cli

REPORT = {
    "view": "user_spend",
    "candidate": 2,
    "previous": 1,
    "share": 0,
    "region": "us-east",
    "as_of_ms": 1_764_000_000_000,
    "entities": 3,
    "features": [
        {
            "feature": "tx_count_1h",
            "entities": 3,
            "equal_offline": 1.0,
            "mean_abs_diff_offline": 0.0,
            "equal_previous": 1 / 3,
            "mean_abs_diff_previous": 2.5,
        },
        {
            "feature": "tx_count_2h",
            "entities": 3,
            "equal_offline": 1.0,
            "mean_abs_diff_offline": None,
            "equal_previous": None,
            "mean_abs_diff_previous": None,
        },
    ],
}


@pytest.fixture(autouse=True)
def _report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_cli, "node_secrets", lambda *_: None)
    monkeypatch.setattr(shadow_cli, "shadow_report", lambda *_a, **_k: REPORT)


class _Settings:
    secrets_file = "unused"


def _args(**over: Any) -> argparse.Namespace:
    return argparse.Namespace(view="user_spend", entities=3, region=None, json=False, **over)


def test_json_prints_the_report_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args()
    args.json = True
    assert shadow_cli._shadow(args, _Settings(), Console()) == 0  # type: ignore[arg-type]
    assert json.loads(capsys.readouterr().out) == REPORT


def test_the_table_has_a_row_per_feature_with_dashes_for_what_does_not_apply() -> None:
    console = Console(record=True, width=120)
    assert shadow_cli._shadow(_args(), _Settings(), console) == 0  # type: ignore[arg-type]
    text = console.export_text()
    assert "user_spend v2 (previous v1), 3 entities, us-east Redis" in text
    row = next(line for line in text.splitlines() if "tx_count_1h" in line)
    assert "100.0 %" in row and "33.3 %" in row and "2.5" in row
    row = next(line for line in text.splitlines() if "tx_count_2h" in line)
    assert row.count("-") >= 3
