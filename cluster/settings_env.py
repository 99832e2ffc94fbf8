"""The ``FRESHLINE_*`` environment variables of :class:`~cluster.settings.StackSettings`: one table
(``ENV_VARS``) read by :func:`settings_from_env` at the top of the CLI and of each Ray job, and
written by :func:`settings_to_env` for the processes they start. A bad value raises
``ConfigError`` naming its variable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cluster.settings import StackSettings
from features.errors import ConfigError
from regions.config import RegionTopology, default_topology

EnvKind = Literal["int", "str", "path", "flag", "ports", "regions"]


@dataclass(frozen=True)
class EnvVar:
    """One ``FRESHLINE_*`` variable and the settings field it carries, as a dotted path
    (``topology.redis_ports``: one port per region, home region first)."""

    name: str
    field: str
    kind: EnvKind

    def read(self, settings: StackSettings) -> Any:
        value: Any = settings
        for part in self.field.split("."):
            value = getattr(value, part)
        return value

    def write(self, data: dict[str, Any], raw: str) -> None:
        *sections, key = self.field.split(".")
        for section in sections:
            data = data.setdefault(section, {})
        data[key] = _parse(self, raw)


# The one table of variables: settings_from_env reads these, StackSettings.to_env writes them.
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("FRESHLINE_STATE_DIR", "state_dir", "path"),
    EnvVar("FRESHLINE_TENANT", "tenant", "str"),
    EnvVar("FRESHLINE_KAFKA_HOST", "kafka.host", "str"),
    EnvVar("FRESHLINE_KAFKA_PORT", "kafka.port", "int"),
    EnvVar("FRESHLINE_KAFKA_CONTROLLER_PORT", "kafka.controller_port", "int"),
    EnvVar("FRESHLINE_KAFKA_BROKERS", "kafka.brokers", "int"),
    EnvVar("FRESHLINE_KAFKA_HEAP_MB", "kafka.heap_mb", "int"),
    EnvVar("FRESHLINE_KAFKA_VERSION", "kafka.version", "str"),
    # Every region, as a JSON list of regions/config.RegionConfig (home region first): N regions
    # and each store's host; the port and mode variables below override what it says.
    EnvVar("FRESHLINE_REGIONS", "topology.regions", "regions"),
    EnvVar("FRESHLINE_REDIS_PORTS", "topology.redis_ports", "ports"),
    # Masters per region: 1 is one redis-server, 3 a local Redis Cluster (docs/scale.md).
    EnvVar("FRESHLINE_REDIS_SHARDS", "topology.redis_shards", "int"),
    EnvVar("FRESHLINE_DYNAMODB_PORTS", "topology.dynamodb_ports", "ports"),
    EnvVar("FRESHLINE_DYNAMODB_MODE", "topology.dynamodb_mode", "str"),
    EnvVar("FRESHLINE_RAY_PORT", "ray.port", "int"),
    EnvVar("FRESHLINE_RAY_DASHBOARD_PORT", "ray.dashboard_port", "int"),
    EnvVar("FRESHLINE_RAY_CLIENT_PORT", "ray.client_server_port", "int"),
    EnvVar("FRESHLINE_SERVE_PORT", "ray.serve_port", "int"),
    EnvVar("FRESHLINE_METRICS_PORT", "ray.metrics_export_port", "int"),
    EnvVar("FRESHLINE_RAY_AGENT_PORT", "ray.dashboard_agent_port", "int"),
    EnvVar("FRESHLINE_RAY_NUM_CPUS", "ray.num_cpus", "int"),
    EnvVar("FRESHLINE_RAY_OBJECT_STORE_MB", "ray.object_store_mb", "int"),
    EnvVar("FRESHLINE_RAY_WORKER_NODES", "ray.worker_nodes", "int"),
    EnvVar("FRESHLINE_RAY_AUTH_MODE", "ray.auth_mode", "str"),
    EnvVar("FRESHLINE_SERVE_INGRESS", "ray.ingress", "str"),
    EnvVar("FRESHLINE_SERVE_REPLICAS", "ray.serve_replicas", "int"),
    EnvVar("FRESHLINE_HAPROXY_STATS_PORT", "ray.haproxy_stats_port", "int"),
    EnvVar("FRESHLINE_HAPROXY_METRICS_PORT", "ray.haproxy_metrics_port", "int"),
    EnvVar("FRESHLINE_SERVE_INGRESS_PORTS", "ray.ingress_ports", "ports"),
    EnvVar("FRESHLINE_SERVE_FALLBACK_PORT", "ray.fallback_proxy_port", "int"),
    EnvVar("FRESHLINE_SERVE_DRAIN_S", "ray.serve_drain_s", "int"),
    EnvVar("FRESHLINE_FRONT_DOOR_PORTS", "front_door.ports", "ports"),
    EnvVar("FRESHLINE_FRONT_DOOR_MAXCONN", "front_door.maxconn", "int"),
    EnvVar("FRESHLINE_FRONT_DOOR_QUEUE_MS", "front_door.queue_ms", "int"),
    EnvVar("FRESHLINE_FRONT_DOOR_RETRY_AFTER_S", "front_door.retry_after_s", "int"),
    EnvVar("FRESHLINE_FRONT_DOOR_CHECK_MS", "front_door.check_ms", "int"),
    EnvVar("FRESHLINE_FRONT_DOOR_LIVE_MS", "front_door.live_timeout_ms", "int"),
    EnvVar("FRESHLINE_REDIS_MAXMEMORY_MB", "redis.maxmemory_mb", "int"),
    EnvVar("FRESHLINE_JAR_CACHE", "jar_cache_dir", "path"),
    EnvVar("FRESHLINE_WITH_RAY", "with_ray", "flag"),
    EnvVar("FRESHLINE_WITH_SERVING", "with_serving", "flag"),
    EnvVar("FRESHLINE_ICEBERG_WAREHOUSE", "iceberg_warehouse_uri", "str"),
)

_FALSE = frozenset({"0", "false", "no"})
_DUMP: dict[EnvKind, Callable[[Any], str]] = {
    "int": str,
    "str": str,
    "path": str,
    "flag": lambda on: "1" if on else "0",
    "ports": lambda ports: ",".join(str(p) for p in ports),
    "regions": lambda regions: json.dumps([r.model_dump(mode="json") for r in regions]),
}


def settings_to_env(settings: StackSettings) -> dict[str, str]:
    """``FRESHLINE_*`` variables that rebuild ``settings`` in another process (a Ray job, the
    CLI): the inverse of :func:`settings_from_env`, from the same table (``ENV_VARS``)."""
    env = {}
    for var in ENV_VARS:
        value = var.read(settings)
        if value is not None:  # an unset optional field: its variable stays unset too
            env[var.name] = _DUMP[var.kind](value)
    return env


def _env_defaults() -> dict[str, str]:
    """What an unset variable means where it differs from the model's default: the CLI's state
    lives in the home directory, and a stack started from the environment serves by default."""
    return {"FRESHLINE_STATE_DIR": str(Path.home() / ".freshline"), "FRESHLINE_WITH_SERVING": "1"}


def settings_from_env(environ: Mapping[str, str]) -> StackSettings:
    """Build settings from ``FRESHLINE_*`` variables; a bad value raises ConfigError naming it."""
    environ = {**_env_defaults(), **environ}
    data: dict[str, Any] = {}
    for var in ENV_VARS:
        if var.name in environ:
            var.write(data, environ[var.name])
    # Serving runs on the Ray head: without Ray the environment's default (on) does not apply.
    data["with_serving"] = data["with_serving"] and data.get("with_ray", True)
    try:
        if "topology" in data:
            data["topology"] = _topology(data["topology"])
        return StackSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(first["msg"], field=field) from exc


def _topology(given: dict[str, Any]) -> RegionTopology:
    """The regions of ``FRESHLINE_REGIONS`` (else the two demo regions), with the port and mode
    variables applied over them."""
    regions = given.get("regions")
    if regions is None:
        ports = {k: given[k] for k in ("redis_ports", "dynamodb_ports") if k in given}
        for key, value in ports.items():
            if len(value) != 2:
                field = f"FRESHLINE_{key.upper()}"
                raise ConfigError(
                    f"{len(value)} ports for the 2 default regions; set FRESHLINE_REGIONS to "
                    "describe more",
                    field=field,
                )
        return default_topology(**given)
    overrides: list[dict[str, Any]] = [{} for _ in regions]
    for key, field in (("redis_ports", "redis_port"), ("dynamodb_ports", "dynamodb_port")):
        if key in given:
            if len(given[key]) != len(regions):
                raise ConfigError(
                    f"{len(given[key])} ports for {len(regions)} regions",
                    field=f"FRESHLINE_{key.upper()}",
                )
            for override, port in zip(overrides, given[key], strict=True):
                override[field] = port
    for setting in ("dynamodb_mode", "redis_shards"):
        if setting in given:
            for override in overrides:
                override[setting] = given[setting]
    merged = [{**r, **o} for r, o in zip(regions, overrides, strict=True)]
    return RegionTopology.model_validate({"regions": merged})


def _regions(raw: str) -> list[dict[str, Any]]:
    try:
        regions = json.loads(raw)
    except ValueError:
        raise ConfigError("not JSON: a list of regions", field="FRESHLINE_REGIONS") from None
    if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise ConfigError("expected a JSON list of region objects", field="FRESHLINE_REGIONS")
    return regions


def _parse(var: EnvVar, raw: str) -> Any:
    if var.kind == "int":
        return _int_var(var.name, raw)
    if var.kind == "path":
        return Path(raw)
    if var.kind == "flag":
        return raw not in _FALSE
    if var.kind == "ports":
        return _ports(var.name, raw)
    if var.kind == "regions":
        return _regions(raw)
    return raw


def _int_var(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"expected an integer, got {raw!r}", field=var) from None


def _ports(var: str, raw: str) -> tuple[int, ...]:
    parts = raw.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"expected comma-separated ports, got {raw!r}", field=var)
    return tuple(int(p) for p in parts)
