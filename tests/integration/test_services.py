"""Each service of the session stack answers a real request, with the access rules users rely on."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from cluster.services.dynamodb import dynamodb_client
from cluster.services.offline import NAMESPACE, iceberg_catalog
from cluster.settings import CHANGELOG_TOPIC, DEFAULT_EVENTS_TOPIC, DLQ_TOPIC
from cluster.stack import Stack
from tests.integration.conftest import stack_env

pytestmark = pytest.mark.integration


def _redis(stack: Stack, region: str, user: str, password: str) -> redis.Redis:
    r = stack.settings.topology.get(region)
    return redis.Redis(host=r.redis_host, port=r.redis_port, username=user, password=password)


def test_kafka_round_trips_a_keyed_message_and_has_the_configured_topics(stack: Stack) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient

    bootstrap = stack.settings.kafka.bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    described = {d["name"]: d for d in admin.describe_topics()}
    admin.close()
    assert len(described[DEFAULT_EVENTS_TOPIC]["partitions"]) == 8
    assert {DLQ_TOPIC, CHANGELOG_TOPIC} <= described.keys()

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    meta = producer.send(DLQ_TOPIC, key=b"k1", value=b"hello").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=5000)
    tp = TopicPartition(DLQ_TOPIC, meta.partition)
    consumer.assign([tp])
    consumer.seek(tp, meta.offset)
    record = next(iter(consumer))
    consumer.close()
    assert (record.key, record.value) == (b"k1", b"hello")


def test_changelog_topic_is_compacted(stack: Stack) -> None:
    """Regions rebuild from the start of the changelog, and a consumer restores partition p from
    changelog partition p: the topic must keep the newest record per key forever (compact, not
    delete, not both) and have one partition per events partition."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka.bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, CHANGELOG_TOPIC)], config_filter="all"
        )
        topics = {
            t["name"]: t for t in admin.describe_topics([CHANGELOG_TOPIC, DEFAULT_EVENTS_TOPIC])
        }
    finally:
        admin.close()
    assert described["topic"][CHANGELOG_TOPIC]["cleanup.policy"]["value"] == "compact"
    assert len(topics[CHANGELOG_TOPIC]["partitions"]) == len(
        topics[DEFAULT_EVENTS_TOPIC]["partitions"]
    )


@pytest.mark.parametrize("region", ["us-east", "eu-west"])
def test_redis_acl_separates_writers_readers_and_anonymous_clients(
    stack: Stack, region: str
) -> None:
    users, secrets = stack.settings.redis, stack.secrets
    writer = _redis(
        stack, region, users.writer_user, secrets.redis_writer_password.get_secret_value()
    )
    reader = _redis(
        stack, region, users.reader_user, secrets.redis_reader_password.get_secret_value()
    )
    key = f"fl:test:{uuid.uuid4().hex}"
    assert writer.set(key, "1", ex=60)
    assert reader.get(key) == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set(key, "2")
    # Serving's one write: its answer log (regions/answer_log.py), and no other key, not even
    # another stream, and no other command on that stream's key.
    log = f"fl:test-{uuid.uuid4().hex[:8]}:answers:v1"
    assert reader.xadd(log, {"v": "1"}, maxlen=10, approximate=True)
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.xadd(f"fl:test:{uuid.uuid4().hex}", {"v": "1"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.delete(log)
    writer.delete(log)
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer.set("outside:namespace", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer.flushall()
    r = stack.settings.topology.get(region)
    anonymous = redis.Redis(host=r.redis_host, port=r.redis_port)
    with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
        anonymous.ping()


@pytest.mark.parametrize("region", ["us-east", "eu-west"])
def test_dynamodb_online_table_accepts_and_returns_an_item(stack: Stack, region: str) -> None:
    cfg = stack.settings.topology.get(region)
    client = dynamodb_client(cfg)
    item = {"pk": {"S": f"fl:test:{uuid.uuid4().hex}"}, "sk": {"S": "t0"}, "v": {"N": "42"}}
    client.put_item(TableName=cfg.dynamodb_table, Item=item)
    got = client.get_item(TableName=cfg.dynamodb_table, Key={"pk": item["pk"], "sk": item["sk"]})
    assert got["Item"]["v"] == {"N": "42"}
    ttl = client.describe_time_to_live(TableName=cfg.dynamodb_table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"


def test_regions_have_separate_stores(stack: Stack) -> None:
    east, west = (stack.settings.topology.get(n) for n in ("us-east", "eu-west"))
    pk = {"S": f"fl:test:{uuid.uuid4().hex}"}
    dynamodb_client(east).put_item(TableName=east.dynamodb_table, Item={"pk": pk, "sk": {"S": "x"}})
    got = dynamodb_client(west).get_item(
        TableName=west.dynamodb_table, Key={"pk": pk, "sk": {"S": "x"}}
    )
    assert "Item" not in got


def test_iceberg_catalog_appends_and_scans_a_table(stack: Stack) -> None:
    catalog = iceberg_catalog(stack.settings)
    data = pa.table({"event_id": ["a", "b"], "amount": [1.5, 2.5]})
    table = catalog.create_table(f"{NAMESPACE}.smoke_{uuid.uuid4().hex[:8]}", schema=data.schema)
    table.append(data)
    assert table.scan().to_arrow().sort_by("event_id").to_pydict() == data.to_pydict()


def test_ray_job_submit_runs_a_job_on_the_head(stack: Stack) -> None:
    script = "import ray; ray.init(); print('cpus=%d' % ray.cluster_resources()['CPU'])"
    ray_cli = f"{sys.prefix}/bin/ray"
    result = subprocess.run(
        [
            ray_cli,
            "job",
            "submit",
            "--address",
            stack.settings.ray.dashboard_url,
            "--",
            "python",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"cpus={stack.settings.ray.num_cpus}" in result.stdout


def test_each_region_has_a_healthy_front_door_that_names_who_answered(stack: Stack) -> None:
    """With no region's replicas ready behind it, a door refuses by itself, the way a client
    backs off from: 503, Retry-After, and the door named as the one that answered."""
    import httpx

    doors = {s.name: s for s in stack.status() if s.kind == "haproxy"}
    assert sorted(doors) == ["front-door-eu-west", "front-door-us-east"]
    assert all(door.healthy for door in doors.values()), doors
    if any(_ready(stack, region) for region in stack.settings.topology.names):
        pytest.skip("a module of this session left Serve apps deployed")
    answer = httpx.get(f"{doors['front-door-us-east'].endpoint}/us-east/v1/ready", timeout=5)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == str(stack.settings.front_door.retry_after_s)
    assert answer.headers["x-freshline-served-by"] == "front-door"


def _ready(stack: Stack, region: str) -> bool:
    import httpx

    try:
        url = f"http://127.0.0.1:{stack.settings.ray.serve_port}/{region}/v1/ready"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_status_from_an_empty_state_dir_calls_the_running_stack_foreign_and_writes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """A new user with another state dir, on the ports of a running stack: nothing of that stack
    is theirs, so nothing is healthy, the ports are named as held, and looking writes nothing."""
    theirs = {s.name: s.pid for s in stack.status()}
    empty = tmp_path / "fresh-state"
    empty.mkdir()
    env = stack_env(stack.settings) | {
        "FRESHLINE_STATE_DIR": str(empty),
        "FRESHLINE_WITH_SERVING": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "stack", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 4, result.stdout + result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert "serving" in rows and not any(row["healthy"] for row in rows.values()), rows
    held = ("kafka", "redis-us-east", "redis-eu-west", "dynamodb-us-east", "ray-head")
    for name in (*held, "front-door-us-east", "front-door-eu-west"):
        assert rows[name]["state"] == "foreign", rows[name]
        assert rows[name]["pid"] is None, "the running stack's process is not this state dir's"
        assert "did not start" in rows[name]["detail"]
    for name in ("kafka", "redis-us-east", "dynamodb-eu-west"):
        assert rows[name]["holder_pid"] == theirs[name], (rows[name], theirs)
    assert rows["iceberg"]["state"] == "down"
    assert list(empty.iterdir()) == [], "a read-only command wrote into the state dir"
