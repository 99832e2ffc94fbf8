from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import SecretStr

from features.errors import StoreTimeout
from regions.dynamodb_store import STORE_READY
from serve_apps.config import StoreTimeouts
from serve_apps.wiring import build_chain, dynamo_factory, started_pool
from tests.unit.serve_apps.fakes import config


def _access_key(client: Any) -> str | None:
    credentials = client._request_signer._credentials
    return None if credentials is None else str(credentials.access_key)


def test_serving_dynamodb_client_uses_serving_timeout_and_configured_credentials() -> None:
    serving = config(
        timeouts=StoreTimeouts(dynamodb_s=0.3),
        dynamodb_access_key_id=SecretStr("serving-key"),
        dynamodb_secret_access_key=SecretStr("serving-secret"),
    )
    region = serving.topology.get("eu-west")
    client = dynamo_factory(serving)(region)
    assert client.meta.config.read_timeout == 0.3
    assert client.meta.config.retries["total_max_attempts"] == 1  # the chain decides
    assert client.meta.endpoint_url == region.dynamodb_endpoint_url
    assert _access_key(client) == "serving-key"


def test_without_configured_credentials_serving_uses_the_boto3_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    serving = config()
    assert _access_key(dynamo_factory(serving)(serving.topology.get("us-east"))) == "from-env"


def test_one_client_per_region_is_made_once_and_shared() -> None:
    serving = config()
    make = dynamo_factory(serving)
    east, west = serving.topology.get("us-east"), serving.topology.get("eu-west")
    assert make(east) is make(east)
    assert make(east) is not make(west)


class _Table:
    """A DynamoDB endpoint: ready and empty, or hung (it accepted the connection and never
    answers, like a stopped process) until ``released``."""

    def __init__(self, hung: bool) -> None:
        self.hung, self.released = hung, threading.Event()

    def _answer(self, reply: dict[str, Any]) -> dict[str, Any]:
        if self.hung:
            self.released.wait(timeout=30)
        return reply

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._answer({"Item": {"state": {"S": STORE_READY.decode()}}})

    def query(self, **kwargs: Any) -> dict[str, Any]:
        return self._answer({"Items": []})


def test_a_hung_dynamodb_table_does_not_hold_up_the_next_regions_table() -> None:
    """Reads abandoned on a hung table keep their pool threads until the socket times out; the
    next region's table still answers at once (each store has its own threads)."""
    tables = {"us-east": _Table(hung=True), "eu-west": _Table(hung=False)}
    chain = build_chain(config(), time.monotonic, dynamo=lambda region: tables[region.name])
    stores = {step.store.name: step.store for step in chain.steps}
    east, west = stores["dynamodb-us-east"], stores["dynamodb-eu-west"]

    async def reads() -> dict[str, Any]:
        for _ in range(8):  # more than any pool has threads
            # Abandoned at the timer, or refused by the reader if its thread starts after the
            # deadline (a loaded machine): either way the call gives up on us-east.
            with pytest.raises(StoreTimeout):
                await east.get_all(["user#u1"], 0.5)
        # Generous: a loaded machine may be slow to start a thread; the hung calls hold theirs
        # for 30 s, so a shared pool would still leave this read behind them.
        return await west.get_all(["user#u1"], 10.0)

    try:
        assert asyncio.run(reads()) == {"user#u1": {}}
    finally:
        tables["us-east"].released.set()


def test_a_started_pool_runs_all_its_threads_before_its_first_read() -> None:
    """``ThreadPoolExecutor.submit`` starts a missing thread and waits for it on the caller: on
    the replica's event loop, the first DynamoDB reads stalled every request in flight."""

    def running() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("dynamodb-test"))

    pool = started_pool(4, "dynamodb-test")
    try:
        assert running() == 4
        reads = [pool.submit(time.sleep, 0.01) for _ in range(4)]
        assert running() == 4, "submit started a thread"
        for read in reads:
            read.result()
    finally:
        pool.shutdown()
