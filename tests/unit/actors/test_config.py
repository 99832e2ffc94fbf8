"""The pipeline's configuration: one definition of each default, shared by the pipeline, its
consumers and the stack that creates the topics."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.config import (
    CHANGELOG_TOPIC,
    DLQ_TOPIC,
    OFFLINE_TOPIC,
    REGISTRY_TOPIC,
    ConsumerConfig,
    PipelineConfig,
    StreamSettings,
)
from cluster.settings import StackSettings, default_topics
from features.demo import SOURCE, card_transactions_catalog
from regions.config import RedisUsers, default_topology

SHARED = set(StreamSettings.model_fields)


def _pipeline(**overrides: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"bootstrap": "k:9092", "topology": default_topology(), "redis_users": RedisUsers()}
        | overrides
    )


def test_the_consumers_get_every_shared_setting_of_the_pipeline() -> None:
    pipeline = _pipeline(
        tenant="acme",
        source="other_source",
        changelog_topic="x.changelog",
        dlq_topic="x.dlq",
        group_id="x-group",
        commit_interval_ms=1_000,
        commit_interval_min_ms=200,
        commit_interval_max_ms=2_000,
    )
    consumer = pipeline.consumer_config()
    assert consumer.model_dump(include=SHARED) == pipeline.model_dump(include=SHARED)
    assert consumer.max_poll_records == ConsumerConfig(bootstrap="k:9092").max_poll_records
    # Every shared field was overridden above, so none can be silently left at its default.
    assert all(
        getattr(pipeline, name) != field.default
        for name, field in StreamSettings.model_fields.items()
        if name != "bootstrap"
    )


def test_consumers_hand_accepted_batches_on_only_when_an_offline_writer_runs() -> None:
    assert _pipeline().consumer_config().offline_topic == OFFLINE_TOPIC
    assert _pipeline(offline_topic="x.offline").consumer_config().offline_topic == "x.offline"
    assert _pipeline(offline=False).consumer_config().offline_topic is None
    assert ConsumerConfig(bootstrap="k:9092").offline_topic is None


def test_a_consumer_and_the_pipeline_have_the_same_defaults() -> None:
    alone = ConsumerConfig(bootstrap="k:9092")
    assert alone.model_dump(include=SHARED) == _pipeline().model_dump(include=SHARED)
    assert alone.source == SOURCE


def test_the_stack_creates_the_topics_the_pipeline_reads_and_writes() -> None:
    pipeline = _pipeline()
    source = card_transactions_catalog().source(pipeline.source)
    topics = {t.name: t for t in default_topics(source.topic)}
    assert (pipeline.changelog_topic, pipeline.dlq_topic) == (CHANGELOG_TOPIC, DLQ_TOPIC)
    assert {source.topic, CHANGELOG_TOPIC, DLQ_TOPIC, REGISTRY_TOPIC, OFFLINE_TOPIC} == set(topics)
    assert StackSettings(state_dir=Path("s")).kafka.topics == tuple(topics.values())
    # A tile change goes to the changelog partition numbered like its source partition.
    assert topics[CHANGELOG_TOPIC].partitions == topics[source.topic].partitions
    # So does a batch's hand-off to the offline writer, which must keep every event it is given.
    assert topics[OFFLINE_TOPIC].partitions == topics[source.topic].partitions
    assert not topics[OFFLINE_TOPIC].compacted
    assert topics[CHANGELOG_TOPIC].compacted and not topics[DLQ_TOPIC].compacted
    # Registry versions are read in order and the latest per tenant must survive compaction.
    assert topics[REGISTRY_TOPIC].compacted and topics[REGISTRY_TOPIC].partitions == 1
    assert pipeline.partitions == source.partitions == topics[source.topic].partitions
    assert sorted(p for owned in pipeline.assignments() for p in owned) == list(
        range(source.partitions)
    )


@pytest.mark.parametrize(
    ("low", "base", "high"), [(300, 250, 1_000), (100, 2_000, 1_000), (100, 250, 200)]
)
def test_commit_intervals_out_of_order_are_refused(low: int, base: int, high: int) -> None:
    with pytest.raises(ValueError, match="commit_interval_min_ms <= commit_interval_ms"):
        ConsumerConfig(
            bootstrap="k:9092",
            commit_interval_ms=base,
            commit_interval_min_ms=low,
            commit_interval_max_ms=high,
        )


def test_more_sink_shards_than_partitions_are_refused_with_the_reason() -> None:
    assert _pipeline(partitions=8, sink_shards=8).sink_shards == 8
    with pytest.raises(ValueError, match=r"sink_shards \(9\) must not exceed partitions \(8\)"):
        _pipeline(partitions=8, sink_shards=9)
    with pytest.raises(ValueError, match="sink_shards"):
        _pipeline(sink_shards=0)


def test_more_offline_writers_than_partitions_are_refused_with_the_reason() -> None:
    assert _pipeline(partitions=8, offline_writers=8).offline_writers == 8
    with pytest.raises(ValueError, match=r"offline_writers \(9\) must not exceed partitions"):
        _pipeline(partitions=8, offline_writers=9)
