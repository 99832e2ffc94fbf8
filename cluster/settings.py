"""Stack settings: one frozen, validated object, built once from the environment at the top.

Nothing below the CLI or a job's entry point reads ``os.environ``; they receive a ``StackSettings``.
Every port has a fixed documented default (see docs/operations.md) and can be overridden with a
``FRESHLINE_*`` variable (``cluster.settings_env``), which is how the test suite runs a second
stack on free ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from actors.config import CHANGELOG_TOPIC as CHANGELOG_TOPIC  # noqa: PLC0414 - re-exported
from actors.config import DLQ_TOPIC as DLQ_TOPIC  # noqa: PLC0414 - re-exported
from actors.config import EVENTS_PARTITIONS, EVENTS_TOPIC, OFFLINE_TOPIC, REGISTRY_TOPIC
from features.catalog import Name
from features.keys import DEFAULT_TENANT
from regions.config import RedisUsers, RegionConfig, RegionTopology, default_topology
from serve_apps.defaults import DEFAULT_REPLICAS

# The topic names are defined in actors.config (the pipeline reads and writes them); the stack
# creates them, and its callers (drills, benchmarks, tests) take the names from here.
DEFAULT_EVENTS_TOPIC: Final = EVENTS_TOPIC

IngressMode = Literal["proxy", "haproxy", "haproxy-throughput"]
"""Ray Serve's ingress, set on the Ray head (the environment of each mode is
``serve_apps.deploy.INGRESS_MODES``; docs/serving.md compares them)."""


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
        TopicSpec(name=REGISTRY_TOPIC, partitions=1, compacted=True),
        TopicSpec(name=OFFLINE_TOPIC, partitions=EVENTS_PARTITIONS),
    )


KAFKA_PORT_STRIDE: Final = 2
"""Node n (1-based) of a multi-broker profile listens on ``port + 2(n-1)`` and its controller on
``controller_port + 2(n-1)``: the default ports (19092, 19093) interleave without colliding."""


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node of the local stack: a broker and a quorum voter in one JVM."""

    node_id: int
    port: int
    controller_port: int


class KafkaSettings(BaseModel):
    """The local Kafka: one broker, or three (``brokers``) with every partition and internal
    topic on all three and ``min.insync.replicas`` 2, so that one broker may die with no
    acknowledged write lost and producers with ``acks=all`` going on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(default="4.1.1", pattern=r"^\d+\.\d+\.\d+$")
    host: str = "127.0.0.1"
    port: int = Field(default=19092, ge=1, le=65535)
    controller_port: int = Field(default=19093, ge=1, le=65535)
    # Three, not two: a 3-voter KRaft quorum survives one node, and min ISR 2 of 3 replicas keeps
    # acks=all writes going with one broker down. Each node gets heap_mb.
    brokers: Literal[1, 3] = 1
    heap_mb: int = Field(default=512, ge=128, le=8192)
    topics: tuple[TopicSpec, ...] = Field(default_factory=default_topics)

    @model_validator(mode="after")
    def _node_ports_exist(self) -> KafkaSettings:
        last = max(self.port, self.controller_port) + KAFKA_PORT_STRIDE * (self.brokers - 1)
        if last > 65535:
            raise ValueError(f"{self.brokers} brokers need ports up to {last}, past 65535")
        return self

    @property
    def nodes(self) -> tuple[KafkaNode, ...]:
        """Every node, node id 1 first."""
        return tuple(
            KafkaNode(
                node_id=i + 1,
                port=self.port + KAFKA_PORT_STRIDE * i,
                controller_port=self.controller_port + KAFKA_PORT_STRIDE * i,
            )
            for i in range(self.brokers)
        )

    @property
    def bootstrap(self) -> str:
        """Every broker, so that a client starting while one is down still connects."""
        return ",".join(f"{self.host}:{node.port}" for node in self.nodes)

    @property
    def replication_factor(self) -> int:
        return self.brokers

    @property
    def quorum(self) -> int:
        """Nodes that must run for the KRaft controllers to elect a leader: a majority."""
        return self.brokers // 2 + 1

    @property
    def min_insync_replicas(self) -> int:
        """A majority of the replicas: an acknowledged write of the 3-broker profile is on at
        least two brokers before the producer hears of it."""
        return self.quorum


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
    # Extra Ray nodes the local stack starts on this machine beside the head (cluster/services/
    # ray_worker.py), each with the head's num_cpus and object store: how a multi-node placement
    # and a node's death are exercised without a second machine. A real cluster's workers come
    # from `ray up` or KubeRay, so its deploy files keep 0.
    worker_nodes: int = Field(default=0, ge=0, le=8)
    temp_dir: Path | None = None
    # Ray's default worker range (10002-19999) covers our Kafka and Redis ports; move it away.
    min_worker_port: int = Field(default=20000, ge=1024, le=65535)
    max_worker_port: int = Field(default=29999, ge=1024, le=65535)
    # HAProxy on the Serve port sends each route prefix straight to a replica (no Python proxy
    # hop) and the throughput-optimised mode keeps Serve's router on the replica's own loop
    # (docs/serving.md compares the modes). Process-wide, so it is the head's environment.
    ingress: IngressMode = "haproxy-throughput"
    serve_replicas: int = Field(default=DEFAULT_REPLICAS, ge=1, le=64)
    # HAProxy's stats and Prometheus listeners (Ray's fixed defaults, 8404 and 9101 on all
    # interfaces, collide between two heads on one machine). None: a free port at head start.
    haproxy_stats_port: int | None = Field(default=None, ge=1, le=65535)
    haproxy_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The head's fallback Serve proxy, where Serve's HAProxy sends an application's requests while
    # it has no replica. Ray's fixed 8500 is bound with SO_REUSEPORT, so with two heads on one
    # machine the kernel split those requests between both heads' proxies (another stack's app
    # answered them). None: a free port at head start.
    fallback_proxy_port: int | None = Field(default=None, ge=1, le=65535)
    # Ports Serve gives its ingress replicas' own HTTP servers (direct ingress), from the first
    # up to but not including the second; Ray's default is 30000-31000. Each head on a machine
    # needs a range of its own: Serve hands out the lowest free port, so a replica of another
    # head would take a killed replica's port while this head's ingress still routes to it.
    ingress_ports: tuple[int, int] = (30000, 31000)
    # Seconds a stopping ingress replica keeps answering, so that the load balancer in front can
    # take it out of rotation first (Serve's RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S).
    # None: Serve's own default (30 s). Every replica stop waits this long, `serve shutdown`
    # included; HAProxy retries a refused connection, so a throwaway stack can set a few seconds.
    serve_drain_s: int | None = Field(default=None, ge=0, le=600)

    @model_validator(mode="after")
    def _ingress_range(self) -> RaySettings:
        first, end = self.ingress_ports
        if not 1024 <= first < end <= 65536:
            raise ValueError(f"ingress_ports must be first < end in 1024-65536, got {first}-{end}")
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """Environment a Ray client (``ray job submit``, ``ray.init``) needs for this head."""
        return {"RAY_AUTH_MODE": self.auth_mode}


class FrontDoorSettings(BaseModel):
    """Each region's front door: a Debian HAProxy in front of that region's Serve routes
    (cluster/services/haproxy.py). Over ``maxconn`` requests in flight it queues for at most
    ``queue_ms`` and then answers 503 with ``Retry-After`` itself, so an overload is refused in C
    before a Python process parses the request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # One listener per region, home region first (the order of the topology).
    ports: tuple[int, ...] = Field(default=(8101, 8102), min_length=1)
    # Requests in flight to Serve's ingress per region: about four per replica, enough to keep
    # a replica's core busy (a read is ~1 ms of CPU and a Redis round trip). More only queue
    # inside the replicas' Python loops, where a starved loop refuses late (serve-overload: 32
    # let our gates shed 10-160 reads per run at p99 220-710 ms; 8 left every refusal to the
    # door, in C).
    maxconn: int = Field(default=8, ge=1, le=100_000)
    queue_ms: int = Field(default=100, ge=1, le=10_000)
    # The seconds a client is told to wait by a front-door refusal.
    retry_after_s: int = Field(default=1, ge=1, le=3600)
    # Backend health checks of /<region>/v1/ready: every check_ms, down after two misses, so a
    # region whose replicas are gone is failed over within about half a second.
    check_ms: int = Field(default=200, ge=50, le=60_000)
    # Liveness: the app's answer (any status) to /<region>/v1/health within live_timeout_ms,
    # checked every half check_ms, down after two misses. A region without replicas does not
    # refuse its ready checks, Serve holds them, so the ready check alone (which must wait out the
    # ready route's whole budget) saw the region gone only after about 1.3 s.
    live_timeout_ms: int = Field(default=300, ge=10, le=60_000)


class RedisSettings(RedisUsers):
    """The ACL user names (``RedisUsers``) plus the local servers' memory bound."""

    maxmemory_mb: int = Field(default=512, ge=16)


REDIS_BUS_OFFSET: Final = 100
"""A Redis Cluster node listens for clients on its port and for its peers on port + 100 (Redis's
own default, + 10000, lands in Ray's worker port range)."""


def redis_node_ports(region: RegionConfig) -> tuple[int, ...]:
    """The client port of each master of ``region``'s Redis: node n (0-based) at
    ``redis_port + n``; one server is just ``redis_port``."""
    return tuple(region.redis_port + n for n in range(region.redis_shards))


def redis_listen_ports(region: RegionConfig) -> tuple[int, ...]:
    """Every port ``region``'s Redis binds: its nodes' client ports, and their cluster bus ports
    when it is a cluster."""
    nodes = redis_node_ports(region)
    buses = tuple(p + REDIS_BUS_OFFSET for p in nodes) if region.redis_shards > 1 else ()
    return nodes + buses


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
    front_door: FrontDoorSettings = Field(default_factory=FrontDoorSettings)
    topology: RegionTopology = Field(default_factory=default_topology)
    jar_cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "freshline")
    # Names the deployment's key space in every store and its registry records; one tenant per
    # deployment (its topics, consumer group and Ray actor names are the deployment's own).
    tenant: Name = DEFAULT_TENANT
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
    def _a_front_door_per_region(self) -> StackSettings:
        regions, doors = len(self.topology.regions), len(self.front_door.ports)
        if self.with_ray and doors != regions:
            raise ValueError(
                f"front_door.ports needs one port per region ({regions}, home first), got {doors}"
            )
        return self

    def listeners(self) -> list[tuple[str, int]]:
        """Every (host, port) this stack's services listen on: Kafka, Ray, the front doors and
        haproxy on this machine, each region's Redis and local DynamoDB endpoint on its host."""
        local = [port for n in self.kafka.nodes for port in (n.port, n.controller_port)]
        local += [self.ray.port, self.ray.dashboard_port]
        local += [self.ray.client_server_port, self.ray.serve_port, self.ray.metrics_export_port]
        local += [self.ray.dashboard_agent_port]
        local += list(self.front_door.ports) if self.with_ray else []
        pinned = (self.ray.haproxy_stats_port, self.ray.haproxy_metrics_port)
        local += [p for p in (*pinned, self.ray.fallback_proxy_port) if p]
        listeners = [(_LOCALHOST, port) for port in local]
        listeners += [
            (_host(r.redis_host), port) for r in self.topology for port in redis_listen_ports(r)
        ]
        listeners += [
            (_host(r.dynamodb_endpoint_host), r.dynamodb_port)
            for r in self.topology
            if r.dynamodb_mode == "local"
        ]
        return listeners

    @model_validator(mode="after")
    def _ports_unique(self) -> StackSettings:
        """No two listeners on one host share a port (stores on other hosts may use the same
        port: each region's Redis on its own machine at 6379)."""
        listeners = self.listeners()
        if len(set(listeners)) != len(listeners):
            taken = sorted(port for _, port in listeners)
            raise ValueError(f"ports must be distinct on each host, got {taken}")
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

    @property
    def ray_temp_dir(self) -> Path:
        # Ray puts unix sockets under its temp dir; their paths must stay under 107 bytes, so the
        # default is a short path keyed by the Ray port rather than a subfolder of the state dir.
        return self.ray.temp_dir or Path(f"/tmp/freshline-ray-{self.ray.port}")  # noqa: S108


_LOCALHOST = "127.0.0.1"


def _host(name: str) -> str:
    """One spelling of this machine, so that a port taken twice on it is seen."""
    return _LOCALHOST if name in {"localhost", "127.0.0.1", "0.0.0.0"} else name  # noqa: S104
