from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cluster.secrets import load_or_create_secrets
from cluster.settings import settings_from_env
from features.errors import ConfigError


def test_defaults_are_the_documented_ports(tmp_path: Path) -> None:
    settings = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)})
    assert settings.kafka.bootstrap == "127.0.0.1:19092"
    assert [r.redis_port for r in settings.topology] == [16379, 16389]
    assert [r.dynamodb_port for r in settings.topology] == [14566, 14567]
    assert settings.ray.dashboard_url == "http://127.0.0.1:8265"
    assert settings.state_dir == tmp_path


def test_environment_overrides_ports(tmp_path: Path) -> None:
    settings = settings_from_env(
        {
            "FRESHLINE_STATE_DIR": str(tmp_path),
            "FRESHLINE_KAFKA_PORT": "29092",
            "FRESHLINE_REDIS_PORTS": "26379,26389",
            "FRESHLINE_WITH_RAY": "0",
        }
    )
    assert settings.kafka.port == 29092
    assert settings.topology.get("eu-west").redis_port == 26389
    assert settings.with_ray is False


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"FRESHLINE_KAFKA_PORT": "kafka"}, "FRESHLINE_KAFKA_PORT"),
        ({"FRESHLINE_KAFKA_PORT": "70000"}, "kafka.port"),
        ({"FRESHLINE_KAFKA_HEAP_MB": "16"}, "kafka.heap_mb"),
        ({"FRESHLINE_REDIS_PORTS": "16379"}, "FRESHLINE_REDIS_PORTS"),
        ({"FRESHLINE_KAFKA_VERSION": "latest"}, "kafka.version"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"FRESHLINE_STATE_DIR": "state", **env})
    assert caught.value.field == field


def test_colliding_ports_are_rejected() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        settings_from_env({"FRESHLINE_KAFKA_PORT": "16379"})


def test_settings_are_immutable(tmp_path: Path) -> None:
    settings = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)})
    with pytest.raises(Exception, match="frozen"):
        settings.kafka.port = 1  # type: ignore[misc]


def test_secrets_are_generated_once_private_and_env_wins(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    first = load_or_create_secrets(path, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_secrets(path, {})
    assert (
        again.redis_reader_password.get_secret_value()
        == first.redis_reader_password.get_secret_value()
    )
    assert "*" in repr(first) and first.redis_reader_password.get_secret_value() not in repr(first)
    env = load_or_create_secrets(path, {"FRESHLINE_REDIS_READER_PASSWORD": "from-env"})
    assert env.redis_reader_password.get_secret_value() == "from-env"


def test_to_env_round_trips_through_the_environment(tmp_path: Path) -> None:
    settings = settings_from_env(
        {
            "FRESHLINE_STATE_DIR": str(tmp_path),
            "FRESHLINE_KAFKA_PORT": "29092",
            "FRESHLINE_REDIS_PORTS": "26379,26389",
            "FRESHLINE_RAY_AUTH_MODE": "token",
            "FRESHLINE_WITH_RAY": "0",
            "FRESHLINE_ICEBERG_WAREHOUSE": "s3://lake/freshline",
            "FRESHLINE_SERVE_REPLICAS": "3",
        }
    )
    assert settings.iceberg_warehouse == "s3://lake/freshline"
    assert settings.ray.serve_replicas == 3
    assert settings_from_env(settings.to_env()) == settings


def test_a_warehouse_that_is_not_a_uri_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"FRESHLINE_ICEBERG_WAREHOUSE": "/data/lake"})
    assert caught.value.field == "iceberg_warehouse_uri"
