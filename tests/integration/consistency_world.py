"""The consistency tests' world on the real stack: events through Kafka into Iceberg (the
production offline writer) and, through the partition processor's own writes, into each region's
Redis with the production Redis writer; serving deployed with every answer logged; reads over
HTTP; ``freshline validate`` run as the CLI or as a Ray job."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import KafkaProducer

from actors.processor import PartitionProcessor, RawRecord
from chaos.oracle import LedgerEntry, accepted_events
from cluster.settings_env import settings_to_env
from cluster.stack import Stack
from features.demo import SOURCE, card_transactions_catalog
from features.tiles import MINUTE_MS
from regions.answer_log import AnswerEntry, read_answers, stream_key
from regions.aws import LOCAL_CREDENTIALS
from regions.redis_store import RedisRole, RedisTileWriter, redis_client
from regions.tiles import TileWrite
from serve_apps.config import ApiKey, new_api_key
from serve_apps.deploy import configs_for_stack, deploy
from tests.integration.conftest import stack_env
from tests.integration.offline_path import OfflinePath
from tests.integration.serving_world import shutdown_serve, wait_ready
from tests.integration.test_training import _ledger

CATALOG = card_transactions_catalog()
READ_KEY = new_api_key()
USER_FEATURES = [
    f"user_spend:{f.name}" for f in CATALOG.view("user_spend").features if f.name != "amount_cusum"
]


@dataclass(frozen=True)
class World:
    users: list[str]
    namespace: str
    ledger: list[LedgerEntry]
    ingested_by_ms: int  # every event was in the offline table by then

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return accepted_events(self.ledger, CATALOG, SOURCE)


def events(now_ms: int, run: str, users: int, count: int) -> list[dict[str, Any]]:
    """Two hours of card transactions ending a minute before ``now_ms``, ids and seqs unique."""
    out, t = [], now_ms - 2 * 60 * MINUTE_MS
    step = (2 * 60 * MINUTE_MS - MINUTE_MS) // count
    for seq in range(count):
        t += step - 2_000 + (seq * 7919) % 4_000
        out.append(
            {
                "event_id": f"{run}-{seq}",
                "seq": seq,
                "event_type": "card_tx",
                "user_id": f"u_{run}_{(seq * 7) % users}",
                "merchant_id": f"m_{run}_{(seq * 3) % 5}",
                "amount": round(1 + (seq * 37 % 1000) / 10, 2),
                "currency": "USD",
                "event_time_ms": min(t, now_ms - MINUTE_MS),
            }
        )
    return out


def build_world(
    stack: Stack,
    bootstrap: str,
    topic_factory: Callable[..., str],
    run: str,
    *,
    users: int,
    count: int,
) -> World:
    """Events produced to a fresh topic and written to Iceberg by a consumer and the offline
    writer."""
    now = time.time_ns() // 1_000_000
    topic = topic_factory(partitions=4)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for event in events(now, run, users, count):
        producer.send(topic, key=event["user_id"].encode(), value=orjson.dumps(event))
    producer.flush()
    producer.close()
    ledger = _ledger(bootstrap, topic)
    namespace = f"t_{run}"
    OfflinePath(
        bootstrap,
        topic_factory,
        topic,
        batch_records=1_000,
        batch_interval_ms=200,
        iceberg_catalog_uri=stack.settings.iceberg_catalog_uri,
        iceberg_warehouse=stack.settings.iceberg_warehouse,
        namespace=namespace,
    ).ingest()
    ingested_by = time.time_ns() // 1_000_000
    return World([f"u_{run}_{i}" for i in range(users)], namespace, ledger, ingested_by)


def online_writes(
    ledger: list[LedgerEntry], now_ms: int, tenant: str, batch: int
) -> list[TileWrite]:
    """What the pipeline's processors write for ``ledger``, partition by partition, draining
    every ``batch`` records as the actor does after a poll (so an entity gets a write, at a new
    version, per batch it appears in)."""
    writes: list[TileWrite] = []
    for partition in sorted({e.partition for e in ledger}):
        processor = PartitionProcessor(
            CATALOG, SOURCE, partition, now_ms=lambda: now_ms, tenant=tenant
        )
        mine = sorted((e for e in ledger if e.partition == partition), key=lambda e: e.offset)
        for at in range(0, len(mine), batch):
            processor.process(RawRecord(e.offset, None, e.value) for e in mine[at : at + batch])
            writes += [c.write for c in processor.drain_changes()]
    return writes


def skipped(write: TileWrite, share: float) -> bool:
    """The sink fault: a write is lost when a hash of its (key, field, version) is below
    ``share`` (deterministic, the same in every run of the same writes)."""
    digest = hashlib.blake2b(f"{write.key}|{write.field}|{write.version}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") < share * 2**64


def apply_writes(stack: Stack, region: str, writes: list[TileWrite]) -> None:
    """``writes`` applied to ``region``'s Redis by the production writer, as its sink does."""
    config = stack.settings.topology.get(region)
    client = redis_client(config, RedisRole.WRITER, stack.settings.redis, stack.secrets)
    try:
        RedisTileWriter(client, f"redis-{region}").apply(writes)
    finally:
        client.close()


def admin(stack: Stack, region: str) -> Any:
    config = stack.settings.topology.get(region)
    return redis_client(config, RedisRole.ADMIN, stack.settings.redis, stack.secrets)


def empty_answer_logs(stack: Stack) -> None:
    """No answer of an earlier test on this stack in the streams. The reader's right to XADD
    there (and nowhere else) comes from the stack's own ACL (cluster/services/redis.py)."""
    for region in stack.settings.topology.names:
        client = admin(stack, region)
        client.delete(stream_key(stack.settings.tenant))
        client.close()


def logged(stack: Stack, region: str) -> list[AnswerEntry]:
    client = admin(stack, region)
    try:
        return read_answers(client, stream_key(stack.settings.tenant))
    finally:
        client.close()


def read(http: httpx.Client, region: str, users: list[str]) -> None:
    body = {"entities": {"user": users}, "features": USER_FEATURES}
    answer = http.post(f"/{region}/v1/features", json=body, headers={"x-api-key": READ_KEY})
    assert answer.status_code == 200, answer.text


def wait_logged(stack: Stack, region: str, count: int) -> None:
    client = admin(stack, region)
    deadline = time.monotonic() + 30
    try:
        while client.xlen(stream_key(stack.settings.tenant)) < count:
            assert time.monotonic() < deadline, f"{region} logged too few answers"
            time.sleep(0.1)
    finally:
        client.close()


def validate(stack: Stack, tmp: Path, name: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``freshline validate`` as an operator runs it: exit code, JSON report, printed output."""
    out = tmp / f"{name}.json"
    argv = [sys.executable, "-m", "cluster.cli", "validate", "--out", str(out), *extra]
    env = {**stack_env(stack.settings), "FRESHLINE_RESULTS_DIR": str(tmp / "results")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(out.read_text()), done.stdout


def continuous(stack: Stack, tmp: Path, *extra: str) -> str:
    """``freshline validate --continuous`` in this process's stead (joins the stack's Ray)."""
    argv = [sys.executable, "-m", "cluster.cli", "validate", "--continuous", *extra]
    env = {**stack_env(stack.settings), "FRESHLINE_RESULTS_DIR": str(tmp / "results")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def ray_job(stack: Stack, verb: str, *argv: str) -> str:
    """``ray job <verb> ...`` against the stack's head; its output."""
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "job", verb, "--address", stack.settings.ray.dashboard_url, *argv]
    done = subprocess.run(command, env=stack_env(stack.settings), capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def submit_validator(stack: Stack, job_id: str, *argv: str) -> None:
    """The continuous validator submitted as a Ray job, as docs/training.md shows."""
    runtime = json.dumps({"env_vars": settings_to_env(stack.settings)})
    repo = str(Path(__file__).resolve().parents[2])
    ray_job(stack, "submit", "--no-wait", "--submission-id", job_id, "--working-dir", repo,
            "--runtime-env-json", runtime, "--", "python", "-m", "cluster.cli", "validate",
            "--continuous", *argv)  # fmt: skip


def scraped(stack: Stack, name: str) -> dict[tuple[str, ...], float]:
    """The stack's Prometheus endpoint (Ray's metrics agent): ``name``'s samples summed over
    Ray's per-process labels, by (view, feature, class)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{stack.settings.ray.metrics_export_port}/metrics"
    text = httpx.get(url, timeout=10).text
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_total"):
                labels = sample.labels
                key = (labels["view"], labels["feature"], labels["class"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


@contextlib.contextmanager
def deployed(
    stack: Stack, catalogs: Mapping[str, dict[str, Any]] | None = None
) -> Iterator[httpx.Client]:
    """Both regions served with every answer logged (after the stores hold tiles: a Redis
    without the writer's marker is not ready); ``catalogs`` gives a region a catalog of its own."""
    configs = []
    for config in configs_for_stack(
        stack.settings,
        [ApiKey.from_raw("tests", READ_KEY)],
        dynamodb_credentials=(
            LOCAL_CREDENTIALS["aws_access_key_id"],
            LOCAL_CREDENTIALS["aws_secret_access_key"],
        ),
    ):
        update: dict[str, Any] = {"answer_sample_share": 1.0, "replicas": 1}
        own = (catalogs or {}).get(config.region)
        if own is not None:
            update |= {"catalog_import": None, "catalog_inline": own}
        configs.append(config.model_copy(update=update))
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
