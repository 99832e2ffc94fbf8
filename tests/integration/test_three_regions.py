"""A third region is configuration: a private stack with three regions (FRESHLINE_REGIONS shape)
runs three Redis, three DynamoDB endpoints and three front doors; the pipeline writes every
region's stores equal to the oracle; each region's Serve app answers from its own Redis, and the
new region fails over to its nearest neighbour when its stores hang.

The pipeline and serving test is marked ``heavy`` (``make heavy``). CI's quick case runs on the
same stack: the third region's Redis, DynamoDB endpoint and front door are started from the
configuration and healthy, with the region's own Redis users.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from chaos import verify
from chaos.oracle import accepted_events
from cluster import pipeline as pipeline_job
from cluster.isolated import free_ports, isolated_settings
from cluster.settings import FrontDoorSettings, StackSettings
from cluster.stack import Stack
from features.demo import SOURCE, card_transactions_catalog
from regions.config import RegionConfig, RegionTopology
from regions.redis_store import RedisRole, redis_client
from serve_apps.config import ApiKey, new_api_key
from serve_apps.deploy import configs_for_stack, deploy
from tests.integration.test_pipeline import _produce

pytestmark = pytest.mark.integration
KEY = new_api_key()


def _three_regions(settings: StackSettings) -> StackSettings:
    # The base ports stay free until the stack starts: without avoid, a draw may repeat one.
    taken = {port for _, port in settings.listeners()}
    redis, dynamodb, door = free_ports(3, avoid=taken)
    third = RegionConfig(
        name="ap-south",
        aws_region="ap-south-1",
        redis_port=redis,
        dynamodb_port=dynamodb,
        coordinates=(19.1, 72.9),
    )
    topology = RegionTopology(regions=(*settings.topology.regions, third))
    data = settings.model_dump()
    data["topology"] = topology
    data["front_door"] = FrontDoorSettings(ports=(*settings.front_door.ports, door))
    return StackSettings.model_validate(data)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = _three_regions(
        isolated_settings(tmp_path_factory.mktemp("three"), with_ray=True, tenant="acme")
    )
    os.environ.update(settings.ray.client_env())
    stack = Stack.build(settings, environ={})
    try:
        stack.up()
        yield stack
    finally:
        stack.down(purge=True)


def test_a_third_regions_services_start_from_configuration_and_are_healthy(three: Stack) -> None:
    states = {status.name: status.state for status in three.status()}
    third = ("redis-ap-south", "dynamodb-ap-south", "front-door-ap-south")
    assert all(states.get(name) == "healthy" for name in third), states
    region = three.settings.topology.get("ap-south")
    for role in (RedisRole.WRITER, RedisRole.READER):
        client = redis_client(region, role, three.settings.redis, three.secrets)
        try:
            assert client.ping(), f"the {role.value} user of ap-south's Redis"
        finally:
            client.close()


@pytest.mark.heavy
def test_a_third_region_computes_serves_and_fails_over(three: Stack) -> None:
    settings = three.settings
    assert [s.name for s in three.services if s.name.startswith("redis-")] == [
        "redis-us-east",
        "redis-eu-west",
        "redis-ap-south",
    ]
    pipeline_job.up(settings, consumers=2)
    try:
        ledger = _produce(settings.kafka.bootstrap, 1_000, seed=31, start_seq=0)
        accepted = accepted_events(ledger, card_transactions_catalog(), SOURCE)
        problems = verify.wait_for_oracle(settings, three.secrets, accepted, timeout_s=300)
        assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
        configs = configs_for_stack(settings, [ApiKey.from_raw("tests", KEY)], replicas=1)
        deploy(configs, ray_address=settings.ray.address, http_port=settings.ray.serve_port)
        user = accepted[0]["user_id"]
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.ray.serve_port}") as http:
            assert _store(http, "ap-south", user) == "redis-ap-south"
            for name in ("redis-ap-south", "dynamodb-ap-south"):
                three.service(name).process.signal(signal.SIGSTOP)
            try:
                # Nearest first: eu-west is nearer to ap-south than us-east.
                assert _store_until(http, "ap-south", user, "redis-eu-west")
            finally:
                for name in ("redis-ap-south", "dynamodb-ap-south"):
                    three.service(name).process.signal(signal.SIGCONT)
    finally:
        pipeline_job.down(settings)


def _store(http: httpx.Client, region: str, user: str) -> Any:
    body = {"entities": {"user": [user]}, "features": ["user_spend:tx_count_1h"]}
    reply = http.post(
        f"/{region}/v1/features", content=orjson.dumps(body), headers={"x-api-key": KEY}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["store"]


def _store_until(http: httpx.Client, region: str, user: str, store: str) -> bool:
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        if _store(http, region, user) == store:
            return True
        time.sleep(0.5)
    return False
