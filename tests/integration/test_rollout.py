"""A view rolled out to a new version on the real stack, through the CLI: apply a repository with
a changed window (shadow), canary at 10 %, promote, roll back, retire. Throughout, every answer
names the version of the view that answered each entity, that version is the one the entity's
canary bucket picks, and the served values equal the oracle of that version's definition over the
events the pipeline accepted. A rollback reaches every region within one replica refresh."""

from __future__ import annotations

import itertools
import json
import shutil
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

from chaos.oracle import expected_values
from cluster import pipeline as pipeline_job
from cluster.settings import DEFAULT_EVENTS_TOPIC
from cluster.stack import Stack
from features.catalog import Catalog
from features.demo import card_transactions_catalog
from features.keys import OnlineKey
from features.rollout import canary_bucket
from regions.aws import LOCAL_CREDENTIALS
from regions.redis_store import RedisRole, redis_client
from serve_apps.config import ApiKey, new_api_key
from serve_apps.deploy import configs_for_stack, deploy
from tests.integration.conftest import stack_env
from tests.integration.serving_world import shutdown_serve, wait_ready
from tests.integration.test_registry_follow import _published_everywhere, _supervisor_status

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "card_transactions"
READ_KEY = new_api_key()
RUN = uuid.uuid4().hex[:8]


def _users(count: int, canary_share: int, canaries: int) -> list[str]:
    """``count`` users of this run, at least ``canaries`` of them in ``user_spend``'s canary at
    ``canary_share`` %: forty random ids hold none at 10 % in one run of 67, and the canary
    check would fail on the draw, not on the code."""

    def in_canary(user: str) -> bool:
        return canary_bucket("user_spend", user) < canary_share

    users = [f"u_ro_{RUN}_{i}" for i in range(count)]
    more = (f"u_ro_{RUN}_{i}" for i in itertools.count(count))
    while sum(map(in_canary, users)) < canaries:
        out = next(i for i in reversed(range(count)) if not in_canary(users[i]))
        users[out] = next(u for u in more if in_canary(u))
    return users


USERS = _users(40, canary_share=10, canaries=2)
V1 = card_transactions_catalog()
# A changed window: user_spend v2 counts tx_count_5m over one minute.
FEATURES = ["user_spend:tx_count_5m", "user_spend:spend_sum_1h", "user_spend:last_amount"]


def _v2(catalog: Catalog) -> Catalog:
    data = catalog.model_dump(mode="json")
    view = next(v for v in data["views"] if v["name"] == "user_spend")
    view["version"] = 2
    next(f for f in view["features"] if f["name"] == "tx_count_5m")["window"] = "1m"
    return Catalog.from_dict({k: v for k, v in data.items() if k != "rollouts"})


V2 = _v2(V1)
BY_VERSION = {1: V1, 2: V2}


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = stack.settings
    pipeline_job.up(settings, consumers=2)
    base = (
        _cli(stack, "apply", str(EXAMPLE))["applied"]
        or _cli(stack, "plan", str(EXAMPLE))["current"]
    )
    assert _published_everywhere(stack, base)
    configs = configs_for_stack(
        settings,
        [ApiKey.from_raw("tests", READ_KEY)],
        dynamodb_credentials=(
            LOCAL_CREDENTIALS["aws_access_key_id"],
            LOCAL_CREDENTIALS["aws_secret_access_key"],
        ),
        catalog_import="features.demo:card_transactions_catalog",
        replicas=1,
    )
    deploy(configs, ray_address=settings.ray.address, http_port=settings.ray.serve_port)
    http = httpx.Client(base_url=f"http://127.0.0.1:{settings.ray.serve_port}", timeout=10.0)
    repo = tmp_path_factory.mktemp("repo") / "card_transactions"
    shutil.copytree(EXAMPLE, repo)
    view = repo / "views" / "user_spend.yaml"
    text = view.read_text()
    assert "version: 1" in text and "window: 5m" in text
    view.write_text(text.replace("version: 1", "version: 2").replace("window: 5m", "window: 1m"))
    try:
        for region in settings.topology.names:
            wait_ready(http, region)
        yield {"http": http, "events": [], "repo": repo, "base": base}
    finally:
        http.close()
        shutdown_serve()
        pipeline_job.down(settings)
        _end_rollout(stack)


def _end_rollout(stack: Stack) -> None:
    """Leave the session's registry as the module found it even when a test stopped mid-rollout:
    later modules read ``user_spend`` and would get v2 answers for the canary's entities. Rolling
    back refuses when no rollout is in progress (the test ran to its end), which is fine."""
    if _run_cli(stack, "rollback", "user_spend").returncode == 0:
        _cli(stack, "retire", "user_spend", "--version", "2")


def _run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    freshline = str(Path(sys.executable).parent / "freshline")
    return subprocess.run(
        [freshline, *args, "--json"],
        env=stack_env(stack.settings),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _cli(stack: Stack, *args: str) -> dict[str, Any]:
    done = _run_cli(stack, *args)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _produce(stack: Stack, world: dict[str, Any]) -> None:
    """Two events per user stamped now; the oracle's record of accepted events grows with them
    (all are accepted: valid, in time, in order)."""
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap, acks="all")
    now = time.time_ns() // 1_000_000
    try:
        for round_ in range(2):
            for i, user in enumerate(USERS):
                seq = len(world["events"])
                event = {
                    "event_id": f"{RUN}-{seq}",
                    "seq": seq,
                    "event_type": "card_tx",
                    "user_id": user,
                    "merchant_id": f"m_ro_{i % 4}",
                    "amount": float(1 + (seq * 37) % 100),
                    "currency": "USD",
                    "event_time_ms": now - 1_000 + round_,
                }
                # The oracle breaks event-time ties by offset; send order is offset order.
                world["events"].append({**event, "_offset": seq})
                producer.send(DEFAULT_EVENTS_TOPIC, key=user.encode(), value=orjson.dumps(event))
        producer.flush(timeout=30)
    finally:
        producer.close()


def _read(world: dict[str, Any], region: str) -> dict[str, Any]:
    body = {"entities": {"user": USERS}, "features": FEATURES}
    response = world["http"].post(
        f"/{region}/v1/features", content=orjson.dumps(body), headers={"x-api-key": READ_KEY}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _mismatches(
    world: dict[str, Any], answer: dict[str, Any], picks: Callable[[str], int]
) -> list[Any]:
    """Where an answer differs from what users rely on: the version picked for each entity, and
    the values of that version's oracle as of the answer's time."""
    wrong: list[Any] = []
    for row in answer["results"]:
        version = row["versions"]["user_spend"]
        if version != picks(row["id"]):
            wrong.append((row["id"], "version", version))
            continue
        expected = expected_values(
            world["events"], BY_VERSION[version], "user_spend", row["id"], answer["as_of_ms"]
        )
        for ref, item in row["features"].items():
            want = expected[ref.split(":")[1]]
            if item["value"] != pytest.approx(want, rel=1e-9):
                wrong.append((row["id"], ref, version, item["value"], want))
    return wrong


def _served_as(
    stack: Stack, world: dict[str, Any], picks: Callable[[str], int], within_s: float = 120.0
) -> dict[str, Any]:
    """Poll every region until its answer is right (the pipeline has caught up with the events
    and the replicas with the registry); fail with the last differences."""
    answers = {}
    for region in stack.settings.topology.names:
        give_up = time.monotonic() + within_s
        while True:
            answer = _read(world, region)
            wrong = _mismatches(world, answer, picks)
            if not wrong:
                answers[region] = answer
                break
            assert time.monotonic() < give_up, (region, wrong[:5])
            time.sleep(1.0)
    return answers


def _rolled_to(stack: Stack, number: int) -> bool:
    give_up = time.monotonic() + 300
    while time.monotonic() < give_up:
        status = _supervisor_status(stack)
        if status["registry_version"] == number and all(c["ready"] for c in status["consumers"]):
            return True
        time.sleep(2)
    return False


def _stored(stack: Stack, view: str, version: int, user: str) -> dict[bytes, bytes]:
    region = stack.settings.topology.get("us-east")
    client = redis_client(region, RedisRole.READER, stack.settings.redis, stack.secrets)
    try:
        fields: dict[bytes, bytes] = client.hgetall(
            OnlineKey(stack.settings.tenant, view, version, user).encode()
        )
        return fields
    finally:
        client.close()


def _canary(share: int) -> Callable[[str], int]:
    return lambda user: 2 if canary_bucket("user_spend", user) < share else 1


def test_shadow_canary_promote_rollback_and_retire(stack: Stack, world: dict[str, Any]) -> None:
    applied = _cli(stack, "apply", str(world["repo"]))
    assert applied["changes"] == [
        "~ view user_spend: v1 -> v2",
        "+ rollout of view user_spend: v1 -> v2, share 0 %",
    ]
    assert _published_everywhere(stack, applied["applied"])  # the pipeline computes both
    _produce(stack, world)
    # Shadow: v2 is computed, nobody reads it.
    shadow = _served_as(stack, world, lambda _: 1)
    assert all(a["view_versions"]["user_spend"] == [1] for a in shadow.values())

    canary = _cli(stack, "rollout", "user_spend", "--to", "2", "--share", "10")
    assert canary["changes"] == ["~ rollout of view user_spend: v1 -> v2, share 10 %"]
    _produce(stack, world)
    answers = _served_as(stack, world, _canary(10))
    on_v2 = [r["id"] for r in answers["us-east"]["results"] if r["versions"]["user_spend"] == 2]
    assert 0 < len(on_v2) < len(USERS) // 2  # a sticky tenth or so of 40 users

    _cli(stack, "rollout", "user_spend", "--to", "2", "--share", "100")
    promoted = _served_as(stack, world, lambda _: 2)
    assert all(a["view_versions"]["user_spend"] == [2] for a in promoted.values())

    started = time.monotonic()
    back = _cli(stack, "rollback", "user_spend")
    _served_as(stack, world, lambda _: 1)
    took_s = time.monotonic() - started
    # Within one replica refresh (5 s) plus reads; the CLI writes the regions itself.
    print(json.dumps({"rollback_effective_s": round(took_s, 2), "version": back["applied"]}))

    retired = _cli(stack, "retire", "user_spend", "--version", "2")
    assert retired["changes"] == [
        "~ view user_spend: v2 -> v1",
        "- rollout of view user_spend: rollout ended",
    ]
    # A retired version stops being computed: once the consumers rolled, v2's blocks stay as
    # they were while new events arrive (they expire by the view's TTL).
    assert _rolled_to(stack, retired["applied"])
    before = _stored(stack, "user_spend", 2, USERS[0])
    assert before  # it was computed until now
    _produce(stack, world)
    final = _served_as(stack, world, lambda _: 1)
    assert _stored(stack, "user_spend", 2, USERS[0]) == before
    catalog = world["http"].get("/us-east/v1/catalog", headers={"x-api-key": READ_KEY}).json()
    assert catalog["registry_version"] == retired["applied"]
    assert {v["name"]: v["rollout"] for v in catalog["views"]}["user_spend"] is None
    assert all(a["view_versions"]["user_spend"] == [1] for a in final.values())
