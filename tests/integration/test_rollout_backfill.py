"""A new view version starts warm on the real stack: events streamed under user_spend v1 reach
the offline table; a repository with user_spend v2 (a changed window) is applied to the running
pipeline, whose consumers backfill v2 from the offline table as they roll; after more events, v2's
stored values equal the oracle of v2's definition over every event, the ones before the apply
included, and the shadow report finds v2 equal to its offline recomputation for every feature."""

from __future__ import annotations

import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka import KafkaProducer
from pyiceberg.exceptions import NoSuchTableError

from actors.offline_tables import RAW_TABLE
from chaos.oracle import expected_values
from chaos.verify import accepted_in_topic, close_enough
from cluster import pipeline as pipeline_job
from cluster.registry import apply, make_plan
from cluster.services.offline import NAMESPACE, iceberg_catalog
from cluster.settings import DEFAULT_EVENTS_TOPIC
from cluster.shadow_cli import shadow_report
from cluster.stack import Stack
from features.block_merge import merge_blocks
from features.blocks import BlockLayout, blocks_of
from features.catalog import Catalog
from features.keys import OnlineKey
from regions.redis_store import RedisRole, RedisTileReader, redis_client
from tests.integration.conftest import running_stack
from tests.integration.test_registry_follow import _published_everywhere, _supervisor_status

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "card_transactions"
RUN = uuid.uuid4().hex[:6]
USERS = [f"u_bf_{RUN}_{i}" for i in range(24)]
MINUTE = 60_000
# user_spend v2: tx_count_1h counts over two hours.
V1_WINDOW = "  - name: tx_count_1h\n    aggregation: count\n    window: 1h\n"
V2_WINDOW = V1_WINDOW.replace("window: 1h", "window: 2h")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("backfill")) as running:
        yield running


def test_a_new_view_version_is_backfilled_from_the_offline_table(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings
    bootstrap = settings.kafka.bootstrap
    pipeline_job.up(settings, consumers=2)
    try:
        base = apply(bootstrap, settings.tenant, make_plan(bootstrap, settings.tenant, EXAMPLE))
        assert base is not None and _published_everywhere(stack, base.number)
        now = int(time.time() * 1000)
        # Before the apply: events up to 100 minutes old, which v2's 2 h window counts and
        # v1's 1 h window does not.
        before = _produce(bootstrap, now - 100 * MINUTE, now - MINUTE, per_user=8, seed=1)
        assert _offline_rows(stack, before) >= before, "the offline writer did not catch up"
        repo = tmp_path / "repo"
        shutil.copytree(EXAMPLE, repo)
        view = repo / "views" / "user_spend.yaml"
        text = view.read_text()
        assert V1_WINDOW in text
        view.write_text(text.replace("version: 1", "version: 2", 1).replace(V1_WINDOW, V2_WINDOW))
        rolled = apply(bootstrap, settings.tenant, make_plan(bootstrap, settings.tenant, repo))
        assert rolled is not None and _published_everywhere(stack, rolled.number)
        consumers = _supervisor_status(stack)["consumers"]
        assert all(c["ready"] for c in consumers)
        assert sum(c["backfilled_events"] for c in consumers) >= before
        after = _produce(bootstrap, now - MINUTE, now, per_user=3, seed=2)
        catalog = rolled.catalog
        assert catalog.view("user_spend").version == 2
        accepted = [e for e in accepted_in_topic(bootstrap, catalog) if e["user_id"] in USERS]
        assert len(accepted) == before + after
        assert _wait_for_v2(stack, catalog, accepted) == []
        assert _offline_rows(stack, before + after) >= before + after, "offline writer behind"
        report = shadow_report(settings, stack.secrets, "user_spend", entities=len(USERS))
        assert (report["candidate"], report["previous"]) == (2, 1)
        assert report["entities"] == len(USERS)
        off = {
            line["feature"]: line["equal_offline"]
            for line in report["features"]
            if line["equal_offline"] != 1.0
        }
        assert off == {}
        tx_1h = next(line for line in report["features"] if line["feature"] == "tx_count_1h")
        assert tx_1h["equal_previous"] is not None and tx_1h["equal_previous"] < 1.0
    finally:
        pipeline_job.down(settings)


def _produce(bootstrap: str, first_ms: int, last_ms: int, *, per_user: int, seed: int) -> int:
    """``per_user`` events per user, event times rising from ``first_ms`` to ``last_ms`` in
    production order (none late); returns how many."""
    rng = random.Random(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    step = (last_ms - first_ms) // per_user
    try:
        for n in range(per_user):
            for i, user in enumerate(USERS):
                event = {
                    "event_id": f"{user}-{seed}-{n}",
                    "seq": seed * 1_000 + n,
                    "event_type": "card_tx",
                    "user_id": user,
                    "merchant_id": f"m_bf_{rng.randrange(5)}",
                    "amount": round(rng.uniform(1, 300), 2),
                    "currency": "USD",
                    "event_time_ms": first_ms + n * step + i,
                }
                producer.send(DEFAULT_EVENTS_TOPIC, key=user.encode(), value=orjson.dumps(event))
        producer.flush(timeout=30)
    finally:
        producer.close()
    return per_user * len(USERS)


def _offline_rows(stack: Stack, want: int, timeout_s: float = 120) -> int:
    """How many of this run's events the offline table holds, once it holds ``want`` or
    ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        try:
            table = iceberg_catalog(stack.settings).load_table((NAMESPACE, RAW_TABLE))
        except NoSuchTableError:  # the offline writer creates it when it starts
            time.sleep(2)
            continue
        users = table.scan(selected_fields=("user_id",)).to_arrow().column("user_id")
        seen = pc.sum(pc.is_in(users, value_set=pa.array(USERS))).as_py() or 0
        if seen >= want:
            return seen
        time.sleep(2)
    return seen


def _wait_for_v2(
    stack: Stack, catalog: Catalog, accepted: list[dict[str, Any]], timeout_s: float = 120
) -> list[str]:
    deadline = time.monotonic() + timeout_s
    problems = _v2_mismatches(stack, catalog, accepted)
    while problems and time.monotonic() < deadline:
        time.sleep(2)
        problems = _v2_mismatches(stack, catalog, accepted)
    return problems


def _v2_mismatches(stack: Stack, catalog: Catalog, accepted: list[dict[str, Any]]) -> list[str]:
    """Every (feature, user) whose v2 value in us-east's Redis, merged as serving merges it,
    differs from the oracle of v2 over all accepted events."""
    view = catalog.view("user_spend")
    as_of = max(e["event_time_ms"] for e in accepted)
    max_id = catalog.entity(view.entity).max_id_bytes
    keys = {
        OnlineKey(stack.settings.tenant, view.name, 2, u).encode(max_id_bytes=max_id): u
        for u in USERS
    }
    region = stack.settings.topology.get("us-east")
    client = redis_client(region, RedisRole.READER, stack.settings.redis, stack.secrets)
    try:
        fields = RedisTileReader(client, "redis").get_all(list(keys))
    finally:
        client.close()
    layout = BlockLayout.for_view(view)
    stored = list(fields.items())
    merged = merge_blocks(layout, [blocks_of(layout, f) for _, f in stored], as_of)
    served = {keys[k]: merged.entity(i) for i, (k, _) in enumerate(stored)}
    problems = []
    for user in USERS:
        mine = [e for e in accepted if e["user_id"] == user]
        for name, want in expected_values(mine, catalog, "user_spend", user, as_of).items():
            got = served.get(user, {}).get(name)
            if not close_enough(name, got, want):
                problems.append(f"{name}[{user}] {got} != {want}")
    return problems
