"""The Kafka profiles (FRESHLINE_KAFKA_BROKERS): one broker as it always was, or three KRaft nodes
whose every topic, offsets topic and transaction state log have three replicas and min ISR 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cluster.process import ManagedProcess, wait_until
from cluster.services.kafka import kafka_services
from cluster.services.kafka_config import broker_properties, render, topic_configs
from cluster.settings import KafkaSettings, StackSettings, TopicSpec
from cluster.settings_env import settings_from_env
from features.errors import ConfigError

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
REPLICATION_KEYS = (
    "default.replication.factor",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "share.coordinator.state.topic.replication.factor",
)
MIN_ISR_KEYS = (
    "min.insync.replicas",
    "transaction.state.log.min.isr",
    "share.coordinator.state.topic.min.isr",
)


def _three(tmp_path: Path) -> StackSettings:
    return settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path), "FRESHLINE_KAFKA_BROKERS": "3"})


def test_one_broker_is_the_default_and_keeps_its_address(tmp_path: Path) -> None:
    kafka = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)}).kafka
    assert kafka.brokers == 1
    assert kafka.bootstrap == "127.0.0.1:19092"
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (1, 1)


def test_three_brokers_each_get_ports_and_the_bootstrap_lists_them_all(tmp_path: Path) -> None:
    kafka = _three(tmp_path).kafka
    assert [(n.node_id, n.port, n.controller_port) for n in kafka.nodes] == [
        (1, 19092, 19093),
        (2, 19094, 19095),
        (3, 19096, 19097),
    ]
    assert kafka.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert (kafka.replication_factor, kafka.min_insync_replicas, kafka.quorum) == (3, 2, 2)


@pytest.mark.parametrize(
    ("value", "field"),
    [("2", "kafka.brokers"), ("0", "kafka.brokers"), ("three", "FRESHLINE_KAFKA_BROKERS")],
)
def test_only_one_or_three_brokers_are_accepted(value: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"FRESHLINE_STATE_DIR": "state", "FRESHLINE_KAFKA_BROKERS": value})
    assert caught.value.field == field


def test_a_node_port_taken_by_another_service_is_refused() -> None:
    # Node 3 would listen on 19096: that is the first region's Redis here.
    env = {"FRESHLINE_KAFKA_BROKERS": "3", "FRESHLINE_REDIS_PORTS": "19096,16389"}
    with pytest.raises(ConfigError, match="distinct"):
        settings_from_env(env)
    assert settings_from_env({**env, "FRESHLINE_KAFKA_BROKERS": "1"}).kafka.brokers == 1


def test_node_ports_past_the_last_port_are_refused() -> None:
    with pytest.raises(ValueError, match="past 65535"):
        KafkaSettings(port=65532, controller_port=65533, brokers=3)


def test_the_single_broker_config_is_the_one_it_always_had(tmp_path: Path) -> None:
    kafka = KafkaSettings()
    props = broker_properties(kafka, kafka.nodes[0], tmp_path)
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert {props[k] for k in (*REPLICATION_KEYS, *MIN_ISR_KEYS)} == {"1"}
    assert props["log.dirs"] == str(tmp_path)


def test_every_node_of_three_replicates_everything_thrice_with_min_isr_two(
    tmp_path: Path,
) -> None:
    kafka = _three(tmp_path).kafka
    configs = [broker_properties(kafka, n, tmp_path / f"n{n.node_id}") for n in kafka.nodes]
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    for node, props in zip(kafka.nodes, configs, strict=True):
        assert props["node.id"] == str(node.node_id)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert all(props[k] == "3" for k in REPLICATION_KEYS)
        assert all(props[k] == "2" for k in MIN_ISR_KEYS)
        assert props["unclean.leader.election.enable"] == "false"
    assert len({props["listeners"] for props in configs}) == 3
    assert len({props["log.dirs"] for props in configs}) == 3


def test_rendered_properties_are_one_line_per_key() -> None:
    assert render({"a.b": "1", "c": "x,y"}) == "a.b=1\nc=x,y\n"


def test_topics_carry_their_min_isr_and_their_own_settings(tmp_path: Path) -> None:
    kafka = _three(tmp_path).kafka
    compacted = TopicSpec(name="t", partitions=2, compacted=True, retention_ms=60_000)
    assert topic_configs(kafka, compacted) == {
        "min.insync.replicas": "2",
        "cleanup.policy": "compact",
        "retention.ms": "60000",
    }
    assert topic_configs(KafkaSettings(), TopicSpec(name="t", partitions=2)) == {
        "min.insync.replicas": "1"
    }


def test_services_name_each_node_and_keep_the_single_layout(tmp_path: Path) -> None:
    one = kafka_services(settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)}))
    assert [(s.name, s.data_dir) for s in one] == [("kafka", tmp_path / "kafka" / "data")]
    three = kafka_services(_three(tmp_path))
    assert [s.name for s in three] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [s.endpoint for s in three] == [f"127.0.0.1:{p}" for p in (19092, 19094, 19096)]
    assert len({s.data_dir for s in three}) == 3
    assert {p.number for s in three for p in s.ports()} == set(range(19092, 19098))


def test_every_node_is_formatted_with_one_cluster_id_and_purge_removes_it(tmp_path: Path) -> None:
    three = kafka_services(_three(tmp_path))
    ids = {s._cluster_id() for s in three}
    assert len(ids) == 1 and len(ids.pop()) == 22
    for service in three:
        service.data_dir.mkdir(parents=True)
    three[0].purge()
    assert (tmp_path / "kafka" / "cluster.id").exists(), "the other nodes still use it"
    three[1].purge()
    three[2].purge()
    assert not (tmp_path / "kafka").exists()


def _spawn_nodes(settings: StackSettings) -> list[ManagedProcess]:
    procs = [s.process for s in kafka_services(settings)]
    for proc in procs:
        proc.spawn(SLEEPER)
    return procs


def test_the_last_two_nodes_are_told_to_stop_together(tmp_path: Path) -> None:
    """A node left alone has no quorum and cannot finish its controlled shutdown."""
    settings = _three(tmp_path)
    services = kafka_services(settings)
    procs = _spawn_nodes(settings)
    try:
        assert services[2].stop()
        assert procs[0].pid() is not None, "two nodes left: each still has a quorum"
        assert services[1].stop()
        assert wait_until(lambda: procs[0].pid() is None, 10), "node 1 was not told to stop"
    finally:
        for proc in procs:
            proc.stop(timeout_s=5)
