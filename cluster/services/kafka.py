"""The local Kafka: KRaft nodes, each a broker and a controller in one JVM (``kafka.brokers``).

One node is the service ``kafka``; a three-node profile is ``kafka-1`` to ``kafka-3``, one
service per JVM so that status shows each broker and a drill can kill one. The broker's jars come
from Maven Central through ``cluster/kafka/pom.xml`` and are cached per Kafka version under
``jar_cache_dir``; nothing is built. Storage is formatted on a node's first start only, every node
with the one cluster id kept beside them. ``cluster.services.kafka_config`` renders the configs.

Starting a cold three-node cluster in order: the first node cannot answer alone (it needs a
majority of the quorum), so a node's start waits for it to answer only once a majority of nodes
runs, and the start that finds every node running waits for all three brokers to be unfenced and
then creates the topics.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from cluster.exceptions import MissingTool
from cluster.process import ManagedProcess, require_free_port
from cluster.services.base import Port, ProcessService, wait_ready
from cluster.services.kafka_config import broker_properties, render, topic_configs
from cluster.settings import KafkaNode, StackSettings
from features.errors import StackError

_KAFKA_RESOURCES = Path(__file__).resolve().parent.parent / "kafka"
_INSTALL_JAVA = (
    "install a JDK 17+ and Maven, e.g. `apt-get install -y openjdk-17-jdk-headless maven`"
)


def kafka_services(settings: StackSettings) -> list[KafkaService]:
    """One service per KRaft node, node 1 first (the order a cold cluster starts in)."""
    return [KafkaService(settings, node) for node in settings.kafka.nodes]


def service_name(settings: StackSettings, node_id: int) -> str:
    return "kafka" if settings.kafka.brokers == 1 else f"kafka-{node_id}"


class KafkaService(ProcessService):
    kind = "kafka"
    ready_timeout_s = 90.0
    # A clean shutdown lets the broker write its clean-shutdown marker, so the next start
    # skips log recovery; 30 s is ample for a local broker.
    stop_timeout_s = 30.0

    def __init__(self, settings: StackSettings, node: KafkaNode | None = None) -> None:
        self._node = node or settings.kafka.nodes[0]
        name = service_name(settings, self._node.node_id)
        super().__init__(name, ManagedProcess(name, settings.run_dir, settings.log_dir))
        self._settings = settings
        self._kafka = settings.kafka
        self._root = settings.state_dir / "kafka"
        # One node keeps the layout it always had; nodes of a profile get a folder each.
        multi = self._kafka.brokers > 1
        self._home = self._root / f"node-{self._node.node_id}" if multi else self._root

    @property
    def node(self) -> KafkaNode:
        return self._node

    @property
    def data_dir(self) -> Path:
        return self._home / "data"

    @property
    def endpoint(self) -> str:
        return f"{self._kafka.host}:{self._node.port}"

    def ports(self) -> list[Port]:
        return [
            Port(self.name, self._kafka.host, self._node.port),
            Port(f"{self.name} controller", self._kafka.host, self._node.controller_port),
        ]

    def describe(self) -> str:
        if self._kafka.brokers == 1:
            return "KRaft broker"
        return f"KRaft broker and voter {self._node.node_id} of {self._kafka.brokers}"

    def start(self) -> None:
        """As every process service, except that a node waits to answer only once a majority
        of the nodes runs: alone, the first node of a cold cluster has no quorum to join."""
        if not self.is_up():
            self._proc.stop()
            for port in self.ports():
                require_free_port(port.label, port.host, port.number)
            self.launch()
            if self._running_nodes() >= self._kafka.quorum:
                self._wait(self.probe)
        self.after_ready()

    def launch(self) -> None:
        classpath = f"{ensure_jars(self._settings)}/*"
        config = self._write_config()
        self._format_storage(classpath, config)
        self._proc.spawn(self._java_argv(classpath, "kafka.Kafka", str(config)))

    def after_ready(self) -> None:
        """Once every node runs: all brokers unfenced, then the topics. A node started while
        later nodes are still down leaves this to the start of the last of them."""
        running = self._running_nodes()
        if running < self._kafka.brokers and self._node.node_id < self._kafka.brokers:
            return
        self._wait(self.probe_cluster)
        self.ensure_topics()

    def stop(self, *, graceful: bool = True) -> bool:
        """Stop this node. When it is one of the last majority, the others are told to stop at
        the same moment: a node left without a quorum cannot finish its controlled shutdown
        (it waits for a controller) and would be SIGKILLed at ``stop_timeout_s``."""
        others = [p for p in self._node_processes() if p.pid() is not None and p != self._proc]
        if self._proc.pid() is not None and 0 < len(others) < self._kafka.quorum:
            for proc in others:
                proc.signal(signal.SIGTERM)
        return super().stop(graceful=graceful)

    def purge(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)
        if not any(self._root.glob("node-*")):
            shutil.rmtree(self._root, ignore_errors=True)  # the cluster id goes with the last node

    def _wait(self, probe: Any) -> None:
        wait_ready(
            self.name,
            probe,
            self.ready_timeout_s,
            self._proc.log_file,
            lambda: self._proc.pid() is not None,
        )

    def _node_processes(self) -> list[ManagedProcess]:
        """The tracked process of every node of the profile, this one included."""
        run_dir, log_dir = self._settings.run_dir, self._settings.log_dir
        names = [service_name(self._settings, n.node_id) for n in self._kafka.nodes]
        return [ManagedProcess(name, run_dir, log_dir) for name in names]

    def _running_nodes(self) -> int:
        return sum(proc.pid() is not None for proc in self._node_processes())

    def ensure_topics(self) -> None:
        """Create configured topics that are missing; fail if one exists with other partitions
        or another replication factor."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(
            bootstrap_servers=self._kafka.bootstrap, client_id="freshline-stack"
        )
        try:
            existing = set(admin.list_topics())
            missing = [t for t in self._kafka.topics if t.name not in existing]
            if missing:
                new = [
                    NewTopic(
                        t.name,
                        t.partitions,
                        self._kafka.replication_factor,
                        topic_configs=topic_configs(self._kafka, t),
                    )
                    for t in missing
                ]
                # Another `stack up` may create them concurrently: same spec, nothing to do.
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(new, timeout_ms=30_000, wait_for_metadata=True)
            self._check_topics(admin)
        finally:
            admin.close()

    def _check_topics(self, admin: Any) -> None:
        described = admin.describe_topics([t.name for t in self._kafka.topics])
        shapes = {d["name"]: _shape(d) for d in described}
        for topic in self._kafka.topics:
            wanted = (topic.partitions, self._kafka.replication_factor)
            found = shapes.get(topic.name)
            if found != wanted:
                raise StackError(
                    f"topic {topic.name} has (partitions, replicas) {found} but the config says "
                    f"{wanted}; delete it (`freshline stack down --purge`) or fix the config"
                )

    def probe(self) -> str | None:
        """None when this node answers and the quorum counts it as an unfenced broker."""
        found = _describe_cluster(self.endpoint)
        if isinstance(found, str):
            return found
        if self._node.node_id not in found:
            return f"broker {self._node.node_id} is not yet unfenced (unfenced: {sorted(found)})"
        return None

    def probe_cluster(self) -> str | None:
        """None when every node of the profile is an unfenced broker."""
        found = _describe_cluster(self._kafka.bootstrap)
        if isinstance(found, str):
            return found
        waiting = sorted({n.node_id for n in self._kafka.nodes} - found)
        return f"waiting for brokers {waiting} to be unfenced" if waiting else None

    def _java_argv(self, classpath: str, main: str, *args: str) -> list[str]:
        log_config = _KAFKA_RESOURCES / "log4j2.properties"
        return [
            _require_tool("java"),
            "-Xms128m",
            f"-Xmx{self._kafka.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log_config}",
            f"-Dkafka.logs.dir={self._settings.log_dir}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def _write_config(self) -> Path:
        self._home.mkdir(parents=True, exist_ok=True)
        path = self._home / "server.properties"
        path.write_text(render(broker_properties(self._kafka, self._node, self.data_dir)))
        return path

    def _cluster_id(self) -> str:
        """The id every node is formatted with, created by the first node formatted."""
        path = self._root / "cluster.id"
        if not path.exists():
            self._root.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return path.read_text().strip()

    def _format_storage(self, classpath: str, config: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        # "--cluster-id=<id>", never "-t <id>": an id is URL-safe base64 and one in 64 begins with
        # "-", which the tool's argument parser then takes for an option and refuses to start.
        argv = self._java_argv(
            classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={self._cluster_id()}"
        )
        argv += ["-c", str(config)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage failed: {result.stdout}{result.stderr}"[-2000:]
            )


def _describe_cluster(bootstrap: str) -> set[int] | str:
    """The ids of the unfenced brokers, as the brokers at ``bootstrap`` see them, or the error
    (one line). Never raises."""
    from kafka.admin import KafkaAdminClient

    try:
        # Bounded bootstrap too: by default it retries for 30 s, so a node that listens a moment
        # after the first try would be seen ready only a probe later.
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="freshline-probe",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        brokers = admin.describe_cluster()["brokers"]
        return {b["broker_id"] for b in brokers if not b.get("is_fenced", False)}
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        admin.close()


def _shape(described: dict[str, Any]) -> tuple[int, int]:
    """(partitions, replicas of the first partition) of a described topic."""
    partitions = described["partitions"]
    replicas = len(partitions[0]["replica_nodes"]) if partitions else 0
    return len(partitions), replicas


def _require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(tool, _INSTALL_JAVA)
    return path


def ensure_jars(settings: StackSettings) -> Path:
    """Resolve the broker's jars once per Kafka version and pom; later calls return the cached
    folder (a changed pom resolves afresh beside the old one)."""
    pom = _KAFKA_RESOURCES / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:8]
    target = settings.jar_cache_dir / f"kafka-{settings.kafka.version}-{digest}"
    if (target / ".complete").exists():
        return target
    mvn = _require_tool("mvn")
    _require_tool("java")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-Dkafka.version={settings.kafka.version}",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise StackError(
            f"resolving Kafka {settings.kafka.version} jars from Maven Central failed; try another "
            f"release with FRESHLINE_KAFKA_VERSION (e.g. 3.9.1). mvn said: {result.stdout[-1500:]}"
        )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / ".complete").write_text(settings.kafka.version)
    return target
