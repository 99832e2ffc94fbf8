"""One Apache Kafka broker in KRaft combined mode (broker + controller in one JVM).

The broker's jars come from Maven Central through ``cluster/kafka/pom.xml`` and are cached per
Kafka version under ``jar_cache_dir``; nothing is built. Storage is formatted on first start only.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import uuid
from pathlib import Path

from cluster.exceptions import MissingTool
from cluster.process import ManagedProcess
from cluster.services.base import Port, ProcessService
from cluster.settings import StackSettings, TopicSpec
from features.errors import StackError

_KAFKA_RESOURCES = Path(__file__).resolve().parent.parent / "kafka"
_INSTALL_JAVA = (
    "install a JDK 17+ and Maven, e.g. `apt-get install -y openjdk-17-jdk-headless maven`"
)


class KafkaService(ProcessService):
    kind = "kafka"
    ready_timeout_s = 90.0
    # A clean shutdown lets the broker write its clean-shutdown marker, so the next start
    # skips log recovery; 30 s is ample for a single local broker.
    stop_timeout_s = 30.0

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("kafka", ManagedProcess("kafka", settings.run_dir, settings.log_dir))
        self._settings = settings
        self._kafka = settings.kafka
        self._home = settings.state_dir / "kafka"

    @property
    def data_dir(self) -> Path:
        return self._home / "data"

    @property
    def endpoint(self) -> str:
        return self._kafka.bootstrap

    def ports(self) -> list[Port]:
        return [
            Port("kafka", self._kafka.host, self._kafka.port),
            Port("kafka controller", self._kafka.host, self._kafka.controller_port),
        ]

    def describe(self) -> str:
        return "KRaft broker"

    def launch(self) -> None:
        classpath = f"{ensure_jars(self._settings)}/*"
        config = self._write_config()
        self._format_storage(classpath, config)
        self._proc.spawn(self._java_argv(classpath, "kafka.Kafka", str(config)))

    def after_ready(self) -> None:
        self.ensure_topics()

    def purge(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def ensure_topics(self) -> None:
        """Create configured topics that are missing; fail if one exists with other partitions."""
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
                    NewTopic(t.name, t.partitions, 1, topic_configs=_topic_configs(t))
                    for t in missing
                ]
                # Another `stack up` may create them concurrently: same spec, nothing to do.
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(new, timeout_ms=30_000, wait_for_metadata=True)
            self._check_partitions(admin)
        finally:
            admin.close()

    def _check_partitions(self, admin: object) -> None:
        described = admin.describe_topics([t.name for t in self._kafka.topics])  # type: ignore[attr-defined]
        counts = {d["name"]: len(d["partitions"]) for d in described}
        for topic in self._kafka.topics:
            if counts.get(topic.name) != topic.partitions:
                raise StackError(
                    f"topic {topic.name} has {counts.get(topic.name)} partitions but the config "
                    f"says {topic.partitions}; delete it (`freshline stack down --purge`) "
                    "or fix the config"
                )

    def probe(self) -> str | None:
        from kafka.admin import KafkaAdminClient

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self._kafka.bootstrap,
                client_id="freshline-probe",
                request_timeout_ms=5000,
            )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        try:
            admin.describe_cluster()
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            admin.close()

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
        k = self._kafka
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{k.host}:{k.controller_port}",
            "listeners": f"PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{k.host}:{k.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "false",
            "num.partitions": "8",
            # A single broker: internal topics cannot have more than one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            # Consumers of a fresh group start at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            "log.cleaner.min.compaction.lag.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        path = self._home / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        return path

    def _format_storage(self, classpath: str, config: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # "--cluster-id=<id>", never "-t <id>": an id is URL-safe base64 and one in 64 begins with
        # "-", which the tool's argument parser then takes for an option and refuses to start.
        argv = self._java_argv(
            classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}"
        )
        argv += ["-c", str(config)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage failed: {result.stdout}{result.stderr}"[-2000:]
            )


def _topic_configs(topic: TopicSpec) -> dict[str, str]:
    configs: dict[str, str] = {}
    if topic.compacted:
        configs["cleanup.policy"] = "compact"
    if topic.retention_ms is not None:
        configs["retention.ms"] = str(topic.retention_ms)
    return configs


def _require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(tool, _INSTALL_JAVA)
    return path


def ensure_jars(settings: StackSettings) -> Path:
    """Resolve the broker's jars once per Kafka version; later calls return the cached folder."""
    target = settings.jar_cache_dir / f"kafka-{settings.kafka.version}"
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
        str(_KAFKA_RESOURCES / "pom.xml"),
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
