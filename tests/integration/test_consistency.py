"""The consistency validator against the real stack: events through Kafka, the partition
processor and the real Redis writer into both regions' Redis, and through the offline writer into
Iceberg; serving deployed with every answer logged; reads over HTTP; ``freshline validate``
finds no mismatch. Then one region's Redis gets a wrong tile for one user's unwindowed group, and
the validator reports exactly the feature read from it as mismatched, on that region only."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaProducer

from actors.offline import OfflineWriterConfig
from actors.processor import PartitionProcessor, RawRecord
from chaos.oracle import LedgerEntry
from cluster.stack import Stack
from features.blocks import BlockLayout, block_partition, decode_tiles, encode_block
from features.demo import SOURCE, card_transactions_catalog
from features.keys import OnlineKey
from regions.answer_log import stream_key
from regions.aws import LOCAL_CREDENTIALS
from regions.redis_store import RedisRole, RedisTileWriter, redis_client
from regions.tiles import TileWrite, decode_field
from serve_apps.config import ApiKey, new_api_key
from serve_apps.deploy import configs_for_stack, deploy
from tests.integration.conftest import stack_env
from tests.integration.serving_world import _events, _ids, shutdown_serve, wait_ready
from tests.integration.test_training import _ledger, _write_offline

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
READ_KEY = new_api_key()
USER_FEATURES = [
    f"user_spend:{f.name}" for f in CATALOG.view("user_spend").features if f.name != "amount_cusum"
]
SKEWED = "user_spend:last_amount"  # the one feature of the unwindowed group that is read


def _produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for event in events:
        producer.send(topic, key=event["user_id"].encode(), value=orjson.dumps(event))
    producer.flush()
    producer.close()


def _online_writes(ledger: list[LedgerEntry], now_ms: int) -> list[TileWrite]:
    """What the pipeline's processors write for ``ledger``, partition by partition."""
    writes: list[TileWrite] = []
    for partition in sorted({e.partition for e in ledger}):
        processor = PartitionProcessor(CATALOG, SOURCE, partition, now_ms=lambda: now_ms)
        mine = sorted((e for e in ledger if e.partition == partition), key=lambda e: e.offset)
        processor.process(RawRecord(e.offset, None, e.value) for e in mine)
        writes += [c.write for c in processor.drain_changes()]
    return writes


def _tampered_blocks(stack: Stack, region: str, user: str, amount: float) -> list[TileWrite]:
    """``user``'s stored blocks in ``region`` with the ``last_amount`` state's value replaced by
    ``amount`` (a value no event ever had) and every other state untouched, at a version above
    the stored one: a store serving exactly one wrong feature."""
    view = CATALOG.view("user_spend")
    layout = BlockLayout.for_view(view)
    assert layout.unwindowed is not None
    index = [f.name for f in layout.unwindowed.features].index("last_amount")
    key = OnlineKey("default", "user_spend", view.version, user).encode(
        max_id_bytes=CATALOG.entity("user").max_id_bytes
    )
    client = _admin(stack, region)
    try:
        stored = client.hgetall(key)
        ttl_ms = max(int(client.pttl(key)), 60_000)
    finally:
        client.close()
    writes = []
    for name, raw in stored.items():
        field = name.decode()
        version, payload = decode_field(raw)
        if block_partition(field) is None or payload is None:
            continue
        partition, tiles = decode_tiles(layout, payload)
        states = tiles.get((None, None))
        if states is None or states[index] is None:
            continue
        event_time, order, _ = states[index]
        states[index] = (event_time, order, amount)
        block = encode_block(layout, partition, tiles)
        writes.append(TileWrite(key, field, block, version + 1, ttl_ms))
    assert writes, f"{user} has no stored last_amount in {region}"
    return writes


def _admin(stack: Stack, region: str) -> Any:
    config = stack.settings.topology.get(region)
    return redis_client(config, RedisRole.ADMIN, stack.settings.redis, stack.secrets)


def _empty_answer_logs(stack: Stack) -> None:
    """No answer of an earlier test on this stack in the streams. The reader's right to XADD
    there (and nowhere else) comes from the stack's own ACL (cluster/services/redis.py)."""
    for region in stack.settings.topology.names:
        client = _admin(stack, region)
        client.delete(stream_key("default"))
        client.close()


def _read(http: httpx.Client, region: str, users: list[str]) -> None:
    body = {"entities": {"user": users}, "features": USER_FEATURES}
    answer = http.post(f"/{region}/v1/features", json=body, headers={"x-api-key": READ_KEY})
    assert answer.status_code == 200, answer.text


def _wait_logged(stack: Stack, region: str, count: int) -> None:
    client = _admin(stack, region)
    deadline = time.monotonic() + 30
    try:
        while client.xlen(stream_key("default")) < count:
            assert time.monotonic() < deadline, f"{region} logged too few answers"
            time.sleep(0.1)
    finally:
        client.close()


def _validate(stack: Stack, tmp: Path, name: str, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp / f"{name}.json"
    argv = [sys.executable, "-m", "cluster.cli", "validate", "--out", str(out), *extra]
    env = {**stack_env(stack.settings), "FRESHLINE_RESULTS_DIR": str(tmp / "results")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(out.read_text())


@contextlib.contextmanager
def _deployed(stack: Stack) -> Iterator[httpx.Client]:
    """Both regions served with every answer logged (after the stores hold tiles: a Redis
    without the writer's marker is not ready)."""
    configs = [
        c.model_copy(update={"answer_sample_share": 1.0, "replicas": 1})
        for c in configs_for_stack(
            stack.settings,
            [ApiKey.from_raw("tests", READ_KEY)],
            dynamodb_credentials=(
                LOCAL_CREDENTIALS["aws_access_key_id"],
                LOCAL_CREDENTIALS["aws_secret_access_key"],
            ),
        )
    ]
    port = stack.settings.ray.serve_port
    deploy(configs, ray_address=stack.settings.ray.address, http_port=port)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
    try:
        for region in stack.settings.topology.names:
            wait_ready(http, region)
        yield http
    finally:
        http.close()
        shutdown_serve()


def test_clean_serving_validates_and_a_wrong_tile_is_reported_on_its_feature(
    stack: Stack,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    users = [*_ids(run)[0], f"u_{run}_ghost"]
    now = time.time_ns() // 1_000_000
    topic = topic_factory(partitions=4)
    _produce(kafka_bootstrap, topic, _events(now, run))
    ledger = _ledger(kafka_bootstrap, topic)
    namespace = f"t_{run}"
    _write_offline(
        OfflineWriterConfig(
            source_topic=topic,
            changelog_topic=topic_factory(1, compacted=True),
            batch_records=1_000,
            batch_interval_ms=200,
            bootstrap=kafka_bootstrap,
            iceberg_catalog_uri=stack.settings.iceberg_catalog_uri,
            iceberg_warehouse=stack.settings.iceberg_warehouse,
            namespace=namespace,
        ),
        ledger,
    )
    writes = _online_writes(ledger, now)
    for region in stack.settings.topology:
        client = redis_client(region, RedisRole.WRITER, stack.settings.redis, stack.secrets)
        RedisTileWriter(client, f"redis-{region.name}").apply(writes)
        client.close()
    _empty_answer_logs(stack)
    with _deployed(stack) as http:
        regions = stack.settings.topology.names
        per_read = len(users) * len(USER_FEATURES)

        for region in regions:
            _read(http, region, users)
            _wait_logged(stack, region, per_read)
        code, report = _validate(stack, tmp_path, "clean", "--namespace", namespace,
                                 "--max-mismatch-share", "0")  # fmt: skip
        assert code == 0, report
        assert report["answers"] == per_read * len(regions)
        assert {ref: f["samples"] for ref, f in report["features"].items()} == {
            ref: len(users) * len(regions) for ref in USER_FEATURES
        }
        assert all(f["mismatches"] == 0 for f in report["features"].values()), report
        assert (tmp_path / "results" / "consistency.jsonl").exists()

        # Skew: one region's Redis serves a last_amount no event ever had, for one user.
        skewed_region, victim = regions[-1], users[0]
        config = stack.settings.topology.get(skewed_region)
        client = redis_client(config, RedisRole.WRITER, stack.settings.redis, stack.secrets)
        RedisTileWriter(client, f"redis-{skewed_region}").apply(
            _tampered_blocks(stack, skewed_region, victim, 4242.5)
        )
        client.close()
        since = time.time_ns() // 1_000_000
        time.sleep(0.01)  # answers logged from here on are stream ids at or after ``since``
        _read(http, skewed_region, users)
        _wait_logged(stack, skewed_region, 2 * per_read)
        iso = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since // 1000)) + f".{since % 1000:03d}"
        )
        code, report = _validate(stack, tmp_path, "skewed", "--namespace", namespace,
                                 "--region", skewed_region, "--since", iso,
                                 "--max-mismatch-share", "0")  # fmt: skip
        assert code == 1
        assert report["answers"] == per_read
        mismatched = {ref: f for ref, f in report["features"].items() if f["mismatches"]}
        assert list(mismatched) == [SKEWED]
        (example,) = mismatched[SKEWED]["examples"]
        assert (example["entity_id"], example["served"]) == (victim, 4242.5)
        assert example["offline"] != 4242.5
