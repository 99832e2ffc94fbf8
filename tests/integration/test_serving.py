"""Serving end to end: both regions' Serve applications on the session stack's Ray head, tiles
written by the partition processor through the real Redis and DynamoDB writers, read over HTTP
and compared with an oracle recomputed from the raw events. Store failures are real: the store
process is paused with SIGSTOP (and always resumed)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from cluster.stack import Stack
from features.catalog import Catalog
from features.durations import to_ms
from features.registry import RegistryVersion
from regions.redis_store import RedisRole, redis_client
from regions.registry_mirror import publish, registry_key
from serve_apps.client import FeatureClient
from serve_apps.config import ApiKey
from serve_apps.deploy import configs_for_stack
from tests.integration.prometheus import Sample, growth, scrape, series
from tests.integration.serving_world import (
    ADMIN_KEY,
    CATALOG,
    MERCHANTS,
    OPEN_S,
    QUIET_USER,
    READ_KEY,
    RUN,
    USERS,
    serving_world,
    wait_ready,
)

pytestmark = pytest.mark.integration


def _oracle(events: list[dict[str, Any]], ref: str, entity_id: str, as_of: int) -> Any:  # noqa: PLR0911
    """Recomputed from the raw events, independently of the tile code."""
    view, feature = CATALOG.resolve(ref)
    key_field = view.key_field(CATALOG)
    rows = [e for e in events if e[key_field] == entity_id and e["event_time_ms"] <= as_of]
    if feature.window_ms is not None:
        tile = feature.tile_spec.tile_ms  # type: ignore[union-attr]
        start = as_of - as_of % tile + tile - feature.window_ms
        rows = [e for e in rows if e["event_time_ms"] >= start]
    values = [e[feature.column] for e in rows] if feature.column else [1] * len(rows)
    agg = feature.aggregation.value
    if not rows and agg != "cusum":
        return feature.default
    if agg == "count":
        return len(rows)
    if agg == "sum":
        return sum(values)
    if agg == "mean":
        return sum(values) / len(values)
    if agg == "max":
        return max(values)
    if agg == "min":
        return min(values)
    if agg == "distinct_count":
        return len(set(values))
    if agg == "last":
        return max(rows, key=lambda e: (e["event_time_ms"], e["seq"]))[feature.column]
    return None  # cusum: not recomputed here


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[dict[str, Any]]:
    with serving_world(stack) as deployed:
        yield deployed


def _read(
    world: dict[str, Any], region: str, body: dict[str, Any], key: str = READ_KEY
) -> httpx.Response:
    return world["http"].post(
        f"/{region}/v1/features", content=orjson.dumps(body), headers={"x-api-key": key}
    )


def _check_against_oracle(world: dict[str, Any], body: dict[str, Any], store: str) -> None:
    assert body["store"] == store, body["fallback"]
    as_of = body["as_of_ms"]
    for row in body["results"]:
        for ref, item in row["features"].items():
            expected = _oracle(world["events"], ref, row["id"], as_of)
            assert item["store"] == store
            if ref.endswith("cusum"):
                continue
            if isinstance(expected, float):
                assert item["value"] == pytest.approx(expected, rel=1e-9), (row["id"], ref)
            else:
                assert item["value"] == expected, (row["id"], ref)


FRAUD = {"entities": {"user": USERS, "merchant": MERCHANTS}, "feature_service": "fraud_v1"}


def test_each_replica_opens_its_home_redis_pool_before_its_first_request(
    world: dict[str, Any], stack: Stack
) -> None:
    """A replica opens ``max_in_flight`` connections to its home Redis in its constructor
    (serve_apps.app): joining under load, a cold one opened them one at a time while the herd
    waited. The first test of the module: so far only sequential readiness probes have reached
    the replicas, one connection's worth."""
    config = next(c for c in world["configs"] if c.region == "us-east")
    region = stack.settings.topology.get("us-east")
    admin = redis_client(region, RedisRole.ADMIN, stack.settings.redis, stack.secrets)
    try:
        readers = [c for c in admin.client_list() if c.get("user") == config.redis_reader_user]
    finally:
        admin.close()
    assert len(readers) >= config.replicas * config.limits.max_in_flight, len(readers)


@pytest.mark.parametrize("region", ["us-east", "eu-west"])
def test_values_over_http_equal_the_oracle(world: dict[str, Any], region: str) -> None:
    response = _read(world, region, FRAUD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["region"] == region
    _check_against_oracle(world, body, f"redis-{region}")
    statuses = {item["status"] for row in body["results"] for item in row["features"].values()}
    assert "present" in statuses


def test_unknown_entity_and_stale_values(world: dict[str, Any]) -> None:
    body = _read(
        world,
        "us-east",
        {
            "entities": {"user": [f"u_{RUN}_nobody", QUIET_USER]},
            "features": ["user_spend:last_amount", "user_spend:tx_count_1h"],
        },
    ).json()
    nobody, quiet = body["results"]
    assert {v["status"] for v in nobody["features"].values()} == {"not_found"}
    last = quiet["features"]["user_spend:last_amount"]
    assert (last["status"], last["value"]) == ("stale", None)
    assert last["age_ms"] > CATALOG.view("user_spend").ttl_ms


def test_feast_endpoint(world: dict[str, Any]) -> None:
    request = {
        "features": ["user_spend:tx_count_1h", "user_spend:spend_sum_1h"],
        "entities": {"user_id": USERS[:2]},
    }
    response = world["http"].post(
        "/us-east/get-online-features",
        content=orjson.dumps(request),
        headers={"x-api-key": READ_KEY},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["metadata"]["feature_names"] == ["user_id", "tx_count_1h", "spend_sum_1h"]
    assert body["results"][0]["values"] == USERS[:2]
    assert all(s == "PRESENT" for col in body["results"] for s in col["statuses"])


def test_auth_limits_and_key_injection(world: dict[str, Any]) -> None:
    http = world["http"]
    ok = {"entities": {"user": USERS[:1]}, "features": ["user_spend:last_amount"]}
    assert _read(world, "us-east", ok, key="nope").status_code == 401
    assert _read(world, "us-east", ok, key=ADMIN_KEY).status_code == 403
    assert http.get("/us-east/v1/stores", headers={"x-api-key": ADMIN_KEY}).status_code == 200
    too_big = http.post(
        "/us-east/v1/features",
        content=b"{" + b" " * 300_000 + b"}",
        headers={"x-api-key": READ_KEY},
    )
    assert too_big.status_code == 413
    many = {
        "entities": {"user": [f"u{i}" for i in range(1_001)]},
        "features": ["user_spend:last_amount"],
    }
    assert _read(world, "us-east", many).status_code == 422
    bad = {"entities": {"user": ["u\n1"]}, "features": ["user_spend:last_amount"]}
    response = _read(world, "us-east", bad)
    assert response.status_code == 422 and set(response.json()) == {"error", "request_id"}
    # An id that spells another key is just an unknown (safely encoded) id.
    sneaky = {
        "entities": {"user": [f"x:v1:{USERS[0]}", "*"]},
        "features": ["user_spend:last_amount"],
    }
    body = _read(world, "us-east", sneaky).json()
    assert {r["features"]["user_spend:last_amount"]["status"] for r in body["results"]} == {
        "not_found"
    }
    assert (
        http.get("/us-east/v1/catalog", headers={"x-api-key": READ_KEY}).json()["region"]
        == "us-east"
    )
    assert http.get("/us-east/v1/openapi.json").json()["openapi"] == "3.1.0"


def test_each_fallback_step_by_stopping_the_real_store(world: dict[str, Any], stack: Stack) -> None:
    order = ["redis-us-east", "dynamodb-us-east", "redis-eu-west", "dynamodb-eu-west"]
    request = {
        **FRAUD,
        "entities": {"user": USERS[:2], "merchant": MERCHANTS[:1]},
        "deadline_ms": 5_000,
    }
    paused: list[str] = []
    try:
        for n, name in enumerate(order):
            body = _read(world, "us-east", request).json()
            _check_against_oracle(world, body, name)
            assert [f["store"] for f in body["fallback"]][: n + 1] == order[: n + 1]
            stack.service(name).process.signal(signal.SIGSTOP)
            paused.append(name)
        body = _read(world, "us-east", request).json()
        assert body["store"] == "defaults"
        values = [v for r in body["results"] for v in r["features"].values()]
        assert {(v["status"], v["store"]) for v in values} == {("default", "defaults")}
        assert world["http"].get("/us-east/v1/ready").status_code == 503
        # Failures open the breakers, and an open breaker is skipped at once. The front doors'
        # health checks read through both replicas' chains too, so breakers open and go half-open
        # on their own schedule: read until one answer skipped every store.
        assert _read_until_every_store_is_skipped(world, request), "no read within 60 s"
    finally:
        for name in reversed(paused):
            stack.service(name).process.signal(signal.SIGCONT)
    # After open_s a half-open probe finds the store back, and reads return to it.
    give_up = time.monotonic() + 30 + OPEN_S
    while True:
        body = _read(world, "us-east", request).json()
        if body["store"] == "redis-us-east" or time.monotonic() > give_up:
            break
        time.sleep(0.2)
    _check_against_oracle(world, body, "redis-us-east")


def _read_until_every_store_is_skipped(world: dict[str, Any], request: dict[str, Any]) -> bool:
    """Whether a read within 60 s was answered (with defaults) without calling any store."""
    give_up = time.monotonic() + 60
    while True:
        body = _read(world, "us-east", request).json()
        if {f["outcome"] for f in body["fallback"]} == {"circuit_open"}:
            return body["store"] == "defaults"
        if time.monotonic() > give_up:
            return False
        time.sleep(0.1)


def test_feature_client(world: dict[str, Any]) -> None:
    with FeatureClient(
        world["base"], READ_KEY, regions=("us-east", "eu-west"), timeout_s=2.0
    ) as client:
        body = client.get_features({"user": USERS[:1]}, ["user_spend:tx_count_1h"])
        columns = client.get_features(
            {"user": USERS, "merchant": MERCHANTS},
            feature_service="fraud_v1",
            response_format="columns",
        )
    assert body["region"] == "us-east"
    assert client.values(body)[(USERS[0], "user_spend:tx_count_1h")] == _oracle(
        world["events"], "user_spend:tx_count_1h", USERS[0], body["as_of_ms"]
    )
    # The columnar shape over HTTP: every value of every entity equals the oracle.
    assert columns["format"] == "columns" and columns["store"] == "redis-us-east"
    values = client.values(columns)
    assert len(values) == len(set(USERS)) * 9 + len(set(MERCHANTS)) * 2  # fraud_v1's 9 + 2
    for (entity_id, ref), value in values.items():
        if ref.endswith("cusum"):
            continue
        expected = _oracle(world["events"], ref, entity_id, columns["as_of_ms"])
        if isinstance(expected, float):
            assert value == pytest.approx(expected, rel=1e-9), (entity_id, ref)
        else:
            assert value == expected, (entity_id, ref)


def test_replicas_run_at_normal_priority(world: dict[str, Any], stack: Stack) -> None:
    """Ray starts workers at nice 15, behind every nice-0 process of the node; a serving replica
    is the request path, so it runs at ServingConfig.niceness (0) instead."""
    import os

    from ray.util.state import list_actors

    dashboard = stack.settings.ray.dashboard_url  # this stack's head, never auto-detected
    replicas = [
        a
        for a in list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1_000)
        if a.class_name.startswith("ServeReplica:") and a.class_name.endswith("serving-us-east")
    ]
    assert replicas, "the us-east replicas are listed"
    assert {os.getpriority(os.PRIO_PROCESS, a.pid) for a in replicas} == {0}


def test_replicas_write_no_access_log_line_per_request(world: dict[str, Any], stack: Stack) -> None:
    """Serve's per-request access log is off in the region replicas (ServingConfig docs: in
    throughput mode its 1,000-record buffer was written from the event loop every 2 s at
    500 req/s, stalling every request in flight), while their log files still exist."""
    logs = stack.settings.ray_temp_dir / "session_latest" / "logs" / "serve"
    files = sorted(logs.glob("replica_us-east_serving-us-east_*.log"))
    assert files, f"no us-east replica log under {logs}"
    body = {"entities": {"user": ["u_0001"]}, "features": ["user_spend:tx_count_1h"]}
    marker = f"probe-{uuid.uuid4().hex}"
    # More requests than the 1,000 records Serve buffers before it writes its log file.
    for _ in range(1_100):
        response = world["http"].post(
            "/us-east/v1/features",
            content=orjson.dumps(body),
            headers={"x-api-key": READ_KEY, "x-request-id": marker},
        )
        assert response.status_code == 200
    time.sleep(1.0)
    text = "".join(f.read_text(errors="replace") for f in files)
    assert marker not in text, "an access-log line per request is back"


def test_the_stack_ingress_is_haproxy_and_the_serving_service_sees_the_apps(
    world: dict[str, Any], stack: Stack
) -> None:
    """The head started with RaySettings.ingress (HAProxy holds the Serve port), and the stack's
    ``serving`` service reports the running apps healthy and leaves them alone on ``start``."""
    import re
    import subprocess

    from cluster.serving import ServingService, api_key_file

    port = stack.settings.ray.serve_port
    held = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert stack.settings.ray.ingress == "haproxy-throughput"
    assert set(re.findall(r'\(\("([^"]+)"', held)) == {"haproxy"}, held
    service = ServingService(stack.settings)
    status = service.status()
    # The apps answer on this state dir's head, but were deployed with the test's keys: without
    # the operator key file nobody can call them, so serving is not healthy.
    assert status.state == "unhealthy", status
    assert str(api_key_file(stack.settings)) in status.detail
    service.start()  # healthy already: no redeploy, so no operator key is generated
    assert not api_key_file(stack.settings).exists()
    body = {"entities": {"user": USERS[:1]}, "features": ["user_spend:tx_count_1h"]}
    assert _read(world, "us-east", body).status_code == 200


def test_an_unchanged_deploy_keeps_the_running_replicas(
    world: dict[str, Any], stack: Stack
) -> None:
    """Serve replaces every replica of an app deployed from Python objects on each call, so each
    drill's preparation and each repeated ``serve up`` cost seconds of cold replicas. A deploy
    of what already runs now changes nothing."""
    from ray.util.state import list_actors

    from serve_apps.deploy import deploy

    def replicas() -> set[str]:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        return {a.actor_id for a in alive if a.class_name.startswith("ServeReplica:")}

    before = replicas()
    assert len(before) == len(world["configs"])  # one replica per region in this world
    port = stack.settings.ray.serve_port
    deploy(world["configs"], ray_address=stack.settings.ray.address, http_port=port)
    assert replicas() == before
    body = {"entities": {"user": USERS[:1]}, "features": ["user_spend:tx_count_1h"]}
    assert _read(world, "us-east", body).status_code == 200


def test_replicas_follow_the_registry_version_published_in_their_region(
    world: dict[str, Any], stack: Stack
) -> None:
    """A version published in a region's Redis replaces its replicas' catalog without a restart
    (within a refresh); an older or repeated one changes nothing; a rollback is a newer version
    with the old definitions, and reads then equal the oracle again."""
    clients = {
        region.name: redis_client(region, RedisRole.WRITER, stack.settings.redis, stack.secrets)
        for region in stack.settings.topology
    }
    try:
        base = max(
            int(c.hget(registry_key(stack.settings.tenant), "number") or 0)
            for c in clients.values()
        )
        changed = _registry_version(base + 1, _bumped_user_spend())
        for client in clients.values():
            assert publish(client, stack.settings.tenant, changed)
            assert not publish(client, stack.settings.tenant, changed)  # the same number again
        for region in clients:
            catalog = _catalog_at(world, region, base + 1)
            assert {v["name"]: v["version"] for v in catalog["views"]}["user_spend"] == 2
        # The new view version's tiles are not computed here: its keys hold nothing yet.
        read = {"entities": {"user": USERS[:1]}, "features": ["user_spend:tx_count_1h"]}
        body = _read(world, "us-east", read).json()
        assert body["results"][0]["features"]["user_spend:tx_count_1h"]["status"] == "not_found"
        rollback = _registry_version(base + 2, CATALOG)
        for client in clients.values():
            assert publish(client, stack.settings.tenant, rollback)
            assert not publish(client, stack.settings.tenant, changed)  # never backwards
        for region in clients:
            _catalog_at(world, region, base + 2)
            _check_against_oracle(world, _read(world, region, FRAUD).json(), f"redis-{region}")
    finally:
        for client in clients.values():
            client.close()


def _bumped_user_spend() -> Catalog:
    data = CATALOG.model_dump(mode="json")
    for view in data["views"]:
        if view["name"] == "user_spend":
            view["version"] += 1
    return Catalog.from_dict(data)


def _registry_version(number: int, catalog: Catalog) -> RegistryVersion:
    return RegistryVersion(number, number - 1, catalog, datetime.now(UTC))


def _catalog_at(world: dict[str, Any], region: str, number: int) -> dict[str, Any]:
    """``region``'s catalog once it serves registry version ``number`` (a refresh is 5 s)."""
    give_up = time.monotonic() + 60
    while True:
        catalog: dict[str, Any] = (
            world["http"].get(f"/{region}/v1/catalog", headers={"x-api-key": READ_KEY}).json()
        )
        if catalog["registry_version"] == number or time.monotonic() > give_up:
            assert catalog["registry_version"] == number, catalog["registry_version"]
            return catalog
        time.sleep(0.5)


def test_serve_deploy_from_one_config_file(
    world: dict[str, Any], stack: Stack, tmp_path: Any
) -> None:
    """The same applications through ``serve deploy <file>`` (runs last: it replaces them)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from serve_apps.deploy import write_serve_config

    configs = configs_for_stack(stack.settings, [ApiKey.from_raw("tests", READ_KEY)])
    path = write_serve_config(configs, stack.settings.ray.serve_port, tmp_path / "serve.yaml")
    text = path.read_text()
    assert "redis_password_file" in text and READ_KEY not in text
    serve_cli = str(Path(sys.executable).parent / "serve")
    env = {**os.environ, **stack.settings.ray.client_env()}
    subprocess.run(
        [serve_cli, "deploy", str(path), "-a", stack.settings.ray.dashboard_url],
        check=True,
        env=env,
        timeout=120,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = subprocess.run(
            [serve_cli, "status", "-a", stack.settings.ray.dashboard_url],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        ).stdout
        if status.count("status: RUNNING") >= 2 and "DEPLOYING" not in status:
            break
        time.sleep(1)
    for region in ("us-east", "eu-west"):
        wait_ready(world["http"], region)
        body = _read(world, region, FRAUD).json()
        _check_against_oracle(world, body, f"redis-{region}")


def test_serving_exports_its_metrics_to_the_stacks_prometheus_endpoint(
    world: dict[str, Any], stack: Stack
) -> None:
    """A real replica's reads reach Ray's metrics agent: answers by route and status and by
    source, each view's served age beside its freshness target."""
    body = {"entities": {"user": USERS[:3]}, "features": ["user_spend:tx_count_1h"]}
    # One route (the front doors' health checks count on /v1/ready), and only live replicas:
    # the test before this one replaced them, and each replica's series carry its id.
    route = {"region": "us-east", "route": "/v1/features", "status": "200"}
    before = scrape(stack)
    for _ in range(5):
        assert _read(world, "us-east", body).status_code == 200
    # Ray's agent exports every few seconds, each metric in its own batch: wait for all of them.
    deadline = time.monotonic() + 90
    while True:
        seen = _exported(before, scrape(stack), route)
        counted = min(seen["requests"], seen["answers"], seen["ages"]) >= 5
        if (counted and seen["targets"] and seen["breakers"]) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert seen["requests"] >= 5
    assert seen["answers"] >= 5
    assert seen["ages"] >= 5
    expected = to_ms(CATALOG.view("user_spend").freshness_target)
    assert seen["targets"] == {expected}
    assert seen["breakers"] == {0.0}


def _exported(before: list[Sample], after: list[Sample], route: dict[str, str]) -> dict[str, Any]:
    """What the live replicas exported since ``before``: requests, local answers and served ages
    (growth), each view's freshness target and each store's breaker state (values)."""
    old = series(before, "freshline_serving_requests", **route)
    live = {
        dict(labels)["replica"]
        for labels, value in series(after, "freshline_serving_requests", **route).items()
        if value > old.get(labels, 0.0)
    }

    def values(name: str, **labels: str) -> set[float]:
        found = series(after, name, region="us-east", **labels)
        return {value for key, value in found.items() if dict(key).get("replica") in live}

    local = {"region": "us-east", "source": "local"}
    return {
        "requests": growth(before, after, "freshline_serving_requests", **route),
        "answers": growth(before, after, "freshline_serving_answers", **local),
        "ages": growth(before, after, "freshline_serving_served_age_ms_count", view="user_spend"),
        "targets": values("freshline_serving_freshness_target_ms", view="user_spend"),
        "breakers": values("freshline_serving_breaker_open"),
    }
