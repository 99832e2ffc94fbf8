"""Stack settings: one frozen, validated object, built once from the environment at the top.

Nothing below the CLI or a job's entry point reads ``os.environ``; they receive a ``StackSettings``.
Every port has a fixed documented default (see docs/operations.md) and can be overridden with a
``FRESHLINE_*`` variable, which is how the test suite runs a second stack on free ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from actors.config import CHANGELOG_TOPIC as CHANGELOG_TOPIC  # noqa: PLC0414 - re-exported
from actors.config import DLQ_TOPIC as DLQ_TOPIC  # noqa: PLC0414 - re-exported
from actors.config import EVENTS_PARTITIONS, EVENTS_TOPIC
from features.errors import ConfigError
from regions.config import RedisUsers, RegionTopology, default_topology

# The topic names are defined in actors.config (the pipeline reads and writes them); the stack
# creates them, and its callers (drills, benchmarks, tests) take the names from here.
DEFAULT_EVENTS_TOPIC: Final = EVENTS_TOPIC

IngressMode = Literal["proxy", "haproxy", "haproxy-throughput"]
"""Ray Serve's ingress, set on the Ray head (the environment of each mode is
``serve_apps.deploy.INGRESS_MODES``; what each bought is in docs/serving.md)."""


class TopicSpec(BaseModel):
    """A Kafka topic the stack creates. Compacted topics keep the latest value per key forever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")
    partitions: int = Field(ge=1, le=1024)
    compacted: bool = False
    retention_ms: int | None = Field(default=None, ge=60_000)


def default_topics(events_topic: str = DEFAULT_EVENTS_TOPIC) -> tuple[TopicSpec, ...]:
    return (
        TopicSpec(name=events_topic, partitions=EVENTS_PARTITIONS),
        TopicSpec(name=DLQ_TOPIC, partitions=4),
        TopicSpec(name=CHANGELOG_TOPIC, partitions=EVENTS_PARTITIONS, compacted=True),
    )


class KafkaSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(default="4.1.1", pattern=r"^\d+\.\d+\.\d+$")
    host: str = "127.0.0.1"
    port: int = Field(default=19092, ge=1, le=65535)
    controller_port: int = Field(default=19093, ge=1, le=65535)
    heap_mb: int = Field(default=512, ge=128, le=8192)
    topics: tuple[TopicSpec, ...] = Field(default_factory=default_topics)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class RaySettings(BaseModel):
    """Explicit Ray head resources: the machine has 2 cores that Kafka, Redis and tests share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int = Field(default=6390, ge=1, le=65535)
    dashboard_port: int = Field(default=8265, ge=1, le=65535)
    client_server_port: int = Field(default=10001, ge=1, le=65535)
    serve_port: int = Field(default=8000, ge=1, le=65535)
    metrics_export_port: int = Field(default=18080, ge=1, le=65535)
    # The job agent's HTTP port; Ray's fixed default (52365) collides with a second head on the
    # same machine, which then has no agent and refuses every job submission.
    dashboard_agent_port: int = Field(default=52365, ge=1, le=65535)
    # Ray 2.60 silently turns token auth on when ~/.ray/auth_token exists; the stack decides
    # explicitly instead. The local head binds to loopback, so "disabled" is the local default;
    # a multi-node cluster sets "token" (FRESHLINE_RAY_AUTH_MODE) and distributes the token.
    auth_mode: Literal["disabled", "token"] = "disabled"
    # Logical CPUs: actors are mostly I/O bound, so we advertise more slots than cores.
    num_cpus: int = Field(default=4, ge=1, le=512)
    object_store_mb: int = Field(default=512, ge=78, le=65536)
    temp_dir: Path | None = None
    # Ray's default worker range (10002-19999) covers our Kafka and Redis ports; move it away.
    min_worker_port: int = Field(default=20000, ge=1024, le=65535)
    max_worker_port: int = Field(default=29999, ge=1024, le=65535)
    # HAProxy on the Serve port plus Serve's throughput-optimised mode: the fastest correct
    # option measured (docs/serving.md). Process-wide, so it is the head's environment.
    ingress: IngressMode = "haproxy-throughput"
    # Serve replicas per region app: two, so that losing one (a crash, a node) leaves the region
    # a warm replica instead of a cold start under full load (serve-overload drill).
    serve_replicas: int = Field(default=2, ge=1, le=64)
    # HAProxy's stats and Prometheus listeners (Ray's fixed defaults, 8404 and 9101 on all
    # interfaces, collide between two heads on one machine). None: a free port at head start.
    haproxy_stats_port: int | None = Field(default=None, ge=1, le=65535)
    haproxy_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """Environment a Ray client (``ray job submit``, ``ray.init``) needs for this head."""
        return {"RAY_AUTH_MODE": self.auth_mode}


class RedisSettings(RedisUsers):
    """The ACL user names (``RedisUsers``) plus the local servers' memory bound."""

    maxmemory_mb: int = Field(default=512, ge=16)


class Secrets(BaseModel):
    """Passwords of the Redis ACL users. Never printed; ``repr`` shows ``**********``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_admin_password: SecretStr
    redis_writer_password: SecretStr
    redis_reader_password: SecretStr


class StackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: Path
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    topology: RegionTopology = Field(default_factory=default_topology)
    jar_cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "freshline")
    with_ray: bool = True
    # Deploy the region Serve applications in ``Stack.up`` (after the Ray head). Off by default
    # for code that builds settings itself (the test stack deploys its own apps); on by default
    # from the environment, i.e. for ``freshline stack up`` and ``make demo``.
    with_serving: bool = False
    # None: a local warehouse under the state dir. An s3:// URI (with the usual AWS variables or
    # pyiceberg's s3.* properties) moves the offline store to S3-compatible storage.
    iceberg_warehouse_uri: str | None = Field(default=None, pattern=r"^(file|s3|s3a|gs)://.+")

    @model_validator(mode="after")
    def _serving_needs_ray(self) -> StackSettings:
        if self.with_serving and not self.with_ray:
            raise ValueError("with_serving needs with_ray: the applications run on the Ray head")
        return self

    @model_validator(mode="after")
    def _ports_unique(self) -> StackSettings:
        ports = [
            self.kafka.port,
            self.kafka.controller_port,
            self.ray.port,
            self.ray.dashboard_port,
        ]
        ports += [self.ray.client_server_port, self.ray.serve_port, self.ray.metrics_export_port]
        ports += [self.ray.dashboard_agent_port]
        ports += [p for p in (self.ray.haproxy_stats_port, self.ray.haproxy_metrics_port) if p]
        ports += [r.redis_port for r in self.topology] + [r.dynamodb_port for r in self.topology]
        if len(set(ports)) != len(ports):
            raise ValueError(f"ports must be distinct, got {sorted(ports)}")
        return self

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def offline_dir(self) -> Path:
        return self.state_dir / "offline"

    @property
    def iceberg_catalog_uri(self) -> str:
        return f"sqlite:///{self.offline_dir / 'catalog.db'}"

    @property
    def iceberg_warehouse(self) -> str:
        return self.iceberg_warehouse_uri or f"file://{self.offline_dir / 'warehouse'}"

    def to_env(self) -> dict[str, str]:
        """``FRESHLINE_*`` variables that rebuild these settings in another process (a Ray job,
        the CLI): the inverse of :func:`settings_from_env` for every field it reads."""
        east, west = self.topology.regions[0], self.topology.regions[-1]
        return (
            {
                "FRESHLINE_STATE_DIR": str(self.state_dir),
                "FRESHLINE_KAFKA_PORT": str(self.kafka.port),
                "FRESHLINE_KAFKA_CONTROLLER_PORT": str(self.kafka.controller_port),
                "FRESHLINE_KAFKA_HEAP_MB": str(self.kafka.heap_mb),
                "FRESHLINE_KAFKA_VERSION": self.kafka.version,
                "FRESHLINE_REDIS_PORTS": f"{east.redis_port},{west.redis_port}",
                "FRESHLINE_DYNAMODB_PORTS": f"{east.dynamodb_port},{west.dynamodb_port}",
                "FRESHLINE_RAY_PORT": str(self.ray.port),
                "FRESHLINE_RAY_DASHBOARD_PORT": str(self.ray.dashboard_port),
                "FRESHLINE_RAY_CLIENT_PORT": str(self.ray.client_server_port),
                "FRESHLINE_SERVE_PORT": str(self.ray.serve_port),
                "FRESHLINE_METRICS_PORT": str(self.ray.metrics_export_port),
                "FRESHLINE_RAY_AGENT_PORT": str(self.ray.dashboard_agent_port),
                "FRESHLINE_RAY_NUM_CPUS": str(self.ray.num_cpus),
                "FRESHLINE_RAY_OBJECT_STORE_MB": str(self.ray.object_store_mb),
                "FRESHLINE_RAY_AUTH_MODE": self.ray.auth_mode,
                "FRESHLINE_REDIS_MAXMEMORY_MB": str(self.redis.maxmemory_mb),
                "FRESHLINE_JAR_CACHE": str(self.jar_cache_dir),
                "FRESHLINE_WITH_RAY": "1" if self.with_ray else "0",
                "FRESHLINE_WITH_SERVING": "1" if self.with_serving else "0",
                "FRESHLINE_SERVE_INGRESS": self.ray.ingress,
                "FRESHLINE_SERVE_REPLICAS": str(self.ray.serve_replicas),
            }
            | {
                var: str(port)
                for var, port in (
                    ("FRESHLINE_HAPROXY_STATS_PORT", self.ray.haproxy_stats_port),
                    ("FRESHLINE_HAPROXY_METRICS_PORT", self.ray.haproxy_metrics_port),
                )
                if port is not None
            }
            | (
                {"FRESHLINE_ICEBERG_WAREHOUSE": self.iceberg_warehouse_uri}
                if self.iceberg_warehouse_uri
                else {}
            )
        )

    @property
    def ray_temp_dir(self) -> Path:
        # Ray puts unix sockets under its temp dir; their paths must stay under 107 bytes, so the
        # default is a short path keyed by the Ray port rather than a subfolder of the state dir.
        return self.ray.temp_dir or Path(f"/tmp/freshline-ray-{self.ray.port}")  # noqa: S108


_ENV_INT = {
    "FRESHLINE_KAFKA_PORT": ("kafka", "port"),
    "FRESHLINE_KAFKA_CONTROLLER_PORT": ("kafka", "controller_port"),
    "FRESHLINE_KAFKA_HEAP_MB": ("kafka", "heap_mb"),
    "FRESHLINE_RAY_PORT": ("ray", "port"),
    "FRESHLINE_RAY_DASHBOARD_PORT": ("ray", "dashboard_port"),
    "FRESHLINE_RAY_CLIENT_PORT": ("ray", "client_server_port"),
    "FRESHLINE_SERVE_PORT": ("ray", "serve_port"),
    "FRESHLINE_METRICS_PORT": ("ray", "metrics_export_port"),
    "FRESHLINE_RAY_AGENT_PORT": ("ray", "dashboard_agent_port"),
    "FRESHLINE_RAY_NUM_CPUS": ("ray", "num_cpus"),
    "FRESHLINE_RAY_OBJECT_STORE_MB": ("ray", "object_store_mb"),
    "FRESHLINE_SERVE_REPLICAS": ("ray", "serve_replicas"),
    "FRESHLINE_REDIS_MAXMEMORY_MB": ("redis", "maxmemory_mb"),
    "FRESHLINE_HAPROXY_STATS_PORT": ("ray", "haproxy_stats_port"),
    "FRESHLINE_HAPROXY_METRICS_PORT": ("ray", "haproxy_metrics_port"),
}


def settings_from_env(environ: Mapping[str, str]) -> StackSettings:
    """Build settings from ``FRESHLINE_*`` variables; a bad value raises ConfigError naming it."""
    data: dict[str, Any] = {"kafka": {}, "ray": {}, "redis": {}}
    data["state_dir"] = Path(environ.get("FRESHLINE_STATE_DIR", str(Path.home() / ".freshline")))
    for var, (section, key) in _ENV_INT.items():
        if var in environ:
            data[section][key] = _int_var(environ, var)
    if "FRESHLINE_RAY_AUTH_MODE" in environ:
        data["ray"]["auth_mode"] = environ["FRESHLINE_RAY_AUTH_MODE"]
    if "FRESHLINE_KAFKA_VERSION" in environ:
        data["kafka"]["version"] = environ["FRESHLINE_KAFKA_VERSION"]
    if "FRESHLINE_ICEBERG_WAREHOUSE" in environ:
        data["iceberg_warehouse_uri"] = environ["FRESHLINE_ICEBERG_WAREHOUSE"]
    if "FRESHLINE_JAR_CACHE" in environ:
        data["jar_cache_dir"] = Path(environ["FRESHLINE_JAR_CACHE"])
    if environ.get("FRESHLINE_WITH_RAY", "1") in {"0", "false", "no"}:
        data["with_ray"] = False
    data["with_serving"] = data.get("with_ray", True) and environ.get(
        "FRESHLINE_WITH_SERVING", "1"
    ) not in {"0", "false", "no"}
    if "FRESHLINE_SERVE_INGRESS" in environ:
        data["ray"]["ingress"] = environ["FRESHLINE_SERVE_INGRESS"]
    redis_ports = _port_pair(environ, "FRESHLINE_REDIS_PORTS")
    dynamo_ports = _port_pair(environ, "FRESHLINE_DYNAMODB_PORTS")
    if redis_ports or dynamo_ports:
        data["topology"] = default_topology(
            redis_ports=redis_ports or (16379, 16389), dynamodb_ports=dynamo_ports or (14566, 14567)
        )
    try:
        return StackSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(first["msg"], field=field) from exc


def _int_var(environ: Mapping[str, str], var: str) -> int:
    try:
        return int(environ[var])
    except ValueError:
        raise ConfigError(f"expected an integer, got {environ[var]!r}", field=var) from None


def _port_pair(environ: Mapping[str, str], var: str) -> tuple[int, int] | None:
    raw = environ.get(var)
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"expected two comma-separated ports, got {raw!r}", field=var)
    return int(parts[0]), int(parts[1])
