"""Each region's Redis: one ``redis-server``, or (``redis_shards`` > 1) a local Redis Cluster of
that many masters, one service per node (``redis-<region>-1`` ...), each with the same ACL users
instead of the default user (``cluster.services.redis_cluster`` forms the cluster).

Users: ``fl-admin`` (stack management and chaos drills), ``fl-writer`` (sinks; no dangerous
commands) and ``fl-reader`` (serving; read commands only, plus ``XADD`` to the
answer-log streams). All three are confined to ``fl:*`` keys
except the admin. Protected mode stays on and the server binds to loopback only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cluster.exceptions import MissingTool
from cluster.process import ManagedProcess
from cluster.services import redis_cluster
from cluster.services.base import Port, ProcessService
from cluster.settings import REDIS_BUS_OFFSET, Secrets, StackSettings, redis_node_ports
from regions.config import RegionConfig

_INSTALL_REDIS = (
    "install Debian's package: `apt-get install -y redis-server` (make setup does this as root)"
)


def redis_services(
    settings: StackSettings, region: RegionConfig, secrets: Secrets
) -> list[RedisService]:
    """The region's one server, or one service per cluster node, node 1 first."""
    if region.redis_shards == 1:
        return [RedisService(settings, region, secrets)]
    return [RedisService(settings, region, secrets, node) for node in range(region.redis_shards)]


class RedisService(ProcessService):
    kind = "redis"
    ready_timeout_s = 30.0
    stop_timeout_s = 15.0

    def __init__(
        self,
        settings: StackSettings,
        region: RegionConfig,
        secrets: Secrets,
        node: int | None = None,
    ) -> None:
        """``node``: this node's index (0-based) in the region's cluster; None for one server."""
        name = f"redis-{region.name}" if node is None else f"redis-{region.name}-{node + 1}"
        super().__init__(name, ManagedProcess(name, settings.run_dir, settings.log_dir))
        self._settings = settings
        self._region = region
        self._secrets = secrets
        self._node = node
        self._port = redis_node_ports(region)[node or 0]
        root = settings.state_dir / "redis" / region.name
        self._home = root if node is None else root / f"node-{node + 1}"

    @property
    def endpoint(self) -> str:
        return f"{self._region.redis_host}:{self._port}"

    @property
    def home(self) -> Path:
        """The server's folder: its config, its AOF (``appendonlydir``) and a node's nodes.conf."""
        return self._home

    def ports(self) -> list[Port]:
        ports = [Port(self.name, self._region.redis_host, self._port)]
        if self._node is not None:
            bus = self._port + REDIS_BUS_OFFSET
            ports.append(Port(f"{self.name} cluster bus", self._region.redis_host, bus))
        return ports

    def describe(self) -> str:
        if self._node is None:
            return self._region.name
        first, last = redis_cluster.slot_range(self._node, self._region.redis_shards)
        return f"{self._region.name} slots {first}-{last}"

    def after_ready(self) -> None:
        """A cluster node: once every node of the region answers, form the cluster (the start
        that finds them all running does it; a node restarted later just rejoins)."""
        if self._node is None:
            return
        ports = redis_node_ports(self._region)
        clients = [self._admin(port) for port in ports]
        try:
            if all(_answers(c) for c in clients):
                redis_cluster.form(clients, self._region.redis_host, ports)
        finally:
            for client in clients:
                client.close()

    def launch(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise MissingTool("redis-server", _INSTALL_REDIS)
        config = self._write_config()
        self._proc.spawn([server, str(config)], cwd=self._home)

    def purge(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def admin_client(self) -> Any:
        """An admin connection that fails fast: no retry. redis-py 6+ retries a timed-out
        command three times by default, which turned one ``DEBUG SLEEP`` into up to four and made
        a blocked command look like a slow success. A cluster node's: to this node alone."""
        return self._admin(self._port)

    def _admin(self, port: int) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(
            host=self._region.redis_host,
            port=port,
            username=self._settings.redis.admin_user,
            password=self._secrets.redis_admin_password.get_secret_value(),
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )

    def probe(self) -> str | None:
        try:
            client = self.admin_client()
            try:
                return None if client.ping() else "PING failed"
            finally:
                client.close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def _write_config(self) -> Path:
        self._home.mkdir(parents=True, exist_ok=True)
        r, users, s = self._region, self._settings.redis, self._secrets
        cluster = self._node is not None
        lines = [
            f"bind {r.redis_host}",
            f"port {self._port}",
            *(redis_cluster.node_config(self._port) if cluster else []),
            "protected-mode yes",
            "daemonize no",
            f"dir {self._home}",
            'logfile ""',
            # Tiles are rebuilt from the changelog and DynamoDB, but an AOF lets a restarted
            # process come back warm instead of empty; everysec bounds the loss to one second.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {users.maxmemory_mb}mb",
            # Never evict: Redis is the online store, not a cache. An evicted tile would be served
            # as absent (its default) under a marker that says the store is complete. Full, it
            # refuses writes (OOM): the sink backs off and retries, serving keeps every value it
            # holds, and expiring TTLs and more memory or shards make room (docs/operations.md).
            "maxmemory-policy noeviction",
            "enable-debug-command local",
            # Off: no connection can authenticate as `default`. Its permissions still matter:
            # Redis replays the AOF as `default`, and releases before 7.2.x (redis#14541, Debian's
            # 7.0 included) re-check ACLs at each EXEC. An `off` user with no permissions made a
            # restart drop every script's writes (all tiles) while keeping the plain-SET marker.
            "user default off ~* &* +@all",
            f"user {users.admin_user} on >{s.redis_admin_password.get_secret_value()} ~* &* +@all",
            f"user {users.writer_user} on >{s.redis_writer_password.get_secret_value()} ~fl:* "
            "resetchannels +@all -@admin -@dangerous",
            f"user {users.reader_user} on >{s.redis_reader_password.get_secret_value()} ~fl:* "
            # The one write serving makes: XADD to its region's answer log, in a selector so
            # that no other key becomes writable (regions/answer_log.py).
            "resetchannels -@all +@read +@connection "
            + (f"{redis_cluster.READER_CLUSTER_COMMANDS} " if cluster else "")
            + "(~fl:*:answers:* +xadd)",
        ]
        path = self._home / "redis.conf"
        path.touch(mode=0o600)  # holds passwords: create private before writing them
        path.write_text("\n".join(lines) + "\n")
        return path


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # any failure means "not yet"
        return False
