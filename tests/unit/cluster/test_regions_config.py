"""Regions are configuration: FRESHLINE_REGIONS describes N regions (and where each store runs),
and everything built from the settings (the stack's services, the front doors, the serving
applications and their failover) follows it with no code change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cluster.services.haproxy import front_door_urls
from cluster.settings_env import settings_from_env, settings_to_env
from cluster.stack import Stack
from features.errors import ConfigError
from serve_apps.config import ApiKey
from serve_apps.deploy import configs_for_stack

THREE = [
    {"name": "us-east", "aws_region": "us-east-1", "redis_port": 26379, "dynamodb_port": 24566,
     "coordinates": [38.9, -77.0]},
    {"name": "eu-west", "aws_region": "eu-west-1", "redis_port": 26389, "dynamodb_port": 24567,
     "coordinates": [53.3, -6.3]},
    {"name": "ap-south", "aws_region": "ap-south-1", "redis_port": 26399, "dynamodb_port": 24568,
     "coordinates": [19.1, 72.9]},
]  # fmt: skip


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FRESHLINE_STATE_DIR": str(tmp_path),
        "FRESHLINE_REGIONS": json.dumps(THREE),
        "FRESHLINE_FRONT_DOOR_PORTS": "28101,28102,28103",
        **extra,
    }


def test_three_regions_from_the_environment_build_three_of_everything(tmp_path: Path) -> None:
    settings = settings_from_env(_env(tmp_path))
    assert settings.topology.names == ("us-east", "eu-west", "ap-south")
    assert settings_from_env(settings_to_env(settings)) == settings  # a Ray job rebuilds the same
    names = [service.name for service in Stack.build(settings, environ={}).services]
    for kind in ("redis", "dynamodb"):
        assert [n for n in names if n.startswith(f"{kind}-")] == [
            f"{kind}-us-east",
            f"{kind}-eu-west",
            f"{kind}-ap-south",
        ]
    assert [n for n in names if n.startswith("front-door-")] == [
        "front-door-us-east",
        "front-door-eu-west",
        "front-door-ap-south",
    ]
    assert front_door_urls(settings)["ap-south"] == "http://127.0.0.1:28103"
    configs = configs_for_stack(settings, [ApiKey.from_raw("k", "fl_key")])
    assert [c.region for c in configs] == ["us-east", "eu-west", "ap-south"]
    # Each region fails over nearest first, the new one included.
    order = {c.region: [r.name for r in c.topology.failover_order(c.region)] for c in configs}
    assert order == {
        "us-east": ["eu-west", "ap-south"],
        "eu-west": ["us-east", "ap-south"],
        "ap-south": ["eu-west", "us-east"],
    }


def test_the_port_variables_apply_over_the_regions(tmp_path: Path) -> None:
    settings = settings_from_env(_env(tmp_path, FRESHLINE_REDIS_PORTS="27001,27002,27003"))
    assert settings.topology.redis_ports == (27001, 27002, 27003)
    assert settings.topology.get("ap-south").dynamodb_port == 24568


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"FRESHLINE_REGIONS": "us-east,eu-west"}, "FRESHLINE_REGIONS", "not JSON"),
        ({"FRESHLINE_REGIONS": '{"name": "x"}'}, "FRESHLINE_REGIONS", "JSON list"),
        ({"FRESHLINE_REDIS_PORTS": "1,2"}, "FRESHLINE_REDIS_PORTS", "2 ports for 3 regions"),
        ({"FRESHLINE_FRONT_DOOR_PORTS": "28101,28102"}, "", r"one port per region \(3"),
    ],
)
def test_a_bad_regions_setting_names_what_is_wrong(
    tmp_path: Path, extra: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings_from_env(_env(tmp_path, **extra))
    if field:
        assert caught.value.field == field


def test_more_ports_than_the_default_regions_asks_for_the_regions(tmp_path: Path) -> None:
    env = {"FRESHLINE_STATE_DIR": str(tmp_path), "FRESHLINE_REDIS_PORTS": "1,2,3"}
    with pytest.raises(ConfigError, match="set FRESHLINE_REGIONS") as caught:
        settings_from_env(env)
    assert caught.value.field == "FRESHLINE_REDIS_PORTS"
