from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import BaseModel

from cluster.secrets import load_or_create_secrets
from cluster.settings import (
    FrontDoorSettings,
    KafkaSettings,
    RaySettings,
    RedisSettings,
    StackSettings,
)
from cluster.settings_env import ENV_VARS, settings_from_env, settings_to_env
from features.errors import ConfigError
from regions.config import RegionTopology, default_topology


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
        ({"FRESHLINE_SERVE_INGRESS_PORTS": "31000,30000"}, "ray"),
        # A tenant is part of every key: a ':' or glob character would let it address another's.
        ({"FRESHLINE_TENANT": "acme:prod"}, "tenant"),
        ({"FRESHLINE_TENANT": "Acme"}, "tenant"),
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
    assert settings_from_env(settings_to_env(settings)) == settings


def test_a_warehouse_that_is_not_a_uri_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"FRESHLINE_ICEBERG_WAREHOUSE": "/data/lake"})
    assert caught.value.field == "iceberg_warehouse_uri"


# Fields no FRESHLINE_* variable sets: fixed by the stack, or derived from what the table sets.
NOT_FROM_ENV = {
    "kafka.topics",
    "ray.temp_dir",
    "ray.min_worker_port",
    "ray.max_worker_port",
    "redis.admin_user",
    "redis.writer_user",
    "redis.reader_user",
    "topology",  # only its ports and topology.dynamodb_mode
}


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    fields = set()
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not RegionTopology:
            fields |= _leaf_fields(sub, f"{prefix}{name}.")
        else:
            fields.add(f"{prefix}{name}")
    return fields


def test_every_settings_field_is_either_in_the_env_table_or_deliberately_not() -> None:
    table = {var.field for var in ENV_VARS}
    table_roots = {f for f in table if not f.startswith("topology.")} | {"topology"}
    assert table_roots.isdisjoint(NOT_FROM_ENV - {"topology"})
    assert _leaf_fields(StackSettings) == table_roots | NOT_FROM_ENV
    assert len({var.name for var in ENV_VARS}) == len(ENV_VARS)


def _everything_changed(tmp_path: Path, *, with_ray: bool) -> StackSettings:
    return StackSettings(
        state_dir=tmp_path / "state",
        tenant="acme",
        kafka=KafkaSettings(
            version="3.9.1",
            host="kafka.internal",
            port=29092,
            controller_port=29093,
            brokers=3,
            heap_mb=640,
        ),
        ray=RaySettings(
            port=26390,
            dashboard_port=28265,
            client_server_port=20001,
            serve_port=28000,
            metrics_export_port=28080,
            dashboard_agent_port=52366,
            auth_mode="token",
            num_cpus=6,
            object_store_mb=640,
            worker_nodes=2,
            ingress="proxy",
            serve_replicas=3,
            haproxy_stats_port=28404,
            haproxy_metrics_port=29101,
            ingress_ports=(32000, 32032),
            fallback_proxy_port=28500,
            serve_drain_s=4,
        ),
        redis=RedisSettings(maxmemory_mb=256),
        front_door=FrontDoorSettings(
            ports=(28101, 28102),
            maxconn=7,
            queue_ms=30,
            retry_after_s=2,
            check_ms=100,
            live_timeout_ms=250,
        ),
        topology=default_topology(
            redis_ports=(26379, 26383),
            dynamodb_ports=(24566, 24567),
            dynamodb_mode="aws",
            redis_shards=3,
        ),
        jar_cache_dir=tmp_path / "jars",
        with_ray=with_ray,
        with_serving=False,
        iceberg_warehouse_uri="s3://lake/freshline",
    )


def test_every_variable_round_trips_settings_to_env_and_back(tmp_path: Path) -> None:
    defaults = settings_from_env({})
    cases = [_everything_changed(tmp_path, with_ray=r) for r in (True, False)]
    for settings in cases:
        env = settings_to_env(settings)
        assert set(env) == {var.name for var in ENV_VARS}
        assert settings_from_env(env) == settings
    # Each variable carried a value other than its default in at least one case, so none of
    # them can be dropped from one direction of the round trip unnoticed.
    for var in ENV_VARS:
        assert any(var.read(s) != var.read(defaults) for s in cases), var.name


def test_unset_optional_fields_leave_their_variables_unset(tmp_path: Path) -> None:
    settings = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)})
    env = settings_to_env(settings)
    assert not {
        "FRESHLINE_HAPROXY_STATS_PORT",
        "FRESHLINE_HAPROXY_METRICS_PORT",
        "FRESHLINE_SERVE_FALLBACK_PORT",
        "FRESHLINE_ICEBERG_WAREHOUSE",
    } & set(env)
    assert settings_from_env(env) == settings
