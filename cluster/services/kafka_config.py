"""What each local KRaft node is told: its ``server.properties`` and the topics' configs.

Pure rendering from ``KafkaSettings``; ``cluster.services.kafka`` writes and runs it. Every node
is a combined broker and controller (a 3-voter quorum survives one node; one controller plus
three brokers would be a fourth JVM on a 2-core box). Replication follows the profile: with one
broker everything has one replica; with three, every topic, the consumer offsets and the
transaction state log have three replicas and accept a write once two hold it.
"""

from __future__ import annotations

from pathlib import Path

from cluster.settings import KafkaNode, KafkaSettings, TopicSpec


def voters(kafka: KafkaSettings) -> str:
    """``controller.quorum.voters``: every node, a static quorum (formatted once, never resized)."""
    return ",".join(f"{n.node_id}@{kafka.host}:{n.controller_port}" for n in kafka.nodes)


def broker_properties(kafka: KafkaSettings, node: KafkaNode, data_dir: Path) -> dict[str, str]:
    """The ``server.properties`` of ``node``, as ordered key-value pairs."""
    return {
        **_identity(kafka, node, data_dir),
        **_replication(kafka),
        "auto.create.topics.enable": "false",
        "num.partitions": "8",
        "offsets.topic.num.partitions": "8",
        # Consumers of a fresh group start at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "168",
        "log.cleaner.min.compaction.lag.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def _identity(kafka: KafkaSettings, node: KafkaNode, data_dir: Path) -> dict[str, str]:
    host = kafka.host
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters(kafka),
        "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # A node of a cold cluster waits for a quorum of the others, whose starts (storage format
        # and JVM) came more than the default 60 s after it on a loaded 2-core box; it then gave
        # up and exited.
        "initial.broker.registration.timeout.ms": "300000",
    }


def _replication(kafka: KafkaSettings) -> dict[str, str]:
    """Replicas and the in-sync minimum of every topic the brokers create themselves (offsets,
    transaction state, share state) and the default of ours: one rule for all, so a transaction
    marker or an offset commit is as durable as the events it covers."""
    replicas, min_isr = str(kafka.replication_factor), str(kafka.min_insync_replicas)
    return {
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # A replica that was out of sync never becomes leader: it could lack acknowledged writes.
        "unclean.leader.election.enable": "false",
    }


def render(properties: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def topic_configs(kafka: KafkaSettings, topic: TopicSpec) -> dict[str, str]:
    """Per-topic overrides. ``min.insync.replicas`` is the topic's own, not only the brokers'
    default, so that the topic's description shows the guarantee it is created with."""
    configs = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    if topic.compacted:
        configs["cleanup.policy"] = "compact"
    if topic.retention_ms is not None:
        configs["retention.ms"] = str(topic.retention_ms)
    return configs
